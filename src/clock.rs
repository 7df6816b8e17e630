//! Wall-clock time in Unix seconds, injected so the session core can be tested with
//! tokio's paused time.
//!
//! Session times (expiry, idle, absolute) are Unix seconds because they outlive the
//! process (snapshots, a shared store). [`Clock::System`] reads the system clock;
//! [`Clock::Tokio`] counts from a fixed Unix time by tokio's clock, which a test pauses and
//! advances (`tokio::time::advance`). An enum, not a trait object: the hot path reads it
//! once per request and it costs one branch.

use std::time::{SystemTime, UNIX_EPOCH};

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
            Clock::System => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            Clock::Tokio { start, start_unix } => start_unix.saturating_add(start.elapsed().as_secs()),
        }
    }
}
