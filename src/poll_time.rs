//! One clock reading per poll of a connection's task, as nginx reads the time once per
//! turn of its event loop.
//!
//! A forwarded request wants the time at several steps: its start (latency, the wall time
//! of its session), the upstream call's start and end (the upstream histogram), its answer
//! (latency) and the start of the wait for the next head (the keep-alive deadline). Read
//! each time, that was five readings a request, at ~37 ns each on this project's VMs
//! (callgrind counted fourteen `clock_gettime` calls a request with tokio's own, nginx two).
//! Steps that run in one poll of the connection's task run within microseconds of each
//! other, with nothing awaited between them, so they can share one reading: the request's
//! start and the upstream call's start when the session was at hand, the upstream's answer,
//! the request's end and the next wait's deadline when the answer came with its head.
//!
//! [`PollTime`] wraps a connection's future: each of its polls starts with no reading, the
//! first [`now`] in it reads the clock and the others reuse that reading, and the poll ends
//! by forgetting it. Outside such a poll (another task, a test, the control runtime) [`now`]
//! reads the clock each time. A reading is thus never older than the poll it is used in:
//! the error is at most the synchronous work of one poll, which tokio's cooperative budget
//! bounds.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

/// This thread's reading, while a [`PollTime`] poll runs on it.
#[derive(Clone, Copy)]
enum Reading {
    /// No [`PollTime`] poll is running: read the clock each time.
    Off,
    /// A poll is running and has not read the clock yet.
    Unread,
    /// A poll is running and read this.
    At(Instant),
}

thread_local! {
    static READING: Cell<Reading> = const { Cell::new(Reading::Off) };
}

/// The time: the running [`PollTime`] poll's reading, or the clock's (tokio's clock, so
/// tests with paused time see theirs).
pub fn now() -> Instant {
    match READING.get() {
        Reading::At(at) => at,
        Reading::Off => Instant::now(),
        Reading::Unread => {
            let at = Instant::now();
            READING.set(Reading::At(at));
            at
        }
    }
}

/// A future whose polls share one clock reading each (see the module's doc). Boxed inside,
/// so that it is `Unpin` whatever it wraps: one allocation per connection.
pub struct PollTime<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> PollTime<F> {
    pub fn new(inner: F) -> Self {
        Self { inner: Box::pin(inner) }
    }
}

impl<F: Future> Future for PollTime<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts back what was there when the poll ends, also by a panic, so that no other
        /// task on this thread is handed this poll's reading.
        struct Restore(Reading);
        impl Drop for Restore {
            fn drop(&mut self) {
                READING.set(self.0);
            }
        }
        let outer = READING.get();
        let _restore = Restore(outer);
        // Polled inside another `PollTime`'s poll: that poll's reading is this one's too.
        if let Reading::Off = outer {
            READING.set(Reading::Unread);
        }
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_poll_reads_the_clock_once_and_the_next_poll_reads_it_again() {
        let start = Instant::now();
        let (first, second) = PollTime::new(async {
            let first = now();
            tokio::time::advance(Duration::from_millis(5)).await;
            tokio::task::yield_now().await;
            let later = now();
            (first, later)
        })
        .await;
        assert_eq!(first, start);
        assert_eq!(second, start + Duration::from_millis(5), "a new poll, a new reading");
    }

    #[test]
    fn within_one_poll_every_step_shares_the_reading_and_outside_it_the_clock_is_read() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut readings = Vec::new();
        let mut future = PollTime::new(async {
            let a = now();
            std::thread::sleep(Duration::from_millis(2));
            (a, now())
        });
        if let Poll::Ready(pair) = Pin::new(&mut future).poll(&mut cx) {
            readings.push(pair);
        }
        assert_eq!(readings.len(), 1, "the future is ready at its first poll");
        let (a, b) = readings[0];
        assert_eq!(a, b, "one reading for the poll");
        assert!(matches!(READING.get(), Reading::Off), "forgotten when the poll ends");
        assert!(now() > a, "outside a poll, the clock itself");
    }
}
