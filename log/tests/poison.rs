//! Poisoning (fsyncgate): after a failed write or fsync every waiter and every later append gets
//! `Error::Poisoned` until the log is reopened; and a simulated power loss keeps every ACK.

mod common;

use std::time::Duration;

use hookrelay_log::{Error, IoMode, SimDisk};

fn sim_opts(dir: &std::path::Path, disk: &SimDisk) -> hookrelay_log::Options {
    let mut o = common::opts(dir);
    o.io = IoMode::Simulated(disk.clone());
    o
}

#[test]
fn a_failed_fsync_poisons_the_batch_and_every_later_append() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let (log, _) = common::open(sim_opts(dir.path(), &disk)).await;
        log.append(0, common::payload(0, 10))
            .await
            .expect("healthy append");

        disk.fail_next_sync();
        let mut handles = Vec::new();
        for i in 0..32u64 {
            let log = log.clone();
            handles.push(tokio::task::spawn_local(async move {
                log.append(0, common::payload(i, 10)).await
            }));
        }
        for h in handles {
            assert!(matches!(h.await.expect("task"), Err(Error::Poisoned)));
        }
        assert!(log.is_poisoned());
        assert_eq!(
            log.durable_offset(),
            1,
            "nothing of the failed batch became durable"
        );
        assert!(matches!(
            log.append(0, common::payload(99, 1)).await,
            Err(Error::Poisoned)
        ));
        assert!(matches!(
            log.append_nowait(0, common::payload(99, 1)),
            Err(Error::Poisoned)
        ));
        assert!(matches!(log.roll().await, Err(Error::Poisoned)));
        // What was durable before stays readable and waitable.
        assert_eq!(log.read(0).expect("read").payload, common::payload(0, 10));
        log.wait_durable(0).await.expect("offset 0 is durable");
        assert!(matches!(log.close().await, Err(Error::Poisoned)));
        drop(log);

        // Reopening recovers and takes writes again. The never-acknowledged frames of the
        // failed batch are lost with the simulated crash.
        disk.crash().expect("crash");
        let (log, rec) = common::open(sim_opts(dir.path(), &disk)).await;
        assert_eq!(rec.next_offset, 1);
        assert!(!log.is_poisoned());
        assert_eq!(
            log.append(0, common::payload(1, 10)).await.expect("append"),
            1
        );
    });
}

#[test]
fn a_failed_write_poisons_waiters_of_append_nowait() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let (log, _) = common::open(sim_opts(dir.path(), &disk)).await;
        disk.fail_next_write();
        let a = log
            .append_nowait(0, common::payload(0, 10))
            .expect("queued");
        let b = log
            .append_nowait(0, common::payload(1, 10))
            .expect("queued");
        assert!(matches!(log.wait_durable(b).await, Err(Error::Poisoned)));
        assert!(matches!(log.wait_durable(a).await, Err(Error::Poisoned)));
        assert!(log.is_poisoned());
    });
}

#[test]
fn a_simulated_power_loss_keeps_every_acknowledged_record() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        disk.set_sync_delay(Duration::from_millis(1));
        let mut o = sim_opts(dir.path(), &disk);
        o.segment_bytes_max = 4096;
        let (log, _) = common::open(o.clone()).await;
        let acked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut handles = Vec::new();
        for t in 0..64u64 {
            let (log, acked) = (log.clone(), acked.clone());
            handles.push(tokio::task::spawn_local(async move {
                for k in 0..8u64 {
                    if let Ok(off) = log.append(0, common::payload(t * 8 + k, 50)).await {
                        acked.borrow_mut().push((off, t * 8 + k));
                    }
                }
            }));
        }
        // Let some batches complete, then "pull the plug" mid-flight.
        tokio::time::sleep(Duration::from_millis(8)).await;
        let durable = log.durable_offset();
        for h in &handles {
            h.abort();
        }
        drop(handles);
        drop(log);
        disk.crash().expect("crash");
        let (log, rec) = common::open(o).await;
        assert!(
            rec.next_offset >= durable,
            "lost durable records: {rec:?} < {durable}"
        );
        let acked = acked.borrow();
        assert!(!acked.is_empty());
        for &(off, seed) in acked.iter() {
            assert_eq!(
                log.read(off).expect("acked record").payload,
                common::payload(seed, 50)
            );
        }
    });
}
