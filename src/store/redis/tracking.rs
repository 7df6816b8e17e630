//! What keeps the local session cache (`cache`) true: a dedicated RESP3 connection to
//! Redis with `CLIENT TRACKING on` in the default mode, on which every cache-filling read
//! is made. Redis remembers the keys that connection read and pushes an invalidation on it
//! when any client changes one (or it expires, or is evicted); the keeper task drops those
//! sessions from the cache.
//!
//! **Every fill proves its read was tracked.** fred does not turn tracking back on after a
//! reconnect, so a read could run on a connection Redis tracks nothing for. Each read is a
//! pipeline `CLIENT TRACKINGINFO` + `HMGET d t` on the one connection, in order, sent once
//! (`max_attempts 1`, `fail_fast`: never replayed across a reconnect onto another
//! connection); its answer fills the cache only if the flags say `on`. Otherwise the answer
//! is still used (it is what Redis holds) but not kept, and the keeper turns tracking on.
//!
//! **The connection's events clear the cache.** A reconnect, a connection error, an
//! unresponsive connection or a lagged invalidation channel (pushes lost) clears it, and
//! every second the keeper checks that the connection still tracks (clearing it if not, or
//! if the check fails), so a connection that died silently is noticed within a second plus
//! `command_timeout`.
//!
//! **Not used with Redis Cluster.** The proof would have to reach the key's node in the
//! same pipeline and survive `MOVED` redirections and topology changes (fred re-routes a
//! redirected command alone, to a node whose connection may not track); the cache is off
//! there.
//!
//! **Blind spots.** `FLUSHALL`/`FLUSHDB` push an invalidation without keys, which fred
//! 10.1 drops: after one, a cached session keeps working on this replica until its next
//! last-use write (at most `idle_timeout/100`, capped at a minute), which invalidates it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientInterface, ClientLike, EventInterface, HashesInterface, TrackingInterface};
use fred::types::config::Options;
use fred::types::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use super::cache::LocalCache;
use crate::metrics::SessionCacheCounters;
use crate::session_id::SessionKey;
use crate::store::from_hex;

/// How often the keeper checks that the connection still tracks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The cache and the connection that keeps it true.
pub struct Tracked {
    pub cache: LocalCache,
    pub counters: SessionCacheCounters,
    reader: Client,
    /// Options of every cache-filling read and check: written once, failing at once when
    /// the connection is down (the pool reads instead).
    once: Options,
    prefix: String,
    /// Longest wait for turning tracking on.
    patience: Duration,
    /// Asks the keeper to check the connection now (a read found tracking off).
    wake: Arc<Notify>,
    /// A check or a start of tracking is running (one at a time).
    checking: AtomicBool,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").field("cache", &self.cache).finish_non_exhaustive()
    }
}

/// What a tracked read found: the `HMGET d t` answer and whether the connection it ran on
/// was tracking.
pub struct Read {
    pub fields: Vec<Value>,
    pub tracked: bool,
}

impl Tracked {
    /// Connects `reader` (a RESP3 client) and starts the keeper, which turns tracking on
    /// at every (re)connection.
    pub fn start(
        reader: Client,
        prefix: String,
        capacity: usize,
        patience: Duration,
        counters: SessionCacheCounters,
    ) -> Arc<Self> {
        let once = Options { max_attempts: Some(1), fail_fast: true, ..Options::default() };
        let tracked = Arc::new(Self {
            cache: LocalCache::new(capacity),
            counters,
            reader,
            once,
            prefix,
            patience,
            wake: Arc::new(Notify::new()),
            checking: AtomicBool::new(false),
        });
        // Subscribed before connecting, so the first connection's event is seen too.
        let events = Events {
            invalidations: tracked.reader.invalidation_rx(),
            reconnects: tracked.reader.reconnect_rx(),
            errors: tracked.reader.error_rx(),
            unresponsive: tracked.reader.unresponsive_rx(),
            wake: Arc::clone(&tracked.wake),
        };
        tokio::spawn(keep(Arc::downgrade(&tracked), events));
        tracked.reader.connect();
        tracked
    }

    /// `HMGET <key> d t` on the tracking connection, with the proof that it tracks.
    pub async fn read(&self, key: String) -> Result<Read, fred::error::Error> {
        let pipeline = self.reader.pipeline().with_options(&self.once);
        pipeline.client_trackinginfo::<()>().await?;
        pipeline.hmget::<(), _, _>(key, vec!["d", "t"]).await?;
        let answers: Value = pipeline.all().await?;
        let Value::Array(mut answers) = answers else {
            return Err(unexpected("pipeline answer"));
        };
        let fields = match answers.pop() {
            Some(Value::Array(fields)) => fields,
            _ => return Err(unexpected("HMGET answer")),
        };
        let tracked = answers.first().is_some_and(tracking_on);
        if !tracked {
            self.wake.notify_one();
        }
        Ok(Read { fields, tracked })
    }

    /// Drops `key` (this replica wrote it, or Redis said it changed).
    pub fn invalidate(&self, key: &SessionKey) {
        self.cache.invalidate(key);
        self.counters.invalidations.inc();
    }

    /// Drops what an invalidation push names; one without keys drops everything.
    fn invalidated(&self, keys: &[fred::types::Key]) {
        if keys.is_empty() {
            self.cache.clear();
            return;
        }
        for key in keys {
            if let Some(session) = session_of(&self.prefix, key.as_bytes()) {
                self.invalidate(&session);
            }
        }
    }

    /// Checks that the connection tracks; if it does not (or does not answer), clears the
    /// cache and turns tracking on. One check at a time, in a task of its own, so the
    /// keeper never waits on the network while invalidations queue.
    fn check_soon(self: &Arc<Self>) {
        if self.checking.swap(true, Ordering::SeqCst) {
            return;
        }
        let tracked = Arc::clone(self);
        tokio::spawn(async move {
            let info = tracked.reader.with_options(&tracked.once).client_trackinginfo::<Value>().await;
            if !info.as_ref().is_ok_and(tracking_on) {
                tracked.cache.clear();
                let start = tracked.reader.start_tracking(Vec::<String>::new(), false, false, false, false);
                match tokio::time::timeout(tracked.patience, start).await {
                    Ok(Ok(())) => tracing::debug!("the local session cache's connection tracks"),
                    Ok(Err(error)) => tracing::debug!(error = %error.details(), "could not turn tracking on"),
                    Err(_) => tracing::debug!("turning tracking on timed out"),
                }
            }
            tracked.checking.store(false, Ordering::SeqCst);
        });
    }
}

/// The tracking connection's notifications.
struct Events {
    invalidations: tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    unresponsive: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    wake: Arc<Notify>,
}

/// What woke the keeper.
enum Step {
    /// An invalidation push: these keys changed (none: everything).
    Apply(Vec<fred::types::Key>),
    /// A connection event, or lost pushes: nothing cached may outlive it.
    Clear,
    /// Time (or a read) to check the connection.
    Check,
    /// The client was closed.
    Stop,
}

/// The keeper: applies invalidations as they come, clears the cache on every connection
/// event, and has the connection checked after each and every `WATCH_EVERY`. Ends when the
/// store is dropped or the client is closed.
async fn keep(tracked: Weak<Tracked>, mut events: Events) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            biased;
            invalidation = events.invalidations.recv() => match invalidation {
                Ok(invalidation) => Step::Apply(invalidation.keys),
                Err(error) => step(Err(error)),
            },
            event = events.reconnects.recv() => step(event.map(drop)),
            event = events.errors.recv() => step(event.map(drop)),
            event = events.unresponsive.recv() => step(event.map(drop)),
            () = events.wake.notified() => Step::Check,
            _ = tick.tick() => Step::Check,
        };
        // Held only between events, so a dropped store ends the keeper at its next event.
        let Some(tracked) = tracked.upgrade() else { return };
        match step {
            Step::Apply(keys) => {
                tracked.invalidated(&keys);
                continue;
            }
            Step::Clear => tracked.cache.clear(),
            Step::Check => {}
            Step::Stop => {
                tracked.cache.clear();
                return;
            }
        }
        tracked.check_soon();
    }
}

/// A connection event (or lagged events, which may have been anything) clears; a closed
/// channel means the client was shut down.
fn step(event: Result<(), RecvError>) -> Step {
    match event {
        Ok(()) | Err(RecvError::Lagged(_)) => Step::Clear,
        Err(RecvError::Closed) => Step::Stop,
    }
}

/// Whether a `CLIENT TRACKINGINFO` answer says this connection tracks every key it reads
/// (on, and not in the opt-in or opt-out modes).
fn tracking_on(info: &Value) -> bool {
    let flags = match info {
        Value::Map(map) => map.iter().find(|(name, _)| name.as_bytes() == b"flags").map(|(_, flags)| flags),
        _ => None,
    };
    let Some(Value::Array(flags)) = flags else { return false };
    let has = |wanted: &[u8]| flags.iter().any(|flag| flag.as_bytes() == Some(wanted));
    has(b"on") && !has(b"optin") && !has(b"optout")
}

/// The session a Redis key belongs to: `<prefix>:{<hex>}` with any suffix (`:lock`,
/// `:mark`, `:pending` name the same session; dropping it for them is harmless).
pub fn session_of(prefix: &str, key: &[u8]) -> Option<SessionKey> {
    let rest = key.strip_prefix(prefix.as_bytes())?.strip_prefix(b":{")?;
    if rest.get(64) != Some(&b'}') {
        return None;
    }
    from_hex(std::str::from_utf8(rest.get(..64)?).ok()?).map(SessionKey)
}

fn unexpected(what: &str) -> fred::error::Error {
    fred::error::Error::new(fred::error::ErrorKind::Protocol, format!("unexpected {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::to_hex;

    #[test]
    fn a_session_key_and_its_neighbours_name_the_session() {
        let session = SessionKey([0x5a; 32]);
        let hex = to_hex(&session.0);
        for key in [format!("tg:{{{hex}}}"), format!("tg:{{{hex}}}:lock"), format!("tg:{{{hex}}}:mark")] {
            assert_eq!(session_of("tg", key.as_bytes()), Some(session), "{key}");
        }
        assert_eq!(session_of("other", format!("tg:{{{hex}}}").as_bytes()), None);
        assert_eq!(session_of("tg", b"tg:{abc}"), None);
        assert_eq!(session_of("tg", format!("tg:{{{hex}").as_bytes()), None);
        assert_eq!(session_of("tg", b"tg"), None);
    }

    #[test]
    fn only_a_default_mode_tracking_connection_counts_as_tracked() {
        let info = |flags: &[&str]| {
            let mut map = fred::types::Map::new();
            let flags = flags.iter().map(|flag| Value::from(*flag)).collect();
            map.insert("flags".into(), Value::Array(flags));
            map.insert("redirect".into(), Value::Integer(-1));
            Value::Map(map)
        };
        assert!(tracking_on(&info(&["on"])));
        assert!(!tracking_on(&info(&["off"])));
        assert!(!tracking_on(&info(&["on", "optin"])));
        assert!(!tracking_on(&info(&["on", "optout"])));
        assert!(!tracking_on(&Value::Null));
    }
}
