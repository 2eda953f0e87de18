use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd as _;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::*;

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn rw(dir: &tempfile::TempDir) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("f"))
        .expect("open")
}

#[test]
fn writes_with_or_without_a_linked_sync_land_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = rw(&dir);
    block_on(async {
        let ring = SegmentRing::new().expect("ring");
        let (r, a) = ring.write(f.as_raw_fd(), b"hello ".to_vec(), 0, true).await;
        r.expect("write + sync");
        assert_eq!(a, b"hello ");
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (r, _) = ring.write(f.as_raw_fd(), big.clone(), 6, false).await;
        r.expect("write");
        ring.sync(f.as_raw_fd()).await.expect("sync");
        let got = std::fs::read(dir.path().join("f")).expect("read");
        assert_eq!(&got[..6], b"hello ");
        assert_eq!(&got[6..], &big[..]);
    });
}

#[test]
fn a_failed_write_is_reported_and_its_sync_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ro"), b"x").expect("create");
    let read_only = File::open(dir.path().join("ro")).expect("open");
    let f = rw(&dir);
    block_on(async {
        let ring = SegmentRing::new().expect("ring");
        let (r, _) = ring
            .write(read_only.as_raw_fd(), vec![1; 10], 0, true)
            .await;
        let e = r.expect_err("a read-only descriptor cannot be written");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        // The cancelled sync's completion is claimed, not left to confuse the next chain.
        assert!(ring.done.borrow().is_empty());
        let (r, _) = ring.write(f.as_raw_fd(), vec![2; 10], 0, true).await;
        r.expect("the ring still works");
        assert_eq!(
            std::fs::read(dir.path().join("f")).expect("read"),
            vec![2; 10]
        );
    });
}

#[test]
fn a_dropped_write_keeps_its_buffer_until_the_kernel_is_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = rw(&dir);
    block_on(async {
        let ring = SegmentRing::new().expect("ring");
        {
            let mut op = pin!(ring.write(f.as_raw_fd(), vec![7; 1 << 20], 0, true));
            // One poll submits the chain; then the future is dropped mid-flight.
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready((r, _)) = op.as_mut().poll(&mut cx) {
                r.expect("done at once");
            }
        }
        let abandoned = ring.abandoned.get();
        assert_eq!(ring.parked.borrow().len(), usize::from(abandoned > 0));
        // The next chain first waits for the abandoned one, then runs.
        let (r, _) = ring.write(f.as_raw_fd(), vec![9; 4], 0, true).await;
        r.expect("write after an abandoned chain");
        assert_eq!(ring.abandoned.get(), 0);
        assert!(ring.parked.borrow().is_empty());
        let got = std::fs::read(dir.path().join("f")).expect("read");
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(&got[..4], &[9; 4]);
        assert!(got[4..].iter().all(|&b| b == 7));
    });
}
