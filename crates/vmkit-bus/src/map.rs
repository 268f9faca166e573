//! An ordered map of disjoint, inclusive address ranges: the storage behind both buses.

use std::collections::BTreeMap;

use crate::Span;

/// Where an access `[first, last]` falls among the registered ranges.
#[derive(Debug)]
pub(crate) enum Lookup<'a, D> {
    /// Entirely inside one range.
    Inside {
        /// The range that holds the access.
        range: Span,
        /// Its device.
        device: &'a D,
    },
    /// Partly inside a range and partly outside it.
    Straddles(Span),
    /// Touches no range.
    Nothing,
}

/// Disjoint inclusive ranges keyed by their first address, each with a device.
#[derive(Debug)]
pub(crate) struct RangeMap<D> {
    /// first address → (last address, device).
    entries: BTreeMap<u64, (u64, D)>,
}

impl<D> Default for RangeMap<D> {
    fn default() -> Self {
        RangeMap {
            entries: BTreeMap::new(),
        }
    }
}

impl<D> RangeMap<D> {
    /// The registered range that overlaps `new`, if any.
    ///
    /// Ranges are disjoint and ordered, so only the one with the greatest first address not
    /// above `new.last` can reach into `new`: every earlier range ends before that one starts.
    fn overlapping(&self, new: Span) -> Option<Span> {
        let (&first, &(last, _)) = self.entries.range(..=new.last).next_back()?;
        (last >= new.first).then_some(Span { first, last })
    }

    /// Adds `device` over `range`; on overlap, returns the registered range in the way.
    pub(crate) fn insert(&mut self, range: Span, device: D) -> Result<(), Span> {
        if let Some(existing) = self.overlapping(range) {
            return Err(existing);
        }
        self.entries.insert(range.first, (range.last, device));
        Ok(())
    }

    /// Removes the range whose first address is `first`.
    pub(crate) fn remove(&mut self, first: u64) -> Option<(Span, D)> {
        self.entries
            .remove(&first)
            .map(|(last, device)| (Span { first, last }, device))
    }

    /// The range holding `addr`, with its device.
    pub(crate) fn get(&self, addr: u64) -> Option<(Span, &D)> {
        let (&first, (last, device)) = self.entries.range(..=addr).next_back()?;
        (*last >= addr).then_some((Span { first, last: *last }, device))
    }

    /// Classifies the access `[access.first, access.last]`.
    pub(crate) fn lookup(&self, access: Span) -> Lookup<'_, D> {
        if let Some((range, device)) = self.get(access.first) {
            return if range.last >= access.last {
                Lookup::Inside { range, device }
            } else {
                Lookup::Straddles(range)
            };
        }
        // The access starts in a hole; it may still run into a range further up.
        match access.first.checked_add(1) {
            Some(next) if next <= access.last => self
                .entries
                .range(next..=access.last)
                .next()
                .map_or(Lookup::Nothing, |(&first, &(last, _))| {
                    Lookup::Straddles(Span { first, last })
                }),
            _ => Lookup::Nothing,
        }
    }

    /// Every range, in address order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = Span> + '_ {
        self.entries
            .iter()
            .map(|(&first, &(last, _))| Span { first, last })
    }

    /// How many ranges are registered.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
