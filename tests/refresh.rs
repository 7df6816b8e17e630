//! Token refresh: ahead of expiry, single-flight per session, after an upstream 401,
//! and what happens when the token endpoint rejects or fails.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::json;

/// Fifty calls at once on the browser's session, each answered 200.
async fn fifty_calls(browser: &Browser) {
    let replies = join_all((0..50).map(|_| {
        let b = browser.clone();
        async move { b.get("/api/shoppers/me").await }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
}

#[tokio::test]
async fn fifty_concurrent_calls_on_an_expired_session_cause_exactly_one_refresh() {
    // The access token is expired at the API while the proxy still thinks it good, so
    // every call is refused upstream (401) and asks for a refresh. The token endpoint
    // holds that refresh until all fifty calls have been refused: each of them found the
    // session needing a refresh, however the calls were scheduled, and they must share
    // one refresh. The upstream timeout (which bounds the held refresh) is far beyond
    // the wait below, so only a broken proxy can make this fail.
    let env = Env::with(Options::default().set("upstream", "request_timeout", "120s")).await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    env.set_faults(json!({"token_hold": true})).await;
    let calls = tokio::spawn({
        let browser = browser.clone();
        async move { fifty_calls(&browser).await }
    });
    let all_refused = eventually(Duration::from_secs(60), || async {
        let stats = env.stats().await;
        let refused = stats["resource_401"].as_u64().unwrap_or(0);
        let refreshes = stats["token_calls"]["refresh"].as_u64().unwrap_or(0);
        (refused >= 50 && refreshes >= 1).then_some(stats)
    })
    .await;
    env.clear_faults().await; // releases the held refresh
    let stats = match all_refused {
        Some(stats) => stats,
        None => env.stats().await,
    };
    assert_eq!(stats["resource_401"], 50, "every call must have used the expired token once: {stats}");
    calls.await.expect("all fifty calls succeed");
    assert_eq!(env.refresh_calls().await, 1);
    assert_eq!(env.stats().await["resource_401"], 50, "no replay may be refused");
}

#[tokio::test]
async fn fifty_concurrent_calls_on_a_token_past_expiry_for_the_proxy_cause_exactly_one_refresh() {
    // The login's token is reported as expiring at once (the API still takes it), so it
    // is past expiry for the proxy before any call starts; the refresh brings the API's
    // usual lifetime. A call that reads the session before the refresh must join the one
    // in flight (or find it done); one that reads it after finds a fresh token. Either
    // way exactly one refresh, whatever the scheduling.
    let env = Env::start().await;
    let browser = env.browser();
    env.set_faults(json!({"expires_in": 0})).await;
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.clear_faults().await;
    let session = browser.get("/session").await.json();
    let expires = session["access_expires_at"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok());
    assert!(
        expires.is_some_and(|at| at <= std::time::SystemTime::now()),
        "the proxy must see the token as expired: {session}"
    );
    assert_eq!(env.refresh_calls().await, 0);
    // A slow token endpoint keeps the refresh in flight while most calls arrive; the
    // outcome does not depend on it.
    env.set_faults(json!({"token_latency_ms": 300})).await;
    fifty_calls(&browser).await;
    assert_eq!(env.refresh_calls().await, 1);
    assert_eq!(env.stats().await["resource_401"], 0, "no call may have used an expired token");
}

#[tokio::test]
async fn an_upstream_401_on_a_token_that_looked_valid_refreshes_once_and_replays() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    env.expire_access_tokens().await;
    let reply = browser
        .send(
            http::Method::POST,
            "/api/debug/echo",
            &[("content-type", "text/plain")],
            Some("replay me".into()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["body_len"], 9, "the replay must carry the same body");
    assert_eq!(env.refresh_calls().await, 1);
    // The rotated tokens keep working.
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
    assert_eq!(env.refresh_calls().await, 1);
}

#[tokio::test]
async fn a_401_that_is_not_about_the_token_goes_back_to_the_browser_without_a_refresh() {
    // The injected 401 names its own error code (`injected_fault`), not `invalid_token`.
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    env.set_faults(json!({"resource_status": 401})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.refresh_calls().await, 0, "no refresh, no replay");
    env.clear_faults().await;
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_rejected_refresh_is_session_expired_and_deletes_the_session() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie();
    env.set_faults(json!({"reject_refresh": true})).await;
    env.expire_access_tokens().await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code().as_deref(), Some("session_expired"));
    assert!(reply.clears_cookie());
    env.clear_faults().await;
    let again = browser.fresh();
    again.set_cookie(cookie);
    let after = again.get("/session").await;
    assert_eq!(after.error_code().as_deref(), Some("session_expired"), "the session must be deleted");
}

#[tokio::test]
async fn token_endpoint_down_is_503_and_the_same_session_works_once_it_is_back() {
    let env = Env::with(Options::default().mock_args(&["--access-ttl", "2"])).await;
    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie();
    env.expire_access_tokens().await;
    for fault in [json!({"token_status": 503}), json!({"token_close": true})] {
        env.set_faults(fault.clone()).await;
        let reply = browser.get("/api/shoppers/me").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{fault}: {}", reply.text());
        assert_eq!(reply.error_code().as_deref(), Some("token_service_unavailable"));
        assert!(reply.set_cookies().is_empty(), "the cookie must be kept");
    }
    env.clear_faults().await;
    assert_eq!(browser.cookie(), cookie);
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["shopper"]["username"], USERNAME);
}

#[tokio::test]
async fn refresh_ahead_uses_the_still_valid_token_when_the_token_endpoint_fails() {
    // 30 s tokens, refreshed 60 s ahead: always due, never expired during the test.
    let env =
        Env::with(Options::default().mock_args(&["--access-ttl", "30"]).set("oauth", "refresh_ahead", "60s"))
            .await;
    let browser = env.browser();
    browser.login().await;
    env.set_faults(json!({"token_status": 502})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn rotated_refresh_tokens_are_used_for_the_next_refresh() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    for round in 1..=3 {
        env.expire_access_tokens().await;
        let reply = browser.get("/api/shoppers/me").await;
        assert_eq!(reply.status, StatusCode::OK, "round {round}: {}", reply.text());
        assert_eq!(env.refresh_calls().await, round);
    }
}

#[tokio::test]
async fn tolerant_token_bodies_and_nested_errors_are_understood() {
    let env = Env::start().await;
    let browser = env.browser();
    env.set_faults(json!({"wrap_token": true, "expires_in_string": true})).await;
    let reply = browser.login().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    env.set_faults(json!({"error_shape": "nested"})).await;
    let bad = browser.post_json("/session/login", json!({"username": USERNAME, "password": "nope"})).await;
    assert_eq!(bad.error_code().as_deref(), Some("invalid_credentials"));
    env.set_faults(json!({"error_shape": "nested", "reject_refresh": true})).await;
    env.expire_access_tokens().await;
    let expired = browser.get("/api/shoppers/me").await;
    assert_eq!(expired.error_code().as_deref(), Some("session_expired"));
}

#[tokio::test]
async fn a_token_revoked_behind_the_proxys_back_ends_in_session_expired() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    env.mock_call(http::Method::POST, "/__mock/revoke", Some(json!({"all": true}))).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code().as_deref(), Some("session_expired"));
}
