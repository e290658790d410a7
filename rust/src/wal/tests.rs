use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn opts(segment_size: usize, commit: i64) -> Options {
    Options {
        segment_size,
        commit_offset: commit,
        ..Options::default()
    }
}

fn val(o: i64) -> Vec<u8> {
    format!("value-{o}-{}", "x".repeat(40 + (o % 7) as usize)).into_bytes()
}

fn append_range(w: &Wal, from: i64, to: i64, term: i64) {
    for o in from..to {
        let v = val(o);
        w.append(
            NewEntry {
                term,
                offset: o,
                value: &v,
                timestamp: 1000 + o as u64,
            },
            None,
        )
        .unwrap();
    }
}

fn check_range(w: &Wal, from: i64, to: i64) {
    for o in from..to {
        let e = w.read(o).unwrap();
        assert_eq!(e.offset, o);
        assert_eq!(e.value, val(o));
        assert_eq!(e.timestamp, 1000 + o as u64);
    }
}

#[test]
fn append_read_reopen() {
    let d = tempfile::tempdir().unwrap();
    {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        assert_eq!(w.last_offset(), -1);
        assert_eq!(w.first_offset(), -1);
        append_range(&w, 0, 100, 1);
        assert_eq!(w.last_offset(), 99);
        w.sync().unwrap();
        assert_eq!(w.last_synced_offset(), 99);
        check_range(&w, 0, 100);
        assert!(matches!(w.read(100), Err(WalError::EntryNotFound(100))));
        w.close().unwrap();
        w.close().unwrap(); // idempotent
        assert!(matches!(w.read(0), Err(WalError::Closed)));
    }
    let w = Wal::open(d.path(), opts(4096, 99)).unwrap();
    assert_eq!(w.first_offset(), 0);
    assert_eq!(w.last_offset(), 99);
    assert_eq!(w.last_synced_offset(), 99);
    check_range(&w, 0, 100);
    append_range(&w, 100, 150, 2);
    check_range(&w, 0, 150);
}

#[test]
fn crc_chain_is_continuous_across_segments_and_reopen() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    append_range(&w, 0, 300, 1);
    w.sync().unwrap();
    let mut prev = 0;
    for o in 0..300 {
        let e = w.read(o).unwrap();
        assert_eq!(e.previous_crc, prev, "chain broken at {o}");
        assert_eq!(e.crc, crc::chained(prev, &{
            let mut b = vec![0u8; codec::payload_len(e.term, e.offset, e.value.len())];
            codec::encode_payload(&mut b, e.term, e.offset, &e.value, e.timestamp);
            b
        }));
        prev = e.crc;
    }
    assert_eq!(w.last_crc(), prev);
    assert!(segment::list_segments(d.path()).unwrap().len() > 3);
    drop(w);
    let w = Wal::open(d.path(), opts(4096, 299)).unwrap();
    assert_eq!(w.last_crc(), prev);
}

#[test]
fn non_contiguous_append_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    append_range(&w, 5, 10, 1); // an empty log may start anywhere
    assert_eq!(w.first_offset(), 5);
    let r = w.append(NewEntry { term: 1, offset: 11, value: b"x", timestamp: 0 }, None);
    assert!(matches!(r, Err(WalError::InvalidNextOffset { expected: 10, got: 11 })));
    let r = w.append(NewEntry { term: 1, offset: 9, value: b"x", timestamp: 0 }, None);
    assert!(matches!(r, Err(WalError::InvalidNextOffset { .. })));
    // a batch with a hole is rejected as a whole
    let v = b"v".to_vec();
    let batch = [
        NewEntry { term: 1, offset: 10, value: &v, timestamp: 0 },
        NewEntry { term: 1, offset: 12, value: &v, timestamp: 0 },
    ];
    assert!(w.append_batch(&batch, None).is_err());
    assert_eq!(w.last_offset(), 9);
}

#[test]
fn previous_crc_seeds_empty_log_and_is_checked_otherwise() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    let c = w
        .append(NewEntry { term: 3, offset: 1000, value: b"a", timestamp: 1 }, Some(0xabcd))
        .unwrap();
    assert_eq!(w.read(1000).unwrap().previous_crc, 0xabcd);
    let r = w.append(NewEntry { term: 3, offset: 1001, value: b"b", timestamp: 1 }, Some(1));
    assert!(matches!(r, Err(WalError::CrcMismatch { .. })));
    w.append(NewEntry { term: 3, offset: 1001, value: b"b", timestamp: 1 }, Some(c))
        .unwrap();
    drop(w);
    let w = Wal::open(d.path(), opts(4096, 1001)).unwrap();
    assert_eq!(w.first_offset(), 1000);
    assert_eq!(w.read(1000).unwrap().previous_crc, 0xabcd);
}

#[test]
fn large_entry_gets_its_own_segment() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    let big = vec![7u8; 100_000];
    w.append(NewEntry { term: 1, offset: 0, value: b"small", timestamp: 0 }, None).unwrap();
    w.append(NewEntry { term: 1, offset: 1, value: &big, timestamp: 0 }, None).unwrap();
    w.append(NewEntry { term: 1, offset: 2, value: b"small", timestamp: 0 }, None).unwrap();
    w.sync().unwrap();
    assert_eq!(w.read(1).unwrap().value, big);
    drop(w);
    let w = Wal::open(d.path(), opts(4096, 2)).unwrap();
    assert_eq!(w.read(1).unwrap().value, big);
    assert_eq!(w.read(2).unwrap().value, b"small");
}

#[test]
fn rolled_segments_get_index_files_and_missing_or_bad_indexes_are_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        append_range(&w, 0, 200, 1);
        w.sync().unwrap();
    }
    let bases = segment::list_segments(d.path()).unwrap();
    assert!(bases.len() >= 3);
    for b in &bases {
        assert!(segment::index_path(d.path(), *b).exists(), "index of {b} missing");
    }
    // delete one index, corrupt another, make a third stale (shorter)
    std::fs::remove_file(segment::index_path(d.path(), bases[0])).unwrap();
    let p1 = segment::index_path(d.path(), bases[1]);
    let mut b1 = std::fs::read(&p1).unwrap();
    b1[5] ^= 0xff;
    std::fs::write(&p1, b1).unwrap();
    let p2 = segment::index_path(d.path(), bases[2]);
    let b2 = std::fs::read(&p2).unwrap();
    let positions = segment::decode_index(&b2).unwrap();
    std::fs::write(&p2, segment::encode_index(&positions[..positions.len() - 1])).unwrap();
    let w = Wal::open(d.path(), opts(4096, 199)).unwrap();
    check_range(&w, 0, 200);
    assert!(segment::index_path(d.path(), bases[0]).exists());
}

#[test]
fn truncate_in_current_pending_and_closed_segments() {
    for cut in [199i64, 150, 77, 3, 0] {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        append_range(&w, 0, 200, 1);
        if cut % 2 == 1 {
            w.sync().unwrap(); // some cuts happen with rolled segments closed
        }
        assert_eq!(w.truncate(cut).unwrap(), cut);
        assert_eq!(w.last_offset(), cut);
        check_range(&w, 0, cut + 1);
        assert!(matches!(w.read(cut + 1), Err(WalError::EntryNotFound(_))));
        // append with another term after the cut, then reopen
        append_range(&w, cut + 1, cut + 30, 2);
        w.sync().unwrap();
        let crc_before = w.last_crc();
        drop(w);
        let w = Wal::open(d.path(), opts(4096, cut + 29)).unwrap();
        assert_eq!(w.last_offset(), cut + 29);
        assert_eq!(w.last_crc(), crc_before);
        for o in 0..=cut + 29 {
            let e = w.read(o).unwrap();
            assert_eq!(e.term, if o <= cut { 1 } else { 2 });
            assert_eq!(e.value, val(o));
        }
    }
}

#[test]
fn truncate_then_append_equals_fresh_log() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Wal::open(d1.path(), opts(4096, -1)).unwrap();
    append_range(&a, 0, 120, 1);
    a.truncate(60).unwrap();
    append_range(&a, 61, 120, 1);
    let b = Wal::open(d2.path(), opts(4096, -1)).unwrap();
    append_range(&b, 0, 120, 1);
    assert_eq!(a.last_crc(), b.last_crc());
    for o in 0..120 {
        assert_eq!(a.read(o).unwrap(), b.read(o).unwrap());
    }
}

#[test]
fn truncate_minus_one_and_clear() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    append_range(&w, 0, 100, 1);
    assert_eq!(w.truncate(-1).unwrap(), -1);
    assert_eq!(w.last_offset(), -1);
    assert_eq!(w.first_offset(), -1);
    append_range(&w, 500, 510, 1);
    w.clear().unwrap();
    assert_eq!(w.last_offset(), -1);
    assert!(segment::list_segments(d.path()).unwrap().is_empty());
    append_range(&w, 7, 9, 1);
    check_range(&w, 7, 9);
}

#[test]
fn trim_never_passes_commit_offset() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    append_range(&w, 0, 300, 1);
    w.sync().unwrap();
    assert_eq!(w.trim(250, 20).unwrap(), 0, "a segment holding committed entries stays");
    let first = w.trim(250, 150).unwrap();
    assert!(first <= 151 && first > 0, "first offset {first}");
    assert!(matches!(w.read(0), Err(WalError::EntryNotFound(0))));
    check_range(&w, first, 300);
    let first2 = w.trim(250, 299).unwrap();
    assert!(first2 <= 250 && first2 >= first);
    check_range(&w, first2, 300);
    drop(w);
    let w = Wal::open(d.path(), opts(4096, 299)).unwrap();
    assert_eq!(w.first_offset(), first2);
}

fn drain_fd(fd: RawFd) -> usize {
    let mut buf = [0u8; 64];
    let mut total = 0;
    loop {
        // SAFETY: reading our own non-blocking pipe into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

#[test]
fn segments_describe_the_log_and_closing_one_is_signalled() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    assert!(w.segments().is_empty());
    append_range(&w, 0, 10, 1);
    w.sync().unwrap();
    let segs = w.segments();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].base, segs[0].last_offset, segs[0].closed), (0, 9, false));
    assert_eq!(segs[0].last_timestamp, 1009);
    assert_eq!(segs[0].size_bytes, 4096);
    assert_eq!(drain_fd(w.segment_closed_fd()), 0, "no segment closed yet");

    append_range(&w, 10, 300, 1);
    w.sync().unwrap();
    assert!(drain_fd(w.segment_closed_fd()) > 0, "closing a segment is signalled");
    let segs = w.segments();
    assert!(segs.len() > 2);
    // Contiguous, closed ones first, only the last one still written.
    for pair in segs.windows(2) {
        assert_eq!(pair[1].base, pair[0].last_offset + 1);
    }
    assert!(segs[..segs.len() - 1].iter().all(|s| s.closed));
    assert!(!segs.last().unwrap().closed);
    for s in &segs {
        assert_eq!(s.last_timestamp, 1000 + s.last_offset as u64);
        assert!(s.size_bytes >= 4096);
    }
    let on_disk: u64 = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().map(|x| x == "txnx").unwrap_or(false))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(on_disk, segs.iter().map(|s| s.size_bytes).sum::<u64>());

    // Reopened, the closed segments (read back from disk) say the same.
    drop(w);
    let w = Wal::open(d.path(), opts(4096, 299)).unwrap();
    let again = w.segments();
    assert_eq!(again.len(), segs.len());
    for (a, b) in again.iter().zip(&segs) {
        assert_eq!((a.base, a.last_offset, a.last_timestamp), (b.base, b.last_offset, b.last_timestamp));
    }
    // Trimming to the start of the third segment drops the first two.
    let first = w.trim(segs[2].base, 299).unwrap();
    assert_eq!(first, segs[2].base);
    assert_eq!(w.segments()[0].base, segs[2].base);
}

#[test]
fn a_trim_interrupted_between_file_deletions_reopens() {
    // `trim` deletes the oldest segments one by one, index file first: a crash can leave any
    // prefix deleted and the next segment without its index.
    let d = tempfile::tempdir().unwrap();
    let bases: Vec<i64> = {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        append_range(&w, 0, 300, 1);
        w.sync().unwrap();
        w.segments().iter().map(|s| s.base).collect()
    };
    assert!(bases.len() >= 4);
    // The first segment's index is gone, its data is still there.
    std::fs::remove_file(segment::index_path(d.path(), bases[0])).unwrap();
    {
        let w = Wal::open(d.path(), opts(4096, 299)).unwrap();
        assert_eq!(w.first_offset(), 0);
        check_range(&w, 0, 300);
    }
    // Two segments are gone, the third lost its index.
    for b in &bases[..2] {
        std::fs::remove_file(segment::index_path(d.path(), *b)).ok();
        std::fs::remove_file(segment::data_path(d.path(), *b)).unwrap();
    }
    std::fs::remove_file(segment::index_path(d.path(), bases[2])).ok();
    let w = Wal::open(d.path(), opts(4096, 299)).unwrap();
    assert_eq!(w.first_offset(), bases[2]);
    check_range(&w, bases[2], 300);
    append_range(&w, 300, 310, 1);
    w.sync().unwrap();
    check_range(&w, bases[2], 310);
}

#[test]
fn trim_expired_uses_entry_timestamps() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts(4096, -1);
    o.retention_ms = 1000;
    let w = Wal::open(d.path(), o).unwrap();
    for i in 0..200i64 {
        let ts = if i < 100 { 10_000 } else { 50_000 };
        w.append(NewEntry { term: 1, offset: i, value: &[1u8; 60], timestamp: ts }, None)
            .unwrap();
    }
    w.sync().unwrap();
    // Nothing is older than 1 s at t=10_500.
    assert_eq!(w.trim_expired(199, Some(10_500)).unwrap(), 0);
    // At t=20_000 the first 100 entries are expired, but only whole segments go.
    let f = w.trim_expired(199, Some(20_000)).unwrap();
    assert!(f > 0 && f <= 100, "{f}");
    // The commit offset bounds it.
    let d2 = tempfile::tempdir().unwrap();
    let mut o2 = opts(4096, -1);
    o2.retention_ms = 1000;
    let w2 = Wal::open(d2.path(), o2).unwrap();
    for i in 0..200i64 {
        w2.append(NewEntry { term: 1, offset: i, value: &[1u8; 60], timestamp: 0 }, None)
            .unwrap();
    }
    w2.sync().unwrap();
    assert_eq!(w2.trim_expired(-1, Some(1_000_000)).unwrap(), 0);
}

#[test]
fn readers_forward_and_reverse() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
    append_range(&w, 10, 60, 1);
    let mut r = w.reader(20);
    let mut seen = vec![];
    while let Some(e) = r.next_entry().unwrap() {
        seen.push(e.offset);
    }
    assert_eq!(seen, (20..60).collect::<Vec<_>>());
    append_range(&w, 60, 62, 1);
    assert_eq!(r.next_entry().unwrap().unwrap().offset, 60);
    let mut rr = w.reverse_reader();
    let mut back = vec![];
    while let Some(e) = rr.next_entry().unwrap() {
        back.push(e.offset);
    }
    assert_eq!(back, (10..62).rev().collect::<Vec<_>>());
    let b = w.read_batch(15, 10, usize::MAX).unwrap();
    assert_eq!(b.iter().map(|e| e.offset).collect::<Vec<_>>(), (15..25).collect::<Vec<_>>());
    let b = w.read_batch(15, 100, 1).unwrap();
    assert_eq!(b.len(), 1);
    w.close().unwrap();
    assert!(matches!(r.next_entry(), Err(WalError::Closed)));
}

/// Writes 40 entries, remembers where each record ends, and returns the
/// data of the single segment plus those positions.
fn make_single_segment(dir: &Path) -> Vec<usize> {
    let w = Wal::open(dir, opts(1 << 20, -1)).unwrap();
    append_range(&w, 0, 40, 1);
    w.sync().unwrap();
    drop(w);
    let bytes = std::fs::read(segment::data_path(dir, 0)).unwrap();
    let s = segment::scan(&bytes, 0, None);
    assert_eq!(s.positions.len(), 40);
    let mut ends: Vec<usize> = s.positions[1..].iter().map(|p| *p as usize).collect();
    ends.push(s.end);
    ends
}

#[test]
fn torn_tail_at_every_byte_of_the_last_records() {
    let d = tempfile::tempdir().unwrap();
    let ends = make_single_segment(d.path());
    let path = segment::data_path(d.path(), 0);
    let pristine = std::fs::read(&path).unwrap();
    let start = ends[36]; // the last three records
    let stop = ends[39];
    for cut in start..stop {
        let mut b = pristine.clone();
        b[cut..].fill(0); // torn write: everything after `cut` never landed
        std::fs::write(&path, &b).unwrap();
        let _ = std::fs::remove_file(segment::index_path(d.path(), 0));
        // Entries 0..valid are intact: their bytes from `cut` on were zero anyway.
        let valid = ends
            .iter()
            .take_while(|&&e| e <= cut || pristine[cut..e].iter().all(|&x| x == 0))
            .count() as i64;
        // Commit offset below the damage: recover exactly the valid prefix.
        let w = Wal::open(d.path(), opts(1 << 20, valid - 1)).unwrap();
        assert_eq!(w.last_offset(), valid - 1, "cut at byte {cut}");
        check_range(&w, 0, valid);
        // and the log takes new appends after the prefix
        append_range(&w, valid, 40, 1);
        w.sync().unwrap();
        drop(w);
        let w = Wal::open(d.path(), opts(1 << 20, 39)).unwrap();
        check_range(&w, 0, 40);
        drop(w);
        if valid == 40 {
            continue; // the cut only hit bytes that were zero already
        }
        // Commit offset covering the damage: a clear error, nothing changed.
        let mut b = pristine.clone();
        b[cut..].fill(0);
        std::fs::write(&path, &b).unwrap();
        match Wal::open(d.path(), opts(1 << 20, 39)) {
            Err(WalError::Corrupted { .. }) => {}
            Err(e) => panic!("cut at {cut}: unexpected error {e}"),
            Ok(_) => panic!("cut at {cut}: committed data loss went undetected"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), b, "failed open must not modify the file");
    }
    std::fs::write(&path, &pristine).unwrap();
}

#[test]
fn flipped_header_and_payload_bytes() {
    let d = tempfile::tempdir().unwrap();
    let ends = make_single_segment(d.path());
    let path = segment::data_path(d.path(), 0);
    let pristine = std::fs::read(&path).unwrap();
    let rec = 38usize; // second-to-last record
    let pos = ends[rec - 1];
    let fields = [("len", pos), ("previous_crc", pos + 5), ("crc", pos + 10), ("payload", pos + 15)];
    for (name, at) in fields {
        let mut b = pristine.clone();
        b[at] ^= 0x5a;
        std::fs::write(&path, &b).unwrap();
        let _ = std::fs::remove_file(segment::index_path(d.path(), 0));
        match Wal::open(d.path(), opts(1 << 20, 39)) {
            Err(WalError::Corrupted { position, path: p, .. }) => {
                assert_eq!(position as usize, pos, "{name}");
                assert_eq!(p, path);
            }
            Err(e) => panic!("{name}: {e}"),
            Ok(_) => panic!("{name}: corruption at or below commit offset not reported"),
        }
        let w = Wal::open(d.path(), opts(1 << 20, 37)).unwrap();
        assert_eq!(w.last_offset(), 37, "{name}");
        check_range(&w, 0, 38);
        drop(w);
        std::fs::write(&path, &pristine).unwrap();
    }
}

#[test]
fn garbage_after_the_end_is_zeroed() {
    let d = tempfile::tempdir().unwrap();
    let ends = make_single_segment(d.path());
    let path = segment::data_path(d.path(), 0);
    let mut b = std::fs::read(&path).unwrap();
    // a zero header at the end of data, then stray bytes of a torn write
    b[ends[39] + 100] = 0x42;
    std::fs::write(&path, &b).unwrap();
    let w = Wal::open(d.path(), opts(1 << 20, 39)).unwrap();
    assert_eq!(w.last_offset(), 39);
    drop(w);
    let b = std::fs::read(&path).unwrap();
    assert!(b[ends[39]..].iter().all(|&x| x == 0));
}

#[test]
fn empty_trailing_segment_is_dropped() {
    let d = tempfile::tempdir().unwrap();
    {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        append_range(&w, 0, 100, 1);
        w.sync().unwrap();
    }
    let bases = segment::list_segments(d.path()).unwrap();
    let last = *bases.last().unwrap();
    // Simulate the power loss of the newest segment's content.
    let p = segment::data_path(d.path(), last);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::write(&p, vec![0u8; len as usize]).unwrap();
    let _ = std::fs::remove_file(segment::index_path(d.path(), last));
    assert!(matches!(Wal::open(d.path(), opts(4096, 99)), Err(WalError::Corrupted { .. })));
    let w = Wal::open(d.path(), opts(4096, last - 1)).unwrap();
    assert_eq!(w.last_offset(), last - 1);
    check_range(&w, 0, last);
    append_range(&w, last, 120, 1);
    check_range(&w, 0, 120);
}

#[test]
fn trailing_segment_file_left_empty_by_a_crash_is_dropped() {
    // A kill -9 between creating the next segment's file and preallocating it.
    let d = tempfile::tempdir().unwrap();
    {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        append_range(&w, 0, 100, 1);
        w.sync().unwrap();
    }
    let next = w_last_offset(d.path()) + 1;
    for len in [0usize, 3] {
        std::fs::write(segment::data_path(d.path(), next), vec![0u8; len]).unwrap();
        let w = Wal::open(d.path(), opts(4096, 99)).unwrap();
        assert_eq!(w.last_offset(), 99);
        check_range(&w, 0, 100);
    }
    let w = Wal::open(d.path(), opts(4096, 99)).unwrap();
    append_range(&w, 100, 130, 1);
    check_range(&w, 0, 130);
}

fn w_last_offset(dir: &Path) -> i64 {
    Wal::open(dir, opts(4096, -1)).unwrap().last_offset()
}

#[test]
fn missing_committed_tail_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        append_range(&w, 0, 10, 1);
    }
    assert!(matches!(Wal::open(d.path(), opts(4096, 15)), Err(WalError::Corrupted { .. })));
}

#[test]
fn inline_sync_rounds_make_appends_durable_across_segment_rolls() {
    let d = tempfile::tempdir().unwrap();
    let (rounds_before, _): (u64, Vec<u32>) = {
        let w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        let mut last_synced = -1;
        for o in 0..200 {
            let v = val(o);
            w.append(NewEntry { term: 1, offset: o, value: &v, timestamp: 1000 + o as u64 }, None).unwrap();
            w.sync_inline().unwrap();
            assert_eq!(w.last_synced_offset(), o, "an inline round covers what was appended");
            assert!(w.last_synced_offset() > last_synced);
            last_synced = w.last_synced_offset();
        }
        let stats = w.sync_stats();
        assert!(stats.0 >= 200, "one round per inline sync, got {}", stats.0);
        // Mixed with the sync thread's rounds.
        for o in 200..400 {
            let v = val(o);
            w.append(NewEntry { term: 1, offset: o, value: &v, timestamp: 1000 + o as u64 }, None).unwrap();
            if o % 2 == 0 {
                w.sync_inline().unwrap();
            } else {
                w.request_sync();
            }
        }
        w.sync().unwrap();
        assert_eq!(w.last_synced_offset(), 399);
        stats
    };
    assert!(rounds_before > 0);
    let w = Wal::open(d.path(), opts(4096, 399)).unwrap();
    check_range(&w, 0, 400);
    w.close().unwrap();
    assert!(matches!(w.sync_inline(), Err(WalError::Closed)));
}

#[test]
fn sync_many_makes_every_log_durable_across_rolls_and_reports_a_closed_one() {
    let dirs: Vec<_> = (0..12).map(|_| tempfile::tempdir().unwrap()).collect();
    let wals: Vec<Arc<Wal>> =
        dirs.iter().map(|d| Arc::new(Wal::open(d.path(), opts(4096, -1)).unwrap())).collect();
    for (i, w) in wals.iter().enumerate() {
        // Enough entries in some logs to roll 4 KiB segments (pending segments close).
        append_range(w, 0, 1 + 40 * (i as i64 % 3), 1);
    }
    wals[3].close().unwrap();
    let results = sync_many(&wals, 4);
    assert_eq!(results.len(), 12);
    for (i, (w, r)) in wals.iter().zip(&results).enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(WalError::Closed)));
            continue;
        }
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(w.last_synced_offset(), 40 * (i as i64 % 3), "log {i}");
    }
    // A single thread, and more threads than logs, give the same.
    for t in [1, 64] {
        for w in wals.iter().filter(|w| !w.is_closed()) {
            let next = w.last_offset() + 1;
            append_range(w, next, next + 3, 1);
        }
        assert!(sync_many(&wals, t).iter().enumerate().all(|(i, r)| i == 3 || r.is_ok()));
        for w in wals.iter().filter(|w| !w.is_closed()) {
            assert_eq!(w.last_synced_offset(), w.last_offset());
        }
    }
    for (d, w) in dirs.iter().zip(&wals) {
        if w.is_closed() {
            continue;
        }
        let last = w.last_offset();
        w.close().unwrap();
        let again = Wal::open(d.path(), opts(4096, last)).unwrap();
        check_range(&again, 0, last + 1);
    }
}

#[test]
fn close_racing_sync_and_appends() {
    for round in 0..30 {
        let d = tempfile::tempdir().unwrap();
        let w = Arc::new(Wal::open(d.path(), opts(8192, -1)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let mut hs = vec![];
        {
            let w = w.clone();
            let stop = stop.clone();
            hs.push(std::thread::spawn(move || {
                let mut o = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let v = [o as u8; 100];
                    match w.append(NewEntry { term: 1, offset: o, value: &v, timestamp: 0 }, None) {
                        Ok(_) => o += 1,
                        Err(WalError::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                    w.request_sync();
                }
            }));
        }
        for inline in [false, true] {
            let w = w.clone();
            let stop = stop.clone();
            hs.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match if inline { w.sync_inline() } else { w.sync() } {
                        Ok(()) | Err(WalError::Closed) => {}
                        Err(e) => panic!("{e}"),
                    }
                    let last = w.last_offset();
                    if last >= 0 {
                        match w.read(last) {
                            Ok(_) | Err(WalError::Closed) | Err(WalError::EntryNotFound(_)) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(1 + round % 5));
        w.close().unwrap();
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
        let last = w.last_offset();
        drop(w);
        let w = Wal::open(d.path(), opts(8192, last)).unwrap();
        assert_eq!(w.last_offset(), last);
    }
}

#[test]
fn scan_segment_file_reports_records_and_damage() {
    let d = tempfile::tempdir().unwrap();
    let ends = make_single_segment(d.path());
    let path = segment::data_path(d.path(), 0);
    let (recs, err) = scan_segment_file(&path).unwrap();
    assert_eq!(recs.len(), 40);
    assert!(err.is_none());
    let mut b = std::fs::read(&path).unwrap();
    b[ends[20] + 13] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let (recs, err) = scan_segment_file(&path).unwrap();
    assert_eq!(recs.len(), 21);
    assert!(err.unwrap().contains(&format!("byte {}", ends[20])));
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8, u16),
    Sync,
    Truncate(u16),
    Trim(u16),
    Reopen,
    Clear,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..20, 0u16..600).prop_map(|(n, size)| Op::Append(n, size)),
        2 => Just(Op::Sync),
        2 => any::<u16>().prop_map(Op::Truncate),
        1 => any::<u16>().prop_map(Op::Trim),
        2 => Just(Op::Reopen),
        1 => Just(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The WAL behaves like a map offset → entry under any sequence of
    /// operations, including reopen (with every entry treated as committed).
    #[test]
    fn model_check(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let d = tempfile::tempdir().unwrap();
        let mut model: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        let mut w = Wal::open(d.path(), opts(4096, -1)).unwrap();
        let mut next = 0i64;
        for op in ops {
            match op {
                Op::Append(n, size) => {
                    let vals: Vec<Vec<u8>> = (0..n as i64)
                        .map(|i| vec![((next + i) % 251) as u8; size as usize])
                        .collect();
                    let batch: Vec<NewEntry> = vals.iter().enumerate().map(|(i, v)| NewEntry {
                        term: 1, offset: next + i as i64, value: v, timestamp: 0,
                    }).collect();
                    w.append_batch(&batch, None).unwrap();
                    for (i, v) in vals.into_iter().enumerate() {
                        model.insert(next + i as i64, v);
                    }
                    next += n as i64;
                }
                Op::Sync => { w.sync().unwrap(); }
                Op::Truncate(k) => {
                    if let (Some((&lo, _)), Some((&hi, _))) = (model.first_key_value(), model.last_key_value()) {
                        let cut = lo - 1 + (k as i64 % (hi - lo + 2));
                        w.truncate(cut).unwrap();
                        if cut < lo { model.clear(); } else { model.retain(|&o, _| o <= cut); }
                        next = if model.is_empty() { next } else { cut + 1 };
                    }
                }
                Op::Trim(k) => {
                    if let Some((&hi, _)) = model.last_key_value() {
                        let before = k as i64 % (hi + 2);
                        let first = w.trim(before, hi).unwrap();
                        prop_assert!(first <= before.max(*model.keys().next().unwrap()));
                        model.retain(|&o, _| o >= first);
                    }
                }
                Op::Reopen => {
                    w.sync().unwrap();
                    let commit = model.keys().last().copied().unwrap_or(-1);
                    drop(w);
                    w = Wal::open(d.path(), opts(4096, commit)).unwrap();
                }
                Op::Clear => {
                    w.clear().unwrap();
                    model.clear();
                    next += 3; // the next append may start anywhere
                }
            }
            prop_assert_eq!(w.last_offset(), model.keys().last().copied().unwrap_or(-1));
            prop_assert_eq!(w.first_offset(), model.keys().next().copied().unwrap_or(-1));
            for (o, v) in &model {
                prop_assert_eq!(&w.read(*o).unwrap().value, v);
            }
        }
    }
}

fn segment_file_sizes(dir: &Path) -> Vec<u64> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|b| std::fs::metadata(segment::data_path(dir, b)).unwrap().len())
        .collect()
}

#[test]
fn first_segment_is_small_and_a_busy_log_grows_its_segments() {
    let d = tempfile::tempdir().unwrap();
    let o = Options {
        segment_size: 1024 * 1024,
        min_segment_size: 64 * 1024,
        ..Options::default()
    };
    let w = Wal::open(d.path(), o).unwrap();
    append_range(&w, 0, 10, 1);
    assert_eq!(segment_file_sizes(d.path()), vec![64 * 1024]);
    // Filling 64 KiB within milliseconds: the next segment gets the maximum.
    let mut next = 10;
    while segment_file_sizes(d.path()).len() < 2 {
        append_range(&w, next, next + 100, 1);
        next += 100;
    }
    assert_eq!(segment_file_sizes(d.path()), vec![64 * 1024, 1024 * 1024]);
    w.sync().unwrap();
    let sizes: Vec<u64> = w.segments().iter().map(|s| s.size_bytes).collect();
    assert_eq!(sizes, vec![64 * 1024, 1024 * 1024]);
    w.close().unwrap();
    // Reopened, every entry reads back and the log goes on at its size.
    let w = Wal::open(d.path(), Options { min_segment_size: 64 * 1024, ..opts(1024 * 1024, next - 1) })
        .unwrap();
    for o in 0..next {
        assert_eq!(w.read(o).unwrap().value, val(o));
    }
    assert_eq!(w.inner.state.read().next_segment_size, 1024 * 1024);
}

#[test]
fn a_log_of_64_mib_segments_opens_and_continues() {
    let d = tempfile::tempdir().unwrap();
    // Written the old way: every segment 64 MiB.
    let old = Options {
        min_segment_size: DEFAULT_SEGMENT_SIZE,
        ..Options::default()
    };
    let w = Wal::open(d.path(), old).unwrap();
    append_range(&w, 0, 50, 1);
    w.close().unwrap();
    assert_eq!(segment_file_sizes(d.path()), vec![DEFAULT_SEGMENT_SIZE as u64]);
    // Opened with the defaults (small first segment): same data, same file.
    let w = Wal::open(d.path(), opts(DEFAULT_SEGMENT_SIZE, 49)).unwrap();
    assert_eq!(w.options().min_segment_size, DEFAULT_MIN_SEGMENT_SIZE);
    for o in 0..50 {
        assert_eq!(w.read(o).unwrap().value, val(o));
    }
    append_range(&w, 50, 60, 2);
    w.sync().unwrap();
    assert_eq!(segment_file_sizes(d.path()), vec![DEFAULT_SEGMENT_SIZE as u64]);
    assert_eq!(w.read(59).unwrap().value, val(59));
}

#[test]
fn min_segment_size_is_capped_at_the_segment_size_and_validated() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(d.path(), opts(8192, -1)).unwrap();
    assert_eq!(w.options().min_segment_size, 8192);
    append_range(&w, 0, 3, 1);
    assert_eq!(segment_file_sizes(d.path()), vec![8192]);
    w.close().unwrap();
    let bad = Options { min_segment_size: 100, ..opts(8192, -1) };
    assert!(matches!(Wal::open(d.path(), bad), Err(WalError::InvalidArgument(_))));
}
