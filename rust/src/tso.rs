//! The timestamp oracle's allocator and the GetTs wire messages, natively: plain Rust, no
//! Python and no I/O, so `cargo test` exercises them.
//!
//! [`Allocator`] is the same state machine as `pyxia/tso/allocator.py` (the Python one is the
//! reference; `tests/test_tso_allocator.py` runs its properties against both): a timestamp
//! is `physical_ms << 18 | logical`, a grant is `count` consecutive logicals at one
//! millisecond, strictly above every earlier grant, never above the committed high-water `H`
//! (inclusive). [`Window`] adds the one thing the native GetTs server needs besides it: the
//! *fast-path deadline* that Python (the owner of the fence and the time lease) grants. The
//! native server hands out numbers only while the allocator has an epoch and the monotonic
//! clock is below that deadline; everything else (no epoch, the window exhausted, the lease
//! about to lapse, an invalid request) goes to Python's handler, which extends, renews,
//! holds the call during a fence or answers with the right error.
//!
//! Invariants:
//! - every allocator operation runs under one mutex, so a grant either completes before a
//!   step-down or sees no epoch (a step-down from Python is synchronous);
//! - `become_leader` closes the fast path (deadline 0) until Python publishes the lease;
//!   `step_down` clears the epoch, so no native grant is made after it returns.

use parking_lot::Mutex;

pub const LOGICAL_BITS: u32 = 18;
pub const LOGICAL_MAX: i64 = (1 << LOGICAL_BITS) - 1;
pub const MAX_COUNT: i64 = LOGICAL_MAX + 1;
pub const MAX_PHYSICAL: i64 = (1 << 46) - 1;

/// Why the allocator refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No epoch: not serving.
    NotLeader,
    /// The grant would pass the committed high-water: extend first.
    WindowExhausted,
    /// `count` outside `[1, 262144]`.
    InvalidCount,
    /// The physical part would not fit in 46 bits.
    AdvanceOutOfRange,
}

impl Refusal {
    /// The code the Python bindings return (0 is success).
    pub fn code(self) -> u8 {
        match self {
            Refusal::NotLeader => 1,
            Refusal::WindowExhausted => 2,
            Refusal::InvalidCount => 3,
            Refusal::AdvanceOutOfRange => 4,
        }
    }
}

/// `count` timestamps at `physical_ms` from `logical_start`, granted at `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub physical_ms: i64,
    pub logical_start: i64,
    pub count: i64,
    pub epoch: i64,
}

impl Grant {
    pub fn first(&self) -> i64 {
        (self.physical_ms << LOGICAL_BITS) | self.logical_start
    }
    pub fn last(&self) -> i64 {
        (self.physical_ms << LOGICAL_BITS) | (self.logical_start + self.count - 1)
    }
}

/// The allocator (see the module docs and `pyxia/tso/allocator.py`).
#[derive(Debug, Clone)]
pub struct Allocator {
    epoch: Option<i64>,
    high_water: i64,
    last_physical: i64,
    last_logical: i64,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            epoch: None,
            high_water: -1,
            last_physical: -1,
            last_logical: LOGICAL_MAX,
        }
    }
}

impl Allocator {
    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    pub fn high_water(&self) -> Option<i64> {
        self.epoch.map(|_| self.high_water)
    }

    /// Serving at `epoch` from `floor_ms` (logical 0) up to `high_water_ms`. The caller has
    /// checked `0 < floor <= high_water <= MAX_PHYSICAL`.
    pub fn become_leader(&mut self, floor_ms: i64, high_water_ms: i64, epoch: i64) {
        self.epoch = Some(epoch);
        self.high_water = high_water_ms;
        self.last_physical = floor_ms - 1;
        self.last_logical = LOGICAL_MAX;
    }

    pub fn step_down(&mut self) {
        self.epoch = None;
        self.high_water = -1;
    }

    fn next(&self, count: i64, now_ms: i64) -> (i64, i64) {
        let last = self.last_physical;
        if now_ms > last {
            return (now_ms, 0);
        }
        let start = self.last_logical + 1;
        if start + count - 1 > LOGICAL_MAX {
            return (last + 1, 0);
        }
        (last, start)
    }

    pub fn would_grant(&self, count: i64, now_ms: i64) -> bool {
        self.epoch.is_some() && self.next(count, now_ms).0 <= self.high_water
    }

    pub fn try_grant(&mut self, count: i64, now_ms: i64) -> Result<Grant, Refusal> {
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(Refusal::InvalidCount);
        }
        let epoch = self.epoch.ok_or(Refusal::NotLeader)?;
        let (physical, logical) = self.next(count, now_ms);
        if physical > self.high_water {
            if physical > MAX_PHYSICAL {
                return Err(Refusal::AdvanceOutOfRange);
            }
            return Err(Refusal::WindowExhausted);
        }
        self.last_physical = physical;
        self.last_logical = logical + count - 1;
        Ok(Grant {
            physical_ms: physical,
            logical_start: logical,
            count,
            epoch,
        })
    }

    /// `(epoch, max(H + 1, now, last + 1) + ahead_ms)`.
    pub fn prepare_extension(&self, now_ms: i64, ahead_ms: i64) -> Result<(i64, i64), Refusal> {
        let epoch = self.epoch.ok_or(Refusal::NotLeader)?;
        let base = (self.high_water + 1)
            .max(now_ms)
            .max(self.last_physical + 1);
        let requested = base.saturating_add(ahead_ms);
        if requested > MAX_PHYSICAL {
            return Err(Refusal::AdvanceOutOfRange);
        }
        Ok((epoch, requested))
    }

    /// `H` itself while it stays `min_ahead_ms` ahead of the clock and the last grant, else
    /// an extension by `window_ahead_ms`.
    pub fn prepare_renewal(
        &self,
        now_ms: i64,
        min_ahead_ms: i64,
        window_ahead_ms: i64,
    ) -> Result<(i64, i64), Refusal> {
        let epoch = self.epoch.ok_or(Refusal::NotLeader)?;
        if self.high_water
            >= now_ms
                .max(self.last_physical + 1)
                .saturating_add(min_ahead_ms)
        {
            return Ok((epoch, self.high_water));
        }
        self.prepare_extension(now_ms, window_ahead_ms)
    }

    /// Applies a durable high-water of `epoch`; false if the epoch changed or it does not
    /// advance the window.
    pub fn commit(&mut self, epoch: i64, durable_ms: i64) -> Result<bool, Refusal> {
        if self.epoch != Some(epoch) || durable_ms <= self.high_water {
            return Ok(false);
        }
        if durable_ms > MAX_PHYSICAL {
            return Err(Refusal::AdvanceOutOfRange);
        }
        self.high_water = durable_ms;
        Ok(true)
    }
}

/// The allocator and the fast-path deadline, shared by Python and the native server.
#[derive(Debug, Default)]
pub struct Window {
    pub state: Mutex<WindowState>,
}

#[derive(Debug, Default)]
pub struct WindowState {
    pub allocator: Allocator,
    /// The native server grants while `monotonic < fast_until` (seconds of
    /// `CLOCK_MONOTONIC`, Python's `time.monotonic()`); `None`: no time limit (no lease).
    pub fast_until: Option<f64>,
    pub fast_grants: u64,
    pub fast_timestamps: u64,
    pub handed_to_python: u64,
}

impl Window {
    /// A grant on the native fast path, or None when Python must answer the call.
    pub fn fast_grant(&self, count: i64, now_ms: i64, monotonic_s: f64) -> Option<Grant> {
        let mut st = self.state.lock();
        let open = match st.fast_until {
            None => true,
            Some(until) => monotonic_s < until,
        };
        let grant = if open {
            st.allocator.try_grant(count, now_ms).ok()
        } else {
            None
        };
        match grant {
            Some(g) => {
                st.fast_grants += 1;
                st.fast_timestamps += g.count as u64;
            }
            None => st.handed_to_python += 1,
        }
        grant
    }
}

/// The wire epoch of a term: `term + 1` (0 means "no epoch" in tsoracle's protocol).
pub fn wire_epoch(term: i64) -> u64 {
    (term as u64).wrapping_add(1)
}

// -- the GetTs messages (tsoracle.v1, protobuf) ------------------------------------------------

/// `GetTsRequest.count`, or None for bytes that are not a valid protobuf message (Python
/// answers those with INVALID_ARGUMENT). Unknown fields are skipped; a missing count is 0.
pub fn decode_get_ts_request(mut buf: &[u8]) -> Option<u64> {
    let mut count = 0u64;
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return None;
        }
        match wire {
            0 => {
                let v = read_varint(&mut buf)?;
                if field == 1 {
                    count = v & 0xffff_ffff;
                }
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let n = usize::try_from(read_varint(&mut buf)?).ok()?;
                buf = buf.get(n..)?;
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some(count)
}

/// `GetTsResponse{physical_ms, logical_start, count, epoch_hi: 0, epoch_lo}` (zero fields
/// omitted, as proto3 does).
pub fn encode_get_ts_response(g: &Grant) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for (field, value) in [
        (1u64, g.physical_ms as u64),
        (2, g.logical_start as u64),
        (3, g.count as u64),
        (5, wire_epoch(g.epoch)),
    ] {
        if value != 0 {
            write_varint(&mut out, field << 3);
            write_varint(&mut out, value);
        }
    }
    out
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leader(floor: i64, hw: i64) -> Allocator {
        let mut a = Allocator::default();
        a.become_leader(floor, hw, 3);
        a
    }

    #[test]
    fn refuses_without_epoch_and_past_high_water() {
        let mut a = Allocator::default();
        assert_eq!(a.try_grant(1, 10), Err(Refusal::NotLeader));
        let mut a = leader(10, 12);
        assert_eq!(a.try_grant(1, 13), Err(Refusal::WindowExhausted));
        assert_eq!(a.try_grant(0, 10), Err(Refusal::InvalidCount));
        assert_eq!(a.try_grant(MAX_COUNT + 1, 10), Err(Refusal::InvalidCount));
        let g = a.try_grant(5, 11).unwrap();
        assert_eq!((g.physical_ms, g.logical_start, g.epoch), (11, 0, 3));
        a.step_down();
        assert_eq!(a.try_grant(1, 11), Err(Refusal::NotLeader));
    }

    #[test]
    fn first_grant_is_at_the_floor_even_with_a_clock_behind() {
        let mut a = leader(100, 200);
        let g = a.try_grant(1, 50).unwrap();
        assert_eq!((g.physical_ms, g.logical_start), (100, 0));
    }

    #[test]
    fn commit_ignores_other_epochs_and_regressions() {
        let mut a = leader(10, 20);
        assert_eq!(a.commit(2, 30), Ok(false));
        assert_eq!(a.commit(3, 15), Ok(false));
        assert_eq!(a.commit(3, 30), Ok(true));
        assert_eq!(a.high_water(), Some(30));
        assert_eq!(
            a.commit(3, MAX_PHYSICAL + 1),
            Err(Refusal::AdvanceOutOfRange)
        );
    }

    #[test]
    fn fast_path_honours_the_deadline() {
        let w = Window::default();
        w.state.lock().allocator.become_leader(10, 100, 0);
        w.state.lock().fast_until = Some(5.0);
        assert!(w.fast_grant(1, 10, 4.9).is_some());
        assert!(w.fast_grant(1, 10, 5.0).is_none());
        w.state.lock().fast_until = None;
        assert!(w.fast_grant(1, 10, 1e9).is_some());
        w.state.lock().allocator.step_down();
        assert!(w.fast_grant(1, 10, 0.0).is_none());
        let st = w.state.lock();
        assert_eq!((st.fast_grants, st.handed_to_python), (2, 2));
    }

    #[test]
    fn wire_messages() {
        assert_eq!(decode_get_ts_request(&[]), Some(0));
        assert_eq!(decode_get_ts_request(&[0x08, 0x01]), Some(1));
        assert_eq!(
            decode_get_ts_request(&[0x08, 0x80, 0x80, 0x10]),
            Some(262_144)
        );
        // an unknown length-delimited field, then the count
        assert_eq!(
            decode_get_ts_request(&[0x12, 0x01, 0xff, 0x08, 0x07]),
            Some(7)
        );
        assert_eq!(decode_get_ts_request(&[0x08]), None);
        assert_eq!(decode_get_ts_request(&[0x12, 0x05, 0x00]), None);
        assert_eq!(decode_get_ts_request(&[0x0b]), None); // wire type 3
        let g = Grant {
            physical_ms: 1_700_000_000_000,
            logical_start: 0,
            count: 1,
            epoch: 0,
        };
        let out = encode_get_ts_response(&g);
        assert_eq!(out[0], 0x08);
        assert_eq!(&out[out.len() - 4..], &[0x18, 0x01, 0x28, 0x01]);
    }

    proptest! {
        #[test]
        fn grants_strictly_increase_and_stay_under_the_high_water(
            steps in proptest::collection::vec((0i64..40, 1i64..200_000, any::<bool>()), 1..200)
        ) {
            let mut a = leader(1_000, 1_005);
            let mut last = -1i64;
            for (clock, count, extend) in steps {
                let now = 990 + clock;
                if extend {
                    let (epoch, requested) = a.prepare_extension(now, 3).unwrap();
                    a.commit(epoch, requested).unwrap();
                }
                if let Ok(g) = a.try_grant(count, now) {
                    prop_assert!(g.first() > last);
                    prop_assert!(g.physical_ms <= a.high_water().unwrap());
                    prop_assert!(g.logical_start + g.count - 1 <= LOGICAL_MAX);
                    last = g.last();
                }
            }
        }
    }
}
