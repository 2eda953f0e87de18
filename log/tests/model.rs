//! Property test: random appends (sizes from 0 to 20 KiB), rolls, reopens and deletes read back
//! exactly what a `Vec` model says, through `read` and through `reader`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        record_type: u8,
        len: usize,
    },
    /// `n` appends queued with `append_nowait`, then one `wait_durable` for the last.
    Burst {
        n: usize,
        len: usize,
    },
    /// `n` appends queued with `append_deferred`; then, with `company`, one `append` that
    /// takes them along (their deadline is an hour away), else a `wait_durable` for the last
    /// (their deadline is 1 ms away).
    Deferred {
        n: usize,
        len: usize,
        company: bool,
    },
    Roll,
    Reopen,
    /// Delete below a fraction (per mille) of the way from first to next offset.
    DeleteBelow {
        per_mille: u16,
    },
    SetEpoch,
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![8 => 0usize..200, 1 => Just(0usize), 1 => 1000usize..20_000];
    prop_oneof![
        10 => (any::<u8>(), len.clone()).prop_map(|(record_type, len)| Op::Append { record_type, len }),
        3 => (1usize..40, 0usize..300).prop_map(|(n, len)| Op::Burst { n, len }),
        3 => (1usize..20, 0usize..300, any::<bool>())
            .prop_map(|(n, len, company)| Op::Deferred { n, len, company }),
        2 => Just(Op::Roll),
        2 => Just(Op::Reopen),
        2 => (0u16..=1000).prop_map(|per_mille| Op::DeleteBelow { per_mille }),
        1 => Just(Op::SetEpoch),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Rec {
    epoch: u32,
    record_type: u8,
    payload: Bytes,
}

fn check_against_model(log: &hookrelay_log::Log, model: &[Rec], first: u64) {
    assert_eq!(log.first_offset(), first);
    assert_eq!(log.next_offset(), model.len() as u64);
    assert_eq!(log.durable_offset(), model.len() as u64);
    for (o, want) in model.iter().enumerate().skip(first as usize) {
        let r = log
            .read(o as u64)
            .unwrap_or_else(|e| panic!("read {o}: {e}"));
        assert_eq!(r.offset, o as u64);
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
    if first > 0 {
        assert!(log.read(first - 1).is_err(), "deleted offsets are gone");
    }
    assert!(
        log.read(model.len() as u64).is_err(),
        "no record past the end"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
        common::run(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut o = common::opts(dir.path());
            o.segment_bytes_max = 8 * 1024;
            o.index_interval_bytes = 256;
            o.frame_bytes_max = 64 * 1024;
            o.batch_bytes_max = 4 * 1024;
            let (mut log, _) = common::open(o.clone()).await;
            common::assert_backend(&log);
            let mut model: Vec<Rec> = Vec::new();
            let mut first = 0u64;
            let mut epoch = 0u32;
            for op in ops {
                match op {
                    Op::Append { record_type, len } => {
                        let p = common::payload(model.len() as u64, len);
                        let off = log.append(record_type, p.clone()).await.expect("append");
                        assert_eq!(off, model.len() as u64);
                        model.push(Rec { epoch, record_type, payload: p });
                    }
                    Op::Burst { n, len } => {
                        let mut last = 0;
                        for _ in 0..n {
                            let p = common::payload(model.len() as u64, len);
                            last = log.append_nowait(7, p.clone()).expect("append_nowait");
                            assert_eq!(last, model.len() as u64);
                            model.push(Rec { epoch, record_type: 7, payload: p });
                        }
                        log.wait_durable(last).await.expect("wait_durable");
                    }
                    Op::Deferred { n, len, company } => {
                        let within = if company {
                            Duration::from_secs(3600)
                        } else {
                            Duration::from_millis(1)
                        };
                        let mut last = 0;
                        for _ in 0..n {
                            let p = common::payload(model.len() as u64, len);
                            last = log.append_deferred(5, p.clone(), within).expect("append_deferred");
                            assert_eq!(last, model.len() as u64);
                            model.push(Rec { epoch, record_type: 5, payload: p });
                        }
                        if company {
                            let p = common::payload(model.len() as u64, len);
                            let off = log.append(9, p.clone()).await.expect("append");
                            assert_eq!(off, last + 1);
                            model.push(Rec { epoch, record_type: 9, payload: p });
                        } else {
                            log.wait_durable(last).await.expect("wait_durable");
                        }
                        assert!(log.durable_offset() > last);
                    }
                    Op::Roll => log.roll().await.expect("roll"),
                    Op::Reopen => {
                        log.close().await.expect("close");
                        drop(log);
                        let (l, rec) = common::open(o.clone()).await;
                        assert_eq!(rec.truncated_bytes, 0);
                        assert_eq!(rec.next_offset, model.len() as u64);
                        assert_eq!(rec.records, model.len() as u64 - first);
                        // The epoch is carried by records: after reopen it is the newest record's.
                        let retained = (first as usize) < model.len();
                        let want = if retained { model.last().map_or(0, |r| r.epoch) } else { 0 };
                        assert_eq!(l.epoch(), want);
                        l.set_epoch(epoch);
                        log = l;
                    }
                    Op::DeleteBelow { per_mille } => {
                        let span = model.len() as u64 - first;
                        let below = first + span * u64::from(per_mille) / 1000;
                        let segs = log.segments();
                        let expect_deleted = segs.iter().filter(|s| s.sealed && s.next_offset <= below).count();
                        let n = log.delete_below(below).await.expect("delete_below");
                        assert_eq!(n, expect_deleted);
                        first = log.segments().first().map(|s| s.first_offset).unwrap_or(first);
                        assert!(first <= below.max(first));
                        for s in &segs[..n] {
                            assert!(!s.path.exists(), "deleted segment file remains");
                        }
                    }
                    Op::SetEpoch => {
                        epoch += 1;
                        log.set_epoch(epoch);
                    }
                }
                let segs = log.segments();
                assert!(segs.windows(2).all(|w| w[0].next_offset == w[1].first_offset), "segments contiguous");
            }
            check_against_model(&log, &model, first);
            log.close().await.expect("close");
            drop(log);
            let (log, rec) = common::open(o).await;
            assert_eq!(rec.truncated_bytes, 0);
            check_against_model(&log, &model, first);
        });
    }
}
