//! Backend selection and runtimes: portable works on a plain tokio current-thread runtime with a
//! LocalSet; io_uring is refused outside `tokio_uring::start`; the API's error answers.

mod common;

use hookrelay_log::{Error, IoKind, IoMode, Log, Options};

fn plain_runtime<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f);
}

#[test]
fn portable_works_on_a_plain_tokio_runtime() {
    plain_runtime(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Options::new(dir.path());
        o.io = IoMode::Portable;
        let (log, rec) = Log::open(o.clone()).await.expect("open");
        assert_eq!(rec.io, IoKind::Portable);
        for i in 0..50u64 {
            assert_eq!(
                log.append(3, common::payload(i, 30)).await.expect("append"),
                i
            );
        }
        log.roll().await.expect("roll");
        log.append(3, common::payload(50, 30))
            .await
            .expect("append");
        log.close().await.expect("close");
        drop(log);
        let (log, rec) = Log::open(o).await.expect("reopen");
        assert_eq!(rec.records, 51);
        assert_eq!(log.reader(0).count(), 51);
    });
}

#[test]
fn uring_is_refused_outside_tokio_uring_and_auto_falls_back() {
    plain_runtime(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Options::new(dir.path());
        o.io = IoMode::Uring;
        assert!(matches!(
            Log::open(o.clone()).await,
            Err(Error::UringUnavailable { .. })
        ));
        if std::env::var(hookrelay_log::IO_ENV).as_deref() != Ok("uring") {
            o.io = IoMode::Auto;
            let (log, _) = Log::open(o).await.expect("open");
            assert_eq!(log.io_kind(), IoKind::Portable);
        }
    });
}

#[test]
fn auto_picks_uring_inside_tokio_uring_when_not_overridden() {
    if std::env::var(hookrelay_log::IO_ENV).is_ok() {
        return; // the override is tested by the env-driven suite
    }
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = Log::open(Options::new(dir.path())).await.expect("open");
        // io_uring can be disabled (seccomp, sysctl); then Auto must have fallen back.
        assert!(matches!(log.io_kind(), IoKind::Uring | IoKind::Portable));
    });
}

#[test]
fn limits_and_ranges_have_defined_answers() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.frame_bytes_max = 1024;
        o.pending_bytes_max = 4096;
        let (log, _) = common::open(o.clone()).await;
        assert!(matches!(
            log.append(0, common::payload(0, 1001)).await,
            Err(Error::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert_eq!(
            log.append(0, common::payload(0, 1000)).await.expect("fits"),
            0
        );
        // Backpressure: queued bytes are bounded.
        let mut refused = false;
        for i in 0..10u64 {
            match log.append_nowait(0, common::payload(i, 900)) {
                Ok(_) => {}
                Err(Error::Backlogged { max: 4096, .. }) => refused = true,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused);
        log.wait_durable(log.next_offset() - 1)
            .await
            .expect("drain");
        // Reads: only durable, retained offsets.
        assert!(matches!(
            log.read(log.next_offset()),
            Err(Error::OffsetOutOfRange { .. })
        ));
        let pending = log.append_nowait(0, common::payload(1, 1)).expect("queued");
        assert!(
            log.read(pending).is_err(),
            "not readable before it is durable"
        );
        log.wait_durable(pending).await.expect("durable");
        assert!(log.read(pending).is_ok());
        assert!(matches!(
            log.wait_durable(pending + 5).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        // Epochs are stored per frame and survive a reopen.
        log.set_epoch(9);
        let e9 = log.append(0, common::payload(2, 1)).await.expect("append");
        assert_eq!(log.read(e9).expect("read").epoch, 9);
        log.close().await.expect("close");
        assert!(matches!(
            log.append_nowait(0, common::payload(3, 1)),
            Err(Error::Closed)
        ));
        drop(log);
        let (log, _) = common::open(o.clone()).await;
        assert_eq!(log.epoch(), 9);
        // Invalid options are refused.
        let mut bad = o;
        bad.batch_bytes_max = 0;
        assert!(matches!(
            Log::open(bad).await,
            Err(Error::InvalidOptions { .. })
        ));
    });
}

#[test]
fn delete_below_removes_only_whole_sealed_segments() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = common::open(common::opts(dir.path())).await;
        for i in 0..30u64 {
            log.append(0, common::payload(i, 10)).await.expect("append");
            if i % 10 == 9 {
                log.roll().await.expect("roll");
            }
        }
        // Segments [0,10) [10,20) [20,30) sealed, [30,..) active and empty.
        assert_eq!(log.delete_below(15).await.expect("delete"), 1);
        assert_eq!(log.first_offset(), 10);
        assert!(matches!(log.read(9), Err(Error::OffsetOutOfRange { .. })));
        assert!(log.read(10).is_ok());
        let mut r = log.reader(5);
        assert!(matches!(
            r.next(),
            Some(Err(Error::OffsetOutOfRange { .. }))
        ));
        assert!(r.next().is_none());
        assert_eq!(log.delete_below(u64::MAX).await.expect("delete"), 2);
        assert_eq!(log.segments().len(), 1, "the active segment stays");
        assert!(!dir.path().join(format!("{:020}.idx", 10)).exists());
        // The reader tails: None at the durable end, more later.
        let mut tail = log.reader(30);
        assert!(tail.next().is_none());
        log.append(0, common::payload(30, 10))
            .await
            .expect("append");
        assert_eq!(tail.next().expect("record").expect("ok").offset, 30);
    });
}
