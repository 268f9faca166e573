//! virtio-balloon through the virtio-mmio transport, with a discard back
//! end that records what it is asked and zeroes the range as `madvise`
//! would (the real `madvise` is tested in vmkit's `memory` module).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::sync::{Arc, Mutex};

use driver::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_virtio::balloon::*;
use vmkit_virtio::mmio::*;
use vmkit_virtio::Persist;

const PAGE: u64 = BALLOON_PAGE_SIZE;
/// Guest RAM of these tests: 4 MiB at 0, a hole, 1 MiB at 8 MiB (read-only
/// for the back end).
const HIGH: u64 = 0x80_0000;
const HIGH_LEN: u64 = 0x10_0000;
const VERSION_1: u64 = 1 << 32;

type Calls = Arc<Mutex<Vec<(u64, u64)>>>;
/// What a hostile case must produce.
type Expect = fn(&BalloonError) -> bool;

fn holey_mem() -> Arc<Mem> {
    Arc::new(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MEM_SIZE),
            (GuestAddress(HIGH), HIGH_LEN as usize),
        ])
        .unwrap(),
    )
}

/// The back end: refuses the high region (as vmkit refuses a read-only
/// one), records and zeroes anything else.
fn backend(
    mem: Arc<Mem>,
    calls: Calls,
) -> impl FnMut(GuestAddress, u64) -> Result<(), DiscardError> {
    move |addr, len| {
        if addr.0 >= HIGH {
            return Err(DiscardError {
                addr: addr.0,
                len,
                source: "read-only region".into(),
            });
        }
        calls.lock().unwrap().push((addr.0, len));
        mem.write_slice(&vec![0u8; len as usize], addr).unwrap();
        Ok(())
    }
}

type Dev = Balloon<Box<dyn FnMut(GuestAddress, u64) -> Result<(), DiscardError> + Send>>;

fn device(mem: &Arc<Mem>, calls: &Calls, options: BalloonOptions) -> Dev {
    Balloon::new(Box::new(backend(mem.clone(), calls.clone())), options)
}

struct Setup {
    mem: Arc<Mem>,
    t: Transport<Dev>,
    calls: Calls,
    vqs: Vec<Vq>,
}

/// A live balloon with all features offered, the driver accepting
/// `features`, and as many queues as they give.
fn setup(features: u64) -> Setup {
    let mem = holey_mem();
    let calls = Calls::default();
    let t = transport(device(&mem, &calls, BalloonOptions::default()), &mem);
    assert_eq!(t.r32(0x8), 5);
    let offered = device_features(&t);
    assert_eq!(
        offered & 0xff,
        VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_REPORTING
    );
    assert!(negotiate(&t, VERSION_1 | features));
    let n = 2
        + u32::from(features & VIRTIO_BALLOON_F_STATS_VQ != 0)
        + u32::from(features & VIRTIO_BALLOON_F_REPORTING != 0);
    let vqs: Vec<Vq> = (0..n).map(|i| Vq::new(i, 8)).collect();
    for q in &vqs {
        assert!(setup_queue(&t, q));
    }
    driver_ok(&t);
    Setup { mem, t, calls, vqs }
}

/// Writes `pfns` at `at` and pushes them on `vq`.
fn push_pfns(mem: &Mem, vq: &mut Vq, at: u64, pfns: &[u32]) -> u16 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    vq.push(mem, &[r(at, bytes.len() as u32)])
}

#[test]
fn inflate_discards_runs_and_pages_read_zero() {
    let mut s = setup(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    let pattern = vec![0xa5u8; 4 * PAGE as usize];
    s.mem
        .write_slice(&pattern, GuestAddress(0x30_0000))
        .unwrap();
    // Frames 0x300..0x302 (a run) and 0x303, but not 0x302.
    let head = push_pfns(&s.mem, &mut s.vqs[0], BUF, &[0x300, 0x301, 0x303]);
    notify(&s.t, 0);
    assert_eq!(s.vqs[0].pop_used(&s.mem), Some((u32::from(head), 0)));
    assert_eq!(s.t.r32(0x60) & INT_USED_BUFFER, INT_USED_BUFFER);
    assert_eq!(
        *s.calls.lock().unwrap(),
        [(0x30_0000, 2 * PAGE), (0x30_3000, PAGE)]
    );
    let mut back = vec![0xffu8; 4 * PAGE as usize];
    s.mem
        .read_slice(&mut back, GuestAddress(0x30_0000))
        .unwrap();
    assert!(back[..2 * PAGE as usize].iter().all(|&b| b == 0));
    assert!(back[2 * PAGE as usize..3 * PAGE as usize]
        .iter()
        .all(|&b| b == 0xa5));
    assert!(back[3 * PAGE as usize..].iter().all(|&b| b == 0));
    // Deflate: nothing is discarded, the pages are counted.
    push_pfns(&s.mem, &mut s.vqs[1], BUF, &[0x300, 0x301]);
    notify(&s.t, 1);
    assert!(s.vqs[1].pop_used(&s.mem).is_some());
    assert_eq!(s.calls.lock().unwrap().len(), 2);
    let c = s.t.with_device(|b| b.counters());
    assert_eq!((c.inflated_pages, c.deflated_pages, c.refused), (3, 2, 0));
}

#[test]
fn hostile_frames_are_refused_without_discarding() {
    let mut s = setup(0);
    let beyond_ram = (MEM_SIZE as u64 / PAGE) as u32; // first frame of the hole
    let in_hole = 0x600;
    let read_only = (HIGH / PAGE) as u32;
    let cases: &[(&[u32], Expect)] = &[
        (&[beyond_ram], |e| matches!(e, BalloonError::NotRam { .. })),
        (&[in_hole], |e| matches!(e, BalloonError::NotRam { .. })),
        (&[u32::MAX], |e| matches!(e, BalloonError::NotRam { .. })),
        // A run that starts in RAM and ends in the hole.
        (
            &[beyond_ram - 1, beyond_ram],
            |e| matches!(e, BalloonError::NotRam { len, .. } if *len == 2 * PAGE),
        ),
        (&[read_only], |e| matches!(e, BalloonError::Discard { .. })),
    ];
    for (i, (pfns, expected)) in cases.iter().enumerate() {
        let head = push_pfns(&s.mem, &mut s.vqs[0], BUF, pfns);
        notify(&s.t, 0);
        assert_eq!(
            s.vqs[0].pop_used(&s.mem),
            Some((u32::from(head), 0)),
            "case {i}"
        );
        let e = s.t.with_device(|b| b.take_error()).expect("an error");
        assert!(expected(&e), "case {i}: {e:?}");
        assert!(s.calls.lock().unwrap().is_empty(), "case {i}");
    }
    // A frame array that is not whole frames, and one too long.
    s.vqs[0].push(&s.mem, &[r(BUF, 6)]);
    s.vqs[0].push(&s.mem, &[r(BUF, 4 * (MAX_PFNS_PER_CHAIN as u32 + 1))]);
    notify(&s.t, 0);
    assert!(s.vqs[0].pop_used(&s.mem).is_some());
    assert!(s.vqs[0].pop_used(&s.mem).is_some());
    let e = s.t.with_device(|b| b.take_error()).unwrap();
    assert!(
        matches!(e, BalloonError::BadPfnArray { bytes, .. } if bytes == 4 * 4097),
        "{e:?}"
    );
    assert!(s.calls.lock().unwrap().is_empty());
    assert_eq!(s.t.with_device(|b| b.counters().refused), 7);
    // The device still works: no DEVICE_NEEDS_RESET.
    assert_eq!(s.t.r32(0x70) & STATUS_NEEDS_RESET, 0);
    push_pfns(&s.mem, &mut s.vqs[0], BUF, &[0x100]);
    notify(&s.t, 0);
    assert_eq!(*s.calls.lock().unwrap(), [(0x10_0000, PAGE)]);
}

#[test]
fn reporting_queue_index_follows_the_features() {
    // Without STATS_VQ the reporting queue is queue 2.
    let mut s = setup(VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(
        s.t.with_device(|b| (b.stats_queue(), b.reporting_queue())),
        (None, Some(2))
    );
    s.vqs[2].push(&s.mem, &[w(0x30_0000, 0x2000), w(0x31_0000, 0x1000)]);
    notify(&s.t, 2);
    assert!(s.vqs[2].pop_used(&s.mem).is_some());
    assert_eq!(
        *s.calls.lock().unwrap(),
        [(0x30_0000, 0x2000), (0x31_0000, 0x1000)]
    );
    assert_eq!(s.t.with_device(|b| b.counters().reported_bytes), 0x3000);
    // With both, it is queue 3, and queue 2 holds statistics.
    let s = setup(VIRTIO_BALLOON_F_REPORTING | VIRTIO_BALLOON_F_STATS_VQ);
    assert_eq!(
        s.t.with_device(|b| (b.stats_queue(), b.reporting_queue())),
        (Some(2), Some(3))
    );
}

#[test]
fn hostile_reports_are_refused() {
    let mut s = setup(VIRTIO_BALLOON_F_REPORTING);
    let cases: &[(u64, u32, Expect)] = &[
        (0x30_0800, 0x1000, |e| {
            matches!(e, BalloonError::Unaligned { .. })
        }),
        (0x30_0000, 0x800, |e| {
            matches!(e, BalloonError::Unaligned { .. })
        }),
        // Across the end of RAM into the hole (the buffer itself is not in
        // guest memory, so the queue refuses the chain first).
        (MEM_SIZE as u64 - 0x1000, 0x2000, |e| {
            matches!(e, BalloonError::Chain { .. } | BalloonError::NotRam { .. })
        }),
        (HIGH, 0x1000, |e| matches!(e, BalloonError::Discard { .. })),
    ];
    for (i, (addr, len, expected)) in cases.iter().enumerate() {
        s.vqs[2].push(&s.mem, &[w(*addr, *len)]);
        notify(&s.t, 2);
        assert!(s.vqs[2].pop_used(&s.mem).is_some(), "case {i}");
        let e = s.t.with_device(|b| b.take_error()).expect("an error");
        assert!(expected(&e), "case {i}: {e:?}");
    }
    assert!(s.calls.lock().unwrap().is_empty());
    assert_eq!(s.t.r32(0x70) & STATUS_NEEDS_RESET, 0);
}

fn write_stats(mem: &Mem, at: u64, stats: &[(u16, u64)]) -> u32 {
    let bytes: Vec<u8> = stats
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    bytes.len() as u32
}

#[test]
fn statistics_round_trip() {
    let mut s = setup(VIRTIO_BALLOON_F_STATS_VQ);
    assert_eq!(s.t.with_device(|b| b.stats_queue()), Some(2));
    let len = write_stats(
        &s.mem,
        BUF,
        &[(STAT_FREE_MEMORY, 1000), (STAT_DISK_CACHES, 7)],
    );
    let head = s.vqs[2].push(&s.mem, &[r(BUF, len)]);
    notify(&s.t, 2);
    // The device holds the buffer.
    assert_eq!(s.vqs[2].pop_used(&s.mem), None);
    let stats =
        s.t.with_device(|b| b.stats().map(|(st, _)| st.clone()))
            .unwrap();
    assert_eq!(stats.free_memory(), Some(1000));
    assert_eq!(stats.disk_caches(), Some(7));
    assert_eq!(stats.available_memory(), None);
    // The VMM asks for more: the buffer goes back.
    assert!(s.t.request_balloon_stats().unwrap());
    assert_eq!(s.vqs[2].pop_used(&s.mem), Some((u32::from(head), 0)));
    // The driver refills it.
    let len = write_stats(&s.mem, BUF, &[(STAT_AVAILABLE_MEMORY, 4242), (99, 1)]);
    s.vqs[2].push(&s.mem, &[r(BUF, len)]);
    notify(&s.t, 2);
    let stats =
        s.t.with_device(|b| b.stats().map(|(st, _)| st.clone()))
            .unwrap();
    assert_eq!(stats.values, [(STAT_AVAILABLE_MEMORY, 4242), (99, 1)]);
    assert_eq!(s.t.with_device(|b| b.counters().stats_updates), 2);
    // A huge buffer is read up to MAX_STATS entries.
    assert!(s.t.request_balloon_stats().unwrap());
    assert!(s.vqs[2].pop_used(&s.mem).is_some());
    s.vqs[2].push(&s.mem, &[r(BUF, 0x10_0000)]);
    notify(&s.t, 2);
    let n =
        s.t.with_device(|b| b.stats().map(|(st, _)| st.values.len()))
            .unwrap();
    assert_eq!(n, MAX_STATS);
}

#[test]
fn target_is_set_with_a_config_interrupt() {
    let s = setup(0);
    let generation = s.t.r32(0xfc);
    s.t.set_balloon_target(1234);
    assert_eq!(s.t.r32(CONFIG_OFFSET), 1234);
    assert_eq!(s.t.r32(0x60) & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
    assert_ne!(s.t.r32(0xfc), generation);
    // The driver writes `actual`; `num_pages` is read-only.
    s.t.w32(CONFIG_OFFSET + 4, 1000);
    s.t.w32(CONFIG_OFFSET, 1);
    assert_eq!(s.t.r32(CONFIG_OFFSET + 4), 1000);
    assert_eq!(s.t.r32(CONFIG_OFFSET), 1234);
    assert_eq!(s.t.with_device(|b| b.actual_pages()), 1000);
}

#[test]
fn state_round_trips_with_the_held_statistics_buffer() {
    let mut s = setup(VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING);
    s.t.set_balloon_target(77);
    let len = write_stats(&s.mem, BUF, &[(STAT_FREE_MEMORY, 5)]);
    let head = s.vqs[2].push(&s.mem, &[r(BUF, len)]);
    notify(&s.t, 2);
    let state = s.t.save_state();
    assert_eq!(state.device.stats_buffer.map(|b| b.0), Some(head));
    let bytes = postcard::to_allocvec(&state).unwrap();
    let state: MmioTransportState<BalloonState> = postcard::from_bytes(&bytes).unwrap();
    let calls = Calls::default();
    let fresh = device(&s.mem, &calls, BalloonOptions::default());
    let irq = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let t = restore(fresh, s.mem.clone(), irq, &state).unwrap();
    assert_eq!(t.r32(CONFIG_OFFSET), 77);
    assert_eq!(t.with_device(|b| b.reporting_queue()), Some(3));
    assert_eq!(
        t.with_device(|b| b.stats().map(|(st, _)| st.free_memory())),
        Some(Some(5))
    );
    // The restored device returns the buffer it held.
    assert!(t.request_balloon_stats().unwrap());
    assert_eq!(s.vqs[2].pop_used(&s.mem), Some((u32::from(head), 0)));
    // A balloon without statistics refuses a state holding a buffer.
    let no_stats = BalloonOptions {
        stats: false,
        ..BalloonOptions::default()
    };
    let mut dev = device(&s.mem, &calls, no_stats);
    assert!(dev.restore_state(&state.device).is_err());
}

#[test]
fn polling_returns_the_statistics_buffer_until_stopped() {
    let mut s = setup(VIRTIO_BALLOON_F_STATS_VQ);
    let len = write_stats(&s.mem, BUF, &[(STAT_FREE_MEMORY, 1)]);
    let head = s.vqs[2].push(&s.mem, &[r(BUF, len)]);
    notify(&s.t, 2);
    let t = Arc::new(s.t);
    let (stop, stopped) = std::sync::mpsc::channel();
    let poller = {
        let t = t.clone();
        std::thread::spawn(move || {
            t.poll_balloon_stats(std::time::Duration::from_millis(1), &stopped)
        })
    };
    // The poller returns the held buffer at its first tick; the loop only
    // waits for that (it fails the test if it never comes).
    let mut used = None;
    for _ in 0..10_000 {
        used = s.vqs[2].pop_used(&s.mem);
        if used.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(used, Some((u32::from(head), 0)));
    stop.send(()).unwrap();
    poller.join().unwrap().unwrap();
}

#[test]
fn inflate_on_packed_rings() {
    let mem = holey_mem();
    let calls = Calls::default();
    let t = transport(device(&mem, &calls, BalloonOptions::default()), &mem);
    let mut inflate = Vq::packed(0, 8);
    let deflate = Vq::packed(1, 8);
    bring_up(&t, &[&inflate, &deflate]);
    mem.write_slice(&[0x11u8; 0x1000], GuestAddress(0x30_0000))
        .unwrap();
    let head = push_pfns(&mem, &mut inflate, BUF, &[0x300]);
    notify(&t, 0);
    assert_eq!(inflate.pop_used(&mem), Some((u32::from(head), 0)));
    assert_eq!(*calls.lock().unwrap(), [(0x30_0000, PAGE)]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_0fff)).unwrap(), 0);
}
