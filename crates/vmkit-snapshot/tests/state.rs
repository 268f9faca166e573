//! State-file round trips and one test per corrupt-input case.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vmkit_snapshot::state::{HEADER_LEN, SECTION_HEADER_LEN};
use vmkit_snapshot::{
    checksum, Arch, Backend, Expected, Flags, Header, OpenError, Part, Reader, SectionHeader,
    SectionId, SectionTag, Snapshot, SnapshotId, StateError, Writer, MAX_SECTIONS,
    MAX_SECTION_PAYLOAD, MAX_STATE_PAYLOAD,
};

const KVM_X86: Expected = Expected {
    arch: Arch::X86_64,
    backend: Backend::Kvm,
};
const CAPS: [u8; 32] = [0x5a; 32];

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Vcpu {
    regs: [u64; 4],
    msrs: Vec<(u32, u64)>,
    halted: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Device {
    Serial { lcr: u8, buffered: Vec<u8> },
    Blk { path: String, sectors: u64 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Clock {
    ns: u64,
}

fn vcpu(n: u64) -> Vcpu {
    Vcpu {
        regs: [n, n + 1, 0xffff_ffff_ffff_fff0, 0],
        msrs: vec![(0xc000_0080, 0x500), (0x10, n * 1000)],
        halted: n % 2 == 1,
    }
}

/// A small valid file: VCPU[0], VCPU[1], CLCK[0], DEVC[3].
fn sample() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    w.write_section(SectionTag::VCPU, 0, 1, &vcpu(0)).unwrap();
    w.write_section(SectionTag::VCPU, 1, 1, &vcpu(1)).unwrap();
    w.write_section(SectionTag::CLOCK, 0, 2, &Clock { ns: 123_456_789 })
        .unwrap();
    w.write_section(
        SectionTag::DEVICE,
        3,
        1,
        &Device::Blk {
            path: "/disk.img".into(),
            sectors: 2048,
        },
    )
    .unwrap();
    w.finish().unwrap()
}

/// Small two-section file used where every byte position is exercised.
fn tiny() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    w.write_section(SectionTag::VCPU, 0, 1, &vcpu(7)).unwrap();
    w.write_section(SectionTag::CLOCK, 0, 1, &Clock { ns: 42 })
        .unwrap();
    w.finish().unwrap()
}

/// (start of section header, payload length) of each section of `file`.
fn layout(file: &[u8]) -> Vec<(usize, usize, SectionId)> {
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    let mut position = 0;
    while off < file.len() {
        let b: [u8; SECTION_HEADER_LEN] = file[off..off + SECTION_HEADER_LEN].try_into().unwrap();
        let h = SectionHeader::decode(&b, position).unwrap();
        out.push((
            off,
            h.payload_len as usize,
            SectionId {
                position,
                tag: h.tag,
                index: h.index,
            },
        ));
        off += SECTION_HEADER_LEN + h.payload_len as usize;
        position += 1;
    }
    out
}

fn read(bytes: &[u8], expected: Expected) -> Result<Snapshot, StateError> {
    Reader::new(bytes, expected)?.read_all()
}

fn header_of(bytes: &[u8]) -> Header {
    Header::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap()
}

fn put_header(bytes: &mut [u8], h: &Header) {
    bytes[..HEADER_LEN].copy_from_slice(&h.encode());
}

/// Rewrites the header checksum after a deliberate edit.
fn fix_header_crc(bytes: &mut [u8]) {
    let crc = checksum(&bytes[..80]);
    bytes[80..88].copy_from_slice(&crc.to_le_bytes());
}

fn fix_section_crc(bytes: &mut [u8], start: usize) {
    let crc = checksum(&bytes[start..start + 32]);
    bytes[start + 32..start + 40].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip_several_types() {
    let bytes = sample();
    let snap = Snapshot::from_bytes(&bytes, KVM_X86).unwrap();
    let h = snap.header();
    assert_eq!((h.major, h.minor), (2, 0));
    assert_eq!(h.arch, Arch::X86_64);
    assert_eq!(h.backend, Backend::Kvm);
    assert_eq!(h.capabilities, CAPS);
    assert_eq!(h.section_count, 4);
    assert_eq!(h.file_len(), bytes.len() as u64);
    assert_eq!(snap.len(), 4);

    for n in 0..2 {
        let v: Vcpu = snap.read_section(SectionTag::VCPU, n, 1..=1).unwrap();
        assert_eq!(v, vcpu(n.into()));
    }
    let clock: Clock = snap.read_section(SectionTag::CLOCK, 0, 1..=2).unwrap();
    assert_eq!(clock.ns, 123_456_789);
    let dev: Device = snap.read_section(SectionTag::DEVICE, 3, 1..=1).unwrap();
    assert_eq!(
        dev,
        Device::Blk {
            path: "/disk.img".into(),
            sectors: 2048
        }
    );
    let idx: Vec<u32> = snap
        .instances(SectionTag::VCPU)
        .map(|s| s.index())
        .collect();
    assert_eq!(idx, [0, 1]);
    assert_eq!(snap.instances(SectionTag::QUEUE).count(), 0);
}

#[test]
fn streaming_reader_yields_sections_in_file_order() {
    let bytes = sample();
    let reader = Reader::new(&bytes[..], KVM_X86).unwrap();
    let ids: Vec<(SectionTag, u32, u16)> = reader
        .map(|s| s.map(|s| (s.tag(), s.index(), s.version())))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        ids,
        [
            (SectionTag::VCPU, 0, 1),
            (SectionTag::VCPU, 1, 1),
            (SectionTag::CLOCK, 0, 2),
            (SectionTag::DEVICE, 3, 1),
        ]
    );
}

#[test]
fn unknown_tags_are_skipped_by_not_decoding_them() {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    w.write_section(SectionTag::new(*b"ZZZZ"), 0, 9, &"from the future")
        .unwrap();
    w.write_section(SectionTag::CLOCK, 0, 1, &Clock { ns: 5 })
        .unwrap();
    let bytes = w.finish().unwrap();
    let mut reader = Reader::new(&bytes[..], KVM_X86).unwrap();
    let mut clock = None;
    while let Some(s) = reader.next_section().unwrap() {
        if s.tag() == SectionTag::CLOCK {
            clock = Some(s.decode::<Clock>(1..=1).unwrap());
        }
    }
    assert_eq!(clock, Some(Clock { ns: 5 }));
    assert!(reader.next_section().unwrap().is_none());
}

#[test]
fn section_version_outside_range_is_refused() {
    let snap = Snapshot::from_bytes(&sample(), KVM_X86).unwrap();
    let err = snap
        .read_section::<Clock>(SectionTag::CLOCK, 0, 3..=4)
        .unwrap_err();
    match err {
        StateError::UnsupportedSectionVersion {
            section,
            version,
            supported,
        } => {
            assert_eq!(
                (section.tag, section.index, section.position),
                (SectionTag::CLOCK, 0, 2)
            );
            assert_eq!(version, 2);
            assert_eq!(supported, 3..=4);
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(err_msg_has(
        &snap.read_section::<Clock>(SectionTag::CLOCK, 0, 3..=4),
        "CLCK[0]"
    ));
}

fn err_msg_has<T>(r: &Result<T, StateError>, s: &str) -> bool {
    match r {
        Err(e) => e.to_string().contains(s),
        Ok(_) => false,
    }
}

#[test]
fn missing_section_and_wrong_type() {
    let snap = Snapshot::from_bytes(&sample(), KVM_X86).unwrap();
    assert!(matches!(
        snap.read_section::<Clock>(SectionTag::VCPU, 9, 1..=1),
        Err(StateError::MissingSection {
            tag: SectionTag::VCPU,
            index: 9
        })
    ));
    // A Clock payload (one varint) read as a Vcpu: decoding fails.
    assert!(matches!(
        snap.read_section::<Vcpu>(SectionTag::CLOCK, 0, 2..=2),
        Err(StateError::Decode { section, .. }) if section.tag == SectionTag::CLOCK
    ));
    // A Vcpu payload read as a Clock: bytes left over.
    assert!(matches!(
        snap.read_section::<Clock>(SectionTag::VCPU, 0, 1..=1),
        Err(StateError::TrailingPayload { section, .. }) if section.tag == SectionTag::VCPU && section.index == 0
    ));
}

#[test]
fn newer_minor_and_optional_flags_are_accepted() {
    let mut bytes = sample();
    let mut h = header_of(&bytes);
    h.minor = 9;
    h.flags = Flags::from_bits_retain(1 << 20);
    put_header(&mut bytes, &h);
    let snap = Snapshot::from_bytes(&bytes, KVM_X86).unwrap();
    assert_eq!(snap.header().minor, 9);
    assert_eq!(snap.len(), 4);
}

#[test]
fn known_flag_round_trips() {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Xen, CAPS);
    w.set_flags(Flags::DIFF_MEMORY).unwrap();
    let bytes = w.finish().unwrap();
    let snap = Snapshot::from_bytes(
        &bytes,
        Expected {
            arch: Arch::X86_64,
            backend: Backend::Xen,
        },
    )
    .unwrap();
    assert!(snap.header().flags.contains(Flags::DIFF_MEMORY));
    assert!(snap.is_empty());
}

#[test]
fn truncated_at_every_byte_position() {
    let full = tiny();
    let sections = layout(&full);
    assert_eq!(sections.len(), 2);
    for len in 0..full.len() {
        let err = read(&full[..len], KVM_X86).unwrap_err();
        let (part, needed, got) = if len < HEADER_LEN {
            (Part::Header, HEADER_LEN, len)
        } else {
            let &(start, plen, id) = sections
                .iter()
                .rev()
                .find(|(start, _, _)| *start <= len)
                .unwrap();
            if len < start + SECTION_HEADER_LEN {
                (
                    Part::SectionHeader {
                        position: id.position,
                    },
                    SECTION_HEADER_LEN,
                    len - start,
                )
            } else {
                (Part::Payload(id), plen, len - start - SECTION_HEADER_LEN)
            }
        };
        match err {
            StateError::Truncated {
                part: p,
                needed: n,
                got: g,
            } => assert_eq!(
                (p, n, g),
                (part, needed as u64, got as u64),
                "prefix of {len} bytes"
            ),
            e => panic!("prefix of {len} bytes: unexpected {e:?}"),
        }
        // A reader over a whole byte slice sees the length mismatch at once.
        if len >= HEADER_LEN {
            assert!(matches!(
                Snapshot::from_bytes(&full[..len], KVM_X86),
                Err(StateError::LengthMismatch { declared, actual })
                    if declared == full.len() as u64 && actual == len as u64
            ));
        }
    }
    read(&full, KVM_X86).unwrap();
}

#[test]
fn flipped_bit_in_header() {
    let good = tiny();
    // Bytes 10.. (everything after magic and major) are only caught by the
    // checksum; the checksum field itself too.
    for byte in 10..HEADER_LEN {
        for bit in 0..8 {
            let mut bytes = good.clone();
            bytes[byte] ^= 1 << bit;
            match read(&bytes, KVM_X86) {
                Err(StateError::HeaderChecksum { stored, computed }) => {
                    assert_ne!(stored, computed)
                }
                other => panic!("byte {byte} bit {bit}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn flipped_bit_in_section_header() {
    let good = tiny();
    let (start, _, _) = layout(&good)[1];
    for byte in start..start + SECTION_HEADER_LEN {
        for bit in 0..8 {
            let mut bytes = good.clone();
            bytes[byte] ^= 1 << bit;
            match read(&bytes, KVM_X86) {
                Err(StateError::SectionHeaderChecksum { section, .. }) => {
                    assert_eq!(section.position, 1, "byte {byte} bit {bit}")
                }
                other => panic!("byte {byte} bit {bit}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn flipped_bit_in_payload_names_the_section() {
    let good = tiny();
    for &(start, plen, id) in &layout(&good) {
        for byte in start + SECTION_HEADER_LEN..start + SECTION_HEADER_LEN + plen {
            let mut bytes = good.clone();
            bytes[byte] ^= 0x10;
            match read(&bytes, KVM_X86) {
                Err(e @ StateError::SectionChecksum { section, .. }) => {
                    assert_eq!(section, id);
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{}[{}]", id.tag, id.index)), "{msg}");
                }
                other => panic!("byte {byte}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn wrong_magic() {
    let mut bytes = tiny();
    bytes[0..8].copy_from_slice(b"NOTASNAP");
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::BadMagic { found }) if &found == b"NOTASNAP"
    ));
    // Even a short file with a wrong magic is called that, not truncated.
    assert!(matches!(
        read(&bytes[..20], KVM_X86),
        Err(StateError::BadMagic { .. })
    ));
}

#[test]
fn newer_major_version() {
    let mut bytes = tiny();
    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    // Refused as a newer version whether or not the checksum still matches
    // (a newer major may have moved it).
    for fix in [false, true] {
        let mut b = bytes.clone();
        if fix {
            fix_header_crc(&mut b);
        }
        assert!(matches!(
            read(&b, KVM_X86),
            Err(StateError::UnsupportedMajor {
                found: 3,
                supported: 2
            })
        ));
    }
}

#[test]
fn wrong_architecture() {
    let mut bytes = tiny();
    let mut h = header_of(&bytes);
    h.arch = Arch::Aarch64;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::ArchMismatch {
            expected: Arch::X86_64,
            found: Arch::Aarch64
        })
    ));
    // An architecture value this reader does not know at all.
    bytes[12..14].copy_from_slice(&77u16.to_le_bytes());
    fix_header_crc(&mut bytes);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::UnknownArch(77))
    ));
}

#[test]
fn wrong_backend() {
    let mut bytes = tiny();
    let mut h = header_of(&bytes);
    h.backend = Backend::Xen;
    put_header(&mut bytes, &h);
    let err = read(&bytes, KVM_X86).unwrap_err();
    assert!(matches!(
        err,
        StateError::BackendMismatch {
            expected: Backend::Kvm,
            found: Backend::Xen
        }
    ));
    assert_eq!(
        err.to_string(),
        "backend mismatch: expected KVM, file is Xen"
    );
    bytes[14..16].copy_from_slice(&0u16.to_le_bytes());
    fix_header_crc(&mut bytes);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::UnknownBackend(0))
    ));
}

#[test]
fn unknown_must_understand_flag() {
    let mut bytes = tiny();
    let mut h = header_of(&bytes);
    h.flags = Flags::from_bits_retain(Flags::DIFF_MEMORY.bits() | 1 << 5);
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::UnknownFlags { bits: 0x20 })
    ));
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    assert!(matches!(
        w.set_flags(Flags::from_bits_retain(1 << 15)),
        Err(StateError::UnknownFlags { bits: 0x8000 })
    ));
}

#[test]
fn section_length_over_the_limit() {
    let mut bytes = tiny();
    let (start, _, id) = layout(&bytes)[1];
    bytes[start + 16..start + 24].copy_from_slice(&(MAX_SECTION_PAYLOAD + 1).to_le_bytes());
    fix_section_crc(&mut bytes, start);
    match read(&bytes, KVM_X86) {
        Err(StateError::SectionTooLarge { section, len, max }) => {
            assert_eq!(section, id);
            assert_eq!((len, max), (MAX_SECTION_PAYLOAD + 1, MAX_SECTION_PAYLOAD));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn writer_refuses_section_over_the_limit() {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    let big = vec![0u8; MAX_SECTION_PAYLOAD as usize + 1];
    assert!(matches!(
        w.write_raw_section(SectionTag::DEVICE, 0, 1, &big),
        Err(StateError::SectionTooLarge { section, .. }) if section.tag == SectionTag::DEVICE
    ));
}

#[test]
fn section_length_beyond_the_payload() {
    let mut bytes = tiny();
    let (start, plen, id) = layout(&bytes)[0];
    // The payload claims more than what is left of the whole state payload.
    let remaining = (bytes.len() - start - SECTION_HEADER_LEN) as u64;
    bytes[start + 16..start + 24].copy_from_slice(&(remaining + 1).to_le_bytes());
    fix_section_crc(&mut bytes, start);
    match read(&bytes, KVM_X86) {
        Err(StateError::SectionBeyondPayload {
            section,
            len,
            remaining: r,
        }) => {
            assert_eq!(section, id);
            assert_eq!((len, r), (remaining + 1, remaining));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(plen > 0);
}

#[test]
fn section_length_beyond_the_file() {
    // Header and section agree on a length the file does not have: the file
    // is cut short after its last section header.
    let mut bytes = tiny();
    let (start, plen, id) = layout(&bytes)[0];
    bytes.truncate(start + SECTION_HEADER_LEN + 3);
    match read(&bytes, KVM_X86) {
        Err(StateError::Truncated { part, needed, got }) => {
            assert_eq!(part, Part::Payload(id));
            assert_eq!((needed, got), (plen as u64, 3));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn too_many_sections() {
    let mut bytes = tiny();
    let mut h = header_of(&bytes);
    h.section_count = MAX_SECTIONS + 1;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::TooManySections { count, max: MAX_SECTIONS }) if count == u64::from(MAX_SECTIONS) + 1
    ));
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    for i in 0..MAX_SECTIONS {
        w.write_raw_section(SectionTag::QUEUE, i, 1, &[]).unwrap();
    }
    assert!(matches!(
        w.write_raw_section(SectionTag::QUEUE, MAX_SECTIONS, 1, &[]),
        Err(StateError::TooManySections { .. })
    ));
    // The largest allowed count reads back.
    let bytes = w.finish().unwrap();
    assert_eq!(
        Snapshot::from_bytes(&bytes, KVM_X86).unwrap().len(),
        MAX_SECTIONS as usize
    );
}

#[test]
fn header_payload_length_checks() {
    let mut bytes = tiny();
    let mut h = header_of(&bytes);
    h.payload_len = MAX_STATE_PAYLOAD + 1;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::PayloadTooLarge { len, max: MAX_STATE_PAYLOAD }) if len == MAX_STATE_PAYLOAD + 1
    ));
    h.payload_len = 2 * SECTION_HEADER_LEN as u64 - 1;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::PayloadTooShort {
            section_count: 2,
            ..
        })
    ));
    // Sections end before the declared payload length.
    let good = tiny();
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[0; 8]);
    let mut h = header_of(&bytes);
    h.payload_len += 8;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::PayloadLenMismatch { declared, used })
            if declared == used + 8
    ));
    // The header does not leave room for the next section header.
    let mut bytes = sample();
    let mut h = header_of(&bytes);
    h.section_count = 5;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::SectionHeaderOutsidePayload {
            position: 4,
            needed: 40,
            remaining: 0
        })
    ));
}

#[test]
fn trailing_data() {
    let mut bytes = tiny();
    let len = bytes.len() as u64;
    bytes.push(0);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::TrailingData { offset }) if offset == len
    ));
}

#[test]
fn duplicate_sections() {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    w.write_section(SectionTag::VCPU, 0, 1, &vcpu(0)).unwrap();
    assert!(matches!(
        w.write_section(SectionTag::VCPU, 0, 1, &vcpu(0)),
        Err(StateError::DuplicateSection { section }) if section.position == 1
    ));
    // Forge a file that repeats a section: the reader refuses it too.
    let good = tiny();
    let (start, plen, _) = layout(&good)[0];
    let sec = &good[start..start + SECTION_HEADER_LEN + plen];
    let mut bytes = good[..HEADER_LEN].to_vec();
    bytes.extend_from_slice(sec);
    bytes.extend_from_slice(sec);
    let mut h = header_of(&bytes);
    h.payload_len = 2 * sec.len() as u64;
    put_header(&mut bytes, &h);
    assert!(matches!(
        read(&bytes, KVM_X86),
        Err(StateError::DuplicateSection { section }) if section.position == 1 && section.tag == SectionTag::VCPU
    ));
}

#[test]
fn reader_stops_after_an_error() {
    let mut bytes = tiny();
    let (start, _, _) = layout(&bytes)[0];
    bytes[start + SECTION_HEADER_LEN] ^= 1;
    let mut r = Reader::new(&bytes[..], KVM_X86).unwrap();
    assert!(matches!(
        r.next_section(),
        Err(StateError::SectionChecksum { .. })
    ));
    assert!(matches!(r.next_section(), Err(StateError::Poisoned)));
    let mut r = Reader::new(&bytes[..], KVM_X86).unwrap();
    assert!(r.next().unwrap().is_err());
    assert!(r.next().is_none());
}

#[test]
fn open_checks_the_file_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let bytes = sample();
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(
        Snapshot::open(&path, KVM_X86),
        Err(StateError::LengthMismatch { declared, actual })
            if declared == bytes.len() as u64 && actual == declared - 1
    ));
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Snapshot::open(&path, KVM_X86).unwrap().len(), 4);
}

#[test]
fn header_layout_is_as_documented() {
    let bytes = tiny();
    assert_eq!(&bytes[0..8], b"VMKITSNP");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2);
    assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 1); // x86_64
    assert_eq!(u16::from_le_bytes([bytes[14], bytes[15]]), 1); // KVM
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 2);
    assert_eq!(
        u64::from_le_bytes(bytes[24..32].try_into().unwrap()),
        (bytes.len() - HEADER_LEN) as u64
    );
    assert_eq!(&bytes[32..64], &CAPS);
    assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 4], b"VCPU");
    let tags: BTreeMap<String, u32> = layout(&bytes)
        .iter()
        .map(|(_, _, id)| (id.tag.to_string(), id.index))
        .collect();
    assert_eq!(tags.len(), 2);
    assert_eq!(SectionTag(0x0102_0304).to_string(), "0x01020304");
}

#[test]
fn the_snapshot_identity_is_in_the_header() {
    let id = SnapshotId([0x11; 16]);
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, CAPS);
    w.set_snapshot_id(id);
    w.write_section(SectionTag::VCPU, 0, 1, &vcpu(0)).unwrap();
    let bytes = w.finish().unwrap();
    assert_eq!(&bytes[64..80], &id.0);
    assert_eq!(header_of(&bytes).snapshot_id, id);
    // Without one, the header says none.
    assert!(header_of(&tiny()).snapshot_id.is_none());
    // Corrupting it is caught by the header checksum.
    let mut b = bytes.clone();
    b[70] ^= 1;
    assert!(matches!(
        read(&b, KVM_X86),
        Err(StateError::HeaderChecksum { .. })
    ));
}

#[test]
fn format_1_files_are_refused_with_their_version() {
    // A format-1 header: 72 bytes, no identity; the version is read before anything else.
    let mut bytes = tiny();
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    for len in [bytes.len(), 72, 10] {
        let err = read(&bytes[..len], KVM_X86).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::UnsupportedMajor {
                    found: 1,
                    supported: 2
                }
            ),
            "{len} bytes: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            "state file format 1.x is not supported: this reader reads format 2.x only"
        );
    }
}

#[test]
fn a_fifo_in_place_of_the_state_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    // With no writer, a blocking open would never return: bound the wait.
    let (tx, rx) = std::sync::mpsc::channel();
    let opener = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Snapshot::open(&opener, KVM_X86).map(|_| ()));
    });
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("opening a FIFO blocked");
    let err = result.unwrap_err();
    assert!(
        matches!(err, StateError::Open(OpenError::NotARegularFile("FIFO"))),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "it is a FIFO, not a regular file");
    // A directory is refused the same way.
    let err = Snapshot::open(dir.path(), KVM_X86).unwrap_err();
    assert!(matches!(
        err,
        StateError::Open(OpenError::NotARegularFile("directory"))
    ));
}
