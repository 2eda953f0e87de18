//! Crash and damage tests: a damaged log directory in, the recovered records (or the exact
//! corruption report) out.

mod common;

use std::path::{Path, PathBuf};

use hookrelay_log::{Error, FRAME_HEADER_BYTES, Options, SEGMENT_HEADER_BYTES};

/// Payload lengths of the records the tests write (varied, including 0).
const LENS: [usize; 12] = [5, 0, 40, 17, 100, 3, 64, 0, 31, 9, 55, 12];

fn frame_len(i: usize) -> u64 {
    (FRAME_HEADER_BYTES + LENS[i % LENS.len()]) as u64
}

/// Byte position where frame `i` starts in a single-segment log.
fn frame_start(i: usize) -> u64 {
    SEGMENT_HEADER_BYTES as u64 + (0..i).map(frame_len).sum::<u64>()
}

/// Length of `bytes` without trailing zeros: what recovery reports as torn (a zero tail is the
/// preallocated region).
fn nonzero_len(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Writes `n` records into a fresh log in `dir` (one segment) and closes it.
async fn write_log(o: Options, n: usize) {
    let (log, _) = common::open(o).await;
    for i in 0..n {
        let off = log
            .append(
                (i % 5) as u8,
                common::payload(i as u64, LENS[i % LENS.len()]),
            )
            .await
            .expect("append");
        assert_eq!(off, i as u64);
    }
    log.close().await.expect("close");
}

async fn assert_records(log: &hookrelay_log::Log, n: usize) {
    assert_eq!(log.next_offset(), n as u64);
    for i in 0..n {
        let r = log.read(i as u64).expect("read");
        assert_eq!(r.payload, common::payload(i as u64, LENS[i % LENS.len()]));
        assert_eq!(r.record_type, (i % 5) as u8);
    }
}

#[test]
fn cut_at_every_byte_of_the_last_frames_keeps_the_complete_prefix() {
    common::run(|| async {
        const N: usize = 12;
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        write_log(o.clone(), N).await;
        let path = seg_path(dir.path(), 0);
        let original = std::fs::read(&path).expect("read segment");
        assert_eq!(original.len() as u64, frame_start(N));

        // Every cut inside the last 3 frames (and at the very end).
        for cut in frame_start(N - 3)..=frame_start(N) {
            std::fs::write(&path, &original[..cut as usize]).expect("cut");
            let complete = (0..=N).rev().find(|&k| frame_start(k) <= cut).expect("k");
            let (log, rec) = common::open(o.clone()).await;
            assert_eq!(rec.next_offset, complete as u64, "cut at {cut}");
            assert_eq!(rec.records, complete as u64);
            assert_eq!(
                rec.truncated_bytes,
                nonzero_len(&original[frame_start(complete) as usize..cut as usize]),
                "cut at {cut}"
            );
            assert_eq!(
                std::fs::metadata(&path).expect("meta").len(),
                frame_start(complete)
            );
            assert_records(&log, complete).await;
            drop(log);
        }

        // After a cut, the log keeps working: append, reopen, nothing more to cut.
        std::fs::write(&path, &original[..(frame_start(N) - 1) as usize]).expect("cut");
        let (log, rec) = common::open(o.clone()).await;
        assert_eq!(
            rec.truncated_bytes,
            nonzero_len(&original[frame_start(N - 1) as usize..(frame_start(N) - 1) as usize])
        );
        let off = log
            .append(
                ((N - 1) % 5) as u8,
                common::payload((N - 1) as u64, LENS[(N - 1) % LENS.len()]),
            )
            .await
            .expect("append");
        assert_eq!(off, (N - 1) as u64);
        log.close().await.expect("close");
        drop(log);
        let (log, rec) = common::open(o).await;
        assert_eq!(rec.truncated_bytes, 0);
        assert_records(&log, N).await;
    });
}

#[test]
fn a_flipped_byte_in_the_last_frame_is_a_torn_tail() {
    common::run(|| async {
        const N: usize = 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        write_log(o.clone(), N).await;
        let path = seg_path(dir.path(), 0);
        let original = std::fs::read(&path).expect("read segment");
        let last = frame_start(N - 1) as usize;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for pos in last..original.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut damaged = original.clone();
            damaged[pos] ^= (x as u8) | 1;
            std::fs::write(&path, &damaged).expect("write");
            match Log::open(o.clone()).await {
                Ok((log, rec)) => {
                    assert_eq!(rec.next_offset, (N - 1) as u64, "flip at {pos}");
                    assert_eq!(
                        rec.truncated_bytes,
                        nonzero_len(&damaged[last..]),
                        "flip at {pos}"
                    );
                    assert_records(&log, N - 1).await;
                }
                Err(e) => panic!("flip at {pos}: {e}"),
            }
        }
    });
}

use hookrelay_log::Log;

#[test]
fn a_flipped_byte_before_valid_frames_is_corruption_at_its_position() {
    common::run(|| async {
        const N: usize = 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        write_log(o.clone(), N).await;
        let path = seg_path(dir.path(), 0);
        let original = std::fs::read(&path).expect("read segment");
        for victim in [0usize, 3, N - 2] {
            let start = frame_start(victim);
            // In the length field, the crc, the offset, and the payload.
            for delta in [0u64, 5, 9, FRAME_HEADER_BYTES as u64] {
                let pos = start + delta;
                if pos >= frame_start(victim + 1) {
                    continue;
                }
                let mut damaged = original.clone();
                damaged[pos as usize] ^= 0x10;
                std::fs::write(&path, &damaged).expect("write");
                match Log::open(o.clone()).await {
                    Err(Error::Corrupt {
                        segment, position, ..
                    }) => {
                        assert_eq!(segment, path);
                        assert_eq!(position, start, "victim {victim} delta {delta}");
                    }
                    Err(e) => panic!("victim {victim}: unexpected error {e}"),
                    Ok((_, rec)) => panic!("victim {victim} delta {delta}: opened with {rec:?}"),
                }
                // The file was not modified by the failed open.
                assert_eq!(std::fs::read(&path).expect("read"), damaged);
            }
        }
    });
}

/// Writes two sealed segments and an active one; returns the sealed paths.
async fn write_sealed(o: Options) -> Vec<PathBuf> {
    let (log, _) = common::open(o).await;
    for i in 0..30usize {
        log.append(
            (i % 5) as u8,
            common::payload(i as u64, LENS[i % LENS.len()]),
        )
        .await
        .expect("append");
        if i == 9 || i == 19 {
            log.roll().await.expect("roll");
        }
    }
    let sealed: Vec<PathBuf> = log
        .segments()
        .into_iter()
        .filter(|s| s.sealed)
        .map(|s| s.path)
        .collect();
    assert_eq!(sealed.len(), 2);
    log.close().await.expect("close");
    sealed
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_corruption_naming_it() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        let sealed = write_sealed(o.clone()).await;
        let victim = &sealed[1];
        let original = std::fs::read(victim).expect("read");
        // The last byte of the segment (a torn tail would be forgiven in an active segment).
        for pos in [
            SEGMENT_HEADER_BYTES + 3,
            original.len() / 2,
            original.len() - 1,
        ] {
            let mut damaged = original.clone();
            damaged[pos] ^= 0x01;
            std::fs::write(victim, &damaged).expect("write");
            match Log::open(o.clone()).await {
                Err(Error::Corrupt { segment, .. }) => assert_eq!(&segment, victim),
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("opened a log with a damaged sealed segment (byte {pos})"),
            }
        }

        // Without the full check on open, reading the damaged record reports it instead.
        let mut damaged = original.clone();
        let last = original.len() - 1;
        damaged[last] ^= 0x01;
        std::fs::write(victim, &damaged).expect("write");
        let mut o2 = o.clone();
        o2.verify_sealed_on_open = false;
        let (log, _) = common::open(o2).await;
        assert!(log.read(10).is_ok(), "undamaged records stay readable");
        match log.read(19) {
            Err(Error::Corrupt { segment, .. }) => assert_eq!(&segment, victim),
            other => panic!("expected corruption, got {other:?}"),
        }
        let errors: Vec<_> = log.reader(0).filter_map(Result::err).collect();
        assert_eq!(errors.len(), 1, "the reader stops at the damage");
    });
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        write_sealed(o.clone()).await;
        let idx0 = dir.path().join(format!("{:020}.idx", 0));
        let idx1 = dir.path().join(format!("{:020}.idx", 10));
        let good0 = std::fs::read(&idx0).expect("idx0");
        std::fs::remove_file(&idx0).expect("rm");
        let mut bad1 = std::fs::read(&idx1).expect("idx1");
        let mid = bad1.len() / 2;
        bad1[mid] ^= 0xff;
        std::fs::write(&idx1, &bad1).expect("write");
        for verify in [false, true] {
            let mut o2 = o.clone();
            o2.verify_sealed_on_open = verify;
            let (log, rec) = common::open(o2).await;
            assert_eq!(rec.records, 30);
            assert_records(&log, 30).await;
            drop(log);
            assert_eq!(
                std::fs::read(&idx0).expect("idx0"),
                good0,
                "rebuilt identically"
            );
            assert_ne!(std::fs::read(&idx1).expect("idx1"), bad1);
        }
    });
}

#[test]
fn a_torn_new_segment_header_is_reinitialised() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        write_sealed(o.clone()).await;
        // Simulate a crash while rolling at offset 30: seal the active segment, then cut the
        // new segment's header short.
        let (log, _) = common::open(o.clone()).await;
        log.roll().await.expect("roll");
        log.close().await.expect("close");
        drop(log);
        let torn = seg_path(dir.path(), 30);
        let header = std::fs::read(&torn).expect("read");
        assert_eq!(header.len(), SEGMENT_HEADER_BYTES);
        std::fs::write(&torn, &header[..17]).expect("cut header");
        let (log, rec) = common::open(o).await;
        assert_eq!(rec.truncated_bytes, 17);
        assert_eq!(rec.next_offset, 30);
        assert_records(&log, 30).await;
        assert_eq!(
            log.append(0, common::payload(30, 5)).await.expect("append"),
            30
        );
    });
}

/// Five records, then `tail` written after them as a crash would leave it; reopens and returns
/// the reported torn bytes, checking the records and that the tail is cut.
async fn recover_with_tail(tail: &[u8]) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = common::opts(dir.path());
    write_log(o.clone(), 5).await;
    let path = seg_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(tail);
    std::fs::write(&path, &bytes).expect("write");
    let (log, rec) = common::open(o).await;
    assert_records(&log, 5).await;
    let len = std::fs::metadata(&path).expect("stat").len();
    assert_eq!(len, frame_start(5), "the tail is cut");
    rec.truncated_bytes
}

#[test]
fn trailing_zeros_are_cut_but_not_counted_as_torn() {
    common::run(|| async {
        // A zero tail is the preallocated region, not a torn write.
        assert_eq!(recover_with_tail(&[0u8; 4096]).await, 0);
    });
}

#[test]
fn torn_bytes_before_a_zero_tail_are_counted_up_to_the_last_non_zero_byte() {
    common::run(|| async {
        // A write torn inside the preallocated region: 7 bytes, one zero among them, then zeros.
        let mut tail = vec![0xA5, 0x5A, 0, 0x11, 0x22, 0x33, 0x44];
        tail.extend_from_slice(&[0u8; 8192]);
        assert_eq!(recover_with_tail(&tail).await, 7);
    });
}
