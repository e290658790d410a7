//! On-disk record format and the entry payload encoding.
//!
//! A record is `u32 len | u32 previous_crc | u32 crc | payload`, big-endian,
//! where `crc = chained(previous_crc, payload)`. A zero length marks the end
//! of data (segments are pre-zeroed). The payload is the protobuf encoding of
//! `replication.LogEntry { int64 term = 1; int64 offset = 2; bytes value = 3;
//! fixed64 timestamp = 4; }`, so any protobuf library can read it, and a
//! leader can forward it to followers as is. We always emit all four fields
//! (valid protobuf), which keeps the encoding deterministic and never empty.

use super::crc;

pub const HEADER_LEN: usize = 12;

/// A decoded log entry that borrows its value from the record bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub term: i64,
    pub offset: i64,
    pub value: &'a [u8],
    pub timestamp: u64,
}

#[inline]
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[inline]
fn put_varint(buf: &mut [u8], mut pos: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[pos] = (v as u8) | 0x80;
        v >>= 7;
        pos += 1;
    }
    buf[pos] = v as u8;
    pos + 1
}

/// Length of the payload encoding of an entry.
#[inline]
pub fn payload_len(term: i64, offset: i64, value_len: usize) -> usize {
    1 + varint_len(term as u64)
        + 1
        + varint_len(offset as u64)
        + 1
        + varint_len(value_len as u64)
        + value_len
        + 1
        + 8
}

/// Encodes the payload into `buf`, which must be exactly `payload_len` long.
pub fn encode_payload(buf: &mut [u8], term: i64, offset: i64, value: &[u8], timestamp: u64) {
    let mut p = 0;
    buf[p] = 0x08; // field 1, varint
    p = put_varint(buf, p + 1, term as u64);
    buf[p] = 0x10; // field 2, varint
    p = put_varint(buf, p + 1, offset as u64);
    buf[p] = 0x1a; // field 3, length-delimited
    p = put_varint(buf, p + 1, value.len() as u64);
    buf[p..p + value.len()].copy_from_slice(value);
    p += value.len();
    buf[p] = 0x21; // field 4, fixed64
    buf[p + 1..p + 9].copy_from_slice(&timestamp.to_le_bytes());
    debug_assert_eq!(p + 9, buf.len());
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, &'static str> {
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err("varint overflow");
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
        shift += 7;
        if shift > 63 {
            return Err("varint overflow");
        }
    }
}

/// Decodes a payload. Accepts any valid protobuf encoding of `LogEntry`
/// (fields in any order, absent fields = 0, unknown fields skipped).
pub fn decode_payload(buf: &[u8]) -> Result<EntryRef<'_>, &'static str> {
    let mut e = EntryRef {
        term: 0,
        offset: 0,
        value: &[],
        timestamp: 0,
    };
    let mut p = 0;
    while p < buf.len() {
        let key = get_varint(buf, &mut p)?;
        let field = key >> 3;
        match (field, key & 7) {
            (1, 0) => e.term = get_varint(buf, &mut p)? as i64,
            (2, 0) => e.offset = get_varint(buf, &mut p)? as i64,
            (3, 2) => {
                let n = get_varint(buf, &mut p)? as usize;
                let end = p.checked_add(n).ok_or("length overflow")?;
                e.value = buf.get(p..end).ok_or("truncated value")?;
                p = end;
            }
            (4, 1) => {
                let b = buf.get(p..p + 8).ok_or("truncated timestamp")?;
                e.timestamp = u64::from_le_bytes(b.try_into().map_err(|_| "truncated timestamp")?);
                p += 8;
            }
            (_, 0) => {
                get_varint(buf, &mut p)?;
            }
            (_, 1) => p = p.checked_add(8).ok_or("overflow")?,
            (_, 5) => p = p.checked_add(4).ok_or("overflow")?,
            (_, 2) => {
                let n = get_varint(buf, &mut p)? as usize;
                p = p.checked_add(n).ok_or("overflow")?;
            }
            _ => return Err("invalid wire type"),
        }
    }
    if p != buf.len() {
        return Err("truncated field");
    }
    Ok(e)
}

/// Writes a whole record (header + payload) at the start of `buf`, which must
/// be `HEADER_LEN + payload_len(..)` long. Returns the record's CRC.
pub fn write_record(
    buf: &mut [u8],
    previous_crc: u32,
    term: i64,
    offset: i64,
    value: &[u8],
    timestamp: u64,
) -> u32 {
    let plen = buf.len() - HEADER_LEN;
    let (header, payload) = buf.split_at_mut(HEADER_LEN);
    encode_payload(payload, term, offset, value, timestamp);
    let c = crc::chained(previous_crc, payload);
    header[0..4].copy_from_slice(&(plen as u32).to_be_bytes());
    header[4..8].copy_from_slice(&previous_crc.to_be_bytes());
    header[8..12].copy_from_slice(&c.to_be_bytes());
    c
}

/// A record found while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// Byte position of the header within the segment.
    pub position: usize,
    pub payload_len: usize,
    pub previous_crc: u32,
    pub crc: u32,
}

impl RecordInfo {
    pub fn end(&self) -> usize {
        self.position + HEADER_LEN + self.payload_len
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// A valid record.
    Record(RecordInfo),
    /// The clean end of data.
    End,
    /// Something that is neither a record nor the end of data.
    Invalid(String),
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads and validates the record at `pos`: bounds, CRC, chain (when
/// `expected_previous` is known) and the offset carried in the payload.
pub fn scan_record(
    buf: &[u8],
    pos: usize,
    expected_previous: Option<u32>,
    expected_offset: i64,
) -> Scan {
    if pos >= buf.len() {
        return Scan::End;
    }
    if buf.len() - pos < HEADER_LEN {
        return if buf[pos..].iter().all(|&b| b == 0) {
            Scan::End
        } else {
            Scan::Invalid("truncated record header".into())
        };
    }
    let len = be32(buf, pos) as usize;
    let previous = be32(buf, pos + 4);
    let stored = be32(buf, pos + 8);
    if len == 0 {
        return if previous == 0 && stored == 0 {
            Scan::End
        } else {
            Scan::Invalid("zero length with a non-zero header".into())
        };
    }
    // u64 arithmetic: a garbage length can never wrap around (Oxia #1257).
    if (pos as u64) + (HEADER_LEN as u64) + (len as u64) > buf.len() as u64 {
        return Scan::Invalid(format!("record length {len} runs past the end of the segment"));
    }
    if let Some(prev) = expected_previous {
        if prev != previous {
            return Scan::Invalid(format!(
                "broken CRC chain: record says previous {previous:#010x}, log has {prev:#010x}"
            ));
        }
    }
    let payload = &buf[pos + HEADER_LEN..pos + HEADER_LEN + len];
    let computed = crc::chained(previous, payload);
    if computed != stored {
        return Scan::Invalid(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    match decode_payload(payload) {
        Ok(e) if e.offset == expected_offset => Scan::Record(RecordInfo {
            position: pos,
            payload_len: len,
            previous_crc: previous,
            crc: stored,
        }),
        Ok(e) => Scan::Invalid(format!(
            "record carries offset {}, expected {expected_offset}",
            e.offset
        )),
        Err(why) => Scan::Invalid(format!("undecodable payload: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prev: u32, term: i64, offset: i64, value: &[u8], ts: u64) -> (Vec<u8>, u32) {
        let mut buf = vec![0u8; HEADER_LEN + payload_len(term, offset, value.len())];
        let c = write_record(&mut buf, prev, term, offset, value, ts);
        (buf, c)
    }

    #[test]
    fn payload_roundtrip() {
        for (t, o, v, ts) in [
            (0i64, 0i64, &b""[..], 0u64),
            (1, 2, b"hello", 3),
            (i64::MAX, i64::MAX, &[0xffu8; 300][..], u64::MAX),
            (-1, -1, b"x", 1),
        ] {
            let mut b = vec![0u8; payload_len(t, o, v.len())];
            encode_payload(&mut b, t, o, v, ts);
            let e = decode_payload(&b).unwrap();
            assert_eq!((e.term, e.offset, e.value, e.timestamp), (t, o, v, ts));
        }
    }

    #[test]
    fn decodes_canonical_protobuf_with_missing_fields() {
        // term=5, value="ab" only (offset and timestamp absent → 0)
        let b = [0x08, 5, 0x1a, 2, b'a', b'b'];
        let e = decode_payload(&b).unwrap();
        assert_eq!((e.term, e.offset, e.value, e.timestamp), (5, 0, &b"ab"[..], 0));
    }

    #[test]
    fn scan_valid_then_end() {
        let (mut a, c) = record(0, 1, 10, b"v", 5);
        let (b, _) = record(c, 1, 11, b"w", 6);
        a.extend_from_slice(&b);
        a.extend_from_slice(&[0u8; 64]);
        let r = match scan_record(&a, 0, Some(0), 10) {
            Scan::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(matches!(scan_record(&a, r.end(), Some(c), 11), Scan::Record(_)));
        let end2 = r.end() + b.len();
        assert_eq!(scan_record(&a, end2, None, 12), Scan::End);
        // wrong chain or wrong offset are invalid
        assert!(matches!(scan_record(&a, r.end(), Some(c ^ 1), 11), Scan::Invalid(_)));
        assert!(matches!(scan_record(&a, 0, Some(0), 11), Scan::Invalid(_)));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let (rec, _) = record(0x1234, 3, 7, b"some value bytes", 99);
        for i in 0..rec.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = rec.clone();
                b.extend_from_slice(&[0u8; 32]);
                b[i] ^= flip;
                match scan_record(&b, 0, Some(0x1234), 7) {
                    Scan::Record(_) => panic!("flip {flip:#x} at byte {i} went undetected"),
                    Scan::End | Scan::Invalid(_) => {}
                }
            }
        }
    }

    #[test]
    fn huge_length_does_not_overflow() {
        let mut b = vec![0u8; 32];
        b[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        b[4] = 1;
        assert!(matches!(scan_record(&b, 4, None, 0), Scan::Invalid(_)));
        assert!(matches!(scan_record(&b, 0, None, 0), Scan::Invalid(_)));
    }
}
