//! virtio-blk through the virtio-mmio transport, driven through registers
//! like a real driver.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use driver::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::blk::*;
use vmkit_virtio::device::VIRTIO_F_RING_PACKED;
use vmkit_virtio::mmio::*;
use vmkit_virtio::QueueLayout;
use vmm_sys_util::tempfile::TempFile;

const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0xf000;
const SECTORS: u64 = 64;

struct Setup {
    mem: Arc<Mem>,
    t: Transport<Block>,
    vq: Vq,
    file: File,
}

fn disk(sectors: u64) -> (File, File) {
    let f = TempFile::new().unwrap().into_file();
    f.set_len(sectors * 512).unwrap();
    let pattern: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8).collect();
    f.write_all_at(&pattern, 0).unwrap();
    let keep = f.try_clone().unwrap();
    (f, keep)
}

fn setup_with(opts: BlockOptions) -> Setup {
    setup_layout(opts, false)
}

/// A live device with queue 0 of size 8 (split), or of size 5 (packed:
/// not a power of two, and requests wrap around the ring quickly).
fn setup_layout(opts: BlockOptions, packed: bool) -> Setup {
    let (f, file) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, opts).unwrap(), &mem);
    let vq = if packed {
        Vq::packed(0, 5)
    } else {
        Vq::new(0, 8)
    };
    bring_up(&t, &[&vq]);
    let layout = t.queue_state(0).unwrap().layout();
    assert_eq!(layout == QueueLayout::Packed, packed, "{layout}");
    Setup { mem, t, vq, file }
}

fn setup() -> Setup {
    setup_with(BlockOptions::default())
}

fn header(mem: &Mem, t: u32, sector: u64) {
    mem.write_obj(t, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

impl Setup {
    /// Submits a chain, notifies, and returns (used len, status byte).
    fn submit(&mut self, bufs: &[Buf]) -> (u32, u8) {
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let head = self.vq.push(&self.mem, bufs);
        notify(&self.t, 0);
        let (id, len) = self
            .vq
            .pop_used(&self.mem)
            .expect("request completed synchronously");
        assert_eq!(id, u32::from(head));
        assert!(self.vq.pop_used(&self.mem).is_none());
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn file_sector(&self, s: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        self.file.read_exact_at(&mut b, s * 512).unwrap();
        b
    }
}

#[test]
fn identifies_as_a_v2_block_device() {
    let (f, _) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    assert_eq!(t.r32(0x0), MMIO_MAGIC);
    assert_eq!(t.r32(0x4), 2);
    assert_eq!(t.r32(0x8), 2);
    assert_eq!(t.r32(0xc), VENDOR_ID);
    let f = device_features(&t);
    assert_ne!(f & (1 << 32), 0, "VERSION_1");
    assert_ne!(f & VIRTIO_F_RING_PACKED, 0, "RING_PACKED");
    assert_ne!(f & VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
    t.w32(0x30, 0);
    assert_eq!(t.r32(0x34), u32::from(QUEUE_MAX_SIZE));
    t.w32(0x30, 1);
    assert_eq!(t.r32(0x34), 0, "no queue 1");
    // Config space: capacity (64-bit, and as two halves, and bytewise).
    let mut b8 = [0u8; 8];
    t.read(0x100, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), SECTORS);
    assert_eq!(t.r32(0x100), SECTORS as u32);
    assert_eq!(t.r32(0x104), 0);
    let mut b1 = [0u8; 1];
    t.read(0x100, &mut b1);
    assert_eq!(b1[0], SECTORS as u8);
    assert_eq!(t.r32(0x10c), SEG_MAX);
    assert_eq!(t.r32(0x114), 512);
    // Beyond the config space: zeros; writes ignored.
    assert_eq!(t.r32(0x200), 0);
    assert_eq!(t.r32(0xffc), 0);
    t.w32(0x100, 7);
    assert_eq!(t.r32(0x100), SECTORS as u32);
    assert_eq!(t.invalid_accesses(), 0);
}

#[test]
fn non_32_bit_register_accesses_are_refused() {
    let (f, _) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    let mut b2 = [0xffu8; 2];
    t.read(0x0, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    t.read(0x2, &mut b4);
    assert_eq!(b4, [0; 4]);
    t.write(0x70, &[1]);
    assert_eq!(t.r32(0x70), 0);
    let mut b3 = [0xffu8; 3];
    t.read(0x100, &mut b3);
    assert_eq!(b3, [0; 3]);
    let mut empty = [0u8; 0];
    t.read(0x0, &mut empty);
    t.read(u64::MAX, &mut b4);
    assert_eq!(b4, [0; 4]);
    assert_eq!(t.invalid_accesses(), 5);
    // Unknown register, read-only register write.
    assert_eq!(t.r32(0xf0), 0);
    t.w32(0x0, 1);
    assert_eq!(t.invalid_accesses(), 7);
    assert!(matches!(
        t.take_error(),
        Some(MmioError::InvalidAccess {
            offset: 0,
            write: true,
            ..
        })
    ));
}

#[test]
fn refuses_features_not_offered_and_missing_version_1() {
    let (f, _) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    // SIZE_MAX (bit 1) is not offered.
    assert!(!negotiate(&t, (1 << 32) | 2));
    assert!(matches!(
        t.take_error(),
        Some(MmioError::FeaturesNotOffered { .. })
    ));
    // DRIVER_OK without FEATURES_OK is refused.
    driver_ok(&t);
    assert_eq!(t.r32(0x70) & STATUS_DRIVER_OK, 0);
    // A legacy driver (no VERSION_1).
    assert!(!negotiate(&t, VIRTIO_BLK_F_FLUSH));
    assert!(matches!(
        t.take_error(),
        Some(MmioError::VersionNotAccepted { .. })
    ));
    // Features above bit 63.
    t.w32(0x70, 0);
    t.w32(0x70, 3);
    t.w32(0x24, 1);
    t.w32(0x20, 1);
    t.w32(0x24, 2);
    t.w32(0x20, 1);
    t.w32(0x70, 3 | STATUS_FEATURES_OK);
    assert_eq!(t.r32(0x70) & STATUS_FEATURES_OK, 0);
    // Everything offered is accepted; feature writes after FEATURES_OK are ignored.
    let all = device_features(&t);
    assert!(negotiate(&t, all));
    assert_eq!(t.driver_features(), all);
    t.w32(0x24, 0);
    t.w32(0x20, 0);
    assert_eq!(t.driver_features(), all);
    // Clearing a status bit without a reset is refused.
    t.w32(0x70, STATUS_ACKNOWLEDGE);
    assert_ne!(t.r32(0x70) & STATUS_FEATURES_OK, 0);
    // DRIVER before ACKNOWLEDGE is refused.
    t.w32(0x70, 0);
    t.w32(0x70, STATUS_DRIVER);
    assert_eq!(t.r32(0x70), 0);
}

#[test]
fn queue_setup_is_validated() {
    let (f, _) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    let cases: [(&str, u32, u64, u64, u64); 7] = [
        ("size not a power of two", 3, 0x1_0000, 0x1_1000, 0x1_2000),
        ("size above max", 512, 0x1_0000, 0x1_1000, 0x1_2000),
        ("size zero", 0, 0x1_0000, 0x1_1000, 0x1_2000),
        ("size above 16 bits", 0x1_0008, 0x1_0000, 0x1_1000, 0x1_2000),
        (
            "misaligned descriptor table",
            8,
            0x1_0008,
            0x1_1000,
            0x1_2000,
        ),
        (
            "used ring outside memory",
            8,
            0x1_0000,
            0x1_1000,
            MEM_SIZE as u64 - 8,
        ),
        ("avail ring wraps", 8, 0x1_0000, u64::MAX - 1, 0x1_2000),
    ];
    for (what, num, desc, avail, used) in cases {
        assert!(negotiate(&t, 1 << 32), "{what}");
        t.w32(0x30, 0);
        t.w32(0x38, num);
        for (off, a) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            t.w32(off, a as u32);
            t.w32(off + 4, (a >> 32) as u32);
        }
        t.w32(0x44, 1);
        assert_eq!(t.r32(0x44), 0, "{what}: queue must not become ready");
        assert_ne!(t.r32(0x70) & STATUS_NEEDS_RESET, 0, "{what}");
        let e = t.take_error().expect("error recorded");
        assert!(
            matches!(
                e,
                MmioError::QueueSetup { .. } | MmioError::QueueNumTooLarge { .. }
            ),
            "{what}: {e}"
        );
        // Reset clears NEEDS_RESET.
        t.w32(0x70, 0);
        assert_eq!(t.r32(0x70), 0);
    }
    // QueueSel beyond the queues: writes refused.
    assert!(negotiate(&t, 1 << 32));
    t.w32(0x30, 5);
    t.w32(0x38, 8);
    assert!(matches!(
        t.take_error(),
        Some(MmioError::QueueSelOutOfRange { index: 5, .. })
    ));
    // Writes while ready are ignored.
    let vq = Vq::new(0, 8);
    assert!(setup_queue(&t, &vq));
    t.w32(0x38, 4);
    t.w32(0x80, 0x5000);
    assert!(matches!(
        t.take_error(),
        Some(MmioError::QueueConfigWhileReady { index: 0, .. })
    ));
    assert_eq!(t.queue_state(0).unwrap().size(), 8);
    assert_eq!(t.queue_state(0).unwrap().areas()[0], vq.desc);
}

#[test]
fn write_then_read_back() {
    write_then_read_back_on(false);
}

#[test]
fn write_then_read_back_on_packed_rings() {
    write_then_read_back_on(true);
}

fn write_then_read_back_on(packed: bool) {
    let mut s = setup_layout(BlockOptions::default(), packed);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    s.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    header(&s.mem, VIRTIO_BLK_T_OUT, 10);
    let (len, st) = s.submit(&[r(HDR, 16), r(DATA, 1024), w(STATUS, 1)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    assert_eq!(s.file_sector(10), data[..512]);
    assert_eq!(s.file_sector(11), data[512..]);
    assert_eq!(s.file_sector(12), vec![12u8; 512]);

    // Read three sectors back into two buffers.
    s.mem
        .write_slice(&[0u8; 2048], GuestAddress(DATA + 0x2000))
        .unwrap();
    header(&s.mem, VIRTIO_BLK_T_IN, 9);
    let (len, st) = s.submit(&[
        r(HDR, 16),
        w(DATA + 0x2000, 512),
        w(DATA + 0x3000, 1024),
        w(STATUS, 1),
    ]);
    assert_eq!((len, st), (1536 + 1, VIRTIO_BLK_S_OK));
    let mut got = vec![0u8; 512];
    s.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x2000))
        .unwrap();
    assert_eq!(got, vec![9u8; 512]);
    let mut got = vec![0u8; 1024];
    s.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(got, data);

    // The last sector is reachable.
    header(&s.mem, VIRTIO_BLK_T_IN, SECTORS - 1);
    let (len, st) = s.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
    assert_eq!(s.t.with_device(|d| d.stats().ok), 3);
}

#[test]
fn header_and_status_may_share_descriptors_with_data() {
    header_and_status_may_share_descriptors_with_data_on(false);
}

#[test]
fn header_and_status_may_share_descriptors_with_data_on_packed_rings() {
    header_and_status_may_share_descriptors_with_data_on(true);
}

fn header_and_status_may_share_descriptors_with_data_on(packed: bool) {
    let mut s = setup_layout(BlockOptions::default(), packed);
    // Header + data in one readable descriptor.
    header(&s.mem, VIRTIO_BLK_T_OUT, 3);
    s.mem
        .write_slice(&[0xabu8; 512], GuestAddress(HDR + 16))
        .unwrap();
    let (len, st) = s.submit(&[r(HDR, 16 + 512), w(STATUS, 1)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    assert_eq!(s.file_sector(3), vec![0xab; 512]);
    // Header split across two descriptors; data and status in one writable
    // buffer (the status is its last byte).
    header(&s.mem, VIRTIO_BLK_T_IN, 3);
    let head =
        s.vq.push(&s.mem, &[r(HDR, 5), r(HDR + 5, 11), w(STATUS - 512, 513)]);
    notify(&s.t, 0);
    assert_eq!(s.vq.pop_used(&s.mem), Some((u32::from(head), 513)));
    assert_eq!(
        s.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    let mut got = vec![0u8; 512];
    s.mem
        .read_slice(&mut got, GuestAddress(STATUS - 512))
        .unwrap();
    assert_eq!(got, vec![0xab; 512]);
    // OUT with more than the status byte writable is refused.
    header(&s.mem, VIRTIO_BLK_T_OUT, 3);
    let (len, st) = s.submit(&[r(HDR, 16 + 512), w(STATUS - 3, 4)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn flush_get_id_and_unsupported() {
    let mut s = setup_with(BlockOptions {
        read_only: false,
        id: "disk-0123456789abcde".into(),
    });
    header(&s.mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(s.submit(&[r(HDR, 16), w(STATUS, 1)]), (1, VIRTIO_BLK_S_OK));

    header(&s.mem, VIRTIO_BLK_T_GET_ID, 0);
    let (len, st) = s.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!((len, st), (21, VIRTIO_BLK_S_OK));
    let mut id = [0u8; 20];
    s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"disk-0123456789abcde");
    // A short id buffer gets a prefix.
    let (len, st) = s.submit(&[r(HDR, 16), w(DATA + 0x100, 4), w(STATUS, 1)]);
    assert_eq!((len, st), (5, VIRTIO_BLK_S_OK));

    for t in [2u32, 10, 11, 13, 14, 0xffff_ffff] {
        header(&s.mem, t, 0);
        assert_eq!(
            s.submit(&[r(HDR, 16), w(STATUS, 1)]),
            (1, VIRTIO_BLK_S_UNSUPP),
            "type {t}"
        );
    }
    assert_eq!(s.t.with_device(|d| d.stats().unsupported), 6);
    assert!(matches!(
        Block::new(
            TempFile::new().unwrap().into_file(),
            BlockOptions {
                read_only: false,
                id: "x".repeat(21)
            }
        ),
        Err(BlkError::IdTooLong { .. })
    ));
}

#[test]
fn read_only_disk_fails_writes() {
    let mut s = setup_with(BlockOptions {
        read_only: true,
        ..BlockOptions::default()
    });
    assert_ne!(s.t.device_features() & VIRTIO_BLK_F_RO, 0);
    s.mem
        .write_slice(&[0x55u8; 512], GuestAddress(DATA))
        .unwrap();
    header(&s.mem, VIRTIO_BLK_T_OUT, 1);
    assert_eq!(
        s.submit(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    assert_eq!(s.file_sector(1), vec![1u8; 512]);
    header(&s.mem, VIRTIO_BLK_T_IN, 1);
    assert_eq!(
        s.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]),
        (513, VIRTIO_BLK_S_OK)
    );
}

#[test]
fn malformed_requests_fail_with_ioerr_and_leave_the_disk_alone() {
    malformed_requests_fail_with_ioerr_and_leave_the_disk_alone_on(false);
}

#[test]
fn malformed_requests_fail_with_ioerr_and_leave_the_disk_alone_on_packed_rings() {
    malformed_requests_fail_with_ioerr_and_leave_the_disk_alone_on(true);
}

fn malformed_requests_fail_with_ioerr_and_leave_the_disk_alone_on(packed: bool) {
    let mut s = setup_layout(BlockOptions::default(), packed);
    s.mem
        .write_slice(&[0x77u8; 2048], GuestAddress(DATA))
        .unwrap();
    let before: Vec<Vec<u8>> = (0..SECTORS).map(|i| s.file_sector(i)).collect();
    let max_sector = u64::MAX / 512;
    let cases: Vec<(&str, u32, u64, Vec<Buf>)> = vec![
        (
            "header of 8 bytes",
            VIRTIO_BLK_T_OUT,
            0,
            vec![r(HDR, 8), w(STATUS, 1)],
        ),
        (
            "header of 15 bytes then data",
            VIRTIO_BLK_T_IN,
            0,
            vec![r(HDR, 15), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "IN with readable data",
            VIRTIO_BLK_T_IN,
            0,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (
            "OUT with writable data",
            VIRTIO_BLK_T_OUT,
            0,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "OUT with readable and writable data",
            VIRTIO_BLK_T_OUT,
            0,
            vec![r(HDR, 16), r(DATA, 512), w(DATA + 512, 512), w(STATUS, 1)],
        ),
        (
            "FLUSH with data",
            VIRTIO_BLK_T_FLUSH,
            0,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (
            "GET_ID with readable data",
            VIRTIO_BLK_T_GET_ID,
            0,
            vec![r(HDR, 16), r(DATA, 20), w(STATUS, 1)],
        ),
        (
            "unaligned OUT length",
            VIRTIO_BLK_T_OUT,
            0,
            vec![r(HDR, 16), r(DATA, 100), w(STATUS, 1)],
        ),
        (
            "unaligned IN length",
            VIRTIO_BLK_T_IN,
            0,
            vec![r(HDR, 16), w(DATA, 513), w(STATUS, 1)],
        ),
        (
            "OUT past the end",
            VIRTIO_BLK_T_OUT,
            SECTORS - 1,
            vec![r(HDR, 16), r(DATA, 1024), w(STATUS, 1)],
        ),
        (
            "OUT at the capacity",
            VIRTIO_BLK_T_OUT,
            SECTORS,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (
            "IN far out of range",
            VIRTIO_BLK_T_IN,
            1 << 40,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "sector * 512 overflows",
            VIRTIO_BLK_T_OUT,
            max_sector + 1,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (
            "sector * 512 + len overflows",
            VIRTIO_BLK_T_OUT,
            max_sector,
            vec![r(HDR, 16), r(DATA, 1024), w(STATUS, 1)],
        ),
        (
            "sector u64::MAX",
            VIRTIO_BLK_T_IN,
            u64::MAX,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
    ];
    for (what, t, sector, bufs) in cases {
        header(&s.mem, t, sector);
        assert_eq!(s.submit(&bufs), (1, VIRTIO_BLK_S_IOERR), "{what}");
    }
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&s.file_sector(i as u64), b, "sector {i} changed");
    }
    // The device still works.
    header(&s.mem, VIRTIO_BLK_T_IN, 5);
    assert_eq!(
        s.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]),
        (513, VIRTIO_BLK_S_OK)
    );
    assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn requests_without_a_usable_status_are_returned_unused() {
    requests_without_a_usable_status_are_returned_unused_on(false);
}

#[test]
fn requests_without_a_usable_status_are_returned_unused_on_packed_rings() {
    requests_without_a_usable_status_are_returned_unused_on(true);
}

fn requests_without_a_usable_status_are_returned_unused_on(packed: bool) {
    let mut s = setup_layout(BlockOptions::default(), packed);
    let before = s.file_sector(0);
    s.mem
        .write_slice(&[0x66u8; 512], GuestAddress(DATA))
        .unwrap();
    header(&s.mem, VIRTIO_BLK_T_OUT, 0);
    let cases: Vec<(&str, Vec<Buf>)> = vec![
        ("header only", vec![r(HDR, 16)]),
        (
            "status read-only",
            vec![r(HDR, 16), r(DATA, 512), r(STATUS, 1)],
        ),
        ("status empty", vec![r(HDR, 16), r(DATA, 512), w(STATUS, 0)]),
    ];
    for (what, bufs) in cases {
        assert_eq!(s.submit(&bufs), (0, 0xee), "{what}: status untouched");
    }
    // A chain the queue rejects: a buffer outside guest memory.
    assert_eq!(
        s.submit(&[r(HDR, 16), r(MEM_SIZE as u64 - 256, 512), w(STATUS, 1)]),
        (0, 0xee)
    );
    assert_eq!(s.file_sector(0), before);
    assert_eq!(s.t.with_device(|d| d.stats().dropped), 4);
    assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0);
}

/// A backend whose every operation fails.
struct Broken;

impl BlockBackend for Broken {
    fn read_at(&mut self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("read failed"))
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("write failed"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("flush failed"))
    }
}

#[test]
fn io_errors_reach_the_guest() {
    let mem = mem();
    let blk = Block::with_backend(Broken, SECTORS * 512, BlockOptions::default()).unwrap();
    let t = transport(blk, &mem);
    let mut vq = Vq::new(0, 8);
    bring_up(&t, &[&vq]);
    for (ty, bufs) in [
        (
            VIRTIO_BLK_T_IN,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            VIRTIO_BLK_T_OUT,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (VIRTIO_BLK_T_FLUSH, vec![r(HDR, 16), w(STATUS, 1)]),
    ] {
        header(&mem, ty, 0);
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        vq.push(&mem, &bufs);
        notify(&t, 0);
        assert_eq!(vq.pop_used(&mem).map(|u| u.1), Some(1), "type {ty}");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
    }
    assert_eq!(t.with_device(|d| d.stats().io_errors), 3);
}

#[test]
fn writes_are_flushed_when_flush_is_not_negotiated() {
    // The guest driver's path: VERSION_1 only, queue of 8, polling.
    let mut s = setup();
    assert_eq!(s.t.driver_features(), 1 << 32);
    s.mem
        .write_slice(&[0x42u8; 512], GuestAddress(DATA))
        .unwrap();
    header(&s.mem, VIRTIO_BLK_T_OUT, 7);
    assert_eq!(
        s.submit(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(s.file_sector(7), vec![0x42; 512]);
}

#[test]
fn interrupts_are_raised_and_acknowledged() {
    interrupts_are_raised_and_acknowledged_on(false);
}

#[test]
fn interrupts_are_raised_and_acknowledged_on_packed_rings() {
    interrupts_are_raised_and_acknowledged_on(true);
}

fn interrupts_are_raised_and_acknowledged_on(packed: bool) {
    let mut s = setup_layout(BlockOptions::default(), packed);
    header(&s.mem, VIRTIO_BLK_T_IN, 0);
    s.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(s.t.r32(0x60), INT_USED_BUFFER);
    assert_eq!(s.t.interrupt_evt().read().unwrap(), 1);
    s.t.w32(0x64, INT_USED_BUFFER);
    assert_eq!(s.t.r32(0x60), 0);
    // VIRTQ_AVAIL_F_NO_INTERRUPT (split: avail.flags) or
    // RING_EVENT_FLAGS_DISABLE (packed: the driver area's flags) suppresses it.
    let flags = s.vq.avail + if packed { 2 } else { 0 };
    s.mem.write_obj(1u16, GuestAddress(flags)).unwrap();
    s.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(s.t.r32(0x60), 0);
    assert!(s.t.interrupt_evt().read().is_err(), "no signal");
}

#[test]
fn event_idx_and_indirect_descriptors() {
    let (f, file) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    // Everything but the packed layout: this driver speaks split rings.
    let all = device_features(&t) & !VIRTIO_F_RING_PACKED;
    assert!(negotiate(&t, all));
    let mut vq = Vq::new(0, 8);
    assert!(setup_queue(&t, &vq));
    driver_ok(&t);
    // An indirect table at 0x30000: header, data, status.
    let table = 0x3_0000u64;
    let descs = [
        (HDR, 16u32, 1u16, 1u16),
        (DATA, 512, 1, 2),
        (STATUS, 1, 2, 0),
    ];
    for (i, (a, l, fl, n)) in descs.iter().enumerate() {
        let at = table + 16 * i as u64;
        mem.write_obj(*a, GuestAddress(at)).unwrap();
        mem.write_obj(*l, GuestAddress(at + 8)).unwrap();
        mem.write_obj(*fl, GuestAddress(at + 12)).unwrap();
        mem.write_obj(*n, GuestAddress(at + 14)).unwrap();
    }
    mem.write_slice(&[0x99u8; 512], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 2);
    // used_event = 0: interrupt after the first used entry.
    mem.write_obj(0u16, GuestAddress(vq.avail + 4 + 2 * 8))
        .unwrap();
    let head = vq.push(&mem, &[r(table, 48)]);
    let at = vq.desc + 16 * u64::from(head);
    mem.write_obj(4u16, GuestAddress(at + 12)).unwrap(); // INDIRECT
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem), Some((u32::from(head), 1)));
    assert_eq!(t.r32(0x60), INT_USED_BUFFER);
    let mut b = vec![0u8; 512];
    file.read_exact_at(&mut b, 1024).unwrap();
    assert_eq!(b, vec![0x99; 512]);
    // avail_event was published for the driver.
    let avail_event: u16 = mem.read_obj(GuestAddress(vq.used + 4 + 8 * 8)).unwrap();
    assert_eq!(avail_event, 1);
}

#[test]
fn a_broken_queue_needs_reset_and_recovers_after_reset() {
    let mut s = setup();
    // avail.idx jumps by more than the queue size.
    s.mem
        .write_obj(100u16, GuestAddress(s.vq.avail + 2))
        .unwrap();
    notify(&s.t, 0);
    assert_ne!(s.t.status() & STATUS_NEEDS_RESET, 0);
    assert_ne!(s.t.r32(0x60) & INT_CONFIG_CHANGE, 0);
    assert_eq!(s.t.r32(0xfc), 1, "config generation bumped");
    assert!(matches!(
        s.t.take_error(),
        Some(MmioError::Device(vmkit_virtio::DeviceError::Queue {
            index: 0,
            ..
        }))
    ));
    // Further notifications are ignored.
    assert!(!s.t.process_queue(0).unwrap());
    // Reset and start over.
    s.t.w32(0x70, 0);
    assert_eq!(s.t.status(), 0);
    assert_eq!(s.t.r32(0x60), 0);
    s.t.w32(0x30, 0);
    assert_eq!(s.t.r32(0x44), 0, "queue not ready after reset");
    s.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(s.vq.desc))
        .unwrap();
    s.vq = Vq::new(0, 8);
    bring_up(&s.t, &[&s.vq]);
    header(&s.mem, VIRTIO_BLK_T_IN, 4);
    assert_eq!(
        s.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]),
        (513, VIRTIO_BLK_S_OK)
    );
}

#[test]
fn notifications_before_driver_ok_and_for_missing_queues() {
    let (f, _) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    let mut vq = Vq::new(0, 8);
    assert!(negotiate(&t, 1 << 32));
    assert!(setup_queue(&t, &vq));
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    vq.push(&mem, &[r(HDR, 16), w(STATUS, 1)]);
    notify(&t, 0);
    assert!(
        vq.pop_used(&mem).is_none(),
        "not processed before DRIVER_OK"
    );
    driver_ok(&t);
    assert_eq!(vq.pop_used(&mem), Some((0, 1)), "processed at DRIVER_OK");
    notify(&t, 7);
    assert!(matches!(
        t.take_error(),
        Some(MmioError::NoSuchQueue { index: 7, count: 1 })
    ));
    assert!(t.process_queue(3).is_err());
    // FAILED stops the device.
    t.w32(0x70, t.r32(0x70) | STATUS_FAILED);
    vq.push(&mem, &[r(HDR, 16), w(STATUS, 1)]);
    notify(&t, 0);
    assert!(vq.pop_used(&mem).is_none());
}

#[test]
fn works_on_a_vm_device_bus_and_from_a_worker_thread() {
    use vm_device::bus::{MmioAddress, MmioRange};
    use vm_device::device_manager::{IoManager, MmioManager};

    let (f, file) = disk(SECTORS);
    let mem = mem();
    let t = Arc::new(transport(
        Block::new(f, BlockOptions::default()).unwrap(),
        &mem,
    ));
    let mut bus = IoManager::new();
    let base = 0xd100_0000u64;
    bus.register_mmio(
        MmioRange::new(MmioAddress(base), MMIO_REGION_SIZE).unwrap(),
        t.clone(),
    )
    .unwrap();
    let mut b = [0u8; 4];
    bus.mmio_read(MmioAddress(base), &mut b).unwrap();
    assert_eq!(&b, b"virt");
    bus.mmio_read(MmioAddress(base + 8), &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 2);

    // Bring up through the transport, then notify from another thread as an
    // ioeventfd worker would.
    let mut vq = Vq::new(0, 8);
    bring_up(&*t, &[&vq]);
    mem.write_slice(&[0x31u8; 512], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    vq.push(&mem, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
    let worker = {
        let t = t.clone();
        std::thread::spawn(move || t.process_queue(0).unwrap())
    };
    assert!(worker.join().unwrap());
    assert_eq!(vq.pop_used(&mem), Some((0, 1)));
    let mut sec = vec![0u8; 512];
    file.read_exact_at(&mut sec, 0).unwrap();
    assert_eq!(sec, vec![0x31; 512]);
    // A QueueNotify through the bus.
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    vq.push(&mem, &[r(HDR, 16), w(STATUS, 1)]);
    bus.mmio_write(MmioAddress(base + NOTIFY_OFFSET), &0u32.to_le_bytes())
        .unwrap();
    assert_eq!(vq.pop_used(&mem), Some((3, 1)));
}

/// The sequence of the minimal guest's driver (guests/src/minimal.S):
/// reset, VERSION_1 (+ FLUSH when offered), queue 0 of 8 entries with
/// NO_INTERRUPT, every request a chain with head 0, polled right after
/// the QueueNotify write.
#[test]
fn minimal_guest_driver_sequence() {
    let (f, file) = disk(SECTORS);
    let mem = mem();
    let t = transport(Block::new(f, BlockOptions::default()).unwrap(), &mem);
    let vq = Vq::new(0, 8);
    t.w32(0x70, 0);
    assert_eq!(t.r32(0x70), 0);
    t.w32(0x14, 0);
    let flush = t.r32(0x10) & (VIRTIO_BLK_F_FLUSH as u32);
    assert!(negotiate(&t, (1 << 32) | u64::from(flush)));
    t.w32(0x30, 0);
    assert_eq!(t.r32(0x44), 0);
    assert!(t.r32(0x34) >= 8);
    mem.write_obj(1u16, GuestAddress(vq.avail)).unwrap(); // NO_INTERRUPT
    assert!(setup_queue(&t, &vq));
    driver_ok(&t);
    assert_eq!(t.r32(0x70) & STATUS_NEEDS_RESET, 0);
    let gen = t.r32(0xfc);
    let cap = u64::from(t.r32(0x100)) | (u64::from(t.r32(0x104)) << 32);
    assert_eq!(gen, t.r32(0xfc));
    assert_eq!(cap, SECTORS);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (31 * i + 7) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    let mut avail_idx = 0u16;
    type Data = Option<(u64, u32, bool)>;
    let reqs: [(u32, u64, Data); 4] = [
        (VIRTIO_BLK_T_IN, 0, Some((DATA + 0x2000, 512, true))),
        (VIRTIO_BLK_T_OUT, 8, Some((DATA, 4096, false))),
        (VIRTIO_BLK_T_FLUSH, 0, None),
        (VIRTIO_BLK_T_IN, 8, Some((DATA + 0x4000, 4096, true))),
    ];
    for (ty, sector, data) in reqs {
        header(&mem, ty, sector);
        let mut descs = vec![(HDR, 16u32, 0u16)];
        if let Some((a, l, wr)) = data {
            descs.push((a, l, if wr { DESC_F_WRITE } else { 0 }));
        }
        descs.push((STATUS, 1, DESC_F_WRITE));
        let n = descs.len();
        for (i, (a, l, fl)) in descs.into_iter().enumerate() {
            let at = vq.desc + 16 * i as u64;
            let fl = if i + 1 < n { fl | DESC_F_NEXT } else { fl };
            mem.write_obj(a, GuestAddress(at)).unwrap();
            mem.write_obj(l, GuestAddress(at + 8)).unwrap();
            mem.write_obj(fl, GuestAddress(at + 12)).unwrap();
            mem.write_obj(i as u16 + 1, GuestAddress(at + 14)).unwrap();
        }
        let slot = u64::from(avail_idx % 8);
        mem.write_obj(0u16, GuestAddress(vq.avail + 4 + 2 * slot))
            .unwrap();
        avail_idx += 1;
        mem.write_obj(avail_idx, GuestAddress(vq.avail + 2))
            .unwrap();
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        notify(&t, 0);
        let used: u16 = mem.read_obj(GuestAddress(vq.used + 2)).unwrap();
        assert_eq!(used, avail_idx, "used.idx advanced synchronously");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_OK
        );
    }
    let mut back = vec![0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(DATA + 0x4000))
        .unwrap();
    assert_eq!(back, pattern);
    let mut on_disk = vec![0u8; 4096];
    file.read_exact_at(&mut on_disk, 8 * 512).unwrap();
    assert_eq!(on_disk, pattern);
    assert_eq!(t.r32(0x60), 0, "NO_INTERRUPT honoured");
}

/// A host block device's capacity is its size, although its metadata says 0 bytes: on a
/// loop device over a 64-sector file. Needs root and loop devices; without them it says so
/// and checks nothing.
#[test]
fn a_block_device_has_the_capacity_of_its_size() {
    let (backing, _) = disk(SECTORS);
    let backing_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&backing)
    );
    let attached = std::process::Command::new("losetup")
        .args(["--find", "--show", &backing_path])
        .output();
    let device = match attached {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        other => {
            eprintln!("SKIP a_block_device_has_the_capacity_of_its_size: losetup: {other:?}");
            return;
        }
    };
    let result = std::panic::catch_unwind(|| {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&device)
            .unwrap();
        assert_eq!(
            file.metadata().unwrap().len(),
            0,
            "{device} is a block device"
        );
        Block::new(file, BlockOptions::default())
            .unwrap()
            .capacity()
    });
    let detached = std::process::Command::new("losetup")
        .args(["-d", &device])
        .status();
    assert_eq!(result.unwrap(), SECTORS);
    assert!(detached.unwrap().success(), "losetup -d {device}");
}
