//! The committer's pace timer (`batch_linger`), to the microsecond.
//!
//! tokio's timer wheel ticks once a millisecond and rounds a deadline up to the next tick, so a
//! 500 µs pace would wait 1–2 ms. A `timerfd` is a kernel high-resolution timer read through
//! tokio's reactor: the wait ends within the scheduler's wake-up latency of the deadline. Where
//! a timerfd cannot be made (or its wait fails), the pace falls back to tokio's timer.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A one-shot timer that is re-armed for each wait.
pub(crate) struct PaceTimer {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl PaceTimer {
    /// A timerfd on `CLOCK_MONOTONIC` (the clock of [`Instant`]), or the tokio-timer fallback.
    pub fn new() -> Self {
        let fd = match timerfd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd; the log's pace uses tokio's timer");
                None
            }
        };
        PaceTimer { fd }
    }

    /// Returns at `deadline` (at once if it has passed).
    pub async fn sleep_until(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if let Some(fd) = &self.fd {
            match wait(fd, left).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "timerfd wait failed; the log's pace uses tokio's timer");
                    self.fd = None;
                }
            }
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

fn timerfd() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: timerfd_create returns a new descriptor or -1.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open (and the same
    // descriptor) until it is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?)
}

/// Arms the timer `left` from now and waits until it expires.
async fn wait(fd: &AsyncFd<OwnedFd>, left: Duration) -> io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            // A zero it_value would disarm the timer; `left` is not zero, so when this is,
            // tv_sec is not.
            tv_nsec: left.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        let mut ready = fd.readable().await?;
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `expirations` from the non-blocking timerfd.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        if n == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
            ready.clear_ready();
            continue;
        }
        return Err(if n < 0 {
            err
        } else {
            io::Error::other("short read from a timerfd")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_deadline_and_not_for_a_past_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut t = PaceTimer::new();
            assert!(t.fd.is_some(), "Linux has timerfd");
            for micros in [300u64, 1_500, 20_000] {
                let deadline = Instant::now() + Duration::from_micros(micros);
                t.sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "woke before the deadline");
            }
            // A deadline in the past returns at once (the timer is not armed with zero,
            // which would disarm it and wait forever).
            t.sleep_until(Instant::now() - Duration::from_millis(1))
                .await;
            // A whole number of seconds (zero nanoseconds) still arms the timer.
            let deadline = Instant::now() + Duration::from_secs(1);
            t.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline);
            assert!(t.fd.is_some(), "no fallback was needed");
        });
    }
}
