//! Applying a plain-put `WriteRequest` in one call: the per-operation work of
//! `pyxia.storage.apply.StateApplier` for the write path's common case, done
//! natively (decode, key encoding, the stored records, the response and the
//! notification batch), so a batch of N puts costs one native call instead of
//! N rounds of Python attribute access and message building.
//!
//! What it covers ([`PutBatch::parse`] answers `None` for anything else, and
//! the caller applies that request in Python): a request of puts only, none
//! with a session, a sequence delta or secondary indexes. Expected versions,
//! client identities, partition keys and the override fields are handled.
//! [`PutBatch::apply`] answers `None` when a put replaces a record that has a
//! session or secondary indexes (their bookkeeping keys must go too) or a
//! stored record does not decode: the caller then applies the request in
//! Python, which raises for the undecodable record.
//!
//! Invariants (tested against the Python applier in
//! `tests/test_native_apply.py`, and in this file):
//! - the same request over the same stored records gives the same records,
//!   version counter, response and notification batch as the Python applier,
//!   byte for byte (fields in number order, proto3 defaults omitted);
//! - a later put of the same key in one request sees the earlier one;
//! - pure: no I/O and no clock; the stored records come in from the caller.

use std::collections::HashMap;

/// An undecodable protobuf message.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

pub(crate) const INTERNAL_KEY_PREFIX: &[u8] = b"__oxia/";
const UNEXPECTED_VERSION_ID: u64 = 2;
const KEY_CREATED: u64 = 0;
const KEY_MODIFIED: u64 = 1;

// -- wire format ------------------------------------------------------------------------------

pub(crate) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(DecodeError("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError("length overflows"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError("truncated field"))?;
        self.pos = end;
        Ok(out)
    }

    /// The next `(field number, value)`, or None at the end.
    pub(crate) fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| DecodeError("field number too large"))?;
        if number == 0 {
            return Err(DecodeError("field number 0"));
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError("length"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => return Err(DecodeError("unsupported wire type")),
        };
        Ok(Some((number, value)))
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_len_field(out: &mut Vec<u8>, tag: u8, data: &[u8]) {
    out.push(tag);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

#[cfg(test)]
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

// -- keys -------------------------------------------------------------------------------------

/// How the shard encodes keys (`pyxia.common.keys`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySorting {
    Hierarchical,
    Natural,
}

/// Oxia's hierarchical key encoding: a 2-byte big-endian count of '/' (a
/// trailing "//" opens no level; capped at 0x7FFF; bit 15 set for `__oxia/`
/// keys), then the key with '/' → 0xFF.
pub fn encode_hierarchical(raw: &[u8]) -> Vec<u8> {
    let mut n = raw.iter().filter(|&&b| b == b'/').count();
    if n > 0 && raw.ends_with(b"//") {
        n -= 1;
    }
    let mut prefix = n.min(0x7FFF) as u16;
    if n > 0 && raw.starts_with(INTERNAL_KEY_PREFIX) {
        prefix |= 0x8000;
    }
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend(
        raw.iter()
            .map(|&b| if b == b'/' && n > 0 { 0xFF } else { b }),
    );
    out
}

/// Oxia's natural encoding: the UTF-8 bytes; an internal key's leading "__"
/// becomes 0xFF 0xFF.
pub fn encode_natural(raw: &[u8]) -> Vec<u8> {
    if raw.starts_with(INTERNAL_KEY_PREFIX) {
        let mut out = Vec::with_capacity(raw.len());
        out.extend_from_slice(b"\xff\xff");
        out.extend_from_slice(&raw[2..]);
        return out;
    }
    raw.to_vec()
}

impl KeySorting {
    pub fn encode(self, raw: &[u8]) -> Vec<u8> {
        match self {
            KeySorting::Hierarchical => encode_hierarchical(raw),
            KeySorting::Natural => encode_natural(raw),
        }
    }
}

// -- the request ------------------------------------------------------------------------------

/// One put of the request, borrowing its bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Put<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub expected_version_id: Option<i64>,
    pub client_identity: Option<&'a [u8]>,
    pub partition_key: Option<&'a [u8]>,
    pub override_version_id: Option<i64>,
    pub override_modifications_count: Option<i64>,
}

/// The puts of a plain-put `WriteRequest`, with their encoded keys.
#[derive(Debug)]
pub struct PutBatch<'a> {
    pub puts: Vec<Put<'a>>,
    pub encoded_keys: Vec<Vec<u8>>,
}

/// What a record already stored under a key holds that a put needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    version_id: i64,
    modifications_count: i64,
    creation_timestamp: u64,
    /// A session or secondary indexes: its bookkeeping keys must be deleted too.
    has_bookkeeping: bool,
}

fn parse_stored(raw: &[u8]) -> Result<Stored, DecodeError> {
    let mut w = Wire::new(raw);
    let mut s = Stored {
        version_id: 0,
        modifications_count: 0,
        creation_timestamp: 0,
        has_bookkeeping: false,
    };
    while let Some((number, value)) = w.field()? {
        match (number, value) {
            (2, Value::Varint(v)) => s.version_id = v as i64,
            (3, Value::Varint(v)) => s.modifications_count = v as i64,
            (4, Value::Fixed64(v)) => s.creation_timestamp = v,
            (5, Value::Fixed64(_)) => {}
            (6 | 9, _) => s.has_bookkeeping = true,
            (2..=5, _) => return Err(DecodeError("StorageEntry: wrong wire type")),
            _ => {}
        }
    }
    Ok(s)
}

fn parse_put(raw: &[u8]) -> Result<Option<Put<'_>>, DecodeError> {
    let mut w = Wire::new(raw);
    let mut p = Put::default();
    while let Some((number, value)) = w.field()? {
        match (number, value) {
            (1, Value::Bytes(b)) => p.key = b,
            (2, Value::Bytes(b)) => p.value = b,
            (3, Value::Varint(v)) => p.expected_version_id = Some(v as i64),
            (5, Value::Bytes(b)) => p.client_identity = Some(b),
            (6, Value::Bytes(b)) => p.partition_key = Some(b),
            (9, Value::Varint(v)) => p.override_version_id = Some(v as i64),
            (10, Value::Varint(v)) => p.override_modifications_count = Some(v as i64),
            // A session, a sequence delta, secondary indexes: not this path's.
            (4 | 7 | 8, _) => return Ok(None),
            (1..=3 | 5 | 6 | 9..=11, _) => return Err(DecodeError("PutRequest: wrong wire type")),
            _ => {}
        }
    }
    Ok(Some(p))
}

impl<'a> PutBatch<'a> {
    /// The puts of `request` (a serialized `WriteRequest`), or None when it is
    /// not a plain-put request (see the module documentation) or has no puts.
    pub fn parse(request: &'a [u8], sorting: KeySorting) -> Result<Option<Self>, DecodeError> {
        let mut w = Wire::new(request);
        let mut puts = Vec::new();
        while let Some((number, value)) = w.field()? {
            match (number, value) {
                (2, Value::Bytes(b)) => match parse_put(b)? {
                    Some(p) => puts.push(p),
                    None => return Ok(None),
                },
                (3 | 4, _) => return Ok(None), // deletes, delete ranges
                (1, Value::Varint(_)) => {}
                (1 | 2, _) => return Err(DecodeError("WriteRequest: wrong wire type")),
                _ => {}
            }
        }
        if puts.is_empty() {
            return Ok(None);
        }
        let encoded_keys = puts.iter().map(|p| sorting.encode(p.key)).collect();
        Ok(Some(PutBatch { puts, encoded_keys }))
    }

    /// Applies the puts over `stored` (the records under `encoded_keys`, as
    /// the DB holds them before this request); None when a put needs the
    /// Python applier (a replaced record with a session or secondary indexes,
    /// or one that does not decode).
    pub fn apply(
        &self,
        stored: &[Option<&[u8]>],
        last_version_id: i64,
        timestamp: u64,
        notifications: Option<(i64, i64)>,
    ) -> Option<Applied> {
        assert_eq!(stored.len(), self.puts.len(), "one stored record per put");
        let mut version = last_version_id;
        // Records written by earlier puts of this request, by encoded key.
        let mut written: HashMap<&[u8], Stored> = HashMap::new();
        let mut records = Vec::with_capacity(self.puts.len());
        let mut response = Vec::with_capacity(self.puts.len() * 40);
        let mut notified: HashMap<&[u8], (u64, i64)> = HashMap::new();
        let mut version_msg = Vec::with_capacity(64);
        let mut put_msg = Vec::with_capacity(80);
        for (i, ((p, ekey), raw)) in self
            .puts
            .iter()
            .zip(&self.encoded_keys)
            .zip(stored)
            .enumerate()
        {
            let existing = match written.get(ekey.as_slice()) {
                Some(s) => Some(*s),
                None => match raw {
                    Some(r) => Some(parse_stored(r).ok()?),
                    None => None,
                },
            };
            if let Some(ev) = p.expected_version_id {
                let matches = match existing {
                    None => ev == -1,
                    Some(s) => s.version_id == ev,
                };
                if !matches {
                    // PutResponse{status: UNEXPECTED_VERSION_ID}
                    response.extend_from_slice(&[0x0A, 0x02, 0x08, UNEXPECTED_VERSION_ID as u8]);
                    continue;
                }
            }
            if existing.is_some_and(|s| s.has_bookkeeping) {
                return None;
            }
            let version_id = match p.override_version_id {
                Some(v) => v,
                None => {
                    version += 1;
                    version
                }
            };
            let (mut mod_count, created) = match existing {
                None => (0, timestamp),
                Some(s) => (s.modifications_count + 1, s.creation_timestamp),
            };
            if let Some(m) = p.override_modifications_count {
                mod_count = m;
            }
            // StorageEntry{value=1, version_id=2, modifications_count=3, creation_timestamp=4,
            // modification_timestamp=5, client_identity=7, partition_key=8}
            let mut rec = Vec::with_capacity(p.value.len() + 48);
            if !p.value.is_empty() {
                put_len_field(&mut rec, 0x0A, p.value);
            }
            if version_id != 0 {
                rec.push(0x10);
                put_varint(&mut rec, version_id as u64);
            }
            if mod_count != 0 {
                rec.push(0x18);
                put_varint(&mut rec, mod_count as u64);
            }
            if created != 0 {
                rec.push(0x21);
                rec.extend_from_slice(&created.to_le_bytes());
            }
            if timestamp != 0 {
                rec.push(0x29);
                rec.extend_from_slice(&timestamp.to_le_bytes());
            }
            if let Some(id) = p.client_identity {
                put_len_field(&mut rec, 0x3A, id);
            }
            if let Some(pk) = p.partition_key {
                put_len_field(&mut rec, 0x42, pk);
            }
            records.push((i, rec));
            written.insert(
                ekey.as_slice(),
                Stored {
                    version_id,
                    modifications_count: mod_count,
                    creation_timestamp: created,
                    has_bookkeeping: false,
                },
            );
            if !p.key.starts_with(INTERNAL_KEY_PREFIX) {
                let kind = if mod_count == 0 {
                    KEY_CREATED
                } else {
                    KEY_MODIFIED
                };
                notified.insert(p.key, (kind, version_id));
            }
            // Version{version_id=1, modifications_count=2, created_timestamp=3,
            // modified_timestamp=4, client_identity=6}
            version_msg.clear();
            if version_id != 0 {
                version_msg.push(0x08);
                put_varint(&mut version_msg, version_id as u64);
            }
            if mod_count != 0 {
                version_msg.push(0x10);
                put_varint(&mut version_msg, mod_count as u64);
            }
            if created != 0 {
                version_msg.push(0x19);
                version_msg.extend_from_slice(&created.to_le_bytes());
            }
            if timestamp != 0 {
                version_msg.push(0x21);
                version_msg.extend_from_slice(&timestamp.to_le_bytes());
            }
            if let Some(id) = p.client_identity {
                put_len_field(&mut version_msg, 0x32, id);
            }
            // PutResponse{status=1 (OK: omitted), version=2}
            put_msg.clear();
            put_len_field(&mut put_msg, 0x12, &version_msg);
            put_len_field(&mut response, 0x0A, &put_msg);
        }
        let notification_batch = match notifications {
            Some((shard, offset)) if !notified.is_empty() => {
                Some(notification_batch(shard, offset, timestamp, notified))
            }
            _ => None,
        };
        Some(Applied {
            records,
            last_version_id: version,
            response,
            notification_batch,
        })
    }
}

/// What a leader's checks before logging need to know of a `WriteRequest`, found
/// in one pass over its bytes (`pyxia.storage.apply.validate_write_request` and
/// `override_fields_used`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteShape {
    /// Every put and delete has a non-empty key outside `__oxia/`, and no put has
    /// a sequence delta or secondary indexes: no per-operation check can fail
    /// (the size limits aside).
    pub plain: bool,
    /// Some put sets `override_version_id` or `override_modifications_count`.
    pub overrides: bool,
}

/// The [`WriteShape`] of `request`; an error for bytes the caller must judge itself.
pub fn write_shape(request: &[u8]) -> Result<WriteShape, DecodeError> {
    let mut shape = WriteShape {
        plain: true,
        overrides: false,
    };
    let user_key = |k: &[u8]| !k.is_empty() && !k.starts_with(INTERNAL_KEY_PREFIX);
    let mut w = Wire::new(request);
    while let Some((number, value)) = w.field()? {
        match (number, value) {
            (2, Value::Bytes(put)) => {
                let mut p = Wire::new(put);
                let mut key: &[u8] = b"";
                while let Some((n, v)) = p.field()? {
                    match (n, v) {
                        (1, Value::Bytes(b)) => key = b,
                        (7 | 8, _) => shape.plain = false,
                        (9 | 10, _) => shape.overrides = true,
                        (1, _) => return Err(DecodeError("PutRequest: wrong wire type")),
                        _ => {}
                    }
                }
                shape.plain &= user_key(key);
            }
            (3, Value::Bytes(delete)) => {
                let mut d = Wire::new(delete);
                let mut key: &[u8] = b"";
                while let Some((n, v)) = d.field()? {
                    match (n, v) {
                        (1, Value::Bytes(b)) => key = b,
                        (1, _) => return Err(DecodeError("DeleteRequest: wrong wire type")),
                        _ => {}
                    }
                }
                shape.plain &= user_key(key);
            }
            (2 | 3, _) => return Err(DecodeError("WriteRequest: wrong wire type")),
            _ => {}
        }
    }
    Ok(shape)
}

/// What [`PutBatch::apply`] produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// `(index of the put, serialized StorageEntry)` to write, in order: the
    /// record goes under `encoded_keys[index]`.
    pub records: Vec<(usize, Vec<u8>)>,
    pub last_version_id: i64,
    /// The serialized `WriteResponse`.
    pub response: Vec<u8>,
    /// The serialized `NotificationBatch` (None: notifications off, or nothing notified).
    pub notification_batch: Option<Vec<u8>>,
}

/// `NotificationBatch{shard=1, offset=2, timestamp=3, notifications=4}` with
/// entries sorted by key (the encoding of `Notifications.seal_bytes`).
fn notification_batch(
    shard: i64,
    offset: i64,
    timestamp: u64,
    notified: HashMap<&[u8], (u64, i64)>,
) -> Vec<u8> {
    let mut items: Vec<NotificationRecord<'_>> = notified
        .into_iter()
        .map(|(key, (kind, version_id))| (key, kind, Some(version_id), None))
        .collect();
    encode_notification_batch(shard, offset, timestamp, &mut items)
}

/// One notification: `(key, type, version_id, key_range_last)`.
pub(crate) type NotificationRecord<'a> = (&'a [u8], u64, Option<i64>, Option<&'a [u8]>);

/// Serializes `NotificationBatch{shard=1, offset=2, timestamp=3, notifications=4}`, each
/// entry `{key=1, value=Notification{type=1, version_id=2, key_range_last=3}}`, sorted by
/// key so every replica writes the same bytes (zero scalars omitted, as protobuf does).
pub(crate) fn encode_notification_batch(
    shard: i64,
    offset: i64,
    timestamp: u64,
    items: &mut [NotificationRecord<'_>],
) -> Vec<u8> {
    items.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(32 + items.len() * 48);
    if shard != 0 {
        out.push(0x08);
        put_varint(&mut out, shard as u64);
    }
    if offset != 0 {
        out.push(0x10);
        put_varint(&mut out, offset as u64);
    }
    if timestamp != 0 {
        out.push(0x19);
        out.extend_from_slice(&timestamp.to_le_bytes());
    }
    let mut n = Vec::with_capacity(32);
    let mut entry = Vec::with_capacity(96);
    for &mut (key, kind, version_id, range_last) in items.iter_mut() {
        n.clear();
        if kind != 0 {
            n.push(0x08);
            put_varint(&mut n, kind);
        }
        if let Some(v) = version_id {
            n.push(0x10);
            put_varint(&mut n, v as u64);
        }
        if let Some(last) = range_last {
            put_len_field(&mut n, 0x1A, last);
        }
        entry.clear();
        put_len_field(&mut entry, 0x0A, key);
        put_len_field(&mut entry, 0x12, &n);
        put_len_field(&mut out, 0x22, &entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_bytes(key: &[u8], value: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        put_len_field(&mut p, 0x0A, key);
        put_len_field(&mut p, 0x12, value);
        p.extend_from_slice(extra);
        p
    }

    fn request(puts: &[Vec<u8>]) -> Vec<u8> {
        let mut r = vec![0x08, 0x00]; // shard = 0
        for p in puts {
            put_len_field(&mut r, 0x12, p);
        }
        r
    }

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(Wire::new(&b).varint(), Ok(v));
        }
        assert!(Wire::new(&[0xFF; 10]).varint().is_err());
        assert!(Wire::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn only_plain_puts_take_this_path() {
        let plain = request(&[put_bytes(b"a", b"1", &[])]);
        assert!(PutBatch::parse(&plain, KeySorting::Natural)
            .unwrap()
            .is_some());
        let session = request(&[put_bytes(b"a", b"1", &[0x20, 0x05])]);
        assert!(PutBatch::parse(&session, KeySorting::Natural)
            .unwrap()
            .is_none());
        let mut with_delete = plain.clone();
        put_len_field(&mut with_delete, 0x1A, &[0x0A, 0x01, b'a']);
        assert!(PutBatch::parse(&with_delete, KeySorting::Natural)
            .unwrap()
            .is_none());
        assert!(PutBatch::parse(&[0x08, 0x00], KeySorting::Natural)
            .unwrap()
            .is_none());
        assert!(PutBatch::parse(&[0x12, 0x05, 0x0A], KeySorting::Natural).is_err());
    }

    #[test]
    fn a_second_put_of_a_key_sees_the_first() {
        let req = request(&[put_bytes(b"/a/b", b"1", &[]), put_bytes(b"/a/b", b"2", &[])]);
        let batch = PutBatch::parse(&req, KeySorting::Hierarchical)
            .unwrap()
            .unwrap();
        assert_eq!(batch.encoded_keys[0], vec![0, 2, 0xFF, b'a', 0xFF, b'b']);
        let out = batch.apply(&[None, None], 10, 1000, Some((0, 5))).unwrap();
        assert_eq!(out.last_version_id, 12);
        let second = parse_stored(&out.records[1].1).unwrap();
        assert_eq!((second.version_id, second.modifications_count), (12, 1));
        assert_eq!(second.creation_timestamp, 1000);
        assert!(out.notification_batch.is_some());
    }

    #[test]
    fn a_wrong_expected_version_changes_nothing() {
        let mut extra = Vec::new();
        extra.push(0x18);
        put_varint(&mut extra, 7);
        let req = request(&[put_bytes(b"k", b"v", &extra)]);
        let batch = PutBatch::parse(&req, KeySorting::Natural).unwrap().unwrap();
        let out = batch.apply(&[None], 3, 1000, None).unwrap();
        assert!(out.records.is_empty());
        assert_eq!(out.last_version_id, 3);
        assert_eq!(out.response, vec![0x0A, 0x02, 0x08, 0x02]);
    }

    #[test]
    fn replacing_a_record_with_a_session_needs_the_python_path() {
        let req = request(&[put_bytes(b"k", b"v", &[])]);
        let batch = PutBatch::parse(&req, KeySorting::Natural).unwrap().unwrap();
        let stored = [0x10, 0x01, 0x30, 0x09]; // version 1, session 9
        assert!(batch.apply(&[Some(&stored)], 3, 1000, None).is_none());
        assert!(batch.apply(&[Some(&[0x10])], 3, 1000, None).is_none()); // undecodable
    }

    #[test]
    fn the_shape_finds_what_needs_a_closer_look() {
        let plain = request(&[put_bytes(b"a", b"1", &[])]);
        assert_eq!(
            write_shape(&plain),
            Ok(WriteShape {
                plain: true,
                overrides: false
            })
        );
        let empty_key = request(&[put_bytes(b"", b"1", &[])]);
        assert!(!write_shape(&empty_key).unwrap().plain);
        let internal = request(&[put_bytes(b"__oxia/x", b"1", &[])]);
        assert!(!write_shape(&internal).unwrap().plain);
        let sequence = request(&[put_bytes(b"a", b"1", &[0x38, 0x01])]);
        assert!(!write_shape(&sequence).unwrap().plain);
        let overriding = request(&[put_bytes(b"a", b"1", &[0x48, 0x01])]);
        assert_eq!(
            write_shape(&overriding),
            Ok(WriteShape {
                plain: true,
                overrides: true
            })
        );
        let mut delete_internal = plain.clone();
        put_len_field(&mut delete_internal, 0x1A, &[0x0A, 0x03, b'_', b'_', b'o']);
        assert!(write_shape(&delete_internal).unwrap().plain);
        let mut delete_empty = plain.clone();
        put_len_field(&mut delete_empty, 0x1A, &[]);
        assert!(!write_shape(&delete_empty).unwrap().plain);
        assert!(write_shape(&[0x12, 0x05, 0x0A]).is_err());
    }

    #[test]
    fn encodings_match_the_python_ones() {
        assert_eq!(encode_hierarchical(b"a"), b"\x00\x00a");
        assert_eq!(encode_hierarchical(b"/a//"), b"\x00\x02\xffa\xff\xff");
        assert_eq!(encode_hierarchical(b"__oxia/x"), b"\x80\x01__oxia\xffx");
        assert_eq!(encode_natural(b"__oxia/x"), b"\xff\xffoxia/x");
        assert_eq!(encode_natural(b"ab"), b"ab");
    }
}
