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
    let config = RedisConfig {
        url: SecretString::new(url.to_string()),
        keys: vec![EncryptionKey::new([9; 32])],
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(1),
        key_prefix: "tgtest".into(),
        lock_lease: Duration::from_secs(1),
        ca_file: None,
        local_cache: true,
        local_cache_max: 1000,
    };
    RedisStore::connect(&config, Duration::from_secs(3600), SessionCacheCounters::default()).expect("a store")
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
