//! Replication frames built around the WAL's stored entries.
//!
//! A leader ships each log entry to its followers as one serialized
//! `replication.Append { int64 term = 1; LogEntry entry = 2; int64 commit_offset = 3;
//! optional uint32 previous_entry_crc = 4; bool cumulative_acks_supported = 5; }`.
//! The WAL's record payload already is the entry's `LogEntry` encoding, so a
//! frame is that payload with a few bytes of Append around it: no decode into
//! objects, no re-encoding, one copy of the value.
//!
//! Invariant: the bytes are exactly what protobuf's canonical serializer makes
//! of the same message (fields in number order, proto3 defaults omitted, the
//! optional CRC always present, the submessage always present). The WAL stores
//! a `LogEntry` with all four fields; that is the canonical form whenever term,
//! offset and timestamp are non-zero and the value is non-empty, and the stored
//! bytes are then forwarded verbatim. Otherwise (the first entry, offset 0; a
//! term-0 entry; an empty value) the entry is written in canonical form, which
//! decodes to the same message.
//!
//! A follower takes a received frame apart here too ([`entry_of_append`]): the
//! entry it appends borrows its value from the received bytes, so the value
//! is never copied into a Python object. A frame with more than one `entry`
//! field (protobuf would merge them; no leader sends one) is refused, so the
//! entry appended is always the one the replica state machine checked.

use crate::wal::codec::{decode_payload, payload_len, EntryRef};

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
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Whether the stored payload is already the canonical encoding of its entry.
#[inline]
fn stored_is_canonical(payload: &[u8], e: &EntryRef<'_>) -> bool {
    e.term != 0
        && e.offset != 0
        && e.timestamp != 0
        && !e.value.is_empty()
        && payload.len() == payload_len(e.term, e.offset, e.value.len())
}

/// Length of the canonical `LogEntry` encoding of `e`.
fn canonical_entry_len(e: &EntryRef<'_>) -> usize {
    let mut n = 0;
    if e.term != 0 {
        n += 1 + varint_len(e.term as u64);
    }
    if e.offset != 0 {
        n += 1 + varint_len(e.offset as u64);
    }
    if !e.value.is_empty() {
        n += 1 + varint_len(e.value.len() as u64) + e.value.len();
    }
    if e.timestamp != 0 {
        n += 9;
    }
    n
}

fn put_canonical_entry(out: &mut Vec<u8>, e: &EntryRef<'_>) {
    if e.term != 0 {
        out.push(0x08);
        put_varint(out, e.term as u64);
    }
    if e.offset != 0 {
        out.push(0x10);
        put_varint(out, e.offset as u64);
    }
    if !e.value.is_empty() {
        out.push(0x1a);
        put_varint(out, e.value.len() as u64);
        out.extend_from_slice(e.value);
    }
    if e.timestamp != 0 {
        out.push(0x21);
        out.extend_from_slice(&e.timestamp.to_le_bytes());
    }
}

/// Appends to `out` the serialized `Append` carrying the stored entry `e`
/// (whose record payload is `payload`), the leader's `term` and
/// `commit_offset`, and the entry's `previous_crc`.
pub fn put_append(
    out: &mut Vec<u8>,
    term: i64,
    payload: &[u8],
    e: &EntryRef<'_>,
    commit_offset: i64,
    previous_crc: u32,
) {
    let verbatim = stored_is_canonical(payload, e);
    let entry_len = if verbatim {
        payload.len()
    } else {
        canonical_entry_len(e)
    };
    out.reserve(entry_len + 40);
    if term != 0 {
        out.push(0x08);
        put_varint(out, term as u64);
    }
    out.push(0x12);
    put_varint(out, entry_len as u64);
    if verbatim {
        out.extend_from_slice(payload);
    } else {
        put_canonical_entry(out, e);
    }
    if commit_offset != 0 {
        out.push(0x18);
        put_varint(out, commit_offset as u64);
    }
    out.push(0x20);
    put_varint(out, u64::from(previous_crc));
    out.push(0x28);
    out.push(0x01);
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

/// The entry and the previous CRC (if present) of a serialized `Append`;
/// `None` for an entry-less one (a heartbeat).
pub type AppendedEntry<'a> = (Option<EntryRef<'a>>, Option<u32>);

/// Takes a serialized `Append` apart: its entry (borrowing the value from
/// `frame`) and its `previous_entry_crc`. Unknown fields are skipped; a
/// repeated scalar field's last value counts (protobuf's rule); a second
/// `entry` field is an error.
pub fn entry_of_append(frame: &[u8]) -> Result<AppendedEntry<'_>, &'static str> {
    let mut entry = None;
    let mut previous_crc = None;
    let mut p = 0;
    while p < frame.len() {
        let key = get_varint(frame, &mut p)?;
        match (key >> 3, key & 7) {
            (2, 2) => {
                let n =
                    usize::try_from(get_varint(frame, &mut p)?).map_err(|_| "length overflow")?;
                let end = p.checked_add(n).ok_or("length overflow")?;
                let sub = frame.get(p..end).ok_or("truncated entry")?;
                if entry.is_some() {
                    return Err("more than one entry in an Append");
                }
                entry = Some(decode_payload(sub)?);
                p = end;
            }
            (4, 0) => previous_crc = Some(get_varint(frame, &mut p)? as u32),
            (_, 0) => {
                get_varint(frame, &mut p)?;
            }
            (_, 1) => p = p.checked_add(8).ok_or("overflow")?,
            (_, 5) => p = p.checked_add(4).ok_or("overflow")?,
            (_, 2) => {
                let n =
                    usize::try_from(get_varint(frame, &mut p)?).map_err(|_| "length overflow")?;
                p = p.checked_add(n).ok_or("overflow")?;
            }
            _ => return Err("invalid wire type"),
        }
    }
    if p != frame.len() {
        return Err("truncated field");
    }
    Ok((entry, previous_crc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::codec::encode_payload;

    fn stored(term: i64, offset: i64, value: &[u8], ts: u64) -> Vec<u8> {
        let mut buf = vec![0u8; payload_len(term, offset, value.len())];
        encode_payload(&mut buf, term, offset, value, ts);
        buf
    }

    #[test]
    fn forwards_the_stored_payload_verbatim() {
        let p = stored(3, 7, b"abc", 99);
        let e = decode_payload(&p).unwrap();
        let mut out = Vec::new();
        put_append(&mut out, 3, &p, &e, 6, 0xdead_beef);
        let mut want = vec![0x08, 3, 0x12, p.len() as u8];
        want.extend_from_slice(&p);
        want.extend_from_slice(&[0x18, 6, 0x20, 0xef, 0xfd, 0xb6, 0xf5, 0x0d, 0x28, 1]);
        assert_eq!(out, want);
    }

    #[test]
    fn omits_default_fields_like_protobuf() {
        let p = stored(0, 0, b"", 0);
        let e = decode_payload(&p).unwrap();
        let mut out = Vec::new();
        put_append(&mut out, 0, &p, &e, -1, 0);
        let mut want = vec![0x12, 0x00, 0x18];
        want.extend_from_slice(&[0xff; 9]);
        want.extend_from_slice(&[0x01, 0x20, 0x00, 0x28, 0x01]);
        assert_eq!(out, want);
    }

    #[test]
    fn takes_a_frame_apart() {
        let p = stored(3, 7, b"abc", 99);
        let e = decode_payload(&p).unwrap();
        let mut out = Vec::new();
        put_append(&mut out, 3, &p, &e, 6, 0xdead_beef);
        assert_eq!(entry_of_append(&out), Ok((Some(e), Some(0xdead_beef))));
        // A heartbeat: no entry, no CRC; unknown field 16 skipped.
        assert_eq!(entry_of_append(&[0x08, 3, 0x80, 0x01, 5]), Ok((None, None)));
        let mut twice = out.clone();
        twice.extend_from_slice(&[0x12, 0x02, 0x10, 0x08]);
        assert!(entry_of_append(&twice).is_err());
        assert!(entry_of_append(&out[..out.len() - 1]).is_err());
    }
}
