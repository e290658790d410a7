//! Opt-in test hooks of the WAL for the robustness suite, read from the
//! environment when a WAL is opened, and only when the process is in test mode
//! (`PYXIA_TEST_MODE=1`; without it the variables below are ignored — the
//! Python side logs that once). Both are off by default; when off they cost
//! one `Option` check per sync round.
//!
//! - `PYXIA_WAL_SYNCED_MARK=1`: the WAL keeps `<dir>/synced-offset.mark`
//!   holding the last offset it actually made durable (msync/fsync), written
//!   before that offset is published to waiters (so before anything is
//!   acknowledged), and lowered by truncate/clear. A kill -9 keeps the page
//!   cache, so a test simulates a power loss by cutting the log back to the
//!   mark before restarting the process. The mark file is not fsynced: it
//!   only has to survive the kill -9 of the process, not of the machine.
//! - `PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS=N`: a deliberately broken mode (the
//!   suite's positive control): sync rounds publish offsets as durable
//!   without flushing them, and flush for real at most once every N ms. It is
//!   compiled only into test builds (cargo feature `test-hooks`,
//!   [`ACK_BEFORE_FSYNC_BUILT`]); a release build has no code that can
//!   acknowledge before fsync.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
#[cfg(feature = "test-hooks")]
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::{IoContext, Result};

pub const TEST_MODE_ENV: &str = "PYXIA_TEST_MODE";
pub const MARK_ENV: &str = "PYXIA_WAL_SYNCED_MARK";
pub const ACK_BEFORE_FSYNC_ENV: &str = "PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS";
pub const MARK_FILE: &str = "synced-offset.mark";
/// Whether this build has the ack-before-fsync hook (cargo feature `test-hooks`).
pub const ACK_BEFORE_FSYNC_BUILT: bool = cfg!(feature = "test-hooks");

#[derive(Default)]
pub struct TestHooks {
    want_mark: bool,
    mark: Option<Mutex<File>>,
    #[cfg(feature = "test-hooks")]
    lazy_flush: Option<(Duration, Mutex<Option<Instant>>)>,
}

fn env_set(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty() && v != "0")
}

/// Whether the process is in test mode (`PYXIA_TEST_MODE=1`), the only state
/// in which the environment may arm test hooks.
pub fn test_mode() -> bool {
    std::env::var(TEST_MODE_ENV).as_deref() == Ok("1")
}

impl TestHooks {
    /// Hooks chosen explicitly (tests): keep the mark file or not.
    pub fn new(mark: bool) -> TestHooks {
        TestHooks {
            want_mark: mark,
            ..TestHooks::default()
        }
    }

    /// The broken mode (test builds only): flush at most once every `ms`.
    #[cfg(feature = "test-hooks")]
    pub fn ack_before_fsync(mut self, ms: u64) -> TestHooks {
        self.lazy_flush = Some((Duration::from_millis(ms), Mutex::new(None)));
        self
    }

    /// The hooks the environment asks for: none, normally, and none at all
    /// outside test mode.
    pub fn from_env() -> TestHooks {
        if !test_mode() {
            return TestHooks::default();
        }
        let hooks = TestHooks::new(env_set(MARK_ENV).is_some());
        #[cfg(feature = "test-hooks")]
        if let Some(ms) = env_set(ACK_BEFORE_FSYNC_ENV).and_then(|v| v.parse::<u64>().ok()) {
            return hooks.ack_before_fsync(ms);
        }
        hooks
    }

    /// Opens the mark file in the (existing) WAL directory.
    pub fn attach(&mut self, dir: &Path) -> Result<()> {
        if self.want_mark && self.mark.is_none() {
            let p = dir.join(MARK_FILE);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .ctx(|| format!("opening {}", p.display()))?;
            self.mark = Some(Mutex::new(f));
        }
        Ok(())
    }

    /// Records `offset` as the last durable one.
    pub fn set_mark(&self, offset: i64) -> Result<()> {
        if let Some(f) = &self.mark {
            let line = format!("{offset:>20}\n");
            f.lock()
                .write_all_at(line.as_bytes(), 0)
                .ctx(|| "writing the synced-offset mark".to_string())?;
        }
        Ok(())
    }

    /// Lowers the mark to `offset` if it is above (truncate, clear).
    pub fn lower_mark(&self, offset: i64) -> Result<()> {
        if let Some(current) = self.read_mark()? {
            if current > offset {
                self.set_mark(offset)?;
            }
        }
        Ok(())
    }

    fn read_mark(&self) -> Result<Option<i64>> {
        let Some(f) = &self.mark else {
            return Ok(None);
        };
        let mut buf = [0u8; 21];
        let n = f
            .lock()
            .read_at(&mut buf, 0)
            .ctx(|| "reading the synced-offset mark".to_string())?;
        Ok(std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok()))
    }

    /// Whether this sync round flushes: always in a release build; in a test
    /// build, unless the broken ack-before-fsync mode is on and its last flush
    /// is recent.
    #[cfg(not(feature = "test-hooks"))]
    #[inline]
    pub fn flush_now(&self) -> bool {
        true
    }

    /// Whether this sync round flushes: always in a release build; in a test
    /// build, unless the broken ack-before-fsync mode is on and its last flush
    /// is recent.
    #[cfg(feature = "test-hooks")]
    pub fn flush_now(&self) -> bool {
        match &self.lazy_flush {
            None => true,
            Some((every, last)) => {
                let mut last = last.lock();
                let now = Instant::now();
                if last
                    .map(|t| now.duration_since(t) >= *every)
                    .unwrap_or(true)
                {
                    *last = Some(now);
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// The mark file's offset, for tests (`None` when there is no mark).
pub fn read_mark_file(dir: &Path) -> Option<i64> {
    std::fs::read_to_string(dir.join(MARK_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
}

#[cfg(test)]
mod tests {
    use super::super::{NewEntry, Options, Wal};
    use super::*;

    fn append(w: &Wal, from: i64, to: i64) {
        for o in from..to {
            let v = format!("value-{o}").into_bytes();
            w.append(
                NewEntry {
                    term: 1,
                    offset: o,
                    value: &v,
                    timestamp: o as u64,
                },
                None,
            )
            .unwrap();
        }
    }

    fn opts(segment_size: usize) -> Options {
        Options {
            segment_size,
            ..Options::default()
        }
    }

    #[test]
    fn no_mark_file_by_default() {
        let d = tempfile::tempdir().unwrap();
        let w =
            Wal::open_with_test_hooks(d.path(), opts(4096), TestHooks::new(false)).unwrap();
        append(&w, 0, 3);
        w.sync().unwrap();
        w.close().unwrap();
        assert!(!d.path().join(MARK_FILE).exists());
    }

    #[test]
    fn mark_follows_syncs_truncate_clear_and_close() {
        let d = tempfile::tempdir().unwrap();
        let hooks = || TestHooks::new(true);
        // Small segments: rollovers are covered too.
        let w = Wal::open_with_test_hooks(d.path(), opts(4096), hooks()).unwrap();
        assert_eq!(read_mark_file(d.path()), Some(-1));
        append(&w, 0, 200);
        w.sync().unwrap();
        assert_eq!(read_mark_file(d.path()), Some(199));
        append(&w, 200, 210); // appended, not synced
        assert_eq!(read_mark_file(d.path()), Some(199));
        w.truncate(150).unwrap();
        assert_eq!(read_mark_file(d.path()), Some(150));
        w.truncate(180).unwrap(); // nothing to cut: the mark stays
        assert_eq!(read_mark_file(d.path()), Some(150));
        w.clear().unwrap();
        assert_eq!(read_mark_file(d.path()), Some(-1));
        append(&w, 500, 520);
        w.close().unwrap();
        assert_eq!(read_mark_file(d.path()), Some(519));
        // Reopening treats the recovered log as durable.
        let w = Wal::open_with_test_hooks(d.path(), opts(4096), hooks()).unwrap();
        assert_eq!(w.last_offset(), 519);
        assert_eq!(read_mark_file(d.path()), Some(519));
    }

    #[test]
    fn cutting_back_to_the_mark_drops_only_unsynced_entries() {
        let d = tempfile::tempdir().unwrap();
        let w =
            Wal::open_with_test_hooks(d.path(), opts(4096), TestHooks::new(true)).unwrap();
        append(&w, 0, 100);
        w.sync().unwrap();
        append(&w, 100, 160);
        // A "kill -9": the process vanishes without closing the WAL.
        std::mem::forget(w);
        let mark = read_mark_file(d.path()).unwrap();
        assert_eq!(mark, 99);
        let w = Wal::open(d.path(), opts(4096)).unwrap();
        assert_eq!(w.last_offset(), 159);
        w.truncate(mark).unwrap();
        w.close().unwrap();
        let w = Wal::open(d.path(), opts(4096)).unwrap();
        assert_eq!(w.last_offset(), 99);
        assert_eq!(w.read(99).unwrap().value, b"value-99".to_vec());
    }

    #[test]
    #[cfg(feature = "test-hooks")]
    fn broken_mode_publishes_offsets_it_did_not_flush() {
        let d = tempfile::tempdir().unwrap();
        let hooks = TestHooks::new(true).ack_before_fsync(3_600_000);
        let w = Wal::open_with_test_hooks(d.path(), opts(4096), hooks).unwrap();
        append(&w, 0, 10);
        w.sync().unwrap(); // the first round flushes
        assert_eq!(read_mark_file(d.path()), Some(9));
        append(&w, 10, 300);
        w.sync().unwrap(); // "durable" for waiters, but not flushed
        assert_eq!(w.last_synced_offset(), 299);
        assert_eq!(read_mark_file(d.path()), Some(9));
        w.close().unwrap(); // close flushes for real
        assert_eq!(read_mark_file(d.path()), Some(299));
    }
}
