//! The write-ahead log: one directory per shard, a sequence of segments, a
//! background sync thread doing group commit.
//!
//! Invariants (checked by the tests in this crate and in `tests/`):
//! - offsets are strictly contiguous; an empty log may start anywhere;
//! - every record chains its CRC from the previous record (across segments);
//! - `last_synced_offset` only covers bytes that were msynced (and files that
//!   were fsynced once, with their directory) — rolled-over segments included;
//! - a segment never holds zero entries;
//! - recovery discards an invalid tail only above the caller's commit offset;
//!   below it, it fails with `Corrupted` naming the file and byte.
//!
//! Concurrency: one `RwLock<State>`. Appends, truncation and the sync
//! thread's bookkeeping take it for writing, briefly; reads take it for
//! reading. The sync thread never holds it during msync/fsync: it clones the
//! `Arc<RwSegment>`s it flushes, so a concurrent close or truncate can drop
//! its own references without unmapping memory that is being flushed.

pub mod codec;
pub mod crc;
pub mod error;
pub mod segment;
pub mod test_hooks;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use codec::{Scan, HEADER_LEN};
pub use error::{Result, WalError};
use error::IoContext;
use segment::{RoSegment, RwSegment};
use test_hooks::TestHooks;

pub const INVALID_OFFSET: i64 = -1;
pub const DEFAULT_SEGMENT_SIZE: usize = 64 * 1024 * 1024;
pub const DEFAULT_MIN_SEGMENT_SIZE: usize = 1024 * 1024;
pub const DEFAULT_RETENTION_MS: u64 = 60 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct Options {
    /// Largest size of a new segment file (a larger entry gets a larger
    /// segment). New segments start at `min_segment_size` and are sized to
    /// the shard's write rate in between (see [`segment::next_segment_size`]).
    pub segment_size: usize,
    /// Size of the first segment of a log, and the smallest a quiet shard's
    /// segments shrink to. Capped at `segment_size`.
    pub min_segment_size: usize,
    /// msync/fsync on sync; when false, sync only publishes offsets.
    pub sync_data: bool,
    /// Time-based retention for `trim_expired`.
    pub retention_ms: u64,
    /// Entries at or below this offset are known committed: recovery fails
    /// rather than discard them.
    pub commit_offset: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: DEFAULT_SEGMENT_SIZE,
            min_segment_size: DEFAULT_MIN_SEGMENT_SIZE,
            sync_data: true,
            retention_ms: DEFAULT_RETENTION_MS,
            commit_offset: INVALID_OFFSET,
        }
    }
}

/// One segment as the retention rule sees it (see [`Wal::segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base: i64,
    pub last_offset: i64,
    /// Bytes the segment file takes on disk (its preallocated size).
    pub size_bytes: u64,
    /// Timestamp of its newest entry (`u64::MAX` when unreadable).
    pub last_timestamp: u64,
    /// Closed (read-only) segments are the only ones `trim` may delete.
    pub closed: bool,
}

/// A log entry read back from the WAL, with its place in the CRC chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub term: i64,
    pub offset: i64,
    pub value: Vec<u8>,
    pub timestamp: u64,
    pub crc: u32,
    pub previous_crc: u32,
}

/// An entry as its record stores it: the payload (the entry's `LogEntry`
/// encoding, see [`codec`]), decoded, with its place in the CRC chain.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub payload: &'a [u8],
    pub entry: codec::EntryRef<'a>,
    pub crc: u32,
    pub previous_crc: u32,
}

/// An entry to append, borrowing its value.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub term: i64,
    pub offset: i64,
    pub value: &'a [u8],
    pub timestamp: u64,
}

/// The segment being written (or a rolled one waiting for its final sync).
struct Writable {
    seg: Arc<RwSegment>,
    positions: Vec<u32>,
    write_pos: usize,
    /// Bytes below this position are durable.
    synced_pos: usize,
    /// When this process started writing the segment (created or reopened):
    /// how fast it fills sizes the next one.
    since: Instant,
}

impl Writable {
    fn last_offset(&self) -> i64 {
        self.seg.base + self.positions.len() as i64 - 1
    }

    fn contains(&self, offset: i64) -> bool {
        offset >= self.seg.base && offset <= self.last_offset()
    }

    /// Timestamp of the newest entry (`u64::MAX` when there is none or it
    /// does not decode).
    fn last_timestamp(&self) -> u64 {
        match self.positions.last() {
            Some(&p) => {
                // SAFETY: callers hold the state lock.
                let b = unsafe { self.seg.bytes() };
                segment::record_timestamp(&b[p as usize..self.write_pos])
            }
            None => u64::MAX,
        }
    }

    /// Header fields of record `i` (`(payload_len, previous_crc, crc)`).
    fn header(&self, i: usize) -> (usize, u32, u32) {
        // SAFETY: callers hold the state lock.
        let b = unsafe { self.seg.bytes() };
        let p = self.positions[i] as usize;
        let f = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        (f(p) as usize, f(p + 4), f(p + 8))
    }
}

struct State {
    closed: bool,
    poisoned: Option<String>,
    /// Closed segments, oldest first.
    ro: VecDeque<Arc<RoSegment>>,
    /// Rolled-over segments not yet durable and closed, oldest first.
    pending: Vec<Writable>,
    current: Option<Writable>,
    last_appended: i64,
    last_crc: u32,
    /// Capacity of the next segment created (see [`segment::next_segment_size`]).
    next_segment_size: usize,
    /// Bumped by truncate/clear/close: a sync round captured before that
    /// must not publish what it captured.
    epoch: u64,
}

impl State {
    fn is_empty(&self) -> bool {
        self.last_appended == INVALID_OFFSET
    }

    fn first_offset(&self) -> i64 {
        if let Some(s) = self.ro.front() {
            s.base
        } else if let Some(w) = self.pending.first() {
            w.seg.base
        } else if let Some(w) = &self.current {
            w.seg.base
        } else {
            INVALID_OFFSET
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.closed {
            return Err(WalError::Closed);
        }
        if let Some(p) = &self.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        Ok(())
    }
}

struct SyncCtl {
    requested: bool,
    shutdown: bool,
}

/// Latency samples of sync rounds, for `pyxia wal perf` and metrics.
#[derive(Default)]
struct SyncStats {
    rounds: u64,
    samples_us: Vec<u32>,
}

const MAX_SYNC_SAMPLES: usize = 1 << 16;

struct Inner {
    dir: PathBuf,
    opts: Options,
    state: RwLock<State>,
    last_synced: AtomicI64,
    last_appended: AtomicI64,
    closed: AtomicBool,
    ctl: Mutex<SyncCtl>,
    ctl_cv: Condvar,
    synced_mu: Mutex<()>,
    synced_cv: Condvar,
    /// Held for the whole of a sync round, by the sync thread or by a
    /// caller syncing inline, so rounds never overlap.
    round: Mutex<()>,
    stats: Mutex<SyncStats>,
    /// Pipe written once per sync round so an event loop can wake up.
    notify_read: RawFd,
    notify_write: RawFd,
    /// Pipe written once per sync round that closed a segment (a rolled-over
    /// segment became durable and read-only): the retention check's trigger.
    closed_read: RawFd,
    closed_write: RawFd,
    /// Opt-in test hooks (synced-offset mark, broken ack-before-fsync mode).
    hooks: TestHooks,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: both descriptors were created by `pipe2` and are owned here.
        unsafe {
            libc::close(self.notify_read);
            libc::close(self.notify_write);
            libc::close(self.closed_read);
            libc::close(self.closed_write);
        }
    }
}

/// The owner handle of an open WAL. Dropping it closes the WAL.
pub struct Wal {
    inner: Arc<Inner>,
    sync_thread: Mutex<Option<JoinHandle<()>>>,
}

/// A forward reader: yields entries from an offset up to the last appended.
pub struct Reader {
    inner: Arc<Inner>,
    next: i64,
}

/// A reverse reader: yields entries from the last appended down to the first.
pub struct ReverseReader {
    inner: Arc<Inner>,
    next: i64,
}

fn corrupted(path: &Path, position: usize, reason: impl Into<String>) -> WalError {
    WalError::Corrupted {
        path: path.to_path_buf(),
        position: position as u64,
        reason: reason.into(),
    }
}

/// Reads up to `buf.len()` bytes from the start of the file; returns how many.
fn read_prefix(p: &Path, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).ctx(|| format!("opening {}", p.display()))?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).ctx(|| format!("reading {}", p.display())),
        }
    }
    Ok(got)
}

fn delete_segment_files(dir: &Path, base: i64) -> Result<()> {
    // Index first: the data file is what recovery discovers (Oxia #920).
    segment::remove_if_exists(&segment::index_path(dir, base))?;
    segment::remove_if_exists(&segment::data_path(dir, base))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn make_pipe() -> Result<(RawFd, RawFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(WalError::Io {
            context: "creating the sync notification pipe".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((fds[0], fds[1]))
}

/// The last non-zero byte of `seg` at or after `from`, read from the file
/// (not through the mapping: see [`segment::last_nonzero_in_file`]).
fn tail_garbage(seg: &RwSegment, from: usize) -> Result<Option<usize>> {
    segment::last_nonzero_in_file(&seg.file, from, seg.capacity)
        .ctx(|| format!("reading {}", seg.path.display()))
}

/// Opens the segment at `base` for writing, scanning and repairing its tail.
/// Returns `None` (after deleting it) when it holds no valid entry and its
/// first entry is above the commit offset.
fn open_writable(
    dir: &Path,
    base: i64,
    seed: Option<u32>,
    commit_offset: i64,
) -> Result<Option<(Writable, u32)>> {
    let seg = RwSegment::open(dir, base)?;
    // SAFETY: the segment is not shared yet.
    let bytes = unsafe { seg.bytes() };
    let s = segment::scan(bytes, base, seed);
    let next_offset = base + s.positions.len() as i64;
    let garbage_from = match &s.error {
        Some((pos, reason)) => {
            if next_offset <= commit_offset {
                return Err(corrupted(
                    &seg.path,
                    *pos,
                    format!("{reason} (entry {next_offset}, at or below commit offset {commit_offset})"),
                ));
            }
            Some(*pos)
        }
        None => tail_garbage(&seg, s.end)?.map(|_| s.end),
    };
    if let Some(from) = garbage_from {
        // Discard the torn/corrupt tail: zero everything after the valid
        // prefix, so nothing of it can be mistaken for data later.
        if let Some(last) = tail_garbage(&seg, from)? {
            // SAFETY: not shared yet; the range is within the mapping.
            unsafe { seg.bytes_mut(from, last + 1 - from).fill(0) };
            seg.flush(from, last + 1, dir)?;
        }
    }
    if s.positions.is_empty() {
        drop(seg);
        delete_segment_files(dir, base)?;
        return Ok(None);
    }
    // What a crash left in the page cache may not be on disk yet.
    seg.flush(0, s.end, dir)?;
    let w = Writable {
        seg: Arc::new(seg),
        positions: s.positions,
        write_pos: s.end,
        synced_pos: s.end,
        since: Instant::now(),
    };
    Ok(Some((w, s.last_crc)))
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering what is there.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Self::open_with_test_hooks(dir, opts, TestHooks::from_env())
    }

    /// `open` with explicit test hooks instead of the environment's.
    pub fn open_with_test_hooks(
        dir: impl AsRef<Path>,
        opts: Options,
        mut hooks: TestHooks,
    ) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        if opts.segment_size < 4096 || opts.segment_size > u32::MAX as usize {
            return Err(WalError::InvalidArgument(format!(
                "segment size must be between 4 KiB and 4 GiB, got {}",
                opts.segment_size
            )));
        }
        if opts.min_segment_size < 4096 {
            return Err(WalError::InvalidArgument(format!(
                "the minimum segment size must be at least 4 KiB, got {}",
                opts.min_segment_size
            )));
        }
        let mut opts = opts;
        opts.min_segment_size = opts.min_segment_size.min(opts.segment_size);
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let state = Self::recover(&dir, &opts)?;
        let last = state.last_appended;
        hooks.attach(&dir)?;
        hooks.set_mark(last)?;
        let (nr, nw) = make_pipe()?;
        let (cr, cw) = match make_pipe() {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: both descriptors were just created and are owned here.
                unsafe {
                    libc::close(nr);
                    libc::close(nw);
                }
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            dir,
            opts,
            state: RwLock::new(state),
            last_synced: AtomicI64::new(last),
            last_appended: AtomicI64::new(last),
            closed: AtomicBool::new(false),
            ctl: Mutex::new(SyncCtl {
                requested: false,
                shutdown: false,
            }),
            ctl_cv: Condvar::new(),
            synced_mu: Mutex::new(()),
            synced_cv: Condvar::new(),
            round: Mutex::new(()),
            stats: Mutex::new(SyncStats::default()),
            notify_read: nr,
            notify_write: nw,
            closed_read: cr,
            closed_write: cw,
            hooks,
        });
        let th_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name("pyxia-wal-sync".into())
            .spawn(move || sync_loop(th_inner))
            .ctx(|| "starting the WAL sync thread".to_string())?;
        Ok(Wal {
            inner,
            sync_thread: Mutex::new(Some(handle)),
        })
    }

    fn recover(dir: &Path, opts: &Options) -> Result<State> {
        let commit = opts.commit_offset;
        let mut bases = segment::list_segments(dir)?;
        let mut removed_any = false;

        // Trailing segments whose first record never reached the disk (a
        // crash right after a rollover) hold nothing acknowledged: drop them.
        // So do trailing files shorter than a header: a kill -9 between the
        // creation of a segment file and its preallocation leaves it empty.
        while let Some(&b) = bases.last() {
            let p = segment::data_path(dir, b);
            // Only the first header matters (not the whole preallocated file).
            let mut head = [0u8; HEADER_LEN];
            let got = read_prefix(&p, &mut head)?;
            if head[..got].iter().all(|&x| x == 0) {
                if b <= commit {
                    return Err(corrupted(
                        &p,
                        0,
                        format!("segment lost its data, but its first entry {b} is at or below commit offset {commit}"),
                    ));
                }
                delete_segment_files(dir, b)?;
                bases.pop();
                removed_any = true;
            } else {
                break;
            }
        }

        let mut ro: VecDeque<Arc<RoSegment>> = VecDeque::new();
        let mut seed: Option<u32> = None;
        let mut expected_base: Option<i64> = None;
        let mut writable_base: Option<i64> = None;
        for (i, &b) in bases.iter().enumerate() {
            if let Some(e) = expected_base {
                if b != e {
                    let p = segment::data_path(dir, b);
                    if e <= commit {
                        return Err(corrupted(&p, 0, format!("gap in the log: expected a segment starting at {e}")));
                    }
                    // Unacknowledged segments after a gap: discard them.
                    for &later in &bases[i..] {
                        delete_segment_files(dir, later)?;
                    }
                    removed_any = true;
                    break;
                }
            }
            if i + 1 == bases.len() {
                writable_base = Some(b);
                break;
            }
            let (s, err) = RoSegment::open(dir, b, seed)?;
            if let Some((pos, reason)) = err {
                let off = b + s.positions.len() as i64;
                if off <= commit {
                    return Err(corrupted(
                        &s.path,
                        pos,
                        format!("{reason} (entry {off}, at or below commit offset {commit})"),
                    ));
                }
                // The valid prefix of this segment ends the log.
                for &later in &bases[i + 1..] {
                    delete_segment_files(dir, later)?;
                }
                removed_any = true;
                writable_base = Some(b);
                break;
            }
            seed = Some(s.last_crc);
            expected_base = Some(s.last_offset() + 1);
            ro.push_back(Arc::new(s));
        }

        let mut current = None;
        let mut last_crc = 0u32;
        let mut candidate = writable_base;
        while let Some(b) = candidate {
            match open_writable(dir, b, seed, commit)? {
                Some((w, crc)) => {
                    last_crc = crc;
                    current = Some(w);
                    break;
                }
                None => {
                    removed_any = true;
                    // Step back: the previous closed segment becomes writable.
                    candidate = ro.pop_back().map(|s| {
                        seed = ro.back().map(|p| p.last_crc);
                        s.base
                    });
                }
            }
        }
        if removed_any {
            segment::fsync_dir(dir)?;
        }

        let last_appended = match (&current, ro.back()) {
            (Some(w), _) => w.last_offset(),
            (None, Some(s)) => s.last_offset(),
            (None, None) => INVALID_OFFSET,
        };
        if current.is_none() {
            if let Some(s) = ro.back() {
                last_crc = s.last_crc;
            }
        }
        if last_appended != INVALID_OFFSET && last_appended < commit {
            return Err(corrupted(
                dir,
                0,
                format!("committed entries are missing: the log ends at {last_appended}, the commit offset is {commit}"),
            ));
        }
        // A reopened log goes on at the size it had reached (an old log's
        // 64 MiB segments included), within the bounds.
        let next_segment_size = current
            .as_ref()
            .map(|w| w.seg.capacity)
            .unwrap_or(opts.min_segment_size)
            .clamp(opts.min_segment_size, opts.segment_size);
        Ok(State {
            closed: false,
            poisoned: None,
            ro,
            pending: Vec::new(),
            current,
            last_appended,
            last_crc,
            next_segment_size,
            epoch: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Appends entries (not yet durable). Offsets must continue the log;
    /// `previous_crc`, when given, must match the log's last CRC — or, on an
    /// empty log, seeds the CRC chain (after a snapshot install).
    /// Returns the CRC of the last entry appended.
    pub fn append_batch(&self, entries: &[NewEntry<'_>], previous_crc: Option<u32>) -> Result<u32> {
        let inner = &*self.inner;
        let mut st = inner.state.write();
        st.check_usable()?;
        if entries.is_empty() {
            return Ok(st.last_crc);
        }
        // Validate the whole batch before writing any of it.
        if !st.is_empty() && entries[0].offset != st.last_appended + 1 {
            return Err(WalError::InvalidNextOffset {
                expected: st.last_appended + 1,
                got: entries[0].offset,
            });
        }
        for w in entries.windows(2) {
            if w[1].offset != w[0].offset + 1 {
                return Err(WalError::InvalidNextOffset {
                    expected: w[0].offset + 1,
                    got: w[1].offset,
                });
            }
        }
        if entries[0].offset < 0 {
            return Err(WalError::InvalidArgument(format!(
                "offsets must be >= 0, got {}",
                entries[0].offset
            )));
        }
        if let Some(p) = previous_crc {
            if st.is_empty() {
                st.last_crc = p;
            } else if p != st.last_crc {
                return Err(WalError::CrcMismatch {
                    offset: entries[0].offset,
                    expected: st.last_crc,
                    got: p,
                });
            }
        } else if st.is_empty() {
            st.last_crc = 0;
        }
        let mut result = Ok(());
        for e in entries {
            if let Err(err) = self.append_one(&mut st, e) {
                result = Err(err);
                break;
            }
        }
        inner.last_appended.store(st.last_appended, Ordering::Release);
        result.map(|_| st.last_crc)
    }

    fn append_one(&self, st: &mut State, e: &NewEntry<'_>) -> Result<()> {
        let plen = codec::payload_len(e.term, e.offset, e.value.len());
        let rec_len = HEADER_LEN + plen;
        let fits = st
            .current
            .as_ref()
            .map(|w| (w.write_pos as u64) + (rec_len as u64) <= w.seg.capacity as u64)
            .unwrap_or(false);
        if !fits {
            let opts = &self.inner.opts;
            if let Some(w) = &st.current {
                st.next_segment_size = segment::next_segment_size(
                    w.write_pos,
                    w.since.elapsed(),
                    opts.min_segment_size,
                    opts.segment_size,
                );
            }
            let capacity = st.next_segment_size.max(rec_len);
            if capacity > u32::MAX as usize {
                return Err(WalError::InvalidArgument(format!(
                    "entry of {} bytes is too large",
                    e.value.len()
                )));
            }
            // Rollover: create the next segment now (no fsync here); the old
            // one goes to the sync thread, which makes it durable and closes
            // it before any later offset is acknowledged.
            let seg = RwSegment::create(&self.inner.dir, e.offset, capacity)?;
            if let Some(old) = st.current.take() {
                st.pending.push(old);
            }
            st.current = Some(Writable {
                seg: Arc::new(seg),
                positions: Vec::new(),
                write_pos: 0,
                synced_pos: 0,
                since: Instant::now(),
            });
        }
        let prev = st.last_crc;
        let w = st.current.as_mut().expect("a writable segment exists");
        // SAFETY: we hold the state write lock; the range is past every
        // position a reader may look at.
        let buf = unsafe { w.seg.bytes_mut(w.write_pos, rec_len) };
        let crc = codec::write_record(buf, prev, e.term, e.offset, e.value, e.timestamp);
        w.positions.push(w.write_pos as u32);
        w.write_pos += rec_len;
        st.last_crc = crc;
        st.last_appended = e.offset;
        Ok(())
    }

    pub fn append(&self, e: NewEntry<'_>, previous_crc: Option<u32>) -> Result<u32> {
        self.append_batch(std::slice::from_ref(&e), previous_crc)
    }

    /// Asks the sync thread for a round; returns at once.
    pub fn request_sync(&self) {
        self.inner.request_sync();
    }

    /// Runs a sync round in the calling thread (no hand-off to the sync
    /// thread and back) and returns once everything appended so far is
    /// durable. For a caller with one write outstanding and nothing else to
    /// do, this saves two thread wake-ups per write; under load
    /// [`Wal::request_sync`] keeps appends and syncs overlapping. A failed
    /// flush poisons the WAL exactly as in the sync thread.
    pub fn sync_inline(&self) -> Result<()> {
        if self.is_closed() {
            return Err(WalError::Closed);
        }
        self.inner.run_round(true);
        let st = self.inner.state.read();
        st.check_usable()
    }

    /// [`Wal::sync_inline`] that does not write the notify pipe: the caller
    /// tells the log's owner itself (a sync group, see [`sync_many`]).
    /// Threads blocked in [`Wal::wait_synced`] are woken as usual.
    pub fn sync_inline_quiet(&self) -> Result<()> {
        if self.is_closed() {
            return Err(WalError::Closed);
        }
        self.inner.run_round(false);
        let st = self.inner.state.read();
        st.check_usable()
    }

    /// Waits until `offset` is durable. `Ok(false)` on timeout.
    pub fn wait_synced(&self, offset: i64, timeout: Option<Duration>) -> Result<bool> {
        self.inner.wait_synced(offset, timeout)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        if self.is_closed() {
            return Err(WalError::Closed);
        }
        let target = self.inner.last_appended.load(Ordering::Acquire);
        self.inner.request_sync();
        self.inner.wait_synced(target, None).map(|_| ())
    }

    pub fn last_offset(&self) -> i64 {
        self.inner.last_appended.load(Ordering::Acquire)
    }

    pub fn last_synced_offset(&self) -> i64 {
        self.inner.last_synced.load(Ordering::Acquire)
    }

    pub fn first_offset(&self) -> i64 {
        self.inner.state.read().first_offset()
    }

    pub fn last_crc(&self) -> u32 {
        self.inner.state.read().last_crc
    }

    /// Why the WAL stopped accepting writes, if a sync failed.
    pub fn failure(&self) -> Option<String> {
        self.inner.state.read().poisoned.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Descriptor that becomes readable after each sync round.
    pub fn notify_fd(&self) -> RawFd {
        self.inner.notify_read
    }

    /// Descriptor that becomes readable after a sync round that closed a
    /// segment (only closed segments can be trimmed). The reader drains it.
    pub fn segment_closed_fd(&self) -> RawFd {
        self.inner.closed_read
    }

    /// The segments, oldest first, as retention sees them: closed segments
    /// (the only ones `trim` may delete), then the ones still written.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let st = self.inner.state.read();
        let mut out: Vec<SegmentInfo> = st
            .ro
            .iter()
            .map(|s| SegmentInfo {
                base: s.base,
                last_offset: s.last_offset(),
                size_bytes: s.file_len,
                last_timestamp: s.last_timestamp,
                closed: true,
            })
            .collect();
        for w in st.pending.iter().chain(st.current.iter()) {
            if w.positions.is_empty() {
                continue;
            }
            out.push(SegmentInfo {
                base: w.seg.base,
                last_offset: w.last_offset(),
                size_bytes: w.seg.capacity as u64,
                last_timestamp: w.last_timestamp(),
                closed: false,
            });
        }
        out
    }

    /// `(rounds, latencies in µs)` of the sync rounds so far (bounded sample).
    pub fn sync_stats(&self) -> (u64, Vec<u32>) {
        let s = self.inner.stats.lock();
        (s.rounds, s.samples_us.clone())
    }

    pub fn read(&self, offset: i64) -> Result<Entry> {
        self.inner.read(offset)
    }

    /// Reads up to `max_entries` entries from `from` (fewer at the end of the
    /// log or once `max_bytes` of values are collected; at least one).
    pub fn read_batch(&self, from: i64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        self.inner.read_batch(from, max_entries, max_bytes)
    }

    /// Calls `f` with each stored entry from `from`, as [`Wal::read_batch`]
    /// would read them (the same limits), without copying them out: the
    /// payload is the record's bytes, valid during the call. The WAL's read
    /// lock is held throughout, so `f` must be quick and must not touch the
    /// WAL. Returns how many entries were visited.
    pub fn visit_batch(
        &self,
        from: i64,
        max_entries: usize,
        max_bytes: usize,
        mut f: impl FnMut(Stored<'_>),
    ) -> Result<usize> {
        self.inner.visit_batch(from, max_entries, max_bytes, &mut f)
    }

    pub fn reader(&self, from: i64) -> Reader {
        Reader {
            inner: self.inner.clone(),
            next: from,
        }
    }

    pub fn reverse_reader(&self) -> ReverseReader {
        ReverseReader {
            inner: self.inner.clone(),
            next: self.last_offset(),
        }
    }

    /// Drops every entry after `last_safe_offset`; `-1` (or an offset below
    /// the first entry) clears the log. Returns the new last offset.
    pub fn truncate(&self, last_safe_offset: i64) -> Result<i64> {
        let inner = &*self.inner;
        let mut st = inner.state.write();
        st.check_usable()?;
        if st.is_empty() || last_safe_offset >= st.last_appended {
            return Ok(st.last_appended);
        }
        if last_safe_offset < st.first_offset() {
            self.clear_locked(&mut st)?;
            return Ok(INVALID_OFFSET);
        }
        st.epoch += 1;
        let dir = &inner.dir;
        let mut deleted = false;
        // Drop whole segments above the cut, newest first, until the segment
        // holding `last_safe_offset` is found; it becomes the writable one.
        let mut target: Option<Writable> = None;
        if let Some(w) = st.current.take() {
            if w.contains(last_safe_offset) {
                target = Some(w);
            } else {
                let base = w.seg.base;
                drop(w);
                delete_segment_files(dir, base)?;
                deleted = true;
            }
        }
        while target.is_none() {
            match st.pending.pop() {
                Some(w) if w.contains(last_safe_offset) => target = Some(w),
                Some(w) => {
                    let base = w.seg.base;
                    drop(w);
                    delete_segment_files(dir, base)?;
                    deleted = true;
                }
                None => break,
            }
        }
        while target.is_none() {
            let s = match st.ro.pop_back() {
                Some(s) => s,
                None => break,
            };
            if s.base <= last_safe_offset && last_safe_offset <= s.last_offset() {
                let seg = RwSegment::open(dir, s.base)?;
                target = Some(Writable {
                    seg: Arc::new(seg),
                    positions: s.positions.clone(),
                    write_pos: s.end,
                    synced_pos: s.end,
                    since: Instant::now(),
                });
            } else {
                let base = s.base;
                drop(s);
                delete_segment_files(dir, base)?;
                deleted = true;
            }
        }
        let mut w = target.ok_or_else(|| {
            corrupted(dir, 0, format!("no segment holds offset {last_safe_offset}"))
        })?;
        let keep = (last_safe_offset - w.seg.base + 1) as usize;
        let old_end = w.write_pos;
        let new_end = w.positions.get(keep).map(|p| *p as usize).unwrap_or(old_end);
        // Zero the cut-off records: recovery stops at the first zero length,
        // so nothing truncated can come back.
        // SAFETY: state write lock held; range within the mapping.
        unsafe { w.seg.bytes_mut(new_end, old_end - new_end).fill(0) };
        w.positions.truncate(keep);
        w.write_pos = new_end;
        w.synced_pos = w.synced_pos.min(new_end);
        let sync = inner.opts.sync_data;
        if sync {
            w.seg.flush(new_end, old_end, dir)?;
            if deleted {
                segment::fsync_dir(dir)?;
            }
        }
        let (_, _, crc) = w.header(keep - 1);
        st.last_crc = crc;
        st.last_appended = last_safe_offset;
        st.current = Some(w);
        inner.hooks.lower_mark(last_safe_offset)?;
        inner.last_appended.store(last_safe_offset, Ordering::Release);
        let synced = inner.last_synced.load(Ordering::Acquire).min(last_safe_offset);
        inner.last_synced.store(synced, Ordering::Release);
        drop(st);
        // Entries up to the cut may still be unsynced; let the thread finish.
        inner.request_sync();
        Ok(last_safe_offset)
    }

    /// Removes every entry; the next append may start at any offset.
    pub fn clear(&self) -> Result<()> {
        let mut st = self.inner.state.write();
        st.check_usable()?;
        self.clear_locked(&mut st)
    }

    fn clear_locked(&self, st: &mut State) -> Result<()> {
        let inner = &*self.inner;
        st.epoch += 1;
        st.current = None;
        st.pending.clear();
        st.ro.clear();
        for b in segment::list_segments(&inner.dir)? {
            delete_segment_files(&inner.dir, b)?;
        }
        segment::fsync_dir(&inner.dir)?;
        st.last_appended = INVALID_OFFSET;
        st.last_crc = 0;
        inner.hooks.lower_mark(INVALID_OFFSET)?;
        inner.last_appended.store(INVALID_OFFSET, Ordering::Release);
        inner.last_synced.store(INVALID_OFFSET, Ordering::Release);
        Ok(())
    }

    /// Deletes closed segments whose entries are all below `before_offset`,
    /// never past `commit_offset`. Returns the new first offset.
    pub fn trim(&self, before_offset: i64, commit_offset: i64) -> Result<i64> {
        let cutoff = before_offset.min(commit_offset.saturating_add(1));
        self.trim_while(|s| Ok(s.last_offset() < cutoff))
    }

    /// Time-based retention: deletes closed segments whose newest entry is
    /// older than the retention period (by entry timestamps), never past
    /// `commit_offset`. Returns the new first offset.
    pub fn trim_expired(&self, commit_offset: i64, now_ms_opt: Option<u64>) -> Result<i64> {
        let now = now_ms_opt.unwrap_or_else(now_ms);
        let cutoff_ts = now.saturating_sub(self.inner.opts.retention_ms);
        self.trim_while(|s| Ok(s.last_offset() <= commit_offset && s.last_timestamp < cutoff_ts))
    }

    fn trim_while(&self, mut pred: impl FnMut(&RoSegment) -> Result<bool>) -> Result<i64> {
        let inner = &*self.inner;
        let mut st = inner.state.write();
        st.check_usable()?;
        let mut deleted = false;
        while let Some(front) = st.ro.front() {
            if !pred(front)? {
                break;
            }
            let base = front.base;
            st.ro.pop_front();
            delete_segment_files(&inner.dir, base)?;
            deleted = true;
        }
        if deleted {
            segment::fsync_dir(&inner.dir)?;
        }
        Ok(st.first_offset())
    }

    /// Closes the WAL: stops the sync thread, makes what was appended
    /// durable, writes the indexes. Idempotent.
    pub fn close(&self) -> Result<()> {
        let inner = &*self.inner;
        {
            let mut st = inner.state.write();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            st.epoch += 1;
        }
        inner.closed.store(true, Ordering::Release);
        {
            let mut c = inner.ctl.lock();
            c.shutdown = true;
            inner.ctl_cv.notify_all();
        }
        if let Some(h) = self.sync_thread.lock().take() {
            let _ = h.join();
        }
        // Wait out an inline round still flushing.
        let _round = inner.round.lock();
        let mut result = Ok(());
        {
            let mut st = inner.state.write();
            let healthy = st.poisoned.is_none();
            let mut all: Vec<Writable> = st.pending.drain(..).collect();
            all.extend(st.current.take());
            for w in &all {
                if healthy && inner.opts.sync_data {
                    if let Err(e) = w.seg.flush(w.synced_pos, w.write_pos, &inner.dir) {
                        result = Err(e);
                        continue;
                    }
                }
                if healthy {
                    if let Err(e) = w.seg.write_index(&inner.dir, &w.positions) {
                        result = Err(e);
                    }
                }
            }
            if healthy && result.is_ok() {
                if inner.opts.sync_data {
                    result = inner.hooks.set_mark(st.last_appended);
                }
                inner.last_synced.store(st.last_appended, Ordering::Release);
            }
            st.ro.clear();
        }
        inner.notify_waiters();
        result
    }

    /// Closes the WAL and deletes its directory.
    pub fn delete(&self) -> Result<()> {
        self.close()?;
        std::fs::remove_dir_all(&self.inner.dir)
            .ctx(|| format!("deleting {}", self.inner.dir.display()))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Inner {
    fn request_sync(&self) {
        let mut c = self.ctl.lock();
        if !c.requested {
            c.requested = true;
            self.ctl_cv.notify_one();
        }
    }

    /// One sync round (see [`Inner::sync_round`]) with its failure handling,
    /// then wakes every waiter.
    fn run_round(&self, notify_pipe: bool) {
        {
            let _round = self.round.lock();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync_round()));
            let failure = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("panic in a WAL sync round".to_string()),
            };
            if let Some(msg) = failure {
                // Never retry a failed fsync (fsyncgate): poison the WAL.
                let mut st = self.state.write();
                if st.poisoned.is_none() {
                    st.poisoned = Some(msg);
                }
            }
        }
        if notify_pipe {
            self.notify_waiters();
        } else {
            self.notify_threads();
        }
    }

    fn notify_threads(&self) {
        let _g = self.synced_mu.lock();
        self.synced_cv.notify_all();
    }

    fn notify_waiters(&self) {
        self.notify_threads();
        let b = [1u8];
        // SAFETY: notify_write is our own non-blocking pipe end; a full pipe
        // (EAGAIN) already guarantees a pending wake-up.
        unsafe {
            libc::write(self.notify_write, b.as_ptr() as *const libc::c_void, 1);
        }
    }

    fn signal_segment_closed(&self) {
        let b = [1u8];
        // SAFETY: closed_write is our own non-blocking pipe end; a full pipe
        // (EAGAIN) already guarantees a pending wake-up.
        unsafe {
            libc::write(self.closed_write, b.as_ptr() as *const libc::c_void, 1);
        }
    }

    fn wait_synced(&self, offset: i64, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.synced_mu.lock();
        loop {
            if self.last_synced.load(Ordering::Acquire) >= offset {
                return Ok(true);
            }
            {
                let st = self.state.read();
                st.check_usable()?;
            }
            match deadline {
                Some(d) => {
                    if self.synced_cv.wait_until(&mut g, d).timed_out()
                        && self.last_synced.load(Ordering::Acquire) < offset
                    {
                        let st = self.state.read();
                        st.check_usable()?;
                        return Ok(false);
                    }
                }
                None => self.synced_cv.wait(&mut g),
            }
        }
    }

    /// One group-commit round: flush everything appended so far (rolled
    /// segments first), then publish the new synced offset.
    fn sync_round(&self) -> Result<()> {
        let (target, epoch, jobs) = {
            let st = self.state.read();
            if st.closed || st.poisoned.is_some() {
                return Ok(());
            }
            let mut jobs: Vec<(Arc<RwSegment>, usize, usize)> = st
                .pending
                .iter()
                .map(|w| (w.seg.clone(), w.synced_pos, w.write_pos))
                .collect();
            if let Some(w) = &st.current {
                jobs.push((w.seg.clone(), w.synced_pos, w.write_pos));
            }
            (st.last_appended, st.epoch, jobs)
        };
        if self.last_synced.load(Ordering::Acquire) >= target && jobs.iter().all(|j| j.1 >= j.2) {
            return Ok(());
        }
        let started = Instant::now();
        // Not flushing is only possible in the broken test mode.
        let flush = self.opts.sync_data && self.hooks.flush_now();
        if flush {
            for (seg, from, to) in &jobs {
                seg.flush(*from, *to, &self.dir)?;
            }
        }
        let elapsed = started.elapsed();
        let mut st = self.state.write();
        if st.epoch != epoch || st.closed {
            return Ok(());
        }
        let advance = flush || !self.opts.sync_data;
        for (seg, _, to) in jobs.iter().filter(|_| advance) {
            let stm = &mut *st;
            let w = stm
                .pending
                .iter_mut()
                .chain(stm.current.iter_mut())
                .find(|w| Arc::ptr_eq(&w.seg, seg));
            if let Some(w) = w {
                w.synced_pos = w.synced_pos.max(*to);
            }
        }
        // Close rolled segments that are now wholly durable.
        let mut closed_any = false;
        while st
            .pending
            .first()
            .map(|w| w.synced_pos >= w.write_pos)
            .unwrap_or(false)
        {
            let w = st.pending.remove(0);
            w.seg.write_index(&self.dir, &w.positions)?;
            let file = w
                .seg
                .file
                .try_clone()
                .ctx(|| format!("reopening {}", w.seg.path.display()))?;
            let (_, first_prev, _) = w.header(0);
            let (_, _, last_crc) = w.header(w.positions.len() - 1);
            let last_timestamp = w.last_timestamp();
            st.ro.push_back(Arc::new(RoSegment {
                base: w.seg.base,
                path: w.seg.path.clone(),
                file,
                positions: w.positions,
                end: w.write_pos,
                first_previous_crc: first_prev,
                last_crc,
                file_len: w.seg.capacity as u64,
                last_timestamp,
            }));
            closed_any = true;
        }
        if flush {
            self.hooks.set_mark(target)?;
        }
        let prev = self.last_synced.load(Ordering::Acquire);
        if target > prev {
            self.last_synced.store(target, Ordering::Release);
        }
        drop(st);
        if closed_any {
            self.signal_segment_closed();
        }
        let mut s = self.stats.lock();
        s.rounds += 1;
        if s.samples_us.len() < MAX_SYNC_SAMPLES {
            s.samples_us.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
        }
        Ok(())
    }

    /// Calls `f` with the stored entry at `offset` (its record checked: CRC, decoding).
    fn with_stored<R>(
        &self,
        st: &State,
        offset: i64,
        f: impl FnOnce(Stored<'_>) -> R,
    ) -> Result<R> {
        if st.is_empty() || offset < st.first_offset() || offset > st.last_appended {
            return Err(WalError::EntryNotFound(offset));
        }
        let w = st
            .current
            .iter()
            .chain(st.pending.iter().rev())
            .find(|w| w.contains(offset));
        if let Some(w) = w {
            let i = (offset - w.seg.base) as usize;
            let pos = w.positions[i] as usize;
            // SAFETY: state lock held (read): no writer touches these bytes.
            let bytes = unsafe { w.seg.bytes() };
            let end = w.positions.get(i + 1).map(|p| *p as usize).unwrap_or(w.write_pos);
            let stored = stored_from_record(&bytes[pos..end], offset)
                .map_err(|reason| corrupted(&w.seg.path, pos, reason))?;
            Ok(f(stored))
        } else {
            let k = st.ro.partition_point(|s| s.base <= offset);
            let s = st
                .ro
                .get(k.wrapping_sub(1))
                .filter(|s| offset <= s.last_offset())
                .ok_or(WalError::EntryNotFound(offset))?;
            let i = (offset - s.base) as usize;
            let rec = s.read_record(i)?;
            let stored = stored_from_record(&rec, offset)
                .map_err(|reason| corrupted(&s.path, s.positions[i] as usize, reason))?;
            Ok(f(stored))
        }
    }

    fn locate_and_read(&self, st: &State, offset: i64) -> Result<Entry> {
        self.with_stored(st, offset, |s| Entry {
            term: s.entry.term,
            offset: s.entry.offset,
            value: s.entry.value.to_vec(),
            timestamp: s.entry.timestamp,
            crc: s.crc,
            previous_crc: s.previous_crc,
        })
    }

    fn read(&self, offset: i64) -> Result<Entry> {
        let st = self.state.read();
        if st.closed {
            return Err(WalError::Closed);
        }
        self.locate_and_read(&st, offset)
    }

    fn read_batch(&self, from: i64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        let st = self.state.read();
        if st.closed {
            return Err(WalError::Closed);
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut off = from;
        while off <= st.last_appended && out.len() < max_entries.max(1) {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            let e = self.locate_and_read(&st, off)?;
            bytes += e.value.len();
            out.push(e);
            off += 1;
        }
        Ok(out)
    }

    fn visit_batch(
        &self,
        from: i64,
        max_entries: usize,
        max_bytes: usize,
        f: &mut dyn FnMut(Stored<'_>),
    ) -> Result<usize> {
        let st = self.state.read();
        if st.closed {
            return Err(WalError::Closed);
        }
        let mut visited = 0usize;
        let mut bytes = 0usize;
        let mut off = from;
        while off <= st.last_appended && visited < max_entries.max(1) {
            if visited > 0 && bytes >= max_bytes {
                break;
            }
            bytes += self.with_stored(&st, off, |s| {
                let n = s.entry.value.len();
                f(s);
                n
            })?;
            visited += 1;
            off += 1;
        }
        Ok(visited)
    }
}

fn stored_from_record(rec: &[u8], offset: i64) -> std::result::Result<Stored<'_>, String> {
    match codec::scan_record(rec, 0, None, offset) {
        Scan::Record(r) => {
            let payload = &rec[HEADER_LEN..HEADER_LEN + r.payload_len];
            let entry = codec::decode_payload(payload).map_err(|e| e.to_string())?;
            Ok(Stored {
                payload,
                entry,
                crc: r.crc,
                previous_crc: r.previous_crc,
            })
        }
        Scan::End => Err("record is missing (zero header)".into()),
        Scan::Invalid(why) => Err(why),
    }
}

/// One sync round of each WAL ([`Wal::sync_inline_quiet`]), up to `threads`
/// rounds at a time, returning once all are done: a server's many logs share
/// one round (their fsyncs overlap, and the file system commits them
/// together) instead of each waking its own thread and its owner. One result
/// per WAL, in order.
///
/// The calling thread syncs too; up to `threads - 1` helpers from a small
/// process-wide pool join it (spawning threads per round cost more than a
/// small round). Each log is claimed by exactly one thread, so the round
/// completes even if no helper ever starts.
pub fn sync_many(wals: &[Arc<Wal>], threads: usize) -> Vec<Result<()>> {
    let n = wals.len();
    let helpers = threads.clamp(1, n.max(1)) - 1;
    if helpers == 0 {
        return wals.iter().map(|w| w.sync_inline_quiet()).collect();
    }
    let job = Arc::new(SyncJob {
        wals: wals.to_vec(),
        next: std::sync::atomic::AtomicUsize::new(0),
        results: Mutex::new((0, (0..n).map(|_| None).collect())),
        done: Condvar::new(),
    });
    let pool = sync_pool();
    for _ in 0..helpers {
        let j = job.clone();
        pool.submit(Box::new(move || j.work()));
    }
    job.work();
    let mut g = job.results.lock();
    while g.0 < n {
        job.done.wait(&mut g);
    }
    g.1.iter_mut()
        .map(|r| r.take().unwrap_or_else(|| Err(WalError::Poisoned("lost sync result".into()))))
        .collect()
}

/// The logs of one [`sync_many`] call, claimed one at a time by the threads
/// that work on it.
struct SyncJob {
    wals: Vec<Arc<Wal>>,
    next: std::sync::atomic::AtomicUsize,
    /// (logs finished, their results)
    results: Mutex<(usize, Vec<Option<Result<()>>>)>,
    done: Condvar,
}

impl SyncJob {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.wals.len() {
                return;
            }
            let r = self.wals[i].sync_inline_quiet();
            let mut g = self.results.lock();
            g.1[i] = Some(r);
            g.0 += 1;
            if g.0 == self.wals.len() {
                self.done.notify_all();
            }
        }
    }
}

type PoolTask = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads (started on first use, living as long as the
/// process) that run [`sync_many`]'s helper tasks.
struct SyncPool {
    queue: Mutex<VecDeque<PoolTask>>,
    ready: Condvar,
}

const SYNC_POOL_THREADS: usize = 8;

fn sync_pool() -> &'static SyncPool {
    static POOL: std::sync::OnceLock<&'static SyncPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static SyncPool = Box::leak(Box::new(SyncPool {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }));
        for i in 0..SYNC_POOL_THREADS {
            // A pool thread that cannot start only means fewer helpers: the caller of
            // sync_many syncs whatever no helper claims.
            let _ = std::thread::Builder::new()
                .name(format!("pyxia-wal-group-{i}"))
                .spawn(move || pool.run());
        }
        pool
    })
}

impl SyncPool {
    fn submit(&self, task: PoolTask) {
        self.queue.lock().push_back(task);
        self.ready.notify_one();
    }

    fn run(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(t) = q.pop_front() {
                        break t;
                    }
                    self.ready.wait(&mut q);
                }
            };
            // A panic in a round is caught by run_round; never let one kill the thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
        }
    }
}

fn sync_loop(inner: Arc<Inner>) {
    loop {
        {
            let mut c = inner.ctl.lock();
            while !c.requested && !c.shutdown {
                inner.ctl_cv.wait(&mut c);
            }
            if c.shutdown {
                break;
            }
            c.requested = false;
        }
        inner.run_round(true);
    }
}

impl Reader {
    /// The next entry, or `None` at the end of the log (for now).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        if self.next > self.inner.last_appended.load(Ordering::Acquire) {
            return Ok(None);
        }
        let e = self.inner.read(self.next)?;
        self.next += 1;
        Ok(Some(e))
    }

    pub fn next_offset(&self) -> i64 {
        self.next
    }
}

impl ReverseReader {
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        if self.next < 0 {
            return Ok(None);
        }
        let first = self.inner.state.read().first_offset();
        if self.next < first {
            return Ok(None);
        }
        let e = self.inner.read(self.next)?;
        self.next -= 1;
        Ok(Some(e))
    }
}

/// One record as seen by `scan_segment_file` (for `pyxia wal scan`).
#[derive(Debug, Clone)]
pub struct ScannedRecord {
    pub position: u64,
    pub offset: i64,
    pub term: i64,
    pub size: u32,
    pub crc: u32,
    pub previous_crc: u32,
    pub timestamp: u64,
}

/// Reads a segment file without changing it. Returns its records and, if
/// the data does not end cleanly, a description of the first bad byte.
pub fn scan_segment_file(path: &Path) -> Result<(Vec<ScannedRecord>, Option<String>)> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| WalError::InvalidArgument(format!("{} is not a segment file", path.display())))?;
    let bytes = std::fs::read(path).ctx(|| format!("reading {}", path.display()))?;
    let s = segment::scan(&bytes, stem, None);
    let mut out = Vec::with_capacity(s.positions.len());
    for (i, &p) in s.positions.iter().enumerate() {
        let p = p as usize;
        if let Scan::Record(r) = codec::scan_record(&bytes, p, None, stem + i as i64) {
            let e = codec::decode_payload(&bytes[p + HEADER_LEN..r.end()])
                .map_err(|why| corrupted(path, p, why))?;
            out.push(ScannedRecord {
                position: p as u64,
                offset: e.offset,
                term: e.term,
                size: r.payload_len as u32,
                crc: r.crc,
                previous_crc: r.previous_crc,
                timestamp: e.timestamp,
            });
        }
    }
    let err = s.error.map(|(pos, why)| format!("byte {pos}: {why}"));
    let err = err.or_else(|| {
        segment::last_nonzero(&bytes, s.end).map(|p| format!("byte {}: non-zero data after the end of the log (up to byte {p})", s.end))
    });
    Ok((out, err))
}

#[cfg(test)]
mod tests;
