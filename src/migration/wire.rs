//! The frame types of the migration protocol and their payloads.
//!
//! | tag | direction | payload |
//! |-----|-----------|---------|
//! | `MOFR` | source → destination | [`Offer`] (postcard): architecture, backend, capabilities, VM configuration, memory layout, vCPU ids |
//! | `MACC` | destination → source | empty: the destination holds a VM built like the source's, ready for memory |
//! | `MREF` | destination → source | [`Refusal`] (postcard), the last frame of a destination that gives up |
//! | `MPAG` | source → destination | a [`PageBatch`]: region index (`u32` LE), run count (`u32` LE), the data runs' pages (`4096` bytes each), then the run table: per run its first page (`u64` LE), page count (`u32` LE) and kind (`u32` LE: [`RUN_DATA`] or [`RUN_ZERO`]) |
//! | `MRND` | source → destination | [`RoundEnd`] (postcard): a pre-copy round is complete |
//! | `MSTA` | source → destination | a vmkit-snapshot state file: VM state, one section per vCPU, the VMM's device sections |
//! | `MABT` | source → destination | a reason (postcard string): the source gives up |
//! | `MCNF` | destination → source | empty: the destination restored everything and holds the VM |
//!
//! Frames in each direction are numbered from 0 (see [`super::frame`]).

use serde::{Deserialize, Serialize};
use vmkit_snapshot::state::HEADER_LEN;
use vmkit_snapshot::{SectionTag, MAX_STATE_PAYLOAD};

use super::error::Refusal;
use super::frame::FrameError;
use crate::hypervisor::{Capabilities, VmConfig};
use crate::memory::PAGE_SIZE;

/// The offer that opens a migration.
pub const OFFER: SectionTag = SectionTag::new(*b"MOFR");
/// The destination accepts the offer.
pub const ACCEPT: SectionTag = SectionTag::new(*b"MACC");
/// The destination refuses, with its reason.
pub const REFUSE: SectionTag = SectionTag::new(*b"MREF");
/// A run of guest pages.
pub const PAGES: SectionTag = SectionTag::new(*b"MPAG");
/// The end of a pre-copy round.
pub const ROUND_END: SectionTag = SectionTag::new(*b"MRND");
/// The final state: vCPUs, VM, devices.
pub const STATE: SectionTag = SectionTag::new(*b"MSTA");
/// The source gives up.
pub const ABORT: SectionTag = SectionTag::new(*b"MABT");
/// The destination holds the VM.
pub const CONFIRM: SectionTag = SectionTag::new(*b"MCNF");

/// The most pages one page frame covers, data and zero runs together (1 MiB of memory).
pub const MAX_PAGES_PER_FRAME: u32 = 256;
/// Bytes before the page data in a page frame: region index and run count.
pub const PAGES_HEADER_LEN: usize = 8;
/// Bytes of one entry of a page frame's run table.
pub const RUN_ENTRY_LEN: usize = 16;
/// A run whose pages' contents follow in the frame.
pub const RUN_DATA: u32 = 0;
/// A run of all-zero pages, sent without their contents.
pub const RUN_ZERO: u32 = 1;
/// The largest control payload (offer, refusal, round end, abort).
pub const MAX_CONTROL_PAYLOAD: u64 = 1 << 20;

/// The name of a frame type, or `None` for a tag that is not one.
pub fn kind_of(tag: SectionTag) -> Option<&'static str> {
    Some(match tag {
        OFFER => "offer",
        ACCEPT => "accept",
        REFUSE => "refusal",
        PAGES => "pages",
        ROUND_END => "round end",
        STATE => "state",
        ABORT => "abort",
        CONFIRM => "confirmation",
        _ => return None,
    })
}

/// The largest payload a frame with `tag` may carry.
pub fn max_payload(tag: SectionTag) -> u64 {
    match tag {
        ACCEPT | CONFIRM => 0,
        PAGES => {
            let pages = MAX_PAGES_PER_FRAME as usize;
            (PAGES_HEADER_LEN + pages * (PAGE_SIZE + RUN_ENTRY_LEN)) as u64
        }
        STATE => MAX_STATE_PAYLOAD + HEADER_LEN as u64,
        _ => MAX_CONTROL_PAYLOAD,
    }
}

/// One region of guest memory as the source announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// First guest-physical address.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`MemoryFlags`](crate::MemoryFlags) bits.
    pub flags: u32,
}

impl Region {
    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE as u64
    }
}

/// What the source offers: everything the destination needs to decide, and to build an
/// empty VM like the source's, before any memory moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// vmkit-snapshot architecture code.
    pub arch: u16,
    /// vmkit-snapshot backend code.
    pub backend: u16,
    /// The source host's capabilities.
    pub capabilities: Capabilities,
    /// The VM's configuration.
    pub config: VmConfig,
    /// The memory regions, in guest-address order.
    pub regions: Vec<Region>,
    /// The vCPU ids.
    pub vcpus: Vec<u32>,
}

/// The end of a pre-copy round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundEnd {
    /// The round, from 0.
    pub round: u32,
    /// Pages sent in it.
    pub pages: u64,
}

/// A run of consecutive pages of one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun<'a> {
    /// Index of the region in the offer.
    pub region: u32,
    /// Index of the first page within the region.
    pub first_page: u64,
    /// Pages in the run (at least 1).
    pub count: u32,
    /// The pages' contents (`count * 4096` bytes), or `None` for a run of zero pages.
    pub data: Option<&'a [u8]>,
}

/// The page runs of one page frame, all in one region: the data runs' pages one after the
/// other, and a table of runs (first page, count, kind) that says where each goes. The table
/// comes after the data, so that a source copies each page from guest memory once, straight
/// into the frame, and learns only then whether it is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageBatch<'a> {
    /// Index of the region in the offer.
    pub region: u32,
    /// The data runs' pages, in table order.
    data: &'a [u8],
    /// The run table, [`RUN_ENTRY_LEN`] bytes per run, each entry already checked.
    table: &'a [u8],
}

impl<'a> PageBatch<'a> {
    /// The runs, in the order the source sent them.
    pub fn runs(&self) -> impl Iterator<Item = PageRun<'a>> + 'a {
        let (region, mut data) = (self.region, self.data);
        self.table.chunks_exact(RUN_ENTRY_LEN).map(move |entry| {
            let (first_page, count, kind) = run_entry(entry);
            let data = (kind == RUN_DATA).then(|| {
                let (run, rest) = data.split_at(count as usize * PAGE_SIZE);
                data = rest;
                run
            });
            PageRun {
                region,
                first_page,
                count,
                data,
            }
        })
    }

    /// Pages in the frame, data and zero runs together.
    pub fn pages(&self) -> u64 {
        self.runs().map(|r| u64::from(r.count)).sum()
    }

    /// Writes a page frame's header (region, run count) into the first
    /// [`PAGES_HEADER_LEN`] bytes of `buf`.
    pub fn write_header(buf: &mut [u8], region: u32, runs: u32) {
        if let Some(b) = buf.get_mut(..PAGES_HEADER_LEN) {
            b[..4].copy_from_slice(&region.to_le_bytes());
            b[4..8].copy_from_slice(&runs.to_le_bytes());
        }
    }

    /// Writes one run-table entry into the first [`RUN_ENTRY_LEN`] bytes of `buf`.
    pub fn write_run(buf: &mut [u8], first_page: u64, count: u32, kind: u32) {
        if let Some(b) = buf.get_mut(..RUN_ENTRY_LEN) {
            b[..8].copy_from_slice(&first_page.to_le_bytes());
            b[8..12].copy_from_slice(&count.to_le_bytes());
            b[12..16].copy_from_slice(&kind.to_le_bytes());
        }
    }
}

/// A run-table entry's first page, count and kind.
fn run_entry(entry: &[u8]) -> (u64, u32, u32) {
    let mut first = [0u8; 8];
    let mut count = [0u8; 4];
    let mut kind = [0u8; 4];
    first.copy_from_slice(&entry[..8]);
    count.copy_from_slice(&entry[8..12]);
    kind.copy_from_slice(&entry[12..16]);
    (
        u64::from_le_bytes(first),
        u32::from_le_bytes(count),
        u32::from_le_bytes(kind),
    )
}

/// One received frame, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// [`OFFER`].
    Offer(Box<Offer>),
    /// [`ACCEPT`].
    Accept,
    /// [`REFUSE`].
    Refuse(Refusal),
    /// [`PAGES`].
    Pages(PageBatch<'a>),
    /// [`ROUND_END`].
    RoundEnd(RoundEnd),
    /// [`STATE`]: a state file's bytes.
    State(&'a [u8]),
    /// [`ABORT`].
    Abort(String),
    /// [`CONFIRM`].
    Confirm,
}

impl<'a> Message<'a> {
    /// The frame type's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Offer(_) => "offer",
            Message::Accept => "accept",
            Message::Refuse(_) => "refusal",
            Message::Pages(_) => "pages",
            Message::RoundEnd(_) => "round end",
            Message::State(_) => "state",
            Message::Abort(_) => "abort",
            Message::Confirm => "confirmation",
        }
    }

    /// Decodes frame `seq`'s verified payload by its tag.
    pub fn decode(seq: u32, tag: SectionTag, payload: &'a [u8]) -> Result<Self, FrameError> {
        let kind = kind_of(tag).ok_or(FrameError::UnknownTag { seq, tag })?;
        let bad = |reason: String| FrameError::Decode { seq, kind, reason };
        Ok(match tag {
            OFFER => Message::Offer(Box::new(postcard_exact(payload).map_err(bad)?)),
            ACCEPT => Message::Accept,
            CONFIRM => Message::Confirm,
            REFUSE => Message::Refuse(postcard_exact(payload).map_err(bad)?),
            ROUND_END => Message::RoundEnd(postcard_exact(payload).map_err(bad)?),
            ABORT => Message::Abort(postcard_exact(payload).map_err(bad)?),
            STATE => Message::State(payload),
            _ => Message::Pages(decode_pages(payload).map_err(bad)?),
        })
    }
}

/// Decodes a postcard value that fills `payload` exactly.
fn postcard_exact<'de, T: Deserialize<'de>>(payload: &'de [u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(|err| err.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes left over", rest.len()));
    }
    Ok(value)
}

fn decode_pages(payload: &[u8]) -> Result<PageBatch<'_>, String> {
    let (head, rest) = payload
        .split_at_checked(PAGES_HEADER_LEN)
        .ok_or_else(|| format!("{} bytes cannot hold a page-frame header", payload.len()))?;
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&head[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let (region, runs) = (word(0), word(4));
    if runs == 0 || runs > MAX_PAGES_PER_FRAME {
        return Err(format!(
            "{runs} runs in one frame (1 to {MAX_PAGES_PER_FRAME} allowed)"
        ));
    }
    let table_len = runs as usize * RUN_ENTRY_LEN;
    let data_len = rest.len().checked_sub(table_len).ok_or_else(|| {
        format!(
            "{runs} runs announced but {} bytes after the header",
            rest.len()
        )
    })?;
    let (data, table) = rest.split_at(data_len);
    let (mut pages, mut data_pages) = (0u64, 0u64);
    for (i, entry) in table.chunks_exact(RUN_ENTRY_LEN).enumerate() {
        let (_, count, kind) = run_entry(entry);
        if count == 0 {
            return Err(format!("run #{i} has no pages"));
        }
        match kind {
            RUN_DATA => data_pages += u64::from(count),
            RUN_ZERO => {}
            other => return Err(format!("run #{i} is of unknown kind {other}")),
        }
        pages += u64::from(count);
    }
    if pages > u64::from(MAX_PAGES_PER_FRAME) {
        return Err(format!(
            "{pages} pages in one frame (at most {MAX_PAGES_PER_FRAME} allowed)"
        ));
    }
    if data.len() as u64 != data_pages * PAGE_SIZE as u64 {
        return Err(format!(
            "{data_pages} pages of data announced but {} bytes of page data",
            data.len()
        ));
    }
    Ok(PageBatch {
        region,
        data,
        table,
    })
}

/// Encodes a control payload.
pub(super) fn encode<T: Serialize + ?Sized>(
    kind: &'static str,
    value: &T,
) -> Result<Vec<u8>, FrameError> {
    postcard::to_stdvec(value).map_err(|source| FrameError::Encode { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page frame's payload: `runs` (first page, count, kind), data pages filled with their
    /// index in the frame.
    fn batch(region: u32, runs: &[(u64, u32, u32)]) -> Vec<u8> {
        let data_pages: u32 = runs.iter().filter(|r| r.2 == RUN_DATA).map(|r| r.1).sum();
        let data = data_pages as usize * PAGE_SIZE;
        let mut out = vec![0u8; PAGES_HEADER_LEN + data + runs.len() * RUN_ENTRY_LEN];
        PageBatch::write_header(&mut out, region, runs.len() as u32);
        for (i, page) in out[PAGES_HEADER_LEN..PAGES_HEADER_LEN + data]
            .chunks_mut(PAGE_SIZE)
            .enumerate()
        {
            page.fill(i as u8 + 1);
        }
        for (i, &(first, count, kind)) in runs.iter().enumerate() {
            let at = PAGES_HEADER_LEN + data + i * RUN_ENTRY_LEN;
            PageBatch::write_run(&mut out[at..], first, count, kind);
        }
        out
    }

    #[test]
    fn a_batch_decodes_into_its_runs() {
        let payload = batch(
            3,
            &[(10, 2, RUN_DATA), (12, 5, RUN_ZERO), (40, 1, RUN_DATA)],
        );
        let Message::Pages(decoded) = Message::decode(0, PAGES, &payload).unwrap() else {
            panic!("not pages");
        };
        let runs: Vec<_> = decoded.runs().collect();
        assert_eq!(decoded.pages(), 8);
        assert_eq!(runs.len(), 3);
        assert_eq!(
            (runs[0].region, runs[0].first_page, runs[0].count),
            (3, 10, 2)
        );
        let first = runs[0].data.unwrap();
        assert_eq!(first.len(), 2 * PAGE_SIZE);
        assert_eq!((first[0], first[PAGE_SIZE]), (1, 2));
        assert_eq!(
            (runs[1].first_page, runs[1].count, runs[1].data),
            (12, 5, None)
        );
        assert_eq!(runs[2].data.unwrap(), &[3u8; PAGE_SIZE][..]);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let max = MAX_PAGES_PER_FRAME;
        let cases: [(&str, Vec<u8>); 6] = [
            ("no runs", batch(0, &[])),
            ("a run of no pages", batch(0, &[(0, 0, RUN_ZERO)])),
            ("an unknown kind", batch(0, &[(0, 1, 7)])),
            (
                "too many pages",
                batch(0, &[(0, max, RUN_ZERO), (max as u64, 1, RUN_ZERO)]),
            ),
            ("a short header", vec![0; PAGES_HEADER_LEN - 1]),
            ("a table past the end", {
                let mut b = batch(0, &[(0, 1, RUN_ZERO)]);
                PageBatch::write_header(&mut b, 0, 2);
                b
            }),
        ];
        for (what, payload) in cases {
            assert!(
                matches!(
                    Message::decode(0, PAGES, &payload),
                    Err(FrameError::Decode { .. })
                ),
                "{what} went through"
            );
        }
        // Page data one byte short of what the table announces.
        let mut short = batch(0, &[(0, 1, RUN_DATA)]);
        short.remove(PAGES_HEADER_LEN);
        assert!(Message::decode(0, PAGES, &short).is_err());
        // Too many runs, refused before the table is read.
        let mut many = vec![0u8; PAGES_HEADER_LEN];
        PageBatch::write_header(&mut many, 0, max + 1);
        assert!(Message::decode(0, PAGES, &many).is_err());
    }
}
