//! Replication support: `append_replicated` (byte-identical frames at the primary's offsets and
//! epochs), `wait_durable_beyond`, `first_offset_above_epoch`, and the offline `truncate_dir` /
//! `reset_dir` followed by open, append and read.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hookrelay_log::{
    Error, IoMode, Log, Options, SimDisk, TruncateOutcome, reset_dir, truncate_dir,
};
use proptest::prelude::*;

/// One record of a test model.
#[derive(Clone, Debug, PartialEq)]
struct Rec {
    epoch: u32,
    record_type: u8,
    payload: Bytes,
}

fn small_opts(dir: &Path) -> Options {
    let mut o = common::opts(dir);
    o.segment_bytes_max = 2048;
    o.index_interval_bytes = 256;
    o.frame_bytes_max = 64 * 1024;
    o
}

/// Appends `n` records to `log` (epoch bumps every 17 records), returning the model.
async fn fill(log: &Log, model: &mut Vec<Rec>, n: usize) {
    for _ in 0..n {
        let i = model.len() as u64;
        if i % 17 == 16 {
            log.set_epoch(log.epoch() + 1 + (i % 3) as u32);
        }
        let p = common::payload(i, (i as usize * 37) % 300);
        let rt = (i % 5) as u8;
        assert_eq!(log.append(rt, p.clone()).await.expect("append"), i);
        model.push(Rec {
            epoch: log.epoch(),
            record_type: rt,
            payload: p,
        });
    }
}

/// Asserts the open log holds exactly `model[first..]`, through `read` and `reader`.
fn check(log: &Log, model: &[Rec], first: u64) {
    let end = model.len() as u64;
    assert_eq!(log.first_offset(), first, "first offset");
    assert_eq!(log.next_offset(), end, "next offset");
    assert_eq!(log.durable_offset(), end, "durable offset");
    for o in first..end {
        let r = log.read(o).unwrap_or_else(|e| panic!("read {o}: {e}"));
        let want = &model[o as usize];
        assert_eq!(r.offset, o);
        assert_eq!(
            (r.epoch, r.record_type, &r.payload),
            (want.epoch, want.record_type, &want.payload),
            "offset {o}"
        );
    }
    let got: Vec<Rec> = log
        .reader(first)
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("reader: {e}"));
            Rec {
                epoch: r.epoch,
                record_type: r.record_type,
                payload: r.payload,
            }
        })
        .collect();
    assert_eq!(got.as_slice(), &model[first as usize..]);
    assert!(matches!(log.read(end), Err(Error::OffsetOutOfRange { .. })));
    if first > 0 {
        assert!(matches!(
            log.read(first - 1),
            Err(Error::OffsetOutOfRange { .. })
        ));
    }
    let segs = log.segments();
    assert!(
        segs.windows(2)
            .all(|w| w[0].next_offset == w[1].first_offset),
        "segments contiguous"
    );
    let want_epoch = if end > first {
        model[end as usize - 1].epoch
    } else {
        log.epoch()
    };
    assert_eq!(log.epoch(), want_epoch, "epoch is the newest record's");
}

/// The log files of a directory: (name, bytes), sorted by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read file"))
        })
        .collect();
    v.sort();
    v
}

fn seg_names(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".seg"))
        .collect()
}

async fn close(log: Log) {
    log.close().await.expect("close");
    drop(log);
}

#[test]
fn append_replicated_writes_the_primary_frames_byte_for_byte() {
    common::run(|| async {
        let pdir = tempfile::tempdir().expect("tempdir");
        let rdir = tempfile::tempdir().expect("tempdir");
        let (primary, _) = common::open(small_opts(pdir.path())).await;
        let mut model = Vec::new();
        fill(&primary, &mut model, 150).await;
        assert!(primary.segments().len() > 4, "several rolls");

        let (mut replica, _) = common::open(small_opts(rdir.path())).await;
        common::assert_backend(&replica);
        let records: Vec<_> = primary
            .reader(0)
            .map(|r| r.expect("primary read"))
            .collect();
        for (i, r) in records.iter().enumerate() {
            let off = replica
                .append_replicated(r.offset, r.epoch, r.record_type, r.payload.clone())
                .expect("append_replicated");
            assert_eq!(off, r.offset);
            assert_eq!(replica.epoch(), r.epoch, "the epoch follows the frames");
            match i % 7 {
                0 => replica.wait_durable(off).await.expect("wait_durable"),
                6 if i == 55 => {
                    // Reopen in the middle: the copy continues where it stopped.
                    replica.wait_durable(off).await.expect("wait_durable");
                    close(replica).await;
                    let (l, rec) = common::open(small_opts(rdir.path())).await;
                    assert_eq!(rec.next_offset, off + 1);
                    assert_eq!(l.epoch(), r.epoch);
                    replica = l;
                }
                _ => {}
            }
        }
        replica
            .wait_durable(replica.next_offset() - 1)
            .await
            .expect("wait_durable");
        check(&replica, &model, 0);
        close(primary).await;
        close(replica).await;

        // Same segment files, same bytes — except the creation time in each segment header
        // (bytes 24..32) and the header CRC covering it (32..36).
        let (p, r) = (files(pdir.path()), files(rdir.path()));
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&p), names(&r));
        for ((name, a), (_, b)) in p.iter().zip(&r) {
            assert_eq!(a.len(), b.len(), "{name} length");
            if name.ends_with(".seg") {
                assert_eq!(a[..24], b[..24], "{name} header");
                assert_eq!(a[36..], b[36..], "{name} frames");
            } else {
                assert_eq!(a, b, "{name}");
            }
        }

        let (replica, _) = common::open(small_opts(rdir.path())).await;
        check(&replica, &model, 0);
        let last = model.last().map_or(0, |r| r.epoch);
        assert_eq!(replica.epoch(), last);
        // Appends continue after replication (e.g. after a promotion), in a newer epoch.
        replica.set_epoch(last + 1);
        let off = replica
            .append(9, Bytes::from_static(b"promoted"))
            .await
            .expect("append");
        assert_eq!(off, model.len() as u64);
        assert_eq!(replica.read(off).expect("read").epoch, last + 1);
    });
}

#[test]
fn append_replicated_refuses_wrong_offsets_and_older_epochs() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.frame_bytes_max = 1024;
        o.pending_bytes_max = 2048;
        let (log, _) = common::open(o.clone()).await;
        let p = || Bytes::from_static(b"x");
        log.append_replicated(0, 3, 1, p()).expect("first");
        log.append_replicated(1, 3, 1, p()).expect("same epoch");
        assert!(matches!(
            log.append_replicated(3, 3, 1, p()),
            Err(Error::OffsetMismatch {
                expected: 2,
                got: 3
            })
        ));
        assert!(matches!(
            log.append_replicated(1, 3, 1, p()),
            Err(Error::OffsetMismatch {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            log.append_replicated(2, 2, 1, p()),
            Err(Error::StaleEpoch {
                epoch: 2,
                current: 3
            })
        ));
        // Refused frames change nothing.
        assert_eq!((log.next_offset(), log.epoch()), (2, 3));
        assert!(matches!(
            log.append_replicated(2, 4, 1, Bytes::from(vec![0u8; 1024])),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!((log.next_offset(), log.epoch()), (2, 3));
        log.append_replicated(2, 9, 1, p()).expect("newer epoch");
        assert_eq!(log.epoch(), 9);
        // The local append path writes in the raised epoch too.
        let off = log.append(1, p()).await.expect("append");
        assert_eq!(off, 3);
        assert_eq!(log.read(3).expect("read").epoch, 9);
        log.wait_durable(3).await.expect("durable");
        let epochs: Vec<u32> = log.reader(0).map(|r| r.expect("read").epoch).collect();
        assert_eq!(epochs, vec![3, 3, 9, 9]);

        // pending_bytes_max: two 1000-byte frames fit, the third is refused with Backlogged
        // (queued without awaiting, so the committer has not taken them yet).
        let big = || Bytes::from(vec![7u8; 1000 - hookrelay_log::FRAME_HEADER_BYTES]);
        log.append_replicated(4, 9, 1, big()).expect("queue 1");
        log.append_replicated(5, 9, 1, big()).expect("queue 2");
        assert!(matches!(
            log.append_replicated(6, 9, 1, big()),
            Err(Error::Backlogged { .. })
        ));
        log.wait_durable(5).await.expect("durable");
        log.append_replicated(6, 9, 1, big()).expect("room again");
        close(log).await;

        let (log, rec) = common::open(o).await;
        assert_eq!(rec.next_offset, 7);
        assert_eq!(log.epoch(), 9);
        assert!(matches!(
            log.append_replicated(7, 8, 1, p()),
            Err(Error::StaleEpoch {
                epoch: 8,
                current: 9
            })
        ));
        log.close().await.expect("close");
        assert!(matches!(
            log.append_replicated(7, 9, 1, p()),
            Err(Error::Closed)
        ));
    });
}

#[test]
fn append_replicated_on_a_poisoned_log_is_refused() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let mut o = common::opts(dir.path());
        o.io = IoMode::Simulated(disk.clone());
        let (log, _) = common::open(o).await;
        log.append_replicated(0, 1, 0, Bytes::from_static(b"a"))
            .expect("queue");
        log.wait_durable(0).await.expect("durable");
        disk.fail_next_sync();
        log.append_replicated(1, 1, 0, Bytes::from_static(b"b"))
            .expect("queue");
        assert!(matches!(log.wait_durable(1).await, Err(Error::Poisoned)));
        assert!(matches!(
            log.append_replicated(2, 1, 0, Bytes::from_static(b"c")),
            Err(Error::Poisoned)
        ));
    });
}

/// Counts how often the wrapped future is polled (to prove a waiter does not spin).
struct Polls<F> {
    fut: Pin<Box<F>>,
    polls: Rc<Cell<u32>>,
}

impl<F: Future> Future for Polls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.set(self.polls.get() + 1);
        self.fut.as_mut().poll(cx)
    }
}

#[test]
fn wait_durable_beyond_wakes_for_a_future_offset_without_spinning() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(common::opts(dir.path())).await;
        // Already durable / nothing assigned yet.
        log.append(0, Bytes::from_static(b"0"))
            .await
            .expect("append");
        tokio::time::timeout(Duration::from_secs(1), log.wait_durable_beyond(0))
            .await
            .expect("an already durable offset resolves at once")
            .expect("ok");

        let polls = Rc::new(Cell::new(0));
        let waiter = {
            let log = log.clone();
            let fut = Polls {
                fut: Box::pin(async move {
                    log.wait_durable_beyond(10).await?;
                    Ok::<u64, Error>(log.durable_offset())
                }),
                polls: Rc::clone(&polls),
            };
            tokio::task::spawn_local(fut)
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let idle_polls = polls.get();
        assert_eq!(idle_polls, 1, "an idle waiter is polled once, then sleeps");
        for i in 1..10u64 {
            assert_eq!(
                log.append(0, common::payload(i, 10)).await.expect("append"),
                i
            );
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished(), "offset 10 is not durable after {i}");
        }
        // Nine batches woke it at most once each.
        assert!(polls.get() <= 1 + 9, "polled {} times", polls.get());
        assert!(!waiter.is_finished());
        let off = log
            .append(0, common::payload(10, 10))
            .await
            .expect("append");
        assert_eq!(off, 10);
        let durable = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woken")
            .expect("task")
            .expect("ok");
        assert!(durable > 10);
        assert!(log.read(10).is_ok(), "the record it waited for is readable");
    });
}

#[test]
fn wait_durable_beyond_is_not_answered_before_the_fsync() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let mut o = common::opts(dir.path());
        o.io = IoMode::Simulated(disk.clone());
        let (log, _) = common::open(o).await;
        disk.set_sync_delay(Duration::from_millis(100));
        let waiter = {
            let log = log.clone();
            tokio::task::spawn_local(async move {
                log.wait_durable_beyond(0).await?;
                Ok::<_, Error>(log.durable_offset())
            })
        };
        let fsyncs = disk.fsyncs();
        log.append_nowait(0, Bytes::from_static(b"x"))
            .expect("queue");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "answered before the fsync");
        let durable = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken after the fsync")
            .expect("task")
            .expect("ok");
        assert_eq!(durable, 1);
        assert!(disk.fsyncs() > fsyncs);
    });
}

#[test]
fn wait_durable_beyond_fails_on_close_and_on_poison() {
    common::run(|| async {
        // Close: an unassigned offset fails with Closed; an assigned one is flushed first.
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(common::opts(dir.path())).await;
        let spawn_wait = |offset: u64| {
            let log = log.clone();
            tokio::task::spawn_local(async move { log.wait_durable_beyond(offset).await })
        };
        let far = spawn_wait(100);
        let queued = spawn_wait(0);
        tokio::task::yield_now().await;
        log.append_nowait(0, Bytes::from_static(b"q"))
            .expect("queue");
        log.close().await.expect("close");
        let far = tokio::time::timeout(Duration::from_secs(5), far)
            .await
            .expect("woken by close")
            .expect("task");
        assert!(matches!(far, Err(Error::Closed)), "{far:?}");
        tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("woken by close")
            .expect("task")
            .expect("flushed by close");
        assert!(matches!(
            log.wait_durable_beyond(1).await,
            Err(Error::Closed)
        ));
        log.wait_durable_beyond(0)
            .await
            .expect("durable before close");
        drop(log);

        // Poison: a waiter for a future offset fails with Poisoned.
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let mut o = common::opts(dir.path());
        o.io = IoMode::Simulated(disk.clone());
        let (log, _) = common::open(o).await;
        log.append(0, Bytes::from_static(b"a"))
            .await
            .expect("append");
        let far = {
            let log = log.clone();
            tokio::task::spawn_local(async move { log.wait_durable_beyond(5).await })
        };
        tokio::task::yield_now().await;
        disk.fail_next_sync();
        assert!(matches!(
            log.append(0, Bytes::from_static(b"b")).await,
            Err(Error::Poisoned)
        ));
        let far = tokio::time::timeout(Duration::from_secs(5), far)
            .await
            .expect("woken by poison")
            .expect("task");
        assert!(matches!(far, Err(Error::Poisoned)), "{far:?}");
        log.wait_durable_beyond(0)
            .await
            .expect("what was durable stays durable");
        assert!(matches!(
            log.wait_durable_beyond(1).await,
            Err(Error::Poisoned)
        ));
    });
}

#[test]
fn first_offset_above_epoch_across_epochs_and_segments() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(small_opts(dir.path())).await;
        assert_eq!(log.first_offset_above_epoch(0), 0, "empty log");
        // Epochs 1 (0..40), 1→4 (40..41), 4 (..90), 7 (90..130); epochs 0, 2, 3, 5, 6 absent.
        let mut model = Vec::new();
        for i in 0..130u64 {
            let e = match i {
                0..40 => 1,
                40..90 => 4,
                _ => 7,
            };
            log.append_replicated(i, e, 0, common::payload(i, 100))
                .expect("append");
            model.push(e);
        }
        log.wait_durable(129).await.expect("durable");
        assert!(log.segments().len() > 5);
        let expect = |model: &[u32], first: usize, e: u32| {
            (first..model.len())
                .find(|&o| model[o] > e)
                .unwrap_or(model.len()) as u64
        };
        for e in 0..10 {
            assert_eq!(
                log.first_offset_above_epoch(e),
                expect(&model, 0, e),
                "epoch {e}"
            );
            assert_eq!(
                log.try_first_offset_above_epoch(e).expect("try"),
                expect(&model, 0, e)
            );
        }
        // Only durable records count: a queued frame of epoch 9 is not seen yet.
        log.append_replicated(130, 9, 0, Bytes::new())
            .expect("queue");
        assert_eq!(log.first_offset_above_epoch(7), 130);
        log.wait_durable(130).await.expect("durable");
        model.push(9);
        assert_eq!(log.first_offset_above_epoch(7), 130);
        assert_eq!(log.first_offset_above_epoch(9), 131);

        // After delete_below the search starts at the first retained offset.
        log.delete_below(60).await.expect("delete");
        let first = log.first_offset();
        assert!(first > 40 && first <= 60, "first {first}");
        assert_eq!(
            log.first_offset_above_epoch(1),
            first,
            "every retained record is newer"
        );
        for e in 0..10 {
            assert_eq!(
                log.first_offset_above_epoch(e),
                expect(&model, first as usize, e),
                "epoch {e}"
            );
        }
        close(log).await;
        let (log, _) = common::open(small_opts(dir.path())).await;
        assert_eq!(log.first_offset_above_epoch(4), 90);
    });
}

/// Builds a closed multi-segment log in `dir` with `n` records and returns its model and the
/// segments' first offsets.
async fn build(dir: &Path, n: usize) -> (Vec<Rec>, Vec<u64>) {
    let (log, _) = common::open(small_opts(dir)).await;
    let mut model = Vec::new();
    fill(&log, &mut model, n).await;
    let bases = log.segments().iter().map(|s| s.first_offset).collect();
    close(log).await;
    (model, bases)
}

/// Opens the log after a truncation to `from`, checks it holds `model[first..from]`, appends
/// past it, rolls, reopens and checks again.
async fn reopen_and_continue(o: Options, model: &[Rec], first: u64, from: u64) {
    let mut model = model[..from as usize].to_vec();
    let (log, rec) = common::open(o.clone()).await;
    assert_eq!(rec.next_offset, from);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.records, from - first);
    check(&log, &model, first);
    if model.len() as u64 == first {
        assert_eq!(log.epoch(), 0, "an empty log starts at epoch 0");
    }
    let epoch = log.epoch() + 1;
    log.set_epoch(epoch);
    for i in 0..30u64 {
        let p = common::payload(1000 + i, 150);
        let off = log.append(2, p.clone()).await.expect("append");
        assert_eq!(off, model.len() as u64);
        model.push(Rec {
            epoch,
            record_type: 2,
            payload: p,
        });
    }
    log.roll().await.expect("roll");
    check(&log, &model, first);
    close(log).await;
    let (log, rec) = common::open(o).await;
    assert_eq!(rec.truncated_bytes, 0);
    check(&log, &model, first);
    close(log).await;
}

#[test]
fn truncate_in_the_active_segment() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (model, bases) = build(dir.path(), 100).await;
        let active = *bases.last().expect("active");
        assert!(active + 2 < 100, "the active segment holds several records");
        let from = 99;
        let out = truncate_dir(dir.path(), from).expect("truncate");
        assert_eq!(
            out,
            TruncateOutcome {
                removed_records: 1,
                next_offset: 99
            }
        );
        assert_eq!(
            seg_names(dir.path()).len(),
            bases.len(),
            "no segment removed"
        );
        reopen_and_continue(small_opts(dir.path()), &model, 0, from).await;
    });
}

#[test]
fn truncate_in_a_sealed_segment_and_at_a_segment_start() {
    common::run(|| async {
        for (case, verify) in [(0, true), (1, false), (2, true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (model, bases) = build(dir.path(), 150).await;
            assert!(bases.len() >= 5, "{bases:?}");
            // Mid-segment in the second segment, at the start of the third, at the very end
            // of the second-to-last (the record just before the active segment).
            let (seg, from) = match case {
                0 => (1, bases[1] + 2),
                1 => (2, bases[2]),
                _ => (bases.len() - 2, bases[bases.len() - 1] - 1),
            };
            let out = truncate_dir(dir.path(), from).expect("truncate");
            assert_eq!(
                out,
                TruncateOutcome {
                    removed_records: 150 - from,
                    next_offset: from
                }
            );
            // Segments after the cut one are gone, the cut one lost its index file, the older
            // ones keep theirs.
            let names: Vec<String> = files(dir.path()).into_iter().map(|(n, _)| n).collect();
            let mut want = Vec::new();
            for &b in &bases[..seg] {
                want.push(format!("{b:020}.idx"));
                want.push(format!("{b:020}.seg"));
            }
            want.push(format!("{:020}.seg", bases[seg]));
            assert_eq!(names, want, "case {case}");
            let mut o = small_opts(dir.path());
            o.verify_sealed_on_open = verify;
            reopen_and_continue(o, &model, 0, from).await;
        }
    });
}

#[test]
fn truncate_below_at_and_beyond_the_retained_range() {
    common::run(|| async {
        // Below the first retained offset (after delete_below): everything goes, the next
        // append gets `from`.
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(small_opts(dir.path())).await;
        let mut model = Vec::new();
        fill(&log, &mut model, 120).await;
        log.delete_below(50).await.expect("delete_below");
        let first = log.first_offset();
        assert!(first > 10);
        close(log).await;
        let out = truncate_dir(dir.path(), first - 7).expect("truncate");
        assert_eq!(
            out,
            TruncateOutcome {
                removed_records: 120 - first,
                next_offset: first - 7
            }
        );
        assert_eq!(
            files(dir.path())
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            vec![format!("{:020}.seg", first - 7)]
        );
        reopen_and_continue(small_opts(dir.path()), &model, first - 7, first - 7).await;

        // Exactly at the first retained offset.
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(small_opts(dir.path())).await;
        let mut model = Vec::new();
        fill(&log, &mut model, 120).await;
        log.delete_below(50).await.expect("delete_below");
        let first = log.first_offset();
        close(log).await;
        let out = truncate_dir(dir.path(), first).expect("truncate");
        assert_eq!(
            out,
            TruncateOutcome {
                removed_records: 120 - first,
                next_offset: first
            }
        );
        reopen_and_continue(small_opts(dir.path()), &model, first, first).await;

        // At and beyond the end: nothing changes.
        let dir = tempfile::tempdir().expect("tempdir");
        let (model, _) = build(dir.path(), 80).await;
        let before = files(dir.path());
        for from in [80, 81, u64::MAX] {
            let out = truncate_dir(dir.path(), from).expect("truncate");
            assert_eq!(
                out,
                TruncateOutcome {
                    removed_records: 0,
                    next_offset: 80
                }
            );
            assert_eq!(files(dir.path()), before, "nothing changed");
        }
        reopen_and_continue(small_opts(dir.path()), &model, 0, 80).await;

        // An empty directory is an empty log; a missing one is an error.
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            truncate_dir(dir.path(), 5).expect("truncate"),
            TruncateOutcome {
                removed_records: 0,
                next_offset: 0
            }
        );
        assert!(matches!(
            truncate_dir(&dir.path().join("missing"), 0),
            Err(Error::Io { .. })
        ));
    });
}

#[test]
fn truncate_handles_a_torn_tail_and_refuses_corruption() {
    common::run(|| async {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (model, bases) = build(dir.path(), 60).await;
        let active = dir
            .path()
            .join(format!("{:020}.seg", bases.last().expect("active")));
        let torn = |path: &Path| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .expect("open");
            f.write_all(&[0xAB; 30]).expect("write");
        };
        torn(&active);
        // The torn tail is the end of the log: truncating beyond it changes nothing...
        let out = truncate_dir(dir.path(), 60).expect("truncate");
        assert_eq!(out.next_offset, 60);
        assert_eq!(out.removed_records, 0);
        // ...and a cut below it removes it with the records.
        let out = truncate_dir(dir.path(), 58).expect("truncate");
        assert_eq!(
            out,
            TruncateOutcome {
                removed_records: 2,
                next_offset: 58
            }
        );
        reopen_and_continue(small_opts(dir.path()), &model, 0, 58).await;

        // A damaged frame before the cut in a sealed segment is corruption: nothing changes.
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bases) = build(dir.path(), 80).await;
        let seg = dir.path().join(format!("{:020}.seg", bases[1]));
        let mut bytes = std::fs::read(&seg).expect("read");
        bytes[hookrelay_log::SEGMENT_HEADER_BYTES + 30] ^= 0xFF;
        std::fs::write(&seg, &bytes).expect("write");
        let before = files(dir.path());
        assert!(matches!(
            truncate_dir(dir.path(), bases[1] + 3),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(files(dir.path()), before);
    });
}

#[test]
fn reset_then_open_append_read() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bases) = build(dir.path(), 90).await;
        assert!(bases.len() > 2);
        // Leftovers of an interrupted roll go too.
        std::fs::write(dir.path().join(format!("{:020}.idx.tmp", 7)), b"junk").expect("tmp");
        reset_dir(dir.path(), 1000).expect("reset");
        assert_eq!(
            files(dir.path())
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            vec![format!("{:020}.seg", 1000)]
        );
        let o = small_opts(dir.path());
        let (log, rec) = common::open(o.clone()).await;
        assert_eq!((rec.next_offset, rec.records, rec.segments), (1000, 0, 1));
        assert_eq!(log.first_offset(), 1000);
        assert_eq!(log.durable_offset(), 1000);
        assert_eq!(log.epoch(), 0);
        assert_eq!(log.first_offset_above_epoch(0), 1000);
        assert!(matches!(log.read(999), Err(Error::OffsetOutOfRange { .. })));
        assert!(matches!(
            log.append_replicated(0, 5, 1, Bytes::new()),
            Err(Error::OffsetMismatch {
                expected: 1000,
                got: 0
            })
        ));
        let mut model: Vec<Rec> = vec![
            Rec {
                epoch: 0,
                record_type: 0,
                payload: Bytes::new()
            };
            1000
        ];
        for i in 1000..1080u64 {
            let e = if i < 1040 { 5 } else { 6 };
            let p = common::payload(i, 120);
            log.append_replicated(i, e, 1, p.clone())
                .expect("append_replicated");
            model.push(Rec {
                epoch: e,
                record_type: 1,
                payload: p,
            });
        }
        log.wait_durable(1079).await.expect("durable");
        assert!(log.segments().len() > 2, "rolled after the reset");
        check(&log, &model, 1000);
        assert_eq!(log.first_offset_above_epoch(5), 1040);
        close(log).await;
        reopen_and_continue(o.clone(), &model, 1000, 1080).await;

        // A truncation inside the bootstrapped log works the same way.
        let out = truncate_dir(dir.path(), 1050).expect("truncate");
        assert_eq!(out.next_offset, 1050);
        reopen_and_continue(o, &model, 1000, 1050).await;

        // reset_dir creates a missing directory.
        let fresh = dir.path().join("a/b");
        reset_dir(&fresh, 0).expect("reset fresh");
        let (log, rec) = common::open(small_opts(&fresh)).await;
        assert_eq!(rec.next_offset, 0);
        assert_eq!(log.append(0, Bytes::new()).await.expect("append"), 0);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// Truncating a random multi-segment log at any offset, then reopening, yields exactly the
    /// prefix (with `delete_below` sometimes moving the first retained offset).
    #[test]
    fn truncate_anywhere_yields_the_prefix(
        lens in proptest::collection::vec(0usize..400, 0..90),
        bumps in proptest::collection::vec(any::<bool>(), 90),
        delete_per_mille in prop_oneof![2 => Just(0u16), 1 => 0u16..=1000],
        cut_per_mille in 0u16..=1100,
        verify in any::<bool>(),
    ) {
        common::run(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut o = small_opts(dir.path());
            o.segment_bytes_max = 1024;
            o.verify_sealed_on_open = verify;
            let (log, _) = common::open(o.clone()).await;
            let mut model = Vec::new();
            let mut epoch = 0;
            for (i, &len) in lens.iter().enumerate() {
                if bumps[i] && i % 4 == 0 {
                    epoch += 1;
                    log.set_epoch(epoch);
                }
                let p = common::payload(i as u64, len);
                log.append_nowait((i % 3) as u8, p.clone()).expect("append");
                model.push(Rec { epoch, record_type: (i % 3) as u8, payload: p });
            }
            let n = model.len() as u64;
            if n > 0 {
                log.wait_durable(n - 1).await.expect("durable");
            }
            let below = n * u64::from(delete_per_mille) / 1000;
            log.delete_below(below).await.expect("delete_below");
            let first = log.first_offset();
            close(log).await;

            let from = n * u64::from(cut_per_mille) / 1000;
            let out = truncate_dir(dir.path(), from).expect("truncate");
            let (removed, first, end) = if from >= n {
                (0, first, n)
            } else if from < first {
                (n - first, from, from)
            } else {
                (n - from, first, from)
            };
            assert_eq!(out, TruncateOutcome { removed_records: removed, next_offset: end });
            reopen_and_continue(o, &model, first, end).await;
        });
    }
}
