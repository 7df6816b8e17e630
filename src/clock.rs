//! Wall-clock time in Unix seconds, injected so the session core can be tested with
//! tokio's paused time.
//!
//! Session times (expiry, idle, absolute) are Unix seconds because they outlive the
//! process (snapshots, a shared store). [`Clock::System`] reads the system clock;
//! [`Clock::Tokio`] counts from a fixed Unix time by tokio's clock, which a test pauses and
//! advances (`tokio::time::advance`). An enum, not a trait object: the hot path reads it
//! once per request and it costs one branch.
//!
//! The request path has read the monotonic clock already when it wants the wall time
//! ([`Clock::now_at`]): each thread keeps one pair of readings of both clocks and works the
//! wall time out from the monotonic instant, reading the wall clock again once a second.
//! A clock read costs ~37 ns on this project's VMs, and a request made fourteen of them
//! (nginx makes two).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a thread's pair of readings is used before the wall clock is read again: a
/// step of the wall clock (NTP, a VM resumed) shows within this, and in so short a time the
/// two clocks cannot drift apart by anything a time in whole seconds could show.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's last pair: a monotonic instant and the wall time read with it.
    static ANCHOR: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The operating system's wall clock.
    System,
    /// `start_unix` plus the tokio time elapsed since `start` (tests).
    Tokio { start: tokio::time::Instant, start_unix: u64 },
}

impl Clock {
    /// A clock that reads tokio's (possibly paused) time, starting at `start_unix`.
    pub fn tokio_at(start_unix: u64) -> Self {
        Clock::Tokio { start: tokio::time::Instant::now(), start_unix }
    }

    /// Unix time in seconds.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => since_epoch().as_secs(),
            Clock::Tokio { start, start_unix } => start_unix.saturating_add(start.elapsed().as_secs()),
        }
    }

    /// Unix time in seconds at `at`, a monotonic instant the caller has just read (the
    /// request's start): the same as [`Clock::now`] then, without reading the wall clock
    /// more than once a second per thread. [`Clock::Tokio`] reads its own clock.
    pub fn now_at(&self, at: Instant) -> u64 {
        match self {
            Clock::System => wall_at(at, since_epoch).as_secs(),
            Clock::Tokio { .. } => self.now(),
        }
    }
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The wall time at `at`, from this thread's pair when it is younger than [`ANCHOR_FOR`]
/// (and not younger than `at`'s past), else from `read_wall`, which then starts a new pair.
fn wall_at(at: Instant, read_wall: impl FnOnce() -> Duration) -> Duration {
    let anchored = ANCHOR.get().and_then(|(mark, wall)| {
        let since = at.checked_duration_since(mark)?;
        (since < ANCHOR_FOR).then(|| wall + since)
    });
    anchored.unwrap_or_else(|| {
        let wall = read_wall();
        ANCHOR.set(Some((at, wall)));
        wall
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_time_is_worked_out_from_the_pair_within_a_second() {
        let start = Instant::now();
        let wall = Duration::from_secs(1_700_000_000) + Duration::from_millis(400);
        ANCHOR.set(None);
        assert_eq!(wall_at(start, || wall), wall);
        // Within the second: from the pair, the wall clock not read.
        let later = start + Duration::from_millis(700);
        assert_eq!(
            wall_at(later, || panic!("read the wall clock within the second")),
            wall + Duration::from_millis(700)
        );
        // A second on: read again, and a stepped wall clock shows.
        let stepped = Duration::from_secs(1_800_000_000);
        assert_eq!(wall_at(start + ANCHOR_FOR, || stepped), stepped);
        // An instant before the pair's (another request's start, read earlier): read again.
        assert_eq!(wall_at(start, || wall), wall);
    }

    #[test]
    fn the_system_clock_at_an_instant_agrees_with_now() {
        let clock = Clock::System;
        let before = clock.now();
        let at = clock.now_at(Instant::now());
        let again = clock.now_at(Instant::now());
        let after = clock.now();
        assert!(before <= at && at <= again && again <= after, "{before} {at} {again} {after}");
    }
}
