//! The Redis store's own promises, against a real `redis-server`: the fence (compare-and-
//! set on the generation), the marks that settle login/logout races, the refresh lock's
//! ownership and expiry, records bound to their key, and failures reported, not waited on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use tokengate::config::RedisConfig;
use tokengate::metrics::SessionCacheCounters;
use tokengate::secret::{AccessToken, EncryptionKey, RefreshToken, SecretString};
use tokengate::session_id::SessionKey;
use tokengate::store::{
    identity_key, RedisStore, Removal, Rotation, SessionKind, SessionRecord, SessionStore, StoreError, Swap,
    MAX_SESSIONS_PER_IDENTITY,
};

const NOW: u64 = 1_900_000_000;

fn store(url: &str) -> RedisStore {
    store_with(url, true, SessionCacheCounters::default())
}

/// A store with or without the local cache, counting its lookups in `counters`.
fn store_with(url: &str, local_cache: bool, counters: SessionCacheCounters) -> RedisStore {
    let config = RedisConfig {
        url: SecretString::new(url.to_string()),
        keys: vec![EncryptionKey::new([9; 32])],
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(1),
        key_prefix: "tgtest".into(),
        lock_lease: Duration::from_secs(1),
        ca_file: None,
        local_cache,
        local_cache_max: 1000,
    };
    RedisStore::connect(&config, Duration::from_secs(3600), counters).expect("a store")
}

fn record(generation: u64, token: &str) -> Arc<SessionRecord> {
    Arc::new(SessionRecord {
        kind: SessionKind::Shopper,
        access_token: AccessToken::new(format!("access-{token}")),
        refresh_token: Some(RefreshToken::new(format!("refresh-{token}"))),
        access_expires_at: NOW + 300,
        created_at: NOW,
        absolute_expires_at: NOW + 86_400,
        generation,
        identity: None,
    })
}

fn key(n: u8) -> SessionKey {
    SessionKey([n; 32])
}

/// The store connects in the background: wait (bounded) until it answers.
async fn ready(store: &RedisStore) {
    for _ in 0..100 {
        if store.ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store never answered PING");
}

async fn generation(store: &RedisStore, n: u8) -> Option<u64> {
    store.get(&key(n)).await.expect("Redis answers").map(|stored| stored.record.generation)
}

#[tokio::test]
async fn a_stale_writer_can_neither_overwrite_nor_delete_a_newer_record() {
    let redis = RedisServer::start();
    let store = store(&redis.url());
    ready(&store).await;
    store.insert(key(1), record(0, "a"), NOW).await.expect("inserts");
    assert!(matches!(store.replace(&key(1), 0, record(1, "b")).await, Ok(Swap::Done)));
    // A holder whose lease ran out still thinks generation 0 is current.
    let stale = store.replace(&key(1), 0, record(1, "stale")).await.expect("answers");
    let Swap::Stale(newer) = stale else { panic!("stale: {stale:?}") };
    assert_eq!(newer.access_token.expose(), "access-b", "the newer record is handed back");
    assert!(matches!(store.remove_if(&key(1), 0).await, Ok(Swap::Stale(_))));
    assert_eq!(generation(&store, 1).await, Some(1));
    let stored = store.get(&key(1)).await.expect("answers").expect("kept");
    assert_eq!(stored.record.refresh_token.as_ref().map(RefreshToken::expose), Some("refresh-b"));
    assert!(matches!(store.remove_if(&key(1), 1).await, Ok(Swap::Done)));
    assert!(matches!(store.replace(&key(1), 1, record(2, "c")).await, Ok(Swap::Missing)));
    assert_eq!(generation(&store, 1).await, None, "a removed session never comes back");
}

#[tokio::test]
async fn marks_settle_login_and_logout_races() {
    let redis = RedisServer::start();
    let store = store(&redis.url());
    ready(&store).await;
    store.insert(key(1), record(0, "guest"), NOW).await.expect("inserts");
    let first = store.rotate(Some(&key(1)), key(2), record(0, "one"), NOW).await.expect("answers");
    assert!(matches!(first, Rotation::Done { previous: Some(_) }), "{first:?}");
    let second = store.rotate(Some(&key(1)), key(3), record(0, "two"), NOW).await.expect("answers");
    assert!(matches!(second, Rotation::Conflict), "{second:?}");
    assert_eq!(generation(&store, 3).await, None, "the loser's session is gone again");
    assert!(matches!(store.end(&key(1), NOW).await, Ok(Removal::Moved(next)) if next == key(2)));

    store.insert(key(4), record(0, "guest"), NOW).await.expect("inserts");
    assert!(matches!(store.end(&key(4), NOW).await, Ok(Removal::Removed(_))));
    let late = store.rotate(Some(&key(4)), key(5), record(0, "late"), NOW).await.expect("answers");
    assert!(matches!(late, Rotation::Conflict), "a login after a logout loses: {late:?}");
    let fresh = store.rotate(Some(&key(6)), key(7), record(0, "fresh"), NOW).await.expect("answers");
    assert!(matches!(fresh, Rotation::Done { previous: None }), "an expired cookie is no obstacle");
}

#[tokio::test]
async fn the_refresh_lock_belongs_to_its_holder_and_frees_itself() {
    let redis = RedisServer::start();
    let store = store(&redis.url());
    ready(&store).await;
    let lease = Duration::from_millis(400);
    assert!(store.lock_refresh(&key(1), 11, lease).await.expect("answers"));
    assert!(!store.lock_refresh(&key(1), 22, lease).await.expect("answers"), "held by another");
    assert!(
        !store.renew_refresh_lock(&key(1), 22, lease).await.expect("answers"),
        "not the holder's to renew"
    );
    store.unlock_refresh(&key(1), 22).await.expect("answers");
    assert!(!store.lock_refresh(&key(1), 22, lease).await.expect("answers"), "not the holder's to release");
    assert!(store.renew_refresh_lock(&key(1), 11, lease).await.expect("answers"));
    // The holder dies: nothing renews it, and it frees itself by its lease.
    let mut taken = false;
    for _ in 0..100 {
        if store.lock_refresh(&key(1), 22, lease).await.expect("answers") {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "the lease expired");
    store.unlock_refresh(&key(1), 22).await.expect("answers");
    assert!(store.lock_refresh(&key(1), 33, lease).await.expect("answers"), "released by its holder");
}

#[tokio::test]
async fn a_record_copied_onto_another_session_does_not_open() {
    let redis = RedisServer::start();
    let store = store(&redis.url());
    ready(&store).await;
    store.insert(key(1), record(0, "victim"), NOW).await.expect("inserts");
    let from = format!("tgtest:{{{}}}", "01".repeat(32));
    let to = format!("tgtest:{{{}}}", "02".repeat(32));
    let sealed = redis.command(&["HGET", from.as_str(), "d"]);
    let sealed = sealed.as_bytes().expect("a sealed record").to_vec();
    redis.command(&[
        b"HSET".as_slice(),
        to.as_bytes(),
        b"g",
        b"0",
        b"t",
        b"1",
        b"a",
        b"9999999999",
        b"d",
        &sealed,
    ]);
    let moved = store.get(&key(2)).await;
    assert!(matches!(moved, Err(StoreError::Unavailable(_))), "{moved:?}");
    assert!(store.get(&key(1)).await.expect("answers").is_some(), "the original still opens");
}

#[tokio::test]
async fn a_stopped_redis_is_an_error_at_once_not_a_wait() {
    let mut redis = RedisServer::start();
    let store = store(&redis.url());
    ready(&store).await;
    redis.stop();
    assert!(matches!(store.get(&key(1)).await, Err(StoreError::Unavailable(_))));
    let lock = store.lock_refresh(&key(1), 1, Duration::from_secs(1)).await;
    assert!(matches!(lock, Err(StoreError::Unavailable(_))), "a failure, not \"held by another\": {lock:?}");
}

#[tokio::test]
async fn an_identity_finds_its_sessions_from_any_replica_and_stays_bounded() {
    let redis = RedisServer::start();
    let (one, two) = (store(&redis.url()), store(&redis.url()));
    ready(&one).await;
    ready(&two).await;
    let alice = identity_key("sub", "https://id.example", "alice");
    let bob = identity_key("sub", "https://id.example", "bob");
    one.link_identity(alice, key(1), NOW + 60, NOW).await.expect("answers");
    two.link_identity(alice, key(2), NOW + 60, NOW).await.expect("answers");
    one.link_identity(alice, key(2), NOW + 60, NOW).await.expect("linking twice is one link");
    let mut found = two.sessions_of(&alice).await.expect("answers");
    found.sort_by_key(|key| key.0);
    assert_eq!(found, vec![key(1), key(2)]);
    assert!(one.sessions_of(&bob).await.expect("answers").is_empty(), "identities never mix");
    for n in 0..(MAX_SESSIONS_PER_IDENTITY + 6) {
        let n = u8::try_from(n + 10).expect("small");
        one.link_identity(bob, key(n), NOW + 60, NOW).await.expect("answers");
    }
    let found = two.sessions_of(&bob).await.expect("answers");
    assert_eq!(found.len(), MAX_SESSIONS_PER_IDENTITY, "the set is capped");
    let newest = key(u8::try_from(MAX_SESSIONS_PER_IDENTITY + 15).expect("small"));
    assert!(found.contains(&newest), "the newest link is always kept");
}

/// The Redis key of `key(1)`.
fn session_key_1() -> String {
    format!("tgtest:{{{}}}", "01".repeat(32))
}

/// Reads `n` until the local cache answers it (the tracking connection turns tracking on
/// in the background after connecting); its generation then.
async fn cached(store: &RedisStore, counters: &SessionCacheCounters, n: u8) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let hits = counters.hits.get();
        let found = generation(store, n).await;
        if counters.hits.get() > hits {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("session {n} was never served from the local cache");
}

/// Reads `n` until its generation is `want` (another client's write reaches the cache by
/// Redis's push, a moment later).
async fn until_generation(store: &RedisStore, n: u8, want: Option<u64>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if store.get(&key(n)).await.ok().map(|found| found.map(|stored| stored.record.generation))
            == Some(want)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn the_local_cache_serves_reads_and_this_stores_own_writes_show_at_once() {
    let redis = RedisServer::start();
    let counters = SessionCacheCounters::default();
    let store = store_with(&redis.url(), true, counters.clone());
    ready(&store).await;
    store.insert(key(1), record(0, "a"), NOW).await.expect("inserts");
    assert_eq!(cached(&store, &counters, 1).await, Some(0));
    // Each write drops this store's copy before it returns: no wait for Redis's push.
    assert!(matches!(store.replace(&key(1), 0, record(1, "b")).await, Ok(Swap::Done)));
    assert_eq!(generation(&store, 1).await, Some(1));
    assert_eq!(cached(&store, &counters, 1).await, Some(1));
    store.touch(&key(1), NOW + 5).await.expect("touches");
    let stored = store.get(&key(1)).await.expect("answers").expect("kept");
    assert_eq!(stored.last_seen, NOW + 5, "the last use written is read back at once");
    assert!(matches!(store.end(&key(1), NOW).await, Ok(Removal::Removed(_))));
    assert_eq!(generation(&store, 1).await, None);
}

#[tokio::test]
async fn another_clients_writes_reach_the_local_cache_and_fresh_reads_skip_it() {
    let redis = RedisServer::start();
    let counters = SessionCacheCounters::default();
    let cached_store = store_with(&redis.url(), true, counters.clone());
    let writer = store_with(&redis.url(), false, SessionCacheCounters::default());
    ready(&cached_store).await;
    ready(&writer).await;
    writer.insert(key(1), record(0, "a"), NOW).await.expect("inserts");
    assert_eq!(cached(&cached_store, &counters, 1).await, Some(0));
    assert!(matches!(writer.replace(&key(1), 0, record(1, "b")).await, Ok(Swap::Done)));
    let fresh =
        cached_store.get_fresh(&key(1)).await.expect("answers").map(|stored| stored.record.generation);
    assert_eq!(fresh, Some(1), "a fresh read is Redis's answer at once");
    assert!(until_generation(&cached_store, 1, Some(1)).await, "the push dropped the old copy");
    assert!(counters.invalidations.get() >= 1);
    // Redis's own expiry and a key deleted by hand are pushed too.
    assert_eq!(cached(&cached_store, &counters, 1).await, Some(1));
    redis.command(&["DEL", session_key_1().as_str()]);
    assert!(until_generation(&cached_store, 1, None).await, "a deleted session is not served");
    writer.insert(key(2), record(0, "c"), NOW).await.expect("inserts");
    assert_eq!(cached(&cached_store, &counters, 2).await, Some(0));
    assert!(matches!(writer.end(&key(2), NOW).await, Ok(Removal::Removed(_))));
    assert!(until_generation(&cached_store, 2, None).await, "a logout elsewhere is seen");
}

#[tokio::test]
async fn a_redis_restart_clears_the_local_cache() {
    let mut redis = RedisServer::start();
    let counters = SessionCacheCounters::default();
    let store = store_with(&redis.url(), true, counters.clone());
    ready(&store).await;
    store.insert(key(1), record(0, "a"), NOW).await.expect("inserts");
    assert_eq!(cached(&store, &counters, 1).await, Some(0));
    redis.restart_empty();
    assert!(until_generation(&store, 1, None).await, "a session Redis lost is not served from the cache");
    // And the cache works again on the new connection.
    store.insert(key(2), record(0, "b"), NOW).await.expect("inserts");
    assert_eq!(cached(&store, &counters, 2).await, Some(0));
}

#[tokio::test]
async fn with_the_local_cache_off_every_read_goes_to_redis() {
    let redis = RedisServer::start();
    let counters = SessionCacheCounters::default();
    let store = store_with(&redis.url(), false, counters.clone());
    ready(&store).await;
    store.insert(key(1), record(0, "a"), NOW).await.expect("inserts");
    for _ in 0..3 {
        assert_eq!(generation(&store, 1).await, Some(0));
    }
    redis.command(&["DEL", session_key_1().as_str()]);
    assert_eq!(generation(&store, 1).await, None, "no copy outlives the key");
    assert_eq!((counters.hits.get(), counters.misses.get()), (0, 0));
}
