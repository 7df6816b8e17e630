//! A deadline that costs no timer per use: one sleep per owner (a connection), armed at the
//! first deadline and moved on only when it fires before the current one.
//!
//! `tokio::time::timeout` registers a timer in the runtime's wheel each time it waits and
//! takes it out again when the wait ends: on the forwarding path, once per request. A
//! connection's deadlines only move forward (each is "now + the same timeout"), so here
//! the sleep stays registered across requests: when it fires early it is moved to the
//! current deadline, so it fires about once per timeout period, not once per request.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// The sleep of one connection.
#[derive(Debug, Default)]
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Whether `at` has passed; if not, the task is woken by then.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>, at: Instant) -> bool {
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() > at {
            // An earlier deadline than the one armed (rare: deadlines move forward).
            sleep.as_mut().reset(at);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if sleep.deadline() >= at {
                return true;
            }
            sleep.as_mut().reset(at);
        }
    }

    /// `future`'s output, or `None` if `at` passes first.
    pub async fn within<F: Future>(&mut self, at: Instant, future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        poll_fn(|cx| match future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if self.poll_passed(cx, at) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_a_wait_and_a_later_one_moves_the_same_sleep() {
        let mut deadline = Deadline::default();
        let start = Instant::now();
        let first = deadline.within(start + Duration::from_secs(5), std::future::pending::<()>()).await;
        assert_eq!(first, None);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // A later deadline: the sleep fired for the first one and moves on.
        let second = deadline.within(start + Duration::from_secs(8), std::future::pending::<()>()).await;
        assert_eq!(second, None);
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        // A future that ends first gives its output; the sleep stays armed.
        let third = deadline.within(start + Duration::from_secs(20), async { 7 }).await;
        assert_eq!(third, Some(7));
        // A deadline armed for later, then an earlier one: the earlier one holds.
        let at = Instant::now() + Duration::from_secs(2);
        assert_eq!(deadline.within(at, std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_ends_in_time_is_not_cut() {
        let mut deadline = Deadline::default();
        let at = Instant::now() + Duration::from_secs(3);
        let slept = deadline.within(at, tokio::time::sleep(Duration::from_secs(2))).await;
        assert_eq!(slept, Some(()));
        let next =
            deadline.within(at + Duration::from_secs(10), tokio::time::sleep(Duration::from_secs(4))).await;
        assert_eq!(next, Some(()), "the first deadline passing does not cut the next wait");
    }
}
