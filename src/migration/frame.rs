//! Framing: the migration stream is a sequence of frames, each a vmkit-snapshot section
//! header followed by its payload.
//!
//! A frame header is a [`SectionHeader`] ([`SECTION_HEADER_LEN`] = 40 bytes, its own
//! checksum included): the tag says what the frame is ([`super::wire`]), the instance index
//! is the frame's sequence number in its direction (from 0, so a lost, repeated or reordered
//! frame is noticed), the section version is the protocol version ([`PROTOCOL_VERSION`]), and
//! the payload length and CRC-64 follow the snapshot format's rules. Every header is checked
//! (checksum, version, sequence, tag, length against the tag's limit) before its payload is
//! read, and the payload's checksum before it is used; payload buffers grow with the bytes
//! actually received, so a frame that claims a large length costs nothing until the bytes
//! come.

use std::io::{self, Read, Write};

use vmkit_snapshot::state::SECTION_HEADER_LEN;
use vmkit_snapshot::{SectionHeader, SectionTag, StateError};

use super::checksum::checksum;

use super::wire;

/// The protocol version every frame carries; a destination refuses any other. Version 2
/// batches page runs (zero runs without their contents) in one frame.
pub const PROTOCOL_VERSION: u16 = 2;

/// Errors of reading or writing frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Reading or writing the stream failed.
    #[error("{op} frame #{seq}")]
    Io {
        /// "reading" or "writing".
        op: &'static str,
        /// The frame's sequence number in its direction.
        seq: u32,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The stream ended between frames.
    #[error("the stream ended before frame #{seq}")]
    Closed {
        /// The sequence number of the frame that did not come.
        seq: u32,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended inside frame #{seq}: {got} of {needed} bytes of its {part}")]
    Truncated {
        /// The frame's sequence number.
        seq: u32,
        /// "header" or "payload".
        part: &'static str,
        /// Bytes that part needs.
        needed: u64,
        /// Bytes that came.
        got: u64,
    },
    /// A frame header's checksum does not match: the header is corrupt.
    #[error("frame #{seq}: corrupt header")]
    Header {
        /// The frame's sequence number.
        seq: u32,
        /// The checksum mismatch.
        #[source]
        source: StateError,
    },
    /// A frame carries another protocol version.
    #[error("frame #{seq} is of protocol version {found}, this side speaks {supported}")]
    Version {
        /// The frame's sequence number.
        seq: u32,
        /// Its version.
        found: u16,
        /// [`PROTOCOL_VERSION`].
        supported: u16,
    },
    /// A frame's sequence number is not the next one.
    #[error("frame #{expected} expected, frame #{found} received")]
    Sequence {
        /// The next sequence number.
        expected: u32,
        /// The frame's.
        found: u32,
    },
    /// A frame's tag is not a frame type of this protocol.
    #[error("frame #{seq} has unknown tag {tag}")]
    UnknownTag {
        /// The frame's sequence number.
        seq: u32,
        /// The tag.
        tag: SectionTag,
    },
    /// A frame's payload is longer than its type allows.
    #[error("frame #{seq} ({kind}) claims {len} payload bytes, at most {max} allowed")]
    TooLong {
        /// The frame's sequence number.
        seq: u32,
        /// The frame type.
        kind: &'static str,
        /// The claimed length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame's payload does not match its checksum.
    #[error("frame #{seq} ({kind}): payload checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    Payload {
        /// The frame's sequence number.
        seq: u32,
        /// The frame type.
        kind: &'static str,
        /// The checksum in the header.
        stored: u64,
        /// The checksum of the bytes received.
        computed: u64,
    },
    /// A frame's payload does not decode as its type says.
    #[error("frame #{seq} ({kind}): {reason}")]
    Decode {
        /// The frame's sequence number.
        seq: u32,
        /// The frame type.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A payload could not be encoded.
    #[error("encoding a {kind} frame")]
    Encode {
        /// The frame type.
        kind: &'static str,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
}

/// Reads frames from a stream, checking each one.
#[derive(Debug)]
pub struct FrameReader {
    seq: u32,
    /// Kept between frames (never shrunk, so never zeroed again); the payload is its first
    /// `len` bytes.
    payload: Vec<u8>,
    len: usize,
    bytes: u64,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader expecting frame #0 next.
    pub fn new() -> Self {
        FrameReader {
            seq: 0,
            payload: Vec::new(),
            len: 0,
            bytes: 0,
        }
    }

    /// Bytes of frames read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The sequence number of the next frame.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Reads the next frame from `stream` and returns its tag and verified payload (valid
    /// until the next call).
    pub fn read<R: Read + ?Sized>(
        &mut self,
        stream: &mut R,
    ) -> Result<(SectionTag, &[u8]), FrameError> {
        let seq = self.seq;
        let mut raw = [0u8; SECTION_HEADER_LEN];
        let got = read_full(stream, &mut raw, seq)?;
        if got == 0 {
            return Err(FrameError::Closed { seq });
        }
        if got < raw.len() {
            return Err(FrameError::Truncated {
                seq,
                part: "header",
                needed: raw.len() as u64,
                got: got as u64,
            });
        }
        let header = SectionHeader::decode(&raw, seq)
            .map_err(|source| FrameError::Header { seq, source })?;
        if header.version != PROTOCOL_VERSION {
            return Err(FrameError::Version {
                seq,
                found: header.version,
                supported: PROTOCOL_VERSION,
            });
        }
        if header.index != seq {
            return Err(FrameError::Sequence {
                expected: seq,
                found: header.index,
            });
        }
        let kind = wire::kind_of(header.tag).ok_or(FrameError::UnknownTag {
            seq,
            tag: header.tag,
        })?;
        let max = wire::max_payload(header.tag);
        if header.payload_len > max {
            return Err(FrameError::TooLong {
                seq,
                kind,
                len: header.payload_len,
                max,
            });
        }
        // The buffer grows with what arrives, not with what the header claims: by at most
        // GROWTH bytes past what was read.
        const GROWTH: usize = 1 << 20;
        let len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        let mut got = 0;
        while got < len {
            let want = len.min(got.saturating_add(GROWTH));
            if self.payload.len() < want {
                self.payload.resize(want, 0);
            }
            let n = read_full(stream, &mut self.payload[got..want], seq)?;
            got += n;
            if got < want {
                return Err(FrameError::Truncated {
                    seq,
                    part: "payload",
                    needed: header.payload_len,
                    got: got as u64,
                });
            }
        }
        self.len = len;
        let payload = &self.payload[..len];
        let computed = checksum(payload);
        if computed != header.payload_checksum {
            return Err(FrameError::Payload {
                seq,
                kind,
                stored: header.payload_checksum,
                computed,
            });
        }
        self.seq = seq.wrapping_add(1);
        self.bytes += (SECTION_HEADER_LEN + len) as u64;
        Ok((header.tag, &self.payload[..self.len]))
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(
    stream: &mut R,
    buf: &mut [u8],
    seq: u32,
) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FrameError::Io {
                    op: "reading",
                    seq,
                    source,
                })
            }
        }
    }
    Ok(got)
}

/// Writes frames to a stream. A frame is assembled in one buffer (header, then payload) and
/// written with one `write_all`, so that small frames do not wait on Nagle's algorithm behind
/// their own header.
#[derive(Debug)]
pub struct FrameWriter {
    seq: u32,
    /// Header and payload; kept between frames (never shrunk, so never zeroed again).
    buf: Vec<u8>,
    /// The payload's length in `buf`.
    len: usize,
    bytes: u64,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameWriter {
    /// A writer whose next frame is #0.
    pub fn new() -> Self {
        FrameWriter {
            seq: 0,
            buf: Vec::new(),
            len: 0,
            bytes: 0,
        }
    }

    /// Bytes of frames written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A payload buffer of `len` bytes, to fill in place and then send with
    /// [`send_buffer`](Self::send_buffer). Its bytes are left over from earlier frames: the
    /// caller fills all of it (or sends less with [`send_buffer_part`](Self::send_buffer_part)).
    pub fn buffer(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < SECTION_HEADER_LEN + len {
            self.buf.resize(SECTION_HEADER_LEN + len, 0);
        }
        self.len = len;
        &mut self.buf[SECTION_HEADER_LEN..SECTION_HEADER_LEN + len]
    }

    /// Sends the payload in the buffer as a frame with `tag`.
    pub fn send_buffer<W: Write + ?Sized>(
        &mut self,
        stream: &mut W,
        tag: SectionTag,
    ) -> Result<(), FrameError> {
        self.send_buffer_part(stream, tag, self.len)
    }

    /// Sends the first `len` bytes of the buffer (at most what [`buffer`](Self::buffer) gave)
    /// as a frame with `tag`.
    pub fn send_buffer_part<W: Write + ?Sized>(
        &mut self,
        stream: &mut W,
        tag: SectionTag,
        len: usize,
    ) -> Result<(), FrameError> {
        let end = SECTION_HEADER_LEN + len.min(self.len);
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        let payload = &self.buf[SECTION_HEADER_LEN..end];
        let header = SectionHeader {
            tag,
            index: self.seq,
            version: PROTOCOL_VERSION,
            payload_len: payload.len() as u64,
            payload_checksum: checksum(payload),
        };
        self.buf[..SECTION_HEADER_LEN].copy_from_slice(&header.encode());
        stream
            .write_all(&self.buf[..end])
            .and_then(|()| stream.flush())
            .map_err(|source| FrameError::Io {
                op: "writing",
                seq: self.seq,
                source,
            })?;
        self.bytes += end as u64;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Sends `payload` as a frame with `tag`.
    pub fn send<W: Write + ?Sized>(
        &mut self,
        stream: &mut W,
        tag: SectionTag,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        self.buffer(payload.len()).copy_from_slice(payload);
        self.send_buffer(stream, tag)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::migration::wire::{ACCEPT, PAGES, ROUND_END};

    /// Three frames as a source would send them.
    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = FrameWriter::new();
        writer.send(&mut out, ROUND_END, &[1, 2, 3]).unwrap();
        writer.send(&mut out, ACCEPT, &[]).unwrap();
        writer.send(&mut out, ROUND_END, b"last").unwrap();
        assert_eq!(writer.bytes(), out.len() as u64);
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(SectionTag, Vec<u8>)>, FrameError> {
        let mut reader = FrameReader::new();
        let mut cursor = Cursor::new(bytes);
        let mut frames = Vec::new();
        loop {
            match reader.read(&mut cursor) {
                Ok((tag, payload)) => frames.push((tag, payload.to_vec())),
                Err(FrameError::Closed { .. }) => return Ok(frames),
                Err(err) => return Err(err),
            }
        }
    }

    #[test]
    fn frames_come_back_in_order() {
        let frames = read_all(&stream()).unwrap();
        assert_eq!(
            frames,
            [
                (ROUND_END, vec![1, 2, 3]),
                (ACCEPT, vec![]),
                (ROUND_END, b"last".to_vec())
            ]
        );
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let good = stream();
        for at in 0..good.len() {
            for bit in [0x01, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= bit;
                assert!(
                    read_all(&bad).is_err(),
                    "byte {at} bit {bit:#x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_caught_or_ends_between_frames() {
        let good = stream();
        let ends = [0, 43, 83, good.len()];
        for len in 0..good.len() {
            match read_all(&good[..len]) {
                Ok(frames) => assert!(ends.contains(&len), "{len}: {frames:?}"),
                Err(FrameError::Truncated { .. }) => assert!(!ends.contains(&len)),
                Err(err) => panic!("{len}: {err}"),
            }
        }
    }

    #[test]
    fn a_repeated_frame_is_refused() {
        let mut bytes = Vec::new();
        FrameWriter::new().send(&mut bytes, ACCEPT, &[]).unwrap();
        FrameWriter::new().send(&mut bytes, ACCEPT, &[]).unwrap();
        let err = read_all(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Sequence {
                    expected: 1,
                    found: 0
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn lengths_over_the_limit_are_refused_before_reading() {
        let header = SectionHeader {
            tag: PAGES,
            index: 0,
            version: PROTOCOL_VERSION,
            payload_len: u64::MAX,
            payload_checksum: 0,
        };
        let err = read_all(&header.encode()).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLong { len: u64::MAX, .. }),
            "{err}"
        );
        let other_version = SectionHeader {
            version: PROTOCOL_VERSION + 1,
            payload_len: 0,
            ..header
        };
        let err = read_all(&other_version.encode()).unwrap_err();
        assert!(matches!(err, FrameError::Version { .. }), "{err}");
    }
}
