//! Token refresh: ahead of expiry, single-flight per session, after an upstream 401,
//! and what happens when the token endpoint rejects or fails.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn fifty_concurrent_calls_on_an_expired_session_cause_exactly_one_refresh() {
    // The mock issues 2-second tokens and the proxy refreshes 5 s ahead, so every token
    // is "expired" for the proxy from the start; latency keeps the refresh in flight.
    let env =
        Env::with(Options { mock_args: vec!["--access-ttl".into(), "2".into()], ..Options::default() }).await;
    let browser = env.browser();
    browser.login().await;
    assert_eq!(env.refresh_calls().await, 0);
    env.set_faults(json!({"token_latency_ms": 300})).await;
    let replies = join_all((0..50).map(|_| {
        let b = browser.clone();
        async move { b.get("/api/shoppers/me").await }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(env.refresh_calls().await, 1);
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
async fn a_second_401_after_the_replay_goes_back_to_the_browser() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    env.set_faults(json!({"resource_status": 401})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.refresh_calls().await, 1, "one refresh, one replay, no loop");
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
