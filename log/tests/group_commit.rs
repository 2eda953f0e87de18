//! Group commit: concurrent appends share fsyncs, and nobody is answered before its own frame
//! is fsynced.

mod common;

use std::rc::Rc;
use std::time::Duration;

use hookrelay_log::{FRAME_HEADER_BYTES, IoMode, SEGMENT_HEADER_BYTES, SimDisk};

#[test]
fn concurrent_appenders_share_fsyncs_on_the_real_backend() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(common::opts(dir.path())).await;
        common::assert_backend(&log);
        const TASKS: usize = 256;
        const EACH: usize = 4;
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let log = log.clone();
            handles.push(tokio::task::spawn_local(async move {
                let mut mine = Vec::new();
                for k in 0..EACH {
                    let off = log
                        .append(1, common::payload((t * EACH + k) as u64, 100))
                        .await
                        .expect("append");
                    // Answered only once durable.
                    assert!(log.durable_offset() > off, "answered before its fsync");
                    mine.push(off);
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("task"));
        }
        all.sort_unstable();
        assert_eq!(all, (0..(TASKS * EACH) as u64).collect::<Vec<_>>());
        let stats = log.stats();
        assert_eq!(stats.appends, (TASKS * EACH) as u64);
        assert!(
            stats.fsyncs * 8 <= stats.appends,
            "expected far fewer fsyncs than appends: {stats:?}"
        );
        assert_eq!(
            stats.batches, stats.fsyncs,
            "one fsync per batch, no rolls here"
        );
        assert_eq!(
            stats.commit_times.count(),
            stats.batches,
            "every commit timed"
        );
    });
}

#[test]
fn nobody_is_answered_before_the_fsync_covering_its_frame() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        disk.set_sync_delay(Duration::from_millis(2));
        let mut o = common::opts(dir.path());
        o.io = IoMode::Simulated(disk.clone());
        let (log, _) = common::open(o).await;
        let path = Rc::new(log.segments()[0].path.clone());
        const TASKS: usize = 256;
        const LEN: usize = 40;
        let frame_end =
            |off: u64| SEGMENT_HEADER_BYTES as u64 + (off + 1) * (FRAME_HEADER_BYTES + LEN) as u64;
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let (log, disk, path) = (log.clone(), disk.clone(), Rc::clone(&path));
            handles.push(tokio::task::spawn_local(async move {
                for k in 0..3u64 {
                    let off = log
                        .append(0, common::payload(t as u64 * 3 + k, LEN))
                        .await
                        .expect("append");
                    assert!(
                        disk.synced_len(&path) >= frame_end(off),
                        "offset {off} answered before the simulated fsync covered it"
                    );
                    assert!(log.durable_offset() > off);
                }
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 768);
        assert!(stats.fsyncs * 16 <= stats.appends, "{stats:?}");
        assert_eq!(disk.fsyncs(), stats.fsyncs);
        // Every commit waited for the simulated 2 ms fsync, so none is in a bucket up to 1 ms,
        // and the sum is at least 2 ms per commit.
        let times = stats.commit_times;
        assert_eq!(times.count(), stats.batches);
        let fast = hookrelay_log::COMMIT_BOUNDS_US.partition_point(|&b| b <= 1_000);
        assert!(times.counts[..fast].iter().all(|&n| n == 0), "{times:?}");
        assert!(times.sum_us >= 2_000 * times.count(), "{times:?}");
    });
}

#[test]
fn batches_respect_batch_bytes_max() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.batch_bytes_max = 1000;
        let (log, _) = common::open(o).await;
        let mut last = 0;
        for i in 0..100u64 {
            last = log
                .append_nowait(0, common::payload(i, 76))
                .expect("append");
        }
        log.wait_durable(last).await.expect("wait");
        let stats = log.stats();
        // 100 frames of 100 bytes, at most 10 per batch.
        assert!(stats.batches >= 10, "{stats:?}");
        assert_eq!(stats.bytes_written, 100 * 100);
        // A frame bigger than the batch limit is still written (alone).
        let off = log.append(0, common::payload(1, 5000)).await.expect("big");
        assert_eq!(log.read(off).expect("read").payload.len(), 5000);
    });
}

#[test]
fn linger_spaces_batches_under_load() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.batch_linger = Duration::from_millis(800);
        let (log, _) = common::open(o).await;
        let mut last = 0;
        for i in 0..20u64 {
            last = log
                .append_nowait(0, common::payload(i, 10))
                .expect("append");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        log.wait_durable(last).await.expect("wait");
        // The first append finds the committer idle and is written at once; the other 19
        // (~20 ms of appends) wait out the linger together (without it: a batch per append).
        assert_eq!(log.stats().batches, 2, "{:?}", log.stats());
    });
}

#[test]
fn linger_never_delays_a_record_after_a_quiet_spell_nor_close() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.batch_linger = Duration::from_secs(3600);
        let (log, _) = common::open(o.clone()).await;
        // No batch before it: written at once, not an hour later.
        let first = log.append(0, common::payload(1, 10)).await.expect("first");
        // The next one waits for the linger ...
        let second = log
            .append_nowait(0, common::payload(2, 10))
            .expect("second");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(log.durable_offset() <= second, "written before the linger");
        // ... but `close` writes it without waiting.
        log.close().await.expect("close");
        drop(log);
        let (log, _) = common::open(o).await;
        assert_eq!(
            log.read(first).expect("first").payload,
            common::payload(1, 10)
        );
        assert_eq!(
            log.read(second).expect("second").payload,
            common::payload(2, 10)
        );
    });
}

#[test]
fn a_deferred_record_rides_with_the_next_commit() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(common::opts(dir.path())).await;
        let deferred = log
            .append_deferred(0, common::payload(1, 10), Duration::from_secs(3600))
            .expect("deferred");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            log.durable_offset() <= deferred,
            "written before company came"
        );
        assert_eq!(log.stats().batches, 0, "{:?}", log.stats());
        // A record that may not wait is written at once, and takes the deferred one along.
        let urgent = log.append(0, common::payload(2, 10)).await.expect("urgent");
        assert!(log.durable_offset() > urgent && urgent > deferred);
        assert_eq!(
            log.stats().batches,
            1,
            "one commit for both: {:?}",
            log.stats()
        );
    });
}

#[test]
fn a_deferred_record_alone_is_written_by_its_deadline_and_by_close() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = common::opts(dir.path());
        let (log, _) = common::open(o.clone()).await;
        let queued_at = std::time::Instant::now();
        let first = log
            .append_deferred(0, common::payload(1, 10), Duration::from_millis(30))
            .expect("first");
        // More deferred records keep the first one's deadline.
        let second = log
            .append_deferred(0, common::payload(2, 10), Duration::from_millis(30))
            .expect("second");
        log.wait_durable(second)
            .await
            .expect("written by the deadline");
        assert!(
            queued_at.elapsed() >= Duration::from_millis(30),
            "written early"
        );
        assert!(log.durable_offset() > first);
        assert_eq!(log.stats().batches, 1, "{:?}", log.stats());
        // `close` does not wait for an hour's deadline.
        let third = log
            .append_deferred(0, common::payload(3, 10), Duration::from_secs(3600))
            .expect("third");
        log.close().await.expect("close");
        drop(log);
        let (log, _) = common::open(o).await;
        assert_eq!(
            log.read(third).expect("third").payload,
            common::payload(3, 10)
        );
    });
}

#[test]
fn size_and_age_rolls() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.segment_bytes_max = 1024;
        let (log, _) = common::open(o.clone()).await;
        for i in 0..40u64 {
            log.append(0, common::payload(i, 100))
                .await
                .expect("append");
        }
        let segs = log.segments();
        assert!(segs.len() >= 4, "{segs:?}");
        for s in &segs {
            assert!(s.bytes <= 1024, "{s:?}");
        }
        log.close().await.expect("close");
        drop(log);

        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.segment_age_max = Duration::from_millis(100);
        let (log, _) = common::open(o).await;
        log.append(0, common::payload(0, 10)).await.expect("append");
        log.append(0, common::payload(1, 10)).await.expect("append");
        assert_eq!(log.segments().len(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        log.append(0, common::payload(2, 10)).await.expect("append");
        let segs = log.segments();
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert_eq!(segs[1].first_offset, 2);
        assert_eq!(log.read(2).expect("read").offset, 2);
    });
}
