//! Receive straight into the guest's buffers, for a vectored backend
//! ([`NetBackend::vectored`]): one `readv` per frame into the receive
//! chains, with no copy through the device's own buffer.
//!
//! The frame's length is known only once it is read, so the device first
//! pops enough chains for the largest packet ([`MAX_PACKET_LEN`]): with
//! merged buffers as many as that takes, without them one chain that big.
//! Popped chains form a pool that the frames of one pass consume in order;
//! what is left when the pass ends is un-popped (the tail of what was
//! popped, so the driver sees nothing). A driver whose buffers cannot hold
//! the largest packet, or who has none, or whose buffers are small (the
//! largest packet would need more than [`FAST_PIECES`] of them: a `readv`
//! into many pieces costs more than the copy it saves) gets the copying
//! path instead ([`Direct::Fallback`]).
//!
//! Why 4 KiB buffers (what Linux gives with merged buffers) are copied
//! into: a frame's length is known only after the read (the TAP offers no
//! peek at the next frame's length), so an in-place read must cover the
//! largest packet, 17 pieces of 4 KiB; and even the cheapest in-place
//! shape, a `readv` into the header, one guest buffer and a spill buffer
//! for the rest, costs more than a `read` into the device's buffer and the
//! copy out: measured on 64 frames of 1514 bytes (the `tap` bench's
//! machine, kernel 6.18), 35.9–37.7 µs against 30.9–32.6 µs for plain
//! `read`s, where the copy it saves is about 1.5 µs.
//!
//! The header is read into the device's memory, validated as on the
//! copying path, completed (`num_buffers`) and only then written to the
//! guest; the frame's destination MAC address is read back from the
//! guest's buffer for the receive filter (a guest that changes it meanwhile
//! only fools its own filter).

use std::io;

use vm_memory::GuestMemory;

use super::header::{NetHeader, NET_HDR_LEN};
use super::iov::{self, GuestSlice};
use super::{
    queue_err, Net, NetBackend, MAX_PACKET_LEN, MIN_FRAME_LEN, RXQ, VIRTIO_NET_F_MRG_RXBUF,
};
use crate::device::DeviceError;
use crate::QueueAccess;

/// The most pieces a frame is read into in place: with the header, Linux's
/// `UIO_FASTIOV` (8), below which `readv` takes the iovecs without
/// allocating. Measured on 1514-byte frames, a `readv` into the 17 pieces
/// of 4 KiB buffers that hold the largest packet cost more than the copy
/// it saves.
const FAST_PIECES: usize = 7;

/// The smallest receive chain read into in place: `FAST_PIECES` of them
/// hold the largest packet.
const MIN_IN_PLACE_CHAIN: usize = MAX_PACKET_LEN.div_ceil(FAST_PIECES);

/// How many receive passes go straight to the copying path after one found
/// the driver's buffers too small (or in too many pieces) for the in-place
/// path: a driver keeps the shape of its buffers (Linux sizes mergeable
/// buffers below a page, and gives big packets a chain of pages), and a
/// failed attempt costs a pass more than the copy it would save (measured
/// with the `tap` bench of `vmkit-net`: 0.5 µs a pass of 64 frames, 2 %). It
/// looks again after that many passes, in case the driver changed.
pub(super) const SKIP_AFTER_SMALL: u16 = 64;

/// How a direct receive pass ended, and how many ring slots of unused
/// chains to un-pop (`undo`).
pub(super) enum Direct {
    /// The backend has no more frames.
    Empty { undo: u16 },
    /// The processing budget is used up.
    Budget { undo: u16 },
    /// The driver's buffers cannot hold the largest packet (or there are
    /// none): receive by copying. `small`: because of their shape (too
    /// small, or in too many pieces), which the next passes will most
    /// likely find again (see [`SKIP_AFTER_SMALL`]).
    Fallback { undo: u16, small: bool },
}

impl<B: NetBackend> Net<B> {
    /// Receives frames into the driver's buffers until the backend is
    /// empty, the budget is spent or the buffers run out. The pool of
    /// chains is `self.chains[next..]` (their buffers in `self.descs`).
    pub(super) fn receive_direct<'m, M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut QueueAccess<'_, 'm, M>,
        mem: &'m M,
        budget: &mut u32,
    ) -> Result<Direct, DeviceError> {
        let err = queue_err(RXQ);
        let mrg = self.acked & VIRTIO_NET_F_MRG_RXBUF != 0;
        self.descs.clear();
        self.chains.clear();
        let mut next = 0usize;
        let (mut cap, mut slots) = (0usize, 0u16);
        let mut dry = false;
        // The pool's buffers as guest memory slices, resolved once at pop;
        // chain `i`'s start at `slice_at[i]`.
        let mut slices: Vec<GuestSlice<'m, M>> = Vec::new();
        let mut slice_at: Vec<usize> = Vec::new();
        let mut frame: Vec<GuestSlice<'m, M>> = Vec::new();
        loop {
            // Top the pool up to the largest packet (one chain without
            // merged buffers).
            while !dry && cap < MAX_PACKET_LEN && (mrg || next == self.chains.len()) && *budget > 0
            {
                let Some(mut chain) = q.pop().map_err(&err)? else {
                    dry = true;
                    break;
                };
                *budget -= 1;
                let head = chain.head();
                match self.collect_rx(head, &mut chain, mrg) {
                    Some(c) if c.cap < MIN_IN_PLACE_CHAIN => {
                        // Small buffers: the largest packet would take more
                        // pieces than a cheap `readv` (see FAST_PIECES).
                        self.chains.push(c);
                        slots = slots.saturating_add(head.slots());
                        return Ok(Direct::Fallback {
                            undo: slots,
                            small: true,
                        });
                    }
                    Some(c) => {
                        let at = slices.len();
                        let descs = self.descs.get(c.start..c.end).unwrap_or(&[]);
                        if iov::scatter_slices(mem, descs, 0, &mut slices).is_none() {
                            // Guest memory refused a buffer the queue had
                            // validated (unplugged under us): the copying
                            // path returns it empty.
                            slices.truncate(at);
                            self.descs.truncate(c.start);
                            q.add_used(head, 0).map_err(&err)?;
                            self.stats.bad_chains += 1;
                            continue;
                        }
                        slice_at.push(at);
                        cap += c.cap;
                        slots = slots.saturating_add(head.slots());
                        self.chains.push(c);
                    }
                    None => {
                        // A bad chain: it and the unused chains before it
                        // (which cannot be un-popped past it) go back empty.
                        self.stats.bad_chains += 1;
                        for c in self.chains.get(next..).unwrap_or(&[]) {
                            q.add_used(c.head, 0).map_err(&err)?;
                        }
                        q.add_used(head, 0).map_err(&err)?;
                        next = self.chains.len();
                        (cap, slots) = (0, 0);
                    }
                }
            }
            if *budget == 0 {
                return Ok(Direct::Budget { undo: slots });
            }
            if next == self.chains.len() {
                // No buffers: the copying path reads the frame and holds
                // it (or finds none), as it always has.
                return Ok(Direct::Fallback {
                    undo: slots,
                    small: false,
                });
            }
            let first_cap = self.chains.get(next).map_or(0, |c| c.cap);
            if cap < MAX_PACKET_LEN || (!mrg && first_cap < MAX_PACKET_LEN) {
                // Too few buffers now (merged), or one too small (not merged).
                return Ok(Direct::Fallback {
                    undo: slots,
                    small: !mrg,
                });
            }
            // The buffers that hold the largest packet, past the header.
            let mut last = next;
            let mut covered = 0usize;
            for (i, c) in self.chains.iter().enumerate().skip(next) {
                covered += c.cap;
                last = i;
                if covered >= MAX_PACKET_LEN {
                    break;
                }
            }
            let lo = slice_at.get(next).copied().unwrap_or(0);
            let hi = slice_at.get(last + 1).copied().unwrap_or(slices.len());
            frame.clear();
            let mut skip = NET_HDR_LEN;
            for s in slices.get(lo..hi).unwrap_or(&[]) {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                if let Ok(rest) = s.offset(skip) {
                    frame.push(rest);
                }
                skip = 0;
            }
            if frame.len() > FAST_PIECES {
                // Buffers in many pieces: copying is cheaper.
                return Ok(Direct::Fallback {
                    undo: slots,
                    small: true,
                });
            }
            let mut hb = [0u8; NET_HDR_LEN];
            let hdr_in: &mut [u8] = if self.caps.vnet_hdr { &mut hb } else { &mut [] };
            let off = NET_HDR_LEN - hdr_in.len();
            let n = match self.backend.recv_vectored(hdr_in, &frame) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Direct::Empty { undo: slots })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stats.rx_backend_errors += 1;
                    return Ok(Direct::Empty { undo: slots });
                }
            };
            *budget -= 1;
            let len = (n + off).min(MAX_PACKET_LEN);
            // Whatever happens to the frame, the backend wrote guest memory.
            iov::mark_dirty(&frame, len.saturating_sub(NET_HDR_LEN));
            let Some(hdr) = self.check_direct(&hb, len, &frame) else {
                continue;
            };
            // The chains the packet fills.
            let mut k = 0usize;
            let mut filled = 0usize;
            for c in self.chains.get(next..).unwrap_or(&[]) {
                if filled >= len {
                    break;
                }
                filled += c.cap;
                k += 1;
            }
            let mut hdr = hdr;
            hdr.num_buffers = u16::try_from(k).unwrap_or(u16::MAX);
            // The header, into the first chain's first bytes (the pool's
            // slices from `lo` start there; copy_from marks them dirty).
            let hbytes = hdr.to_bytes();
            let mut written = 0usize;
            for s in slices.get(lo..hi).unwrap_or(&[]) {
                if written == NET_HDR_LEN {
                    break;
                }
                let k = s.len().min(NET_HDR_LEN - written);
                if let Ok(dst) = s.subslice(0, k) {
                    dst.copy_from(hbytes.get(written..written + k).unwrap_or(&[]));
                }
                written += k;
            }
            let ok = written == NET_HDR_LEN;
            let mut rest = len;
            for c in self.chains.get(next..next + k).unwrap_or(&[]) {
                let used = if ok { c.cap.min(rest) } else { 0 };
                rest -= c.cap.min(rest);
                cap -= c.cap;
                slots = slots.saturating_sub(c.head.slots());
                q.add_used(c.head, u32::try_from(used).unwrap_or(u32::MAX))
                    .map_err(&err)?;
            }
            next += k;
            if !ok {
                self.stats.bad_chains += 1;
                continue;
            }
            self.rx_stalled = false;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += (len - NET_HDR_LEN) as u64;
        }
    }

    /// The checks of the copying path ([`Net::fetch`]) on a packet read in
    /// place: link, length, header, filter. Returns the header to give the
    /// guest, or `None` (counted) if the packet is dropped.
    fn check_direct<S: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        hb: &[u8; NET_HDR_LEN],
        len: usize,
        frame: &[vm_memory::VolatileSlice<'_, S>],
    ) -> Option<NetHeader> {
        if !self.link_up {
            self.stats.rx_dropped_link_down += 1;
            return None;
        }
        if len < NET_HDR_LEN + MIN_FRAME_LEN {
            self.stats.rx_dropped_invalid += 1;
            return None;
        }
        let frame_len = len - NET_HDR_LEN;
        let hdr = if self.caps.vnet_hdr {
            match NetHeader::from_bytes(hb).validate_rx(self.rx_offloads, frame_len) {
                Ok(h) => h,
                Err(_) => {
                    self.stats.rx_dropped_invalid += 1;
                    return None;
                }
            }
        } else {
            NetHeader::default()
        };
        // The Ethernet header, for the filter.
        let mut eth = [0u8; MIN_FRAME_LEN];
        let mut at = 0usize;
        for s in frame {
            if at == eth.len() {
                break;
            }
            at += s.copy_to(eth.get_mut(at..).unwrap_or(&mut []));
        }
        if !self.filter.accepts(&self.mac, &eth) {
            self.stats.rx_dropped_filtered += 1;
            return None;
        }
        Some(hdr)
    }
}
