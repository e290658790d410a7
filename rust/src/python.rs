//! `pyxia._native`: Python bindings of the WAL.
//!
//! Every call that may block (I/O, waiting for the sync thread, taking the
//! WAL lock) runs with the interpreter detached, so other Python threads and
//! the event loop keep going. Values come in as `bytes` without a copy
//! (`PyBackedBytes`) and go out as new `bytes`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::apply::{self, write_shape, KeySorting, NotificationRecord, PutBatch};
use crate::frames;
use crate::reads::EqualGets;
use crate::wal::{self, Entry, NewEntry, Options, Reader, ReverseReader, Wal};

create_exception!(_native, WalError, PyException, "Base class of every WAL error.");
create_exception!(_native, EntryNotFound, WalError, "The offset is not in the log.");
create_exception!(_native, InvalidNextOffset, WalError, "An append does not continue the log.");
create_exception!(_native, CrcMismatch, WalError, "The given previous CRC does not match the log.");
create_exception!(_native, CorruptedLog, WalError, "The log holds invalid data where committed entries should be.");
create_exception!(_native, WalClosed, WalError, "The WAL is closed.");
create_exception!(_native, WalFailed, WalError, "A sync failed earlier; the WAL must be reopened.");

fn to_py(e: wal::WalError) -> PyErr {
    use wal::WalError as E;
    let msg = e.to_string();
    match e {
        E::EntryNotFound(_) => EntryNotFound::new_err(msg),
        E::InvalidNextOffset { .. } => InvalidNextOffset::new_err(msg),
        E::CrcMismatch { .. } => CrcMismatch::new_err(msg),
        E::Corrupted { .. } => CorruptedLog::new_err(msg),
        E::Closed => WalClosed::new_err(msg),
        E::Poisoned(_) => WalFailed::new_err(msg),
        E::InvalidArgument(_) => PyValueError::new_err(msg),
        E::Io { .. } => WalError::new_err(msg),
    }
}

/// One entry read from the log.
#[pyclass(frozen, get_all, module = "pyxia._native", name = "WalEntry")]
struct PyEntry {
    term: i64,
    offset: i64,
    value: Py<PyBytes>,
    timestamp: u64,
    crc: u32,
    previous_crc: u32,
}

#[pymethods]
impl PyEntry {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "WalEntry(term={}, offset={}, value=<{} bytes>, timestamp={}, crc={:#010x})",
            self.term,
            self.offset,
            self.value.bind(py).as_bytes().len(),
            self.timestamp,
            self.crc
        )
    }
}

fn entry_to_py(py: Python<'_>, e: Entry) -> PyEntry {
    PyEntry {
        term: e.term,
        offset: e.offset,
        value: PyBytes::new(py, &e.value).unbind(),
        timestamp: e.timestamp,
        crc: e.crc,
        previous_crc: e.previous_crc,
    }
}

/// A write-ahead log in one directory. See `pyxia._native.pyi`.
#[pyclass(frozen, module = "pyxia._native", name = "Wal")]
struct PyWal {
    wal: Arc<Wal>,
}

#[pymethods]
impl PyWal {
    #[new]
    #[pyo3(signature = (dir, *, segment_size = wal::DEFAULT_SEGMENT_SIZE, sync_data = true,
                        retention_ms = wal::DEFAULT_RETENTION_MS, commit_offset = -1,
                        min_segment_size = wal::DEFAULT_MIN_SEGMENT_SIZE))]
    fn new(
        py: Python<'_>,
        dir: PathBuf,
        segment_size: usize,
        sync_data: bool,
        retention_ms: u64,
        commit_offset: i64,
        min_segment_size: usize,
    ) -> PyResult<Self> {
        let opts = Options {
            segment_size,
            min_segment_size,
            sync_data,
            retention_ms,
            commit_offset,
        };
        let w = py.detach(|| Wal::open(&dir, opts)).map_err(to_py)?;
        Ok(PyWal { wal: Arc::new(w) })
    }

    /// Appends one entry; returns its CRC.
    #[pyo3(signature = (term, offset, value, timestamp, previous_crc = None))]
    fn append(
        &self,
        py: Python<'_>,
        term: i64,
        offset: i64,
        value: PyBackedBytes,
        timestamp: u64,
        previous_crc: Option<u32>,
    ) -> PyResult<u32> {
        let w = &self.wal;
        py.detach(|| {
            w.append(
                NewEntry {
                    term,
                    offset,
                    value: &value,
                    timestamp,
                },
                previous_crc,
            )
        })
        .map_err(to_py)
    }

    /// Appends the entry of a serialized `replication.Append` (checked
    /// against its `previous_entry_crc` when present), its value borrowed from
    /// `frame`; returns the entry's value size. ValueError: the frame has no
    /// entry, is malformed, or its entry is not `term`/`offset` (the ones the
    /// caller checked).
    fn append_replicated(
        &self,
        py: Python<'_>,
        frame: PyBackedBytes,
        term: i64,
        offset: i64,
    ) -> PyResult<usize> {
        let (entry, previous_crc) = frames::entry_of_append(&frame)
            .map_err(|e| PyValueError::new_err(format!("malformed Append: {e}")))?;
        let e = entry.ok_or_else(|| PyValueError::new_err("an Append without an entry"))?;
        if e.term != term || e.offset != offset {
            return Err(PyValueError::new_err(format!(
                "the Append holds entry {}/{}, not {term}/{offset}",
                e.term, e.offset
            )));
        }
        let w = &self.wal;
        py.detach(|| {
            w.append(
                NewEntry {
                    term: e.term,
                    offset: e.offset,
                    value: e.value,
                    timestamp: e.timestamp,
                },
                previous_crc,
            )
        })
        .map_err(to_py)?;
        Ok(e.value.len())
    }

    /// Appends `(term, offset, value, timestamp)` tuples; returns the last CRC.
    #[pyo3(signature = (entries, previous_crc = None))]
    fn append_batch(
        &self,
        py: Python<'_>,
        entries: Vec<Bound<'_, PyTuple>>,
        previous_crc: Option<u32>,
    ) -> PyResult<u32> {
        let mut owned: Vec<(i64, i64, PyBackedBytes, u64)> = Vec::with_capacity(entries.len());
        for t in &entries {
            if t.len() != 4 {
                return Err(PyValueError::new_err(
                    "each entry must be a (term, offset, value, timestamp) tuple",
                ));
            }
            owned.push((
                t.get_item(0)?.extract()?,
                t.get_item(1)?.extract()?,
                t.get_item(2)?.extract()?,
                t.get_item(3)?.extract()?,
            ));
        }
        let w = &self.wal;
        py.detach(|| {
            let batch: Vec<NewEntry<'_>> = owned
                .iter()
                .map(|(term, offset, value, ts)| NewEntry {
                    term: *term,
                    offset: *offset,
                    value,
                    timestamp: *ts,
                })
                .collect();
            w.append_batch(&batch, previous_crc)
        })
        .map_err(to_py)
    }

    /// Asks the sync thread for a group-commit round and returns at once.
    fn request_sync(&self) {
        self.wal.request_sync();
    }

    /// Syncs everything appended so far in the calling thread (GIL
    /// released), without waking the sync thread.
    fn sync_inline(&self, py: Python<'_>) -> PyResult<()> {
        let w = &self.wal;
        py.detach(|| w.sync_inline()).map_err(to_py)
    }

    /// `sync_inline` without writing the notify pipe (the caller tells the owner).
    fn sync_inline_quiet(&self, py: Python<'_>) -> PyResult<()> {
        let w = &self.wal;
        py.detach(|| w.sync_inline_quiet()).map_err(to_py)
    }

    /// Blocks until everything appended so far is durable.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let w = &self.wal;
        py.detach(|| w.sync()).map_err(to_py)
    }

    /// Blocks until `offset` is durable; False on timeout (seconds).
    #[pyo3(signature = (offset, timeout = None))]
    fn wait_synced(&self, py: Python<'_>, offset: i64, timeout: Option<f64>) -> PyResult<bool> {
        let w = &self.wal;
        let t = match timeout {
            Some(s) if !(s.is_finite() && s >= 0.0) => {
                return Err(PyValueError::new_err("timeout must be a non-negative number"))
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        };
        py.detach(|| w.wait_synced(offset, t)).map_err(to_py)
    }

    #[getter]
    fn last_offset(&self) -> i64 {
        self.wal.last_offset()
    }

    #[getter]
    fn last_synced_offset(&self) -> i64 {
        self.wal.last_synced_offset()
    }

    #[getter]
    fn first_offset(&self, py: Python<'_>) -> i64 {
        let w = &self.wal;
        py.detach(|| w.first_offset())
    }

    #[getter]
    fn last_crc(&self, py: Python<'_>) -> u32 {
        let w = &self.wal;
        py.detach(|| w.last_crc())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.wal.is_closed()
    }

    /// Why the WAL stopped accepting writes (a failed sync), or None.
    #[getter]
    fn failure(&self, py: Python<'_>) -> Option<String> {
        let w = &self.wal;
        py.detach(|| w.failure())
    }

    #[getter]
    fn dir(&self) -> PathBuf {
        self.wal.dir().to_path_buf()
    }

    #[getter]
    fn segment_size(&self) -> usize {
        self.wal.options().segment_size
    }

    #[getter]
    fn min_segment_size(&self) -> usize {
        self.wal.options().min_segment_size
    }

    #[getter]
    fn sync_data(&self) -> bool {
        self.wal.options().sync_data
    }

    /// A descriptor that becomes readable after every sync round.
    #[getter]
    fn notify_fd(&self) -> i32 {
        self.wal.notify_fd()
    }

    /// A descriptor that becomes readable after a sync round that closed a
    /// segment (the retention check's trigger); the reader drains it.
    #[getter]
    fn segment_closed_fd(&self) -> i32 {
        self.wal.segment_closed_fd()
    }

    /// The segments, oldest first: `(base, last_offset, size_bytes,
    /// last_timestamp, closed)`; only closed segments can be trimmed.
    fn segments(&self, py: Python<'_>) -> Vec<(i64, i64, u64, u64, bool)> {
        let w = &self.wal;
        py.detach(|| w.segments())
            .into_iter()
            .map(|s| (s.base, s.last_offset, s.size_bytes, s.last_timestamp, s.closed))
            .collect()
    }

    /// `(rounds, [latency_us, ...])` of the sync rounds so far.
    fn sync_stats(&self) -> (u64, Vec<u32>) {
        self.wal.sync_stats()
    }

    fn read(&self, py: Python<'_>, offset: i64) -> PyResult<PyEntry> {
        let w = &self.wal;
        let e = py.detach(|| w.read(offset)).map_err(to_py)?;
        Ok(entry_to_py(py, e))
    }

    #[pyo3(signature = (from_offset, max_entries = 1000, max_bytes = 4 * 1024 * 1024))]
    fn read_batch(
        &self,
        py: Python<'_>,
        from_offset: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> PyResult<Vec<PyEntry>> {
        let w = &self.wal;
        let es = py
            .detach(|| w.read_batch(from_offset, max_entries, max_bytes))
            .map_err(to_py)?;
        Ok(es.into_iter().map(|e| entry_to_py(py, e)).collect())
    }

    /// The entries from `from_offset` (as `read_batch` reads them) as serialized
    /// `replication.Append` messages of `term` carrying `commit_offset`, built
    /// around the stored entry bytes (`crate::frames`); with the values' total size.
    #[pyo3(signature = (from_offset, term, commit_offset, max_entries = 256,
                        max_bytes = 4 * 1024 * 1024))]
    fn read_appends<'py>(
        &self,
        py: Python<'py>,
        from_offset: i64,
        term: i64,
        commit_offset: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> PyResult<(Vec<Bound<'py, PyBytes>>, usize)> {
        let w = &self.wal;
        let (buf, ends, value_bytes) = py
            .detach(|| {
                let mut buf = Vec::new();
                let mut ends = Vec::new();
                let mut value_bytes = 0usize;
                w.visit_batch(from_offset, max_entries, max_bytes, |s| {
                    frames::put_append(&mut buf, term, s.payload, &s.entry, commit_offset, s.previous_crc);
                    ends.push(buf.len());
                    value_bytes += s.entry.value.len();
                })
                .map(|_| (buf, ends, value_bytes))
            })
            .map_err(to_py)?;
        let mut start = 0;
        let out = ends
            .into_iter()
            .map(|end| {
                let b = PyBytes::new(py, &buf[start..end]);
                start = end;
                b
            })
            .collect();
        Ok((out, value_bytes))
    }

    fn reader(&self, from_offset: i64) -> PyReader {
        PyReader {
            r: Mutex::new(self.wal.reader(from_offset)),
        }
    }

    fn reverse_reader(&self) -> PyReverseReader {
        PyReverseReader {
            r: Mutex::new(self.wal.reverse_reader()),
        }
    }

    fn truncate(&self, py: Python<'_>, last_safe_offset: i64) -> PyResult<i64> {
        let w = &self.wal;
        py.detach(|| w.truncate(last_safe_offset)).map_err(to_py)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let w = &self.wal;
        py.detach(|| w.clear()).map_err(to_py)
    }

    fn trim(&self, py: Python<'_>, before_offset: i64, commit_offset: i64) -> PyResult<i64> {
        let w = &self.wal;
        py.detach(|| w.trim(before_offset, commit_offset)).map_err(to_py)
    }

    #[pyo3(signature = (commit_offset, now_ms = None))]
    fn trim_expired(&self, py: Python<'_>, commit_offset: i64, now_ms: Option<u64>) -> PyResult<i64> {
        let w = &self.wal;
        py.detach(|| w.trim_expired(commit_offset, now_ms)).map_err(to_py)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let w = &self.wal;
        py.detach(|| w.close()).map_err(to_py)
    }

    fn delete(&self, py: Python<'_>) -> PyResult<()> {
        let w = &self.wal;
        py.detach(|| w.delete()).map_err(to_py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Wal(dir={:?}, first_offset={}, last_offset={}, last_synced_offset={})",
            self.wal.dir(),
            self.wal.first_offset(),
            self.wal.last_offset(),
            self.wal.last_synced_offset()
        )
    }
}

/// Forward iterator over entries; stops at the current end of the log.
#[pyclass(frozen, module = "pyxia._native", name = "WalReader")]
struct PyReader {
    r: Mutex<Reader>,
}

#[pymethods]
impl PyReader {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyEntry>> {
        let e = py.detach(|| self.r.lock().next_entry()).map_err(to_py)?;
        Ok(e.map(|e| entry_to_py(py, e)))
    }

    /// The offset the next call will return.
    #[getter]
    fn next_offset(&self) -> i64 {
        self.r.lock().next_offset()
    }
}

/// Iterator from the last entry down to the first.
#[pyclass(frozen, module = "pyxia._native", name = "WalReverseReader")]
struct PyReverseReader {
    r: Mutex<ReverseReader>,
}

#[pymethods]
impl PyReverseReader {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyEntry>> {
        let e = py.detach(|| self.r.lock().next_entry()).map_err(to_py)?;
        Ok(e.map(|e| entry_to_py(py, e)))
    }
}

/// Reads a segment file without changing it. Returns the records as
/// `(position, offset, term, size, crc, previous_crc, timestamp)` and, when
/// the data does not end cleanly, a description of the first bad byte.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn scan_segment(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(Vec<(u64, i64, i64, u32, u32, u32, u64)>, Option<String>)> {
    let (recs, err) = py.detach(|| wal::scan_segment_file(&path)).map_err(to_py)?;
    Ok((
        recs.into_iter()
            .map(|r| (r.position, r.offset, r.term, r.size, r.crc, r.previous_crc, r.timestamp))
            .collect(),
        err,
    ))
}

/// Oxia's hierarchical key encoding (see `pyxia.common.keys`): a 2-byte
/// big-endian count of '/' (a trailing "//" opens no level; capped at
/// 0x7FFF; bit 15 set for `__oxia/` keys), then the key with '/' → 0xFF.
/// Native because it runs for every key of every request.
#[pyfunction]
fn encode_hierarchical<'py>(py: Python<'py>, key: &str) -> Bound<'py, PyBytes> {
    let raw = key.as_bytes();
    let mut n = raw.iter().filter(|&&b| b == b'/').count();
    if n > 0 && raw.ends_with(b"//") {
        n -= 1;
    }
    let mut prefix = n.min(0x7FFF) as u16;
    if n > 0 && raw.starts_with(b"__oxia/") {
        prefix |= 0x8000;
    }
    PyBytes::new_with(py, raw.len() + 2, |buf| {
        buf[0..2].copy_from_slice(&prefix.to_be_bytes());
        for (d, &s) in buf[2..].iter_mut().zip(raw) {
            *d = if s == b'/' && n > 0 { 0xFF } else { s };
        }
        Ok(())
    })
    .expect("allocating bytes")
}

type NotificationItem = (String, (i32, Option<i64>, Option<String>));

/// Serializes a `NotificationBatch{shard, offset, timestamp, notifications}`
/// from `(key, (type, version_id, key_range_last))` items, sorted by key
/// (deterministic bytes on every replica). Native because it runs for every
/// applied entry with one item per changed key.
#[pyfunction]
fn encode_notification_batch<'py>(
    py: Python<'py>,
    shard: i64,
    offset: i64,
    timestamp: u64,
    items: Vec<NotificationItem>,
) -> Bound<'py, PyBytes> {
    let mut records: Vec<NotificationRecord<'_>> = items
        .iter()
        .map(|(key, (kind, version_id, range_last))| {
            (
                key.as_bytes(),
                *kind as i64 as u64,
                *version_id,
                range_last.as_deref().map(str::as_bytes),
            )
        })
        .collect();
    PyBytes::new(py, &apply::encode_notification_batch(shard, offset, timestamp, &mut records))
}

/// What `apply_puts` returns: the records to write as `(encoded key, StorageEntry bytes)`, the
/// new last version id, the `WriteResponse` bytes and the `NotificationBatch` bytes (or None).
type AppliedPuts<'py> = (Bound<'py, PyList>, i64, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>);

/// Applies a plain-put `WriteRequest` (see `crate::apply`) in one call: decodes it, encodes its
/// keys, fetches the stored records with one call of `get` (rocksdict's `Rdict.get` with a
/// list of keys) and builds the records, the response and the notification batch. None when
/// the request is not for this path (the caller applies it in Python); nothing is written here.
#[pyfunction]
#[pyo3(signature = (request, hierarchical, get, last_version_id, timestamp, notifications = None))]
fn apply_puts<'py>(
    py: Python<'py>,
    request: PyBackedBytes,
    hierarchical: bool,
    get: &Bound<'py, PyAny>,
    last_version_id: i64,
    timestamp: u64,
    notifications: Option<(i64, i64)>,
) -> PyResult<Option<AppliedPuts<'py>>> {
    let sorting = if hierarchical { KeySorting::Hierarchical } else { KeySorting::Natural };
    let Ok(Some(batch)) = PutBatch::parse(&request, sorting) else {
        return Ok(None); // not plain puts, or bytes only the Python decoder may judge
    };
    let keys: Vec<Bound<'py, PyBytes>> =
        batch.encoded_keys.iter().map(|k| PyBytes::new(py, k)).collect();
    let applied = multi_get(py, get, &keys, |stored| {
        batch.apply(stored, last_version_id, timestamp, notifications)
    })?;
    let Some(applied) = applied else {
        return Ok(None);
    };
    let records = PyList::empty(py);
    for (i, rec) in &applied.records {
        records.append((keys[*i].clone(), PyBytes::new(py, rec)))?;
    }
    Ok(Some((
        records,
        applied.last_version_id,
        PyBytes::new(py, &applied.response),
        applied.notification_batch.map(|n| PyBytes::new(py, &n)),
    )))
}

/// Fetches the records under `keys` with one call of `get` (rocksdict's `Rdict.get` with a
/// list of keys); they stay owned by Python while `use` borrows their bytes.
fn multi_get<'py, T>(
    py: Python<'py>,
    get: &Bound<'py, PyAny>,
    keys: &[Bound<'py, PyBytes>],
    use_records: impl FnOnce(&[Option<&[u8]>]) -> T,
) -> PyResult<T> {
    let found = get.call1((PyList::new(py, keys)?,))?;
    let found = found.cast_into::<PyList>().map_err(PyErr::from)?;
    if found.len() != keys.len() {
        return Err(PyValueError::new_err("get returned a list of another length"));
    }
    let mut held: Vec<Option<Bound<'py, PyBytes>>> = Vec::with_capacity(keys.len());
    for item in found.iter() {
        held.push(if item.is_none() { None } else { Some(item.cast_into::<PyBytes>()?) });
    }
    let stored: Vec<Option<&[u8]>> = held.iter().map(|b| b.as_ref().map(|b| b.as_bytes())).collect();
    Ok(use_records(&stored))
}

/// Answers a `ReadRequest` of EQUAL gets of user keys (see `crate::reads`) in one call: the
/// serialized `ReadResponse`, with one call of `get` for every record. None when the request
/// is not for this path, or a stored record does not decode: the caller answers it in Python.
#[pyfunction]
fn read_gets<'py>(
    py: Python<'py>,
    request: PyBackedBytes,
    hierarchical: bool,
    get: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let sorting = if hierarchical { KeySorting::Hierarchical } else { KeySorting::Natural };
    let Ok(Some(gets)) = EqualGets::parse(&request, sorting) else {
        return Ok(None);
    };
    let keys: Vec<Bound<'py, PyBytes>> =
        gets.encoded_keys.iter().map(|k| PyBytes::new(py, k)).collect();
    let out = multi_get(py, get, &keys, |stored| gets.respond(stored))?;
    Ok(out.map(|b| PyBytes::new(py, &b)))
}

/// `(plain, overrides)` of a serialized `WriteRequest` (see `crate::apply::WriteShape`):
/// whether no per-operation check can fail but the size limits, and whether a put sets an
/// override field; `(False, True)` for bytes the caller must look at itself.
#[pyfunction]
fn write_request_shape(request: PyBackedBytes) -> (bool, bool) {
    match write_shape(&request) {
        Ok(s) => (s.plain, s.overrides),
        Err(_) => (false, true),
    }
}

/// The chained, masked CRC-32C the WAL uses (for tests and tools).
#[pyfunction]
fn chained_crc(previous: u32, payload: &[u8]) -> u32 {
    wal::crc::chained(previous, payload)
}

/// One quiet sync round of each WAL, up to `threads` at a time, the GIL
/// released: `None` per WAL whose round left it usable, else the error text.
#[pyfunction]
#[pyo3(signature = (wals, threads = 8))]
fn sync_many(py: Python<'_>, wals: Vec<PyRef<'_, PyWal>>, threads: usize) -> Vec<Option<String>> {
    let owned: Vec<Arc<Wal>> = wals.iter().map(|w| w.wal.clone()).collect();
    drop(wals);
    py.detach(|| {
        wal::sync_many(&owned, threads)
            .into_iter()
            .map(|r| r.err().map(|e| e.to_string()))
            .collect()
    })
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyWal>()?;
    m.add_class::<PyEntry>()?;
    m.add_class::<PyReader>()?;
    m.add_class::<PyReverseReader>()?;
    m.add_class::<crate::tso_server::PyTsoWindow>()?;
    m.add_class::<crate::tso_server::TsoResponder>()?;
    m.add_function(wrap_pyfunction!(scan_segment, m)?)?;
    m.add_function(wrap_pyfunction!(sync_many, m)?)?;
    m.add_function(wrap_pyfunction!(chained_crc, m)?)?;
    m.add_function(wrap_pyfunction!(encode_hierarchical, m)?)?;
    m.add_function(wrap_pyfunction!(encode_notification_batch, m)?)?;
    m.add_function(wrap_pyfunction!(apply_puts, m)?)?;
    m.add_function(wrap_pyfunction!(write_request_shape, m)?)?;
    m.add_function(wrap_pyfunction!(read_gets, m)?)?;
    m.add("WalError", py.get_type::<WalError>())?;
    m.add("EntryNotFound", py.get_type::<EntryNotFound>())?;
    m.add("InvalidNextOffset", py.get_type::<InvalidNextOffset>())?;
    m.add("CrcMismatch", py.get_type::<CrcMismatch>())?;
    m.add("CorruptedLog", py.get_type::<CorruptedLog>())?;
    m.add("WalClosed", py.get_type::<WalClosed>())?;
    m.add("WalFailed", py.get_type::<WalFailed>())?;
    m.add("DEFAULT_SEGMENT_SIZE", wal::DEFAULT_SEGMENT_SIZE)?;
    m.add("DEFAULT_RETENTION_MS", wal::DEFAULT_RETENTION_MS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TEST_HOOKS", wal::test_hooks::ACK_BEFORE_FSYNC_BUILT)?;
    Ok(())
}
