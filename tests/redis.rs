//! The Redis store with real `redis-server` processes (a single server and a three-node
//! Cluster) and several real tokengate replicas on one Redis: sessions shared across
//! replicas, one refresh across replicas, the lease, a dead holder, encryption at rest,
//! expiry in Redis, and what each Redis fault does.

mod common;

use std::time::Duration;

use common::redis::{RedisCluster, RedisServer};
use common::*;
use http::{Method, StatusCode};
use serde_json::json;

/// 32 bytes of standard base64: the key that seals records in Redis.
const STORE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The harness's config on the Redis at `url`.
fn on_redis(url: &str) -> Options {
    Options::default()
        .set("store", "kind", "redis")
        .set("store", "url_env", "TEST_REDIS_URL")
        .set("store", "encryption_key_env", "TEST_STORE_KEY")
        .proxy_env("TEST_REDIS_URL", url)
        .proxy_env("TEST_STORE_KEY", STORE_KEY)
}

/// One more tokengate on `env`'s config file and Redis.
fn replica(env: &Env, url: &str) -> Proxy {
    start_proxy(&env.config_path(), env.dir.path(), &[("TEST_REDIS_URL", url), ("TEST_STORE_KEY", STORE_KEY)])
}

/// `on_redis` with the local session cache on whatever the environment says (the suite
/// also runs with `TOKENGATE_STORE_LOCAL_CACHE=false`).
fn cached_on_redis(url: &str) -> Options {
    on_redis(url).proxy_env("TOKENGATE_STORE_LOCAL_CACHE", "true")
}

/// `replica` with the local session cache on.
fn cached_replica(env: &Env, url: &str) -> Proxy {
    let variables =
        [("TEST_REDIS_URL", url), ("TEST_STORE_KEY", STORE_KEY), ("TOKENGATE_STORE_LOCAL_CACHE", "true")];
    start_proxy(&env.config_path(), env.dir.path(), &variables)
}

/// How many session reads `proxy`'s local cache answered (its `/metrics`).
async fn cache_hits(env: &Env, proxy: &Proxy) -> u64 {
    let admin = proxy.admin.expect("an admin listener");
    let metrics = env.raw(Method::GET, &format!("http://{admin}/metrics"), &[], None).await.text();
    let line = metrics
        .lines()
        .find(|line| line.starts_with("tokengate_session_cache_lookups_total{result=\"hit\"}"));
    line.and_then(|line| line.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

/// Calls `path` through `browser` until `proxy`'s cache answered one of them (tracking is
/// turned on in the background after connecting).
async fn warm(env: &Env, proxy: &Proxy, browser: &Browser, path: &str) {
    let warmed = eventually(Duration::from_secs(10), || async {
        let before = cache_hits(env, proxy).await;
        let reply = browser.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        (cache_hits(env, proxy).await > before).then_some(())
    })
    .await;
    assert!(warmed.is_some(), "the session was never served from the local cache");
}

/// A browser sharing `browser`'s cookie (and the suite's leak check) that talks to `proxy`.
fn through(browser: &Browser, proxy: &Proxy) -> Browser {
    let mut other = browser.fresh();
    other.base = format!("http://{}", proxy.addr);
    other.set_cookie(browser.cookie());
    other
}

/// Neither replica's log may hold a secret (the `Env` checks only its own proxy's).
fn assert_clean_logs(env: &Env, replicas: &[&Proxy]) {
    let secrets: Vec<String> =
        env.issued_tokens().into_iter().chain([CLIENT_SECRET.to_string(), PASSWORD.to_string()]).collect();
    for proxy in replicas {
        let log = std::fs::read_to_string(&proxy.log_file).unwrap_or_default();
        for secret in &secrets {
            assert!(!log.contains(secret.as_str()), "a secret in {}", proxy.log_file.display());
        }
    }
}

#[tokio::test]
async fn a_session_started_on_one_replica_works_on_the_others() {
    let redis = RedisServer::start();
    let env = Env::with(on_redis(&redis.url())).await;
    let second = replica(&env, &redis.url());
    let browser = env.browser();
    assert_eq!(
        browser.post("/api/shoppers/me/carts/active?productId=5104501700").await.status,
        StatusCode::OK
    );
    let elsewhere = through(&browser, &second);
    let cart = elsewhere.get("/api/shoppers/me/carts/active").await;
    assert_eq!(cart.status, StatusCode::OK, "{}", cart.text());
    assert!(cart.text().contains("5104501700"), "the guest's cart on the other replica: {}", cart.text());
    let login = elsewhere.login().await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    browser.set_cookie(elsewhere.cookie());
    assert_eq!(browser.get("/session").await.json()["kind"], "shopper", "the new id works on the first");
    // A logout on the first replica ends the session on the second too.
    assert_eq!(browser.post("/session/logout").await.status, StatusCode::NO_CONTENT);
    assert_eq!(elsewhere.get("/session").await.error_code().as_deref(), Some("session_expired"));
    assert_clean_logs(&env, &[&second]);
}

#[tokio::test]
async fn sixty_calls_over_three_replicas_after_expiry_cause_exactly_one_refresh() {
    let redis = RedisServer::start();
    let env = Env::with(on_redis(&redis.url()).set("upstream", "request_timeout", "120s")).await;
    let (second, third) = (replica(&env, &redis.url()), replica(&env, &redis.url()));
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    // The token endpoint holds the refresh until every call was refused once upstream:
    // each of the sixty found the session needing a refresh, on whichever replica.
    env.set_faults(json!({"token_hold": true})).await;
    let browsers = [browser.clone(), through(&browser, &second), through(&browser, &third)];
    let calls = tokio::spawn(async move {
        join_all((0..60).map(|n| {
            let b = browsers[n % 3].clone();
            async move { b.get("/api/shoppers/me").await }
        }))
        .await
    });
    let all_refused = eventually(Duration::from_secs(60), || async {
        let stats = env.stats().await;
        let refused = stats["resource_401"].as_u64().unwrap_or(0);
        let refreshes = stats["token_calls"]["refresh"].as_u64().unwrap_or(0);
        (refused >= 60 && refreshes >= 1).then_some(())
    })
    .await;
    env.clear_faults().await;
    assert!(all_refused.is_some(), "{}", env.stats().await);
    for reply in calls.await.expect("the calls finish") {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(env.refresh_calls().await, 1, "one refresh across three replicas");
    assert_eq!(env.stats().await["resource_401"], 60, "no replay was refused");
    assert_clean_logs(&env, &[&second, &third]);
}

#[tokio::test]
async fn the_lock_holder_renews_its_lease_while_a_slow_refresh_runs() {
    // The lease (600 ms) is far shorter than the token call (2 s): without renewal the
    // second replica would take the lock and refresh again.
    let redis = RedisServer::start();
    let options = on_redis(&redis.url()).set("store", "lock_lease", "600ms");
    let env = Env::with(options).await;
    let second = replica(&env, &redis.url());
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    env.set_faults(json!({"token_latency_ms": 2000})).await;
    let other = through(&browser, &second);
    let first_call = tokio::spawn({
        let browser = browser.clone();
        async move { browser.get("/api/shoppers/me").await }
    });
    let started = eventually(Duration::from_secs(10), || async {
        (env.stats().await["token_calls"]["refresh"].as_u64() == Some(1)).then_some(())
    })
    .await;
    assert!(started.is_some());
    let second_call = other.get("/api/shoppers/me").await;
    assert_eq!(second_call.status, StatusCode::OK, "{}", second_call.text());
    assert_eq!(first_call.await.expect("the first call ends").status, StatusCode::OK);
    env.clear_faults().await;
    assert_eq!(env.refresh_calls().await, 1, "the lease held for the whole call");
}

#[tokio::test]
async fn a_replica_killed_mid_refresh_leaves_the_lock_to_expire_and_the_session_working() {
    let redis = RedisServer::start();
    let options = on_redis(&redis.url()).set("store", "lock_lease", "1s");
    let mut env = Env::with(options).await;
    let second = replica(&env, &redis.url());
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    // The API keeps the refresh token (no rotation), as many do: the dead replica's call
    // must not matter, only its lock.
    env.set_faults(json!({"token_hold": true, "rotate_refresh": false})).await;
    let doomed = tokio::spawn({
        let browser = browser.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), browser.get("/api/shoppers/me")).await;
        }
    });
    let holding = eventually(Duration::from_secs(10), || async {
        (env.stats().await["token_calls"]["refresh"].as_u64() == Some(1)).then_some(())
    })
    .await;
    assert!(holding.is_some(), "the first replica took the lock and called the API");
    env.proxy.stop(); // SIGKILL, by PID
    doomed.abort();
    env.set_faults(json!({"rotate_refresh": false})).await;
    let survivor = through(&browser, &second);
    let reply = survivor.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(env.refresh_calls().await, 2, "the survivor refreshed once the dead holder's lease ran out");
}

#[tokio::test]
async fn a_dump_of_redis_holds_no_token_cookie_or_secret() {
    let redis = RedisServer::start();
    let mut env = Env::with(on_redis(&redis.url())).await;
    let browser = env.browser();
    browser.post("/api/shoppers/me/carts/active?productId=5104501700").await;
    let guest_cookie = browser.cookie().expect("a guest cookie");
    // A pending hosted login (its URL carries the guest token by design).
    let authorize = browser.get("/session/authorize?return_to=/cart").await;
    assert_eq!(authorize.status, StatusCode::FOUND);
    for token in env.issued_tokens() {
        env.allow_in_responses(&token);
    }
    assert_eq!(browser.login().await.status, StatusCode::OK);
    let shopper_cookie = browser.cookie().expect("a shopper cookie");
    let dump = redis.dump_all();
    assert!(!dump.is_empty(), "sessions are in Redis");
    let mut secrets: Vec<String> = env.issued_tokens();
    secrets.extend([guest_cookie, shopper_cookie, CLIENT_SECRET.into(), PASSWORD.into(), STORE_KEY.into()]);
    for (key, value) in &dump {
        let value = String::from_utf8_lossy(value);
        for secret in &secrets {
            assert!(!key.contains(secret.as_str()) && !value.contains(secret.as_str()), "a secret in {key}");
        }
    }
    assert!(dump.iter().any(|(key, _)| key.ends_with(":pending")), "the pending login is shared: {dump:?}");
}

#[tokio::test]
async fn the_idle_ttl_slides_and_is_capped_by_the_absolute_end() {
    let redis = RedisServer::start();
    let options =
        on_redis(&redis.url()).set("session", "idle_timeout", "1h").set("session", "absolute_timeout", "30m");
    let env = Env::with(options).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let session_keys: Vec<String> =
        redis.keys().into_iter().filter(|key| key.starts_with("tokengate:{") && key.ends_with('}')).collect();
    assert_eq!(session_keys.len(), 1, "{session_keys:?}");
    let ttl = redis.pttl(&session_keys[0]);
    assert!(ttl > 0 && ttl <= 30 * 60 * 1000, "capped by the absolute end: {ttl} ms");
    assert!(ttl > 29 * 60 * 1000, "about the absolute end: {ttl} ms");
}

#[tokio::test]
async fn redis_down_is_503_with_the_cookie_kept_and_back_with_data_every_session_works() {
    let mut redis = RedisServer::start();
    let env = Env::with(on_redis(&redis.url()).route("/public/", "/v1/", "none")).await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    let cookie = browser.cookie();
    redis.command(&["SAVE"]);
    redis.stop();

    let admin = env.proxy.admin.expect("an admin listener");
    let readyz = env.raw(Method::GET, &format!("http://{admin}/readyz"), &[], None).await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.error_code().as_deref(), Some("store_unavailable"));
    assert!(!reply.clears_cookie(), "the cookie is kept");
    assert_eq!(browser.cookie(), cookie);
    let anonymous = browser.get("/public/products").await;
    assert_ne!(anonymous.status, StatusCode::SERVICE_UNAVAILABLE, "routes without sessions keep working");

    redis.restart_keeping_data();
    let back = eventually(Duration::from_secs(20), || async {
        (browser.get("/session").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(back.is_some(), "the session works again once Redis is back with its data");
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn redis_back_empty_is_session_expired_cleanly() {
    let mut redis = RedisServer::start();
    let env = Env::with(on_redis(&redis.url())).await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    redis.restart_empty();
    let expired = eventually(Duration::from_secs(20), || async {
        let fresh = browser.fresh();
        fresh.set_cookie(browser.cookie());
        let reply = fresh.get("/session").await;
        (reply.status != StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await
    .expect("Redis comes back");
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{}", expired.text());
    assert_eq!(expired.error_code().as_deref(), Some("session_expired"));
    assert!(expired.clears_cookie());
    let browser = browser.fresh();
    assert_eq!(browser.post("/session/guest").await.status, StatusCode::OK, "new sessions start");
}

#[tokio::test]
async fn a_hosted_login_begun_on_one_replica_completes_on_another() {
    let redis = RedisServer::start();
    let mut env = Env::with(on_redis(&redis.url())).await;
    let second = replica(&env, &redis.url());
    let browser = env.browser();
    let authorize = browser.get("/session/authorize?return_to=/cart").await;
    assert_eq!(authorize.status, StatusCode::FOUND, "{}", authorize.text());
    let location = authorize.headers["location"].to_str().expect("a location").to_string();
    let params: std::collections::HashMap<String, String> =
        url::Url::parse(&location).expect("an absolute authorize URL").query_pairs().into_owned().collect();
    if let Some(guest) = params.get("dr_limited_token") {
        env.allow_in_responses(guest); // by Digital River's design
    }
    // The shopper signs in on the API's page...
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("username", USERNAME).append_pair("password", PASSWORD);
    for field in ["client_id", "redirect_uri", "response_type", "state", "dr_limited_token"] {
        if let Some(value) = params.get(field) {
            form.append_pair(field, value);
        }
    }
    let login_url = format!("{}/oauth20/authorize/login", env.mock.url);
    let content_type = [("content-type", "application/x-www-form-urlencoded")];
    let back = env.raw(Method::POST, &login_url, &content_type, Some(form.finish())).await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.text());
    let redirect = back.headers["location"].to_str().unwrap_or_default().to_string();
    let (url, fragment) = redirect.split_once('#').expect("the token in the fragment");
    let path = url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()));
    // ...and the callback lands on the other replica.
    let callback = through(&browser, &second);
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("fragment", fragment);
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-csrf", ""),
        ("origin", "http://shop.test"),
    ];
    let path = path.expect("a callback path");
    let done = callback.send(Method::POST, &path, &headers, Some(body.finish().into())).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(callback.get("/session").await.json()["kind"], "shopper");
}

#[tokio::test]
async fn a_redis_cluster_keeps_each_session_on_one_node_and_serves_every_step() {
    let cluster = RedisCluster::start(3);
    let env = Env::with(on_redis(&cluster.url())).await;
    let second = replica(&env, &cluster.url());
    let browser = env.browser();
    assert_eq!(browser.post("/session/guest").await.status, StatusCode::OK);
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    let other = through(&browser, &second);
    assert_eq!(other.get("/api/shoppers/me").await.status, StatusCode::OK, "refresh and replay on a cluster");
    assert_eq!(env.refresh_calls().await, 1);
    // A session's hash and its mark share a slot: every script runs on one node.
    let keys = cluster.keys();
    for key in keys.iter().filter(|key| key.ends_with(":mark")) {
        let session = key.trim_end_matches(":mark");
        assert_eq!(cluster.keyslot(key), cluster.keyslot(session), "{key}");
    }
    assert!(keys.iter().any(|key| key.ends_with(":mark")), "the login left a mark: {keys:?}");
    assert_eq!(other.post("/session/logout").await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn each_use_slides_the_idle_ttl_without_resealing_the_record() {
    // idle 200 s: a use slides the TTL at most every 2 s (idle/100).
    let redis = RedisServer::start();
    let options = on_redis(&redis.url()).set("session", "idle_timeout", "200s");
    let env = Env::with(options).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let session = redis
        .keys()
        .into_iter()
        .find(|key| key.starts_with("tokengate:{") && key.ends_with('}'))
        .expect("the session's hash");
    let sealed_before = redis.command(&["HGET", session.as_str(), "d"]).as_bytes().map(<[u8]>::to_vec);
    let created = std::time::Instant::now();
    // Keep using the session until a use after the 2 s mark has pushed the TTL back up to
    // nearly the whole idle timeout.
    let slid = eventually(Duration::from_secs(15), || async {
        assert_eq!(browser.get("/session").await.status, StatusCode::OK);
        let ttl = redis.pttl(&session);
        (created.elapsed() > Duration::from_millis(2500) && ttl > 199_000).then_some(ttl)
    })
    .await;
    assert!(slid.is_some(), "the TTL never slid back up: {} ms", redis.pttl(&session));
    let sealed_after = redis.command(&["HGET", session.as_str(), "d"]).as_bytes().map(<[u8]>::to_vec);
    assert_eq!(sealed_before, sealed_after, "sliding the TTL must not rewrite the sealed record");
}

#[tokio::test]
async fn rediss_works_with_the_servers_ca_and_is_refused_without_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certificate = TestCertificate::create(dir.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let cert = certificate.cert_file.display().to_string();
    let key = certificate.key_file.display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let env = Env::with(on_redis(&url).set("store", "ca_file", cert.clone())).await;
    let browser = env.browser();
    let reply = browser.post("/session/guest").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "the session is in Redis, over TLS");
    assert!(redis.keys().iter().any(|key| key.starts_with("tokengate:{")), "written through the TLS port");

    // Without the CA the self-signed server is not trusted: no session, a clear 503.
    let untrusting = Env::with(on_redis(&url)).await;
    let refused = untrusting.browser().post("/session/guest").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert_eq!(refused.error_code().as_deref(), Some("store_unavailable"));
}

#[tokio::test]
async fn a_cached_session_follows_another_replicas_refresh_and_logout() {
    let redis = RedisServer::start();
    let env = Env::with(cached_on_redis(&redis.url())).await;
    let second = cached_replica(&env, &redis.url());
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    warm(&env, &env.proxy, &browser, "/api/shoppers/me").await;
    // The API stops taking the tokens it issued; the second replica's call is refused
    // once, refreshes and stores the new tokens.
    env.expire_access_tokens().await;
    let elsewhere = through(&browser, &second);
    assert_eq!(elsewhere.get("/api/shoppers/me").await.status, StatusCode::OK);
    assert_eq!(env.refresh_calls().await, 1);
    let refused = env.stats().await["resource_401"].as_u64();
    // The first replica's copy was dropped by Redis's push: its next call carries the new
    // token (the API refuses nothing) and nobody refreshes again.
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(env.stats().await["resource_401"].as_u64(), refused, "the first replica sent the old token");
    assert_eq!(env.refresh_calls().await, 1, "one refresh");
    warm(&env, &env.proxy, &browser, "/api/shoppers/me").await;

    // A logout on the second replica ends the session on the first at once.
    let cookie = browser.cookie();
    assert_eq!(elsewhere.post("/session/logout").await.status, StatusCode::NO_CONTENT);
    let ended = eventually(Duration::from_secs(5), || async {
        let fresh = browser.fresh();
        fresh.set_cookie(cookie.clone());
        let reply = fresh.get("/api/shoppers/me").await;
        (reply.status != StatusCode::OK).then_some(reply)
    })
    .await
    .expect("the logout is seen");
    assert_eq!(ended.status, StatusCode::UNAUTHORIZED, "{}", ended.text());
    assert_eq!(ended.error_code().as_deref(), Some("session_expired"));
    assert_clean_logs(&env, &[&second]);
}

#[tokio::test]
async fn redis_back_empty_is_session_expired_even_for_cached_sessions() {
    let mut redis = RedisServer::start();
    let env = Env::with(cached_on_redis(&redis.url())).await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    warm(&env, &env.proxy, &browser, "/session").await;
    redis.restart_empty();
    let after = eventually(Duration::from_secs(20), || async {
        let fresh = browser.fresh();
        fresh.set_cookie(browser.cookie());
        let reply = fresh.get("/session").await;
        (reply.status != StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await
    .expect("Redis comes back");
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "a session Redis lost was served: {}", after.text());
    assert_eq!(after.error_code().as_deref(), Some("session_expired"));
}
