//! The Redis store: sessions shared by every replica, sealed at rest, forgotten by Redis
//! itself when abandoned.
//!
//! **Keys.** One session is a hash `<prefix>:{<hex of its SessionKey>}` with fields `g`
//! (generation, in clear so a script can compare it), `d` (the sealed record), `t` (last
//! use, Unix seconds) and `a` (absolute end). Beside it, in the same hash slot (the `{…}`
//! tag), `…:mark` (what became of a key a login rotated or a logout ended) and `…:lock`
//! (the refresh lock), and `…:pending` (the session's pending hosted login, at most one).
//! The sessions one provider identity signed in (for back-channel logout) are a set
//! `<prefix>:{<hex of its IdentityKey>}:sessions` of session key hex, capped and expiring
//! with the latest linked session.
//! So every script touches one slot, and a Redis Cluster runs it on one node. A dump holds
//! hashes of cookie values and states, times, generations, and sealed bytes: nothing that
//! opens without the encryption key (`sealed`).
//!
//! **Expiry.** A session's TTL is the idle timeout capped by its absolute end; `touch`
//! slides it (and `t`) without rewriting the record. Redis forgets abandoned sessions;
//! `sweep` has nothing to do.
//!
//! **Writes.** Every change is one Lua script on one key's slot: insert only if absent,
//! replace and remove only at the expected generation (the fence), take-and-mark for
//! logout and rotation. A rotation writes the new session first (its own slot), then takes
//! the old key; if the old key was marked by a concurrent login or logout, the new session
//! is deleted again and the rotation is a conflict.
//!
//! **The refresh lock.** `SET …:lock <token> NX PX <lease>`; renewed and released only by
//! its holder (scripts compare the token); a holder that dies lets it expire.
//!
//! **The local cache.** With `local_cache`, `get` answers from this replica's copy of the
//! sessions it read (`cache`), kept true by RESP3 client tracking on a connection of its
//! own (`tracking`: every fill proves its read was tracked; connection events clear it).
//! Every write here drops this replica's copy of its key when it is over (`Forget`), so
//! this replica never reads its own stale copy; `get_fresh` (the refresh path) always
//! reads Redis. Off with Redis Cluster (see `tracking`).
//!
//! What is per replica: `counts()` (Redis is not counted; the sessions gauge stays 0),
//! `has_room()` (always true: size Redis with `maxmemory` instead of `max_sessions`).

mod cache;
mod sealed;
mod tracking;

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, SetsInterface};
use fred::types::config::{Config as FredConfig, ReconnectPolicy};
use fred::types::{Builder, RespVersion};
use fred::types::{Expiration, SetOptions, Value};

use super::{
    from_hex, to_hex, Exported, IdentityKey, PendingLogin, Removal, Rotation, SessionCounts, SessionKey,
    SessionRecord, SessionStore, StoreError, StoredSession, Swap, MARK_SECS, MAX_SESSIONS_PER_IDENTITY,
};
use crate::config::RedisConfig;
use crate::metrics::SessionCacheCounters;
use crate::secret::EncryptionKey;
use tracking::Tracked;

pub use sealed::Unsealed;

/// Insert only if absent; set the TTL. KEYS: session. ARGV: g, d, t, a, ttl_ms.
const INSERT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'd', ARGV[2], 't', ARGV[3], 'a', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1";

/// Compare-and-set on the generation. KEYS: session. ARGV: expected g, new g, new d.
/// Returns {1} done, {0} missing, {2, d} stale (with the newer record).
const REPLACE: &str = r"
local g = redis.call('HGET', KEYS[1], 'g')
if not g then return {0} end
if g ~= ARGV[1] then return {2, redis.call('HGET', KEYS[1], 'd')} end
redis.call('HSET', KEYS[1], 'g', ARGV[2], 'd', ARGV[3])
return {1}";

/// Compare-and-delete on the generation. KEYS: session. ARGV: expected g.
const REMOVE_IF: &str = r"
local g = redis.call('HGET', KEYS[1], 'g')
if not g then return {0} end
if g ~= ARGV[1] then return {2, redis.call('HGET', KEYS[1], 'd')} end
redis.call('DEL', KEYS[1])
return {1}";

/// Slides the idle TTL, capped by the absolute end. KEYS: session. ARGV: now, idle_ms.
const TOUCH: &str = r"
local a = redis.call('HGET', KEYS[1], 'a')
if not a then return 0 end
local left = (tonumber(a) - tonumber(ARGV[1])) * 1000
if left <= 0 then redis.call('DEL', KEYS[1]) return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[2]), left))
return 1";

/// Takes a session out and leaves a mark. KEYS: session, mark. ARGV: mark value, mark ms.
/// Returns {1, d} taken, {2, mark} already marked, {0} absent.
const TAKE_LEAVING_MARK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local d = redis.call('HGET', KEYS[1], 'd')
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {1, d}
end
local m = redis.call('GET', KEYS[2])
if m then return {2, m} end
return {0}";

/// Renews a lock its holder still holds. KEYS: lock. ARGV: token, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// Releases a lock its holder still holds. KEYS: lock. ARGV: token.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Links a session to an identity: adds it to the identity's set, keeps the set no
/// larger than ARGV[4] (dropping arbitrary old members) and alive until the latest
/// linked session's end. KEYS: identity set. ARGV: session hex, until, now, max members.
const LINK_IDENTITY: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
local extra = redis.call('SCARD', KEYS[1]) - tonumber(ARGV[4])
if extra > 0 then
  for _, member in ipairs(redis.call('SRANDMEMBER', KEYS[1], extra + 1)) do
    if member ~= ARGV[1] and extra > 0 then redis.call('SREM', KEYS[1], member) extra = extra - 1 end
  end
end
local want = tonumber(ARGV[2]) - tonumber(ARGV[3])
if want < 1 then want = 1 end
if redis.call('TTL', KEYS[1]) < want then redis.call('EXPIRE', KEYS[1], want) end
return 1";

/// What a `:mark` key holds after a logout.
const ENDED: &str = "ended";

/// Sessions in Redis.
pub struct RedisStore {
    pool: Pool,
    /// The local session cache and its tracking connection (`local_cache`; never with
    /// Redis Cluster).
    tracked: Option<Arc<Tracked>>,
    keys: Vec<EncryptionKey>,
    prefix: String,
    idle_ms: u64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the server `config` names, with `idle` as the sliding TTL. Connects in
    /// the background and keeps reconnecting: a Redis that is down at start makes
    /// `/readyz` and session calls fail (503) until it is back, it does not stop the start.
    /// With `local_cache`, also a RESP3 connection that keeps the local cache true
    /// (`tracking`), counting in `counters`.
    pub fn connect(
        config: &RedisConfig,
        idle: Duration,
        counters: SessionCacheCounters,
    ) -> Result<Self, String> {
        let pool = client_builder(config, RespVersion::RESP2)?
            .build_pool(config.pool_size)
            .map_err(|error| format!("store: cannot build the Redis client: {}", error.details()))?;
        pool.connect();
        let clustered = pool.inner().config.server.is_clustered();
        if config.local_cache && clustered {
            tracing::info!("store.local_cache is off with Redis Cluster (see README)");
        }
        let tracked = match (config.local_cache, clustered) {
            (true, false) => {
                let reader = client_builder(config, RespVersion::RESP3)?
                    // Room for bursts of invalidation pushes; a lagged keeper clears.
                    .with_performance_config(|performance| performance.broadcast_channel_capacity = 4096)
                    .build()
                    .map_err(|error| format!("store: cannot build the Redis client: {}", error.details()))?;
                let patience = config.command_timeout.saturating_mul(2);
                let prefix = config.key_prefix.clone();
                Some(Tracked::start(reader, prefix, config.local_cache_max, patience, counters))
            }
            _ => None,
        };
        Ok(Self {
            pool,
            tracked,
            keys: config.keys.clone(),
            prefix: config.key_prefix.clone(),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The session under `key` as Redis holds it now, read on the pool (never the cache).
    async fn read_pool(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let fields: Vec<Value> =
            fred::interfaces::HashesInterface::hmget(&self.pool, self.session_key(key), vec!["d", "t"])
                .await
                .map_err(unavailable)?;
        self.stored(&fields, key)
    }

    /// A session from an `HMGET d t` answer (`None`: no such session).
    fn stored(&self, fields: &[Value], key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let Some(sealed) = fields.first().and_then(bytes_of) else { return Ok(None) };
        let last_seen = fields.get(1).and_then(number_of).unwrap_or(0);
        Ok(Some(StoredSession { record: Arc::new(self.open(&sealed, key)?), last_seen }))
    }

    /// The cached session, or a read on the tracking connection that fills the cache when
    /// it proves the connection tracks; the pool reads when that connection fails.
    async fn read_cached(
        &self,
        tracked: &Tracked,
        key: &SessionKey,
    ) -> Result<Option<StoredSession>, StoreError> {
        if let Some(hit) = tracked.cache.get(key) {
            tracked.counters.hits.inc();
            return Ok(Some(hit));
        }
        tracked.counters.misses.inc();
        // Before the read: an invalidation that lands meanwhile refuses its fill.
        let ticket = tracked.cache.ticket(key);
        let read = match tracked.read(self.session_key(key)).await {
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(error = %error.details(), "the cache's connection failed; reading on the pool");
                return self.read_pool(key).await;
            }
        };
        let stored = self.stored(&read.fields, key)?;
        if let (Some(stored), true) = (&stored, read.tracked) {
            tracked.cache.fill(key, ticket, stored.clone());
        }
        Ok(stored)
    }

    /// Held across a write of `key`: when the write is over (done, failed or abandoned
    /// mid-flight), this replica's copy goes at once, not when Redis's push arrives.
    fn forgetting(&self, key: &SessionKey) -> Forget<'_> {
        Forget { tracked: self.tracked.as_deref(), key: *key }
    }

    fn session_key(&self, key: &SessionKey) -> String {
        format!("{}:{{{}}}", self.prefix, to_hex(&key.0))
    }

    fn mark_key(&self, key: &SessionKey) -> String {
        format!("{}:{{{}}}:mark", self.prefix, to_hex(&key.0))
    }

    fn lock_key(&self, key: &SessionKey) -> String {
        format!("{}:{{{}}}:lock", self.prefix, to_hex(&key.0))
    }

    fn pending_key(&self, key: &SessionKey) -> String {
        format!("{}:{{{}}}:pending", self.prefix, to_hex(&key.0))
    }

    fn identity_key(&self, identity: &IdentityKey) -> String {
        format!("{}:{{{}}}:sessions", self.prefix, to_hex(identity))
    }

    /// Runs a script by its hash, loading it on the node first when it is not cached.
    async fn script(
        &self,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        let hash = fred::util::sha1_hash(lua);
        match self.pool.evalsha::<Value, _, _, _>(hash.as_str(), keys.clone(), args.clone()).await {
            Ok(value) => Ok(value),
            Err(error) if error.details().contains("NOSCRIPT") => {
                self.pool.eval::<Value, _, _, _>(lua, keys, args).await.map_err(unavailable)
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    fn open(&self, sealed: &[u8], key: &SessionKey) -> Result<SessionRecord, StoreError> {
        sealed::open_record(sealed, key, &self.keys)
            .map_err(|error| StoreError::Unavailable(format!("a session record does not open: {error}")))
    }

    fn seal(&self, record: &SessionRecord, key: &SessionKey) -> Result<Vec<u8>, StoreError> {
        sealed::seal_record(record, key, &self.keys)
            .map_err(|error| StoreError::Unavailable(format!("cannot seal a session record: {error}")))
    }

    /// The newer record from a script's `{2, d}` answer.
    fn stale(&self, parts: &[Value], key: &SessionKey) -> Result<Arc<SessionRecord>, StoreError> {
        let sealed = parts.get(1).and_then(bytes_of).ok_or_else(|| garbage("stale record"))?;
        Ok(Arc::new(self.open(&sealed, key)?))
    }

    fn ttl_ms(&self, record: &SessionRecord, now: u64) -> u64 {
        let left = record.absolute_expires_at.saturating_sub(now).saturating_mul(1000);
        self.idle_ms.min(left).max(1)
    }
}

impl SessionStore for RedisStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        match &self.tracked {
            Some(tracked) => self.read_cached(tracked, key).await,
            None => self.read_pool(key).await,
        }
    }

    async fn get_fresh(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        self.read_pool(key).await
    }

    fn has_room(&self) -> bool {
        true
    }

    async fn insert(&self, key: SessionKey, record: Arc<SessionRecord>, now: u64) -> Result<(), StoreError> {
        let _forget = self.forgetting(&key);
        let sealed = self.seal(&record, &key)?;
        let args = vec![
            Value::from(record.generation.to_string()),
            Value::Bytes(sealed.into()),
            Value::from(now.to_string()),
            Value::from(record.absolute_expires_at.to_string()),
            Value::from(self.ttl_ms(&record, now).to_string()),
        ];
        match number_of(&self.script(INSERT, vec![self.session_key(&key)], args).await?) {
            Some(1) => Ok(()),
            _ => Err(StoreError::Unavailable("a new session's key was already taken".into())),
        }
    }

    async fn replace(
        &self,
        key: &SessionKey,
        expected_generation: u64,
        record: Arc<SessionRecord>,
    ) -> Result<Swap, StoreError> {
        let _forget = self.forgetting(key);
        let sealed = self.seal(&record, key)?;
        let args = vec![
            Value::from(expected_generation.to_string()),
            Value::from(record.generation.to_string()),
            Value::Bytes(sealed.into()),
        ];
        let answer = self.script(REPLACE, vec![self.session_key(key)], args).await?;
        self.swap(&answer, key)
    }

    async fn touch(&self, key: &SessionKey, now: u64) -> Result<(), StoreError> {
        let _forget = self.forgetting(key);
        let args = vec![Value::from(now.to_string()), Value::from(self.idle_ms.to_string())];
        self.script(TOUCH, vec![self.session_key(key)], args).await.map(drop)
    }

    /// The mark lives `MARK_SECS` by Redis's clock; `now` is not needed.
    async fn end(&self, key: &SessionKey, _now: u64) -> Result<Removal, StoreError> {
        let _forget = self.forgetting(key);
        let args = vec![Value::from(ENDED), Value::from((MARK_SECS * 1000).to_string())];
        let answer =
            self.script(TAKE_LEAVING_MARK, vec![self.session_key(key), self.mark_key(key)], args).await?;
        let parts = array_of(&answer)?;
        match parts.first().and_then(number_of) {
            Some(1) => {
                let sealed = parts.get(1).and_then(bytes_of).ok_or_else(|| garbage("ended record"))?;
                Ok(Removal::Removed(Arc::new(self.open(&sealed, key)?)))
            }
            Some(2) => Ok(match parts.get(1).and_then(bytes_of).as_deref().and_then(successor) {
                Some(next) => Removal::Moved(next),
                None => Removal::Absent,
            }),
            _ => Ok(Removal::Absent),
        }
    }

    async fn remove_if(&self, key: &SessionKey, expected_generation: u64) -> Result<Swap, StoreError> {
        let _forget = self.forgetting(key);
        let args = vec![Value::from(expected_generation.to_string())];
        let answer = self.script(REMOVE_IF, vec![self.session_key(key)], args).await?;
        self.swap(&answer, key)
    }

    async fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        // The new session first (its own slot; nobody knows its id yet), so that whoever
        // follows the old key's mark finds it.
        self.insert(new, record, now).await?;
        let Some(old) = old else { return Ok(Rotation::Done { previous: None }) };
        let _forget = self.forgetting(old);
        let moved = format!("moved:{}", to_hex(&new.0));
        let args = vec![Value::from(moved), Value::from((MARK_SECS * 1000).to_string())];
        let answer =
            self.script(TAKE_LEAVING_MARK, vec![self.session_key(old), self.mark_key(old)], args).await;
        let parts = match answer.and_then(|answer| array_of(&answer)) {
            Ok(parts) => parts,
            Err(error) => {
                // Nothing was rotated: the new session must not stay behind.
                let _ = self.pool.del::<i64, _>(self.session_key(&new)).await;
                return Err(error);
            }
        };
        match parts.first().and_then(number_of) {
            Some(1) => {
                let previous = match parts.get(1).and_then(bytes_of) {
                    Some(sealed) => self.open(&sealed, old).ok().map(Arc::new),
                    None => None,
                };
                Ok(Rotation::Done { previous })
            }
            Some(2) => {
                let _ = self.pool.del::<i64, _>(self.session_key(&new)).await;
                Ok(Rotation::Conflict)
            }
            _ => Ok(Rotation::Done { previous: None }),
        }
    }

    async fn put_pending(&self, session: SessionKey, pending: PendingLogin) -> Result<(), StoreError> {
        let sealed = sealed::seal_pending(&pending, &session, &self.keys)
            .map_err(|error| StoreError::Unavailable(format!("cannot seal a pending login: {error}")))?;
        // Redis forgets it at its own end (Unix seconds), whatever the clocks say meanwhile.
        let expiry = Expiration::EXAT(i64::try_from(pending.expires_at).unwrap_or(i64::MAX));
        let _: Value = self
            .pool
            .set(self.pending_key(&session), Value::Bytes(sealed.into()), Some(expiry), None, false)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn take_pending(&self, session: &SessionKey) -> Result<Option<PendingLogin>, StoreError> {
        let value: Value = self.pool.getdel(self.pending_key(session)).await.map_err(unavailable)?;
        let Some(sealed) = bytes_of(&value) else { return Ok(None) };
        sealed::open_pending(&sealed, session, &self.keys)
            .map(Some)
            .map_err(|error| StoreError::Unavailable(format!("a pending login does not open: {error}")))
    }

    async fn has_pending(&self, session: &SessionKey) -> Result<bool, StoreError> {
        let found: u64 = self.pool.exists(self.pending_key(session)).await.map_err(unavailable)?;
        Ok(found > 0)
    }

    async fn link_identity(
        &self,
        identity: IdentityKey,
        session: SessionKey,
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(to_hex(&session.0)),
            Value::from(i64::try_from(until).unwrap_or(i64::MAX)),
            Value::from(i64::try_from(now).unwrap_or(i64::MAX)),
            Value::from(i64::try_from(MAX_SESSIONS_PER_IDENTITY).unwrap_or(i64::MAX)),
        ];
        self.script(LINK_IDENTITY, vec![self.identity_key(&identity)], args).await.map(drop)
    }

    async fn sessions_of(&self, identity: &IdentityKey) -> Result<Vec<SessionKey>, StoreError> {
        let members: Vec<String> =
            self.pool.smembers(self.identity_key(identity)).await.map_err(unavailable)?;
        Ok(members.iter().filter_map(|member| from_hex(member)).map(SessionKey).collect())
    }

    async fn sweep(&self, _now: u64, _idle_before: u64) -> Result<usize, StoreError> {
        // Redis expires sessions, marks and states by their TTLs.
        Ok(0)
    }

    fn counts(&self) -> SessionCounts {
        SessionCounts::default()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.pool.ping::<Value>(None).await.map(drop).map_err(unavailable)
    }

    fn export(&self) -> Result<Vec<Exported>, StoreError> {
        Err(StoreError::Unsupported("Redis keeps its own data; there is no snapshot"))
    }

    fn import(&self, _entries: Vec<Exported>) -> Result<usize, StoreError> {
        Err(StoreError::Unsupported("Redis keeps its own data; there is no snapshot"))
    }

    async fn lock_refresh(&self, key: &SessionKey, token: u64, lease: Duration) -> Result<bool, StoreError> {
        let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let answer: Value = self
            .pool
            .set(self.lock_key(key), token.to_string(), Some(Expiration::PX(ms)), Some(SetOptions::NX), false)
            .await
            .map_err(unavailable)?;
        // "OK" when set; nil when another holder has it.
        Ok(!answer.is_null())
    }

    async fn renew_refresh_lock(
        &self,
        key: &SessionKey,
        token: u64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let args = vec![Value::from(token.to_string()), Value::from(lease.as_millis().to_string())];
        let answer = self.script(RENEW, vec![self.lock_key(key)], args).await?;
        Ok(number_of(&answer) == Some(1))
    }

    async fn unlock_refresh(&self, key: &SessionKey, token: u64) -> Result<(), StoreError> {
        self.script(UNLOCK, vec![self.lock_key(key)], vec![Value::from(token.to_string())]).await.map(drop)
    }

    fn is_shared(&self) -> bool {
        true
    }
}

impl RedisStore {
    /// A `{1}` / `{0}` / `{2, d}` script answer as a [`Swap`].
    fn swap(&self, answer: &Value, key: &SessionKey) -> Result<Swap, StoreError> {
        let parts = array_of(answer)?;
        match parts.first().and_then(number_of) {
            Some(1) => Ok(Swap::Done),
            Some(0) => Ok(Swap::Missing),
            Some(2) => Ok(Swap::Stale(self.stale(&parts, key)?)),
            _ => Err(garbage("compare-and-set answer")),
        }
    }
}

/// Drops a key from the local cache when dropped (`RedisStore::forgetting`).
struct Forget<'a> {
    tracked: Option<&'a Tracked>,
    key: SessionKey,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(tracked) = self.tracked {
            tracked.invalidate(&self.key);
        }
    }
}

/// A client for the server `config` names, speaking `version` (RESP3 for tracking), with
/// the configured TLS, timeouts and reconnection policy.
fn client_builder(config: &RedisConfig, version: RespVersion) -> Result<Builder, String> {
    let mut fred_config = FredConfig::from_url(config.url.expose())
        .map_err(|error| format!("store.url_env: not a usable Redis URL ({})", error.kind().to_str()))?;
    fred_config.version = version;
    if fred_config.tls.is_some() {
        // rediss://: the same trust as the upstream client (Mozilla roots + ca_file).
        let tls = crate::upstream::tls_client_config(config.ca_file.as_deref(), "store.ca_file")?;
        fred_config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    let (connect_timeout, command_timeout) = (config.connect_timeout, config.command_timeout);
    let mut builder = Builder::from_config(fred_config);
    builder
        .with_connection_config(|connection| {
            connection.connection_timeout = connect_timeout;
            connection.internal_command_timeout = command_timeout;
        })
        .with_performance_config(|performance| performance.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    Ok(builder)
}

fn unavailable(error: fred::error::Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {:?}: {}", error.kind(), error.details()))
}

fn garbage(what: &str) -> StoreError {
    StoreError::Unavailable(format!("redis answered an unexpected {what}"))
}

fn array_of(value: &Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items.clone()),
        _ => Err(garbage("script answer")),
    }
}

fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Bytes(bytes) => Some(bytes.to_vec()),
        Value::String(text) => Some(text.as_bytes().to_vec()),
        _ => None,
    }
}

fn number_of(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        Value::String(text) => text.parse().ok(),
        Value::Bytes(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

/// The successor a `moved:<hex>` mark names.
fn successor(mark: &[u8]) -> Option<SessionKey> {
    from_hex(std::str::from_utf8(mark).ok()?.strip_prefix("moved:")?).map(SessionKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_url_form_is_accepted() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://user:pass@127.0.0.1:6379/2",
            "rediss://redis.example:6380",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "redis-sentinel://127.0.0.1:26379?sentinelServiceName=mymaster&node=127.0.0.1:26380",
        ] {
            assert!(FredConfig::from_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_moved_mark_names_its_successor() {
        let key = SessionKey([0xab; 32]);
        let mark = format!("moved:{}", to_hex(&key.0));
        assert_eq!(successor(mark.as_bytes()), Some(key));
        assert_eq!(successor(b"ended"), None);
        assert_eq!(successor(b"moved:zz"), None);
    }
}
