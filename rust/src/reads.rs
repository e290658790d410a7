//! The Read RPC's common case in one call: a `ReadRequest` of EQUAL gets of
//! user keys (no secondary index) answered as a serialized `ReadResponse`,
//! the work of `pyxia.storage.reads.get_into` for every get of the request.
//!
//! [`EqualGets::parse`] answers `None` for a request with any other get (a
//! comparison, a secondary index, an internal key) and [`EqualGets::respond`]
//! `None` when a stored record does not decode: the caller then answers in
//! Python. Pure: the stored records come in from the caller.
//!
//! Invariant (tested against the Python path in `tests/test_native_apply.py`):
//! the bytes equal the Python path's `ReadResponse` serialized (fields in
//! number order, proto3 defaults omitted, `version` always present on a found
//! record, `value` present when asked for, even empty).

use crate::apply::{
    put_len_field, put_varint, DecodeError, KeySorting, Value, Wire, INTERNAL_KEY_PREFIX,
};

const KEY_NOT_FOUND: u8 = 1;

/// The gets of a plain `ReadRequest`, with their encoded keys.
#[derive(Debug)]
pub struct EqualGets {
    pub include_value: Vec<bool>,
    pub encoded_keys: Vec<Vec<u8>>,
}

impl EqualGets {
    /// None: the request is not for this path (or has no gets).
    pub fn parse(request: &[u8], sorting: KeySorting) -> Result<Option<Self>, DecodeError> {
        let mut w = Wire::new(request);
        let mut out = EqualGets {
            include_value: Vec::new(),
            encoded_keys: Vec::new(),
        };
        while let Some((number, value)) = w.field()? {
            match (number, value) {
                (2, Value::Bytes(get)) => {
                    let mut g = Wire::new(get);
                    let (mut key, mut include) = (&b""[..], false);
                    while let Some((n, v)) = g.field()? {
                        match (n, v) {
                            (1, Value::Bytes(b)) => key = b,
                            (2, Value::Varint(v)) => include = v != 0,
                            (3, Value::Varint(0)) => {}
                            (3 | 4, _) => return Ok(None), // a comparison, an index
                            (1 | 2, _) => return Err(DecodeError("GetRequest: wrong wire type")),
                            _ => {}
                        }
                    }
                    if key.starts_with(INTERNAL_KEY_PREFIX) {
                        return Ok(None);
                    }
                    out.include_value.push(include);
                    out.encoded_keys.push(sorting.encode(key));
                }
                (1, Value::Varint(_)) => {}
                (1 | 2, _) => return Err(DecodeError("ReadRequest: wrong wire type")),
                _ => {}
            }
        }
        Ok(if out.encoded_keys.is_empty() {
            None
        } else {
            Some(out)
        })
    }

    /// The serialized `ReadResponse` for `stored` (the records under
    /// `encoded_keys`); None when one does not decode.
    pub fn respond(&self, stored: &[Option<&[u8]>]) -> Option<Vec<u8>> {
        assert_eq!(
            stored.len(),
            self.encoded_keys.len(),
            "one stored record per get"
        );
        let total: usize = stored.iter().map(|s| s.map_or(4, |r| r.len() + 48)).sum();
        let mut out = Vec::with_capacity(total);
        let mut version = Vec::with_capacity(48);
        let mut get = Vec::with_capacity(256);
        for (raw, &include) in stored.iter().zip(&self.include_value) {
            let Some(raw) = raw else {
                out.extend_from_slice(&[0x0A, 0x02, 0x08, KEY_NOT_FOUND]);
                continue;
            };
            let mut w = Wire::new(raw);
            let mut value: &[u8] = b"";
            let (mut vid, mut mods, mut created, mut modified) = (0u64, 0u64, 0u64, 0u64);
            let mut session: Option<u64> = None;
            let mut identity: Option<&[u8]> = None;
            loop {
                match w.field() {
                    Ok(None) => break,
                    Ok(Some((1, Value::Bytes(b)))) => value = b,
                    Ok(Some((2, Value::Varint(v)))) => vid = v,
                    Ok(Some((3, Value::Varint(v)))) => mods = v,
                    Ok(Some((4, Value::Fixed64(v)))) => created = v,
                    Ok(Some((5, Value::Fixed64(v)))) => modified = v,
                    Ok(Some((6, Value::Varint(v)))) => session = Some(v),
                    Ok(Some((7, Value::Bytes(b)))) => identity = Some(b),
                    Ok(Some((1..=7, _))) | Err(_) => return None,
                    Ok(Some(_)) => {}
                }
            }
            // Version{version_id=1, modifications_count=2, created_timestamp=3,
            // modified_timestamp=4, session_id=5, client_identity=6}
            version.clear();
            if vid != 0 {
                version.push(0x08);
                put_varint(&mut version, vid);
            }
            if mods != 0 {
                version.push(0x10);
                put_varint(&mut version, mods);
            }
            if created != 0 {
                version.push(0x19);
                version.extend_from_slice(&created.to_le_bytes());
            }
            if modified != 0 {
                version.push(0x21);
                version.extend_from_slice(&modified.to_le_bytes());
            }
            if let Some(s) = session {
                version.push(0x28);
                put_varint(&mut version, s);
            }
            if let Some(id) = identity {
                put_len_field(&mut version, 0x32, id);
            }
            // GetResponse{status=1 (OK: omitted), version=2, value=3}
            get.clear();
            put_len_field(&mut get, 0x12, &version);
            if include {
                put_len_field(&mut get, 0x1A, value);
            }
            put_len_field(&mut out, 0x0A, &get);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_request(gets: &[Vec<u8>]) -> Vec<u8> {
        let mut r = Vec::new();
        for g in gets {
            put_len_field(&mut r, 0x12, g);
        }
        r
    }

    fn get(key: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut g = Vec::new();
        put_len_field(&mut g, 0x0A, key);
        g.extend_from_slice(extra);
        g
    }

    #[test]
    fn only_equal_gets_of_user_keys_take_this_path() {
        let s = KeySorting::Natural;
        assert!(
            EqualGets::parse(&read_request(&[get(b"a", &[0x10, 0x01])]), s)
                .unwrap()
                .is_some()
        );
        assert!(
            EqualGets::parse(&read_request(&[get(b"a", &[0x18, 0x01])]), s)
                .unwrap()
                .is_none()
        );
        assert!(
            EqualGets::parse(&read_request(&[get(b"a", &[0x22, 0x00])]), s)
                .unwrap()
                .is_none()
        );
        assert!(EqualGets::parse(&read_request(&[get(b"__oxia/n", &[])]), s)
            .unwrap()
            .is_none());
        assert!(EqualGets::parse(&[], s).unwrap().is_none());
    }

    #[test]
    fn responses_for_found_missing_and_undecodable_records() {
        let req = read_request(&[get(b"a", &[0x10, 0x01]), get(b"b", &[])]);
        let gets = EqualGets::parse(&req, KeySorting::Natural)
            .unwrap()
            .unwrap();
        // StorageEntry{value: "v", version_id: 3}
        let stored = [0x0A, 0x01, b'v', 0x10, 0x03];
        let out = gets.respond(&[Some(&stored), None]).unwrap();
        let mut want = Vec::new();
        put_len_field(&mut want, 0x0A, &[0x12, 0x02, 0x08, 0x03, 0x1A, 0x01, b'v']);
        want.extend_from_slice(&[0x0A, 0x02, 0x08, 0x01]);
        assert_eq!(out, want);
        assert!(gets.respond(&[Some(&[0x10]), None]).is_none());
    }
}
