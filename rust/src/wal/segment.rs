//! Segment files: `<base offset, 20 digits>.txnx` holds records,
//! `<base offset>.idxx` holds the index (`u32 masked crc | u32 position…`,
//! big-endian), written when the segment is closed and rebuilt by a scan when
//! it is missing, stale or corrupt.
//!
//! Segment sizes vary: a file's length is its capacity, so logs written with
//! any sizes (the old fixed 64 MiB included) open alike. A new segment is
//! sized to the shard's write rate ([`next_segment_size`]), so a thousand
//! quiet shards do not reserve 64 MiB each.
//!
//! The writable segment is memory-mapped. Its mapping lives in an
//! `Arc<RwSegment>`: the sync thread clones the `Arc` before it flushes, so
//! the mapping can only be unmapped (on the last drop) after every flush that
//! uses it has finished. The Flush-vs-Close race of Oxia #893 cannot happen.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use memmap2::MmapRaw;

use super::codec::{self, Scan, HEADER_LEN};
use super::crc;
use super::error::{IoContext, Result, WalError};

pub const DATA_EXT: &str = "txnx";
pub const INDEX_EXT: &str = "idxx";

pub fn data_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.{DATA_EXT}"))
}

pub fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.{INDEX_EXT}"))
}

/// Lists the base offsets of the segments in `dir`, sorted.
pub fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    let rd = std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))?;
    for ent in rd {
        let ent = ent.ctx(|| format!("listing {}", dir.display()))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(&format!(".{DATA_EXT}")) {
            if let Ok(base) = stem.parse::<i64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync of directory {}", dir.display()))
}

/// How long a new segment should last at the write rate of the one before it.
pub const SEGMENT_FILL_TARGET: Duration = Duration::from_secs(60);

/// The capacity of the next segment, given that the previous one took
/// `elapsed` to receive `written` bytes: about [`SEGMENT_FILL_TARGET`] of
/// writes at that rate, rounded up to a power of two, within `[min, max]`
/// (`min` is capped at `max`). A busy shard reaches `max` at its first
/// rollover; a quiet one shrinks back to `min`.
pub fn next_segment_size(written: usize, elapsed: Duration, min: usize, max: usize) -> usize {
    let min = min.min(max);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let want = written as f64 * (SEGMENT_FILL_TARGET.as_secs_f64() / secs);
    if !want.is_finite() || want >= max as f64 {
        return max;
    }
    (want as usize).max(1).next_power_of_two().clamp(min, max)
}

/// Encodes an index: masked CRC of the positions, then the positions.
pub fn encode_index(positions: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + positions.len() * 4);
    out.extend_from_slice(&[0u8; 4]);
    for p in positions {
        out.extend_from_slice(&p.to_be_bytes());
    }
    let c = crc::of(&out[4..]);
    out[0..4].copy_from_slice(&c.to_be_bytes());
    out
}

/// Decodes an index file; `None` when it is empty, short or its CRC is bad.
pub fn decode_index(bytes: &[u8]) -> Option<Vec<u32>> {
    if bytes.len() < 8 || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let stored = u32::from_be_bytes(bytes[0..4].try_into().ok()?);
    if crc::of(&bytes[4..]) != stored {
        return None;
    }
    Some(
        bytes[4..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Result of scanning a segment's bytes from the start.
#[derive(Debug)]
pub struct ScanResult {
    pub positions: Vec<u32>,
    /// Byte position just after the last valid record.
    pub end: usize,
    /// CRC of the last valid record (or the seed when none).
    pub last_crc: u32,
    /// Previous-CRC of the first record, when there is one.
    pub first_previous_crc: Option<u32>,
    /// `(position, reason)` of the first thing that is not a valid record.
    pub error: Option<(usize, String)>,
}

/// Scans records from the start of `buf`. `seed` is the CRC the first record
/// must chain from (`None`: accept whatever the first record says).
pub fn scan(buf: &[u8], base: i64, seed: Option<u32>) -> ScanResult {
    let mut positions = Vec::new();
    let mut pos = 0usize;
    let mut expected = seed;
    let mut first_previous_crc = None;
    let mut last_crc = seed.unwrap_or(0);
    loop {
        match codec::scan_record(buf, pos, expected, base + positions.len() as i64) {
            Scan::Record(r) => {
                if first_previous_crc.is_none() {
                    first_previous_crc = Some(r.previous_crc);
                }
                positions.push(pos as u32);
                last_crc = r.crc;
                expected = Some(r.crc);
                pos = r.end();
            }
            Scan::End => {
                return ScanResult {
                    positions,
                    end: pos,
                    last_crc,
                    first_previous_crc,
                    error: None,
                }
            }
            Scan::Invalid(reason) => {
                return ScanResult {
                    positions,
                    end: pos,
                    last_crc,
                    first_previous_crc,
                    error: Some((pos, reason)),
                }
            }
        }
    }
}

/// Position of the last non-zero byte at or after `from`, if any.
pub fn last_nonzero(buf: &[u8], from: usize) -> Option<usize> {
    const CHUNK: usize = 64 * 1024;
    let mut end = buf.len();
    while end > from {
        let start = end.saturating_sub(CHUNK).max(from);
        if let Some(i) = buf[start..end].iter().rposition(|&b| b != 0) {
            return Some(start + i);
        }
        end = start;
    }
    None
}

/// [`last_nonzero`] over `[from, len)` of a file, read with `pread` in chunks
/// rather than through a mapping: checking a segment's zeroed tail at
/// recovery must not map every page of it into the process (a thousand
/// shards' preallocated tails would count as resident memory).
pub fn last_nonzero_in_file(file: &File, from: usize, len: usize) -> std::io::Result<Option<usize>> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut end = len;
    while end > from {
        let start = end.saturating_sub(CHUNK).max(from);
        let chunk = &mut buf[..end - start];
        file.read_exact_at(chunk, start as u64)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(Some(start + i));
        }
        end = start;
    }
    Ok(None)
}

/// The segment being written: a preallocated, memory-mapped file.
pub struct RwSegment {
    pub base: i64,
    pub path: PathBuf,
    pub file: File,
    map: MmapRaw,
    pub capacity: usize,
    /// Whether the file (size, directory entry) has been fsynced since it
    /// was created. Until then every sync also fsyncs the file and the dir.
    pub durable_file: AtomicBool,
}

impl RwSegment {
    /// Creates a new, zeroed segment of `capacity` bytes, allocated on disk
    /// (not sparse: a write to a sparse page of the mapping on a full file
    /// system is a SIGBUS that kills the process; allocated up front, a full
    /// disk is an error of the append that needed the new segment).
    pub fn create(dir: &Path, base: i64, capacity: usize) -> Result<Self> {
        let path = data_path(dir, base);
        // A stale index of an earlier segment with the same base must go.
        remove_if_exists(&index_path(dir, base))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        if let Err(e) = allocate(&file, capacity) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e).ctx(|| format!("preallocating {}", path.display()));
        }
        let map = MmapRaw::map_raw(&file).ctx(|| format!("mapping {}", path.display()))?;
        Ok(RwSegment {
            base,
            path,
            file,
            map,
            capacity,
            durable_file: AtomicBool::new(false),
        })
    }

    /// Opens an existing segment for writing. Its index file is removed first:
    /// from now on it would be stale (Oxia #1228).
    pub fn open(dir: &Path, base: i64) -> Result<Self> {
        let path = data_path(dir, base);
        remove_if_exists(&index_path(dir, base))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let capacity = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len() as usize;
        if capacity == 0 {
            return Err(WalError::Corrupted {
                path,
                position: 0,
                reason: "empty segment file".into(),
            });
        }
        let map = MmapRaw::map_raw(&file).ctx(|| format!("mapping {}", path.display()))?;
        Ok(RwSegment {
            base,
            path,
            file,
            map,
            capacity,
            durable_file: AtomicBool::new(true),
        })
    }

    /// The whole mapping as a byte slice.
    ///
    /// # Safety
    /// The caller must hold the WAL state lock (read or write), so that no
    /// writer changes the bytes being read.
    pub unsafe fn bytes(&self) -> &[u8] {
        std::slice::from_raw_parts(self.map.as_ptr(), self.capacity)
    }

    /// Mutable view of `[pos, pos+len)`.
    ///
    /// # Safety
    /// The caller must hold the WAL state write lock, and the range must not
    /// be read through another live reference meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, pos: usize, len: usize) -> &mut [u8] {
        assert!(pos + len <= self.capacity);
        std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(pos), len)
    }

    /// Makes `[from, to)` durable (msync), plus the file itself the first time.
    pub fn flush(&self, from: usize, to: usize, dir: &Path) -> Result<()> {
        if to > from {
            self.map
                .flush_range(from, to - from)
                .ctx(|| format!("msync of {}", self.path.display()))?;
        }
        if !self.durable_file.load(Ordering::Acquire) {
            self.file
                .sync_all()
                .ctx(|| format!("fsync of {}", self.path.display()))?;
            fsync_dir(dir)?;
            self.durable_file.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes the index file (no fsync: it is rebuilt when bad).
    pub fn write_index(&self, dir: &Path, positions: &[u32]) -> Result<()> {
        let p = index_path(dir, self.base);
        std::fs::write(&p, encode_index(positions)).ctx(|| format!("writing {}", p.display()))
    }
}

/// Sizes `file` to `len` bytes with its blocks allocated (`fallocate`); on a
/// file system without fallocate, sizes it sparse.
fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len as u64),
        _ => Err(err),
    }
}

/// A closed segment, read with `pread` through its own file handle.
pub struct RoSegment {
    pub base: i64,
    pub path: PathBuf,
    pub file: File,
    pub positions: Vec<u32>,
    /// Byte position after the last record.
    pub end: usize,
    pub first_previous_crc: u32,
    pub last_crc: u32,
    /// Size of the file on disk (segments stay preallocated when closed).
    pub file_len: u64,
    /// Timestamp of the newest entry (`u64::MAX` when it cannot be decoded,
    /// so that time-based retention never drops it).
    pub last_timestamp: u64,
}

/// The timestamp of the record at the start of `rec` (header included), or
/// `u64::MAX` when the payload does not decode.
pub fn record_timestamp(rec: &[u8]) -> u64 {
    if rec.len() < HEADER_LEN {
        return u64::MAX;
    }
    let len = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
    rec.get(HEADER_LEN..HEADER_LEN.saturating_add(len))
        .and_then(|p| codec::decode_payload(p).ok())
        .map(|e| e.timestamp)
        .unwrap_or(u64::MAX)
}

impl RoSegment {
    pub fn last_offset(&self) -> i64 {
        self.base + self.positions.len() as i64 - 1
    }

    /// Opens a closed segment. Uses its index when valid, else scans the file
    /// (and rewrites the index). Any invalid record is reported to the caller
    /// with its position; the caller decides whether it may be discarded.
    pub fn open(dir: &Path, base: i64, seed: Option<u32>) -> Result<(Self, Option<(usize, String)>)> {
        let path = data_path(dir, base);
        let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        let len = file.metadata().ctx(|| format!("stat {}", path.display()))?.len() as usize;
        let idx_path = index_path(dir, base);
        if let Ok(bytes) = std::fs::read(&idx_path) {
            if let Some(positions) = decode_index(&bytes) {
                if let Some(seg) = Self::validate_index(&path, &file, base, len, positions, seed) {
                    return Ok((seg, None));
                }
            }
        }
        // Missing, corrupt or stale index: rebuild by scanning.
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)
            .ctx(|| format!("reading {}", path.display()))?;
        let s = scan(&buf, base, seed);
        if s.error.is_none() && !s.positions.is_empty() {
            // Best effort: a failed index write only costs a rescan later.
            let _ = std::fs::write(&idx_path, encode_index(&s.positions));
        }
        let last_timestamp = s
            .positions
            .last()
            .map(|&p| record_timestamp(&buf[p as usize..s.end]))
            .unwrap_or(u64::MAX);
        let seg = RoSegment {
            base,
            path,
            file,
            first_previous_crc: s.first_previous_crc.unwrap_or(s.last_crc),
            positions: s.positions,
            end: s.end,
            last_crc: s.last_crc,
            file_len: len as u64,
            last_timestamp,
        };
        Ok((seg, s.error))
    }

    /// Accepts an index only if it is consistent with the data file: sorted
    /// in-bounds positions, a valid last record carrying the right offset,
    /// the end of data right after it, and the right chain start.
    fn validate_index(
        path: &Path,
        file: &File,
        base: i64,
        file_len: usize,
        positions: Vec<u32>,
        seed: Option<u32>,
    ) -> Option<RoSegment> {
        if positions.is_empty() || positions[0] != 0 {
            return None;
        }
        if positions.windows(2).any(|w| w[1] <= w[0]) {
            return None;
        }
        let read_header = |pos: usize| -> Option<[u8; HEADER_LEN]> {
            let mut h = [0u8; HEADER_LEN];
            if pos + HEADER_LEN > file_len {
                return None;
            }
            file.read_exact_at(&mut h, pos as u64).ok()?;
            Some(h)
        };
        let first = read_header(0)?;
        let first_prev = u32::from_be_bytes(first[4..8].try_into().ok()?);
        if let Some(s) = seed {
            if s != first_prev {
                return None;
            }
        }
        let last_pos = *positions.last()? as usize;
        let h = read_header(last_pos)?;
        let plen = u32::from_be_bytes(h[0..4].try_into().ok()?) as usize;
        let end = last_pos.checked_add(HEADER_LEN)?.checked_add(plen)?;
        if end > file_len {
            return None;
        }
        let mut rec = vec![0u8; end - last_pos];
        file.read_exact_at(&mut rec, last_pos as u64).ok()?;
        let expected_offset = base + positions.len() as i64 - 1;
        let info = match codec::scan_record(&rec, 0, None, expected_offset) {
            Scan::Record(r) => r,
            _ => return None,
        };
        // Nothing may follow the last indexed record (a stale index).
        if end + HEADER_LEN <= file_len {
            let next = read_header(end)?;
            if next[0..4] != [0, 0, 0, 0] {
                return None;
            }
        }
        Some(RoSegment {
            base,
            path: path.to_path_buf(),
            file: file.try_clone().ok()?,
            positions,
            end,
            first_previous_crc: first_prev,
            last_crc: info.crc,
            file_len: file_len as u64,
            last_timestamp: record_timestamp(&rec),
        })
    }

    /// Reads the raw record bytes of entry `i` (header included).
    pub fn read_record(&self, i: usize) -> Result<Vec<u8>> {
        let pos = self.positions[i] as usize;
        let end = self
            .positions
            .get(i + 1)
            .map(|p| *p as usize)
            .unwrap_or(self.end);
        let mut buf = vec![0u8; end - pos];
        self.file
            .read_exact_at(&mut buf, pos as u64)
            .ctx(|| format!("reading {}", self.path.display()))?;
        Ok(buf)
    }
}

pub fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::Io {
            context: format!("removing {}", p.display()),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_roundtrip_and_corruption() {
        let pos = vec![0u32, 30, 77];
        let enc = encode_index(&pos);
        assert_eq!(decode_index(&enc), Some(pos));
        let mut bad = enc.clone();
        bad[6] ^= 1;
        assert_eq!(decode_index(&bad), None);
        assert_eq!(decode_index(&enc[..6]), None);
        assert_eq!(decode_index(&[]), None);
    }

    const MIB: usize = 1024 * 1024;

    #[test]
    fn next_segment_size_follows_the_write_rate() {
        let min = MIB;
        let max = 64 * MIB;
        // 1 MiB in 1 s: a minute of that rate is 60 MiB -> 64 MiB.
        assert_eq!(next_segment_size(MIB, Duration::from_secs(1), min, max), 64 * MIB);
        // 1 MiB in 15 s: 4 MiB a minute.
        assert_eq!(next_segment_size(MIB, Duration::from_secs(15), min, max), 4 * MIB);
        // A quiet shard: 64 MiB over an hour is about 1 MiB a minute.
        assert_eq!(next_segment_size(64 * MIB, Duration::from_secs(3600), min, max), 2 * MIB);
        assert_eq!(next_segment_size(64 * MIB, Duration::from_secs(36_000), min, max), MIB);
        // No time at all, or nothing written: the bounds.
        assert_eq!(next_segment_size(MIB, Duration::ZERO, min, max), max);
        assert_eq!(next_segment_size(0, Duration::from_secs(1), min, max), min);
        // A minimum above the maximum is capped.
        assert_eq!(next_segment_size(0, Duration::from_secs(1), 8 * MIB, 4 * MIB), 4 * MIB);
    }

    proptest::proptest! {
        #[test]
        fn next_segment_size_stays_within_bounds(
            written in 0usize..(1 << 33),
            elapsed_ms in 0u64..(1 << 30),
            min in 4096usize..(1 << 28),
            max in 4096usize..(1 << 32),
        ) {
            let n = next_segment_size(written, Duration::from_millis(elapsed_ms), min, max);
            proptest::prop_assert!(n <= max);
            proptest::prop_assert!(n >= min.min(max));
            // Faster writing never gets a smaller segment.
            let faster = next_segment_size(written, Duration::from_millis(elapsed_ms / 2), min, max);
            proptest::prop_assert!(faster >= n);
        }
    }

    #[test]
    fn last_nonzero_finds_trailing_garbage() {
        let mut b = vec![0u8; 200_000];
        assert_eq!(last_nonzero(&b, 0), None);
        b[150_000] = 1;
        assert_eq!(last_nonzero(&b, 0), Some(150_000));
        assert_eq!(last_nonzero(&b, 150_001), None);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &b).unwrap();
        assert_eq!(last_nonzero_in_file(&f, 0, b.len()).unwrap(), Some(150_000));
        assert_eq!(last_nonzero_in_file(&f, 150_001, b.len()).unwrap(), None);
        assert_eq!(last_nonzero_in_file(&f, 70_000, 150_000).unwrap(), None);
        b[3] = 7;
        let mut g = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut g, &b[..100]).unwrap();
        assert_eq!(last_nonzero_in_file(&g, 0, 100).unwrap(), Some(3));
    }
}
