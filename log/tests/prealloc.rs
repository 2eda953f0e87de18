//! Preallocation: the active segment is zero-filled ahead of the data in the background, the
//! zeros never read as data or as a torn tail, and sealed or closed segments hold only data.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hookrelay_log::{FRAME_HEADER_BYTES, Options, SEGMENT_HEADER_BYTES};

const PAYLOAD: usize = 200;
/// The block direct writes are aligned to.
const BLOCK: u64 = 4096;
const FRAME: u64 = (FRAME_HEADER_BYTES + PAYLOAD) as u64;

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn opts(dir: &Path, chunk: u64) -> Options {
    let mut o = common::opts(dir);
    o.preallocate_bytes = chunk;
    o
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Where a file whose data ends at `end` ends without preallocation: a direct write pads its
/// last block with zeros.
fn data_file_len(log: &hookrelay_log::Log, end: u64) -> u64 {
    if log.direct_io() {
        end.next_multiple_of(BLOCK)
    } else {
        end
    }
}

/// Waits (a liveness bound, not a speed check) until the background zero-fill grew `path` past
/// the data ending at `data_end` (and past the block that data ends in).
async fn wait_zero_filled(path: &Path, data_end: u64) {
    for _ in 0..1000 {
        if len(path) > data_end.next_multiple_of(BLOCK) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} was never zero-filled past {data_end}", path.display());
}

async fn append_n(log: &hookrelay_log::Log, from: u64, n: u64) {
    for i in from..from + n {
        let off = log
            .append(1, common::payload(i, PAYLOAD))
            .await
            .expect("append");
        assert_eq!(off, i);
    }
}

/// Reopens the log in `o.dir`: nothing torn, the first `n` records intact.
async fn reopen_intact(o: Options, n: u64) -> hookrelay_log::Log {
    let (log, rec) = common::open(o).await;
    assert_eq!(rec.truncated_bytes, 0);
    assert_records(&log, n);
    log
}

fn assert_records(log: &hookrelay_log::Log, n: u64) {
    assert_eq!(log.next_offset(), n);
    for i in 0..n {
        assert_eq!(
            log.read(i).expect("read").payload,
            common::payload(i, PAYLOAD)
        );
    }
}

#[test]
fn the_active_segment_is_zero_filled_ahead_of_the_data_and_trimmed_on_close() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(opts(dir.path(), 64 << 10)).await;
        common::assert_backend(&log);
        append_n(&log, 0, 10).await;
        let path = seg_path(dir.path(), 0);
        let data_end = SEGMENT_HEADER_BYTES as u64 + 10 * FRAME;
        wait_zero_filled(&path, data_end).await;
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes[data_end as usize..].iter().all(|&b| b == 0));
        // At most two chunks ahead: the gap left for the committer, then the zeros (each start
        // rounded up to a block when writes are direct).
        assert!(bytes.len() as u64 <= data_end + 2 * (64 << 10) + BLOCK);
        // Appends keep landing below the zeros and read back.
        append_n(&log, 10, 40).await;
        assert_records(&log, 50);
        log.close().await.expect("close");
        assert_eq!(len(&path), SEGMENT_HEADER_BYTES as u64 + 50 * FRAME);
    });
}

#[test]
fn a_crash_with_a_zero_filled_tail_loses_nothing_and_reports_no_torn_bytes() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(dir.path(), 64 << 10);
        let path = seg_path(dir.path(), 0);
        let (log, _) = common::open(o.clone()).await;
        append_n(&log, 0, 30).await;
        wait_zero_filled(&path, SEGMENT_HEADER_BYTES as u64 + 30 * FRAME).await;
        // A crash: the handle goes away without close(), the zeros stay on disk.
        drop(log);
        let log = reopen_intact(o.clone(), 30).await;
        assert_eq!(len(&path), SEGMENT_HEADER_BYTES as u64 + 30 * FRAME);
        append_n(&log, 30, 5).await;
        drop(log);
        reopen_intact(o, 35).await;
    });
}

#[test]
fn sealed_segments_hold_only_their_data() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = opts(dir.path(), 1024);
        // Forty frames a segment, zero-filled a KiB at a time, a KiB ahead.
        o.segment_bytes_max = SEGMENT_HEADER_BYTES as u64 + 40 * FRAME;
        let (log, _) = common::open(o.clone()).await;
        let mut zero_filled = false;
        for i in 0..150 {
            append_n(&log, i, 1).await;
            // Give the zero-filler room to run between appends.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let active = log.segments().pop().expect("active");
            zero_filled |= len(&active.path) > active.bytes;
        }
        assert!(zero_filled, "the active segments were zero-filled ahead");
        let segments = log.segments();
        assert_eq!(segments.len(), 4);
        for s in &segments {
            assert!(
                len(&s.path) <= o.segment_bytes_max,
                "never zero-filled past the limit"
            );
            if s.sealed {
                assert_eq!(len(&s.path), s.bytes, "{}", s.path.display());
            }
        }
        assert_records(&log, 150);
        log.close().await.expect("close");
        drop(log);
        reopen_intact(o, 150).await;
    });
}

#[test]
fn preallocation_off_never_grows_the_file_past_its_data() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(opts(dir.path(), 0)).await;
        let path = seg_path(dir.path(), 0);
        for i in 0..20 {
            append_n(&log, i, 1).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            let data_end = SEGMENT_HEADER_BYTES as u64 + (i + 1) * FRAME;
            assert_eq!(len(&path), data_file_len(&log, data_end));
        }
    });
}

/// True when the filesystem of `dir` takes `O_DIRECT` (tmpfs does not).
fn takes_o_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt as _;
    let probe = dir.join("probe");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok()
}

#[test]
fn segments_are_written_direct_where_the_filesystem_takes_it() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let takes_direct = takes_o_direct(dir.path());
        for direct_io in [true, false] {
            let sub = dir.path().join(format!("direct-{direct_io}"));
            let mut o = opts(&sub, 0);
            o.direct_io = direct_io;
            let (log, _) = common::open(o.clone()).await;
            assert_eq!(log.direct_io(), direct_io && takes_direct);
            append_n(&log, 0, 30).await;
            let path = seg_path(&sub, 0);
            let data_end = SEGMENT_HEADER_BYTES as u64 + 30 * FRAME;
            assert_eq!(len(&path), data_file_len(&log, data_end));
            // A crash: the block padding stays, and reads back as no data and nothing torn.
            drop(log);
            let log = reopen_intact(o.clone(), 30).await;
            // Appends after reopening continue inside the partly written block.
            append_n(&log, 30, 7).await;
            assert_records(&log, 37);
            log.close().await.expect("close");
            assert_eq!(len(&path), SEGMENT_HEADER_BYTES as u64 + 37 * FRAME);
            drop(log);
            reopen_intact(o, 37).await;
        }
    });
}

#[test]
fn sealed_segments_hold_only_their_data_without_preallocation_too() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = opts(dir.path(), 0);
        o.segment_bytes_max = SEGMENT_HEADER_BYTES as u64 + 10 * FRAME;
        let (log, _) = common::open(o.clone()).await;
        append_n(&log, 0, 35).await;
        let segments = log.segments();
        assert_eq!(segments.len(), 4);
        for s in segments.iter().filter(|s| s.sealed) {
            assert_eq!(len(&s.path), s.bytes, "{}", s.path.display());
        }
        assert_records(&log, 35);
        drop(log);
        reopen_intact(o, 35).await;
    });
}
