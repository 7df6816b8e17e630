//! Shutdown as a connection sees it: a flag it reads with a plain load at every request,
//! and a wake-up when the flag is set.
//!
//! The process's shutdown is a `CancellationToken`, whose `is_cancelled` takes a mutex (two
//! atomic read-modify-writes); an HTTP/1.1 connection asks twice a request (whether to
//! keep the connection alive after this answer, and whether to wait for another head).
//! [`Drain::following`] turns the token into a flag: a task waits for the token, sets the
//! flag, then wakes every connection waiting on [`Drain::waiter`]. The flag is set before
//! the wake-up, and a connection registers its waiter before it reads the flag, so none
//! misses the shutdown: one woken sees the flag set, one that registers later reads it set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shared by a listener's connections; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    begun: Arc<AtomicBool>,
    begins: Arc<Notify>,
}

impl Drain {
    /// A drain that begins when `shutdown` is cancelled (a task on this runtime waits for it).
    pub fn following(shutdown: &CancellationToken) -> Self {
        let drain = Self::default();
        let shutdown = shutdown.clone();
        let begin = drain.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            begin.begin();
        });
        drain
    }

    /// Sets the flag, then wakes every waiter.
    fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.begins.notify_waiters();
    }

    /// Whether the drain has begun: one load.
    pub fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// A future that is woken when the drain begins, once it has been polled: poll it
    /// before reading [`Drain::has_begun`].
    pub fn waiter(&self) -> OwnedNotified {
        Arc::clone(&self.begins).notified_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    #[tokio::test]
    async fn a_waiter_registered_before_the_drain_is_woken_and_sees_it_begun() {
        let shutdown = CancellationToken::new();
        let drain = Drain::following(&shutdown);
        let mut waiter = pin!(drain.waiter());
        let waker = std::task::Waker::noop();
        assert!(waiter.as_mut().poll(&mut Context::from_waker(waker)).is_pending(), "registered");
        assert!(!drain.has_begun());
        shutdown.cancel();
        waiter.await;
        assert!(drain.has_begun(), "the flag is set before the wake-up");
    }
}
