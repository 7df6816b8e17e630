//! Upstream 401s read the way the API means them: a 401 about the token is one refresh
//! and one replay; any other 401 goes back unchanged; a dead refresh token ends the
//! session once; a browser's `token` query parameter never reaches the API.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_401_about_the_token_is_one_refresh_and_one_replay() {
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(env.refresh_calls().await, 1);
    assert_eq!(env.stats().await["resource_401"], 1, "the replay is not refused");
}

#[tokio::test]
async fn a_401_about_something_else_goes_back_unchanged_without_a_refresh() {
    // The Commerce API's own 401s that are not about the token: a wrong client id, and a
    // token of another site (`invalid_request`, with a Bearer challenge saying so).
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    for (fault, code) in [("invalid_client", "invalid_client"), ("site_mismatch", "invalid_request")] {
        env.set_faults(json!({"resource_401": fault})).await;
        let reply = browser.get("/api/shoppers/me").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{fault}");
        assert_eq!(
            reply.json()["errors"]["error"][0]["code"],
            code,
            "the API's own body for {fault}: {}",
            reply.text()
        );
        assert!(!reply.clears_cookie(), "the session is not touched by {fault}");
    }
    assert_eq!(env.refresh_calls().await, 0, "no refresh for a 401 that is not about the token");
    let kinds = env.stats().await["resource_401_kinds"].clone();
    assert_eq!(kinds["invalid_client"], 1, "one call each, no replay: {kinds}");
    assert_eq!(kinds["site_mismatch"], 1, "one call each, no replay: {kinds}");
    env.clear_faults().await;
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_401_in_xml_about_something_else_goes_back_unchanged() {
    // The API answers XML unless asked for JSON; the classifier reads that form too.
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.set_faults(json!({"resource_401": "invalid_client"})).await;
    let reply =
        browser.send(http::Method::GET, "/api/shoppers/me", &[("accept", "application/xml")], None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text().contains("<code>invalid_client</code>"), "{}", reply.text());
    assert_eq!(env.refresh_calls().await, 0);
}

#[tokio::test]
async fn a_bearer_challenge_about_the_token_with_no_body_is_one_refresh_and_one_replay() {
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.set_faults(json!({"resource_401": "bearer_invalid_token", "resource_401_count": 1})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(env.refresh_calls().await, 1);
    assert_eq!(env.stats().await["resource_401_kinds"]["bearer_invalid_token"], 1);
}

#[tokio::test]
async fn a_401_about_the_token_again_after_the_replay_goes_back_without_a_loop() {
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.set_faults(json!({"resource_401": "bearer_invalid_token"})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "the second 401 goes back");
    assert_eq!(env.refresh_calls().await, 1, "one refresh, one replay, no loop");
    assert_eq!(env.stats().await["resource_401_kinds"]["bearer_invalid_token"], 2);
}

#[tokio::test]
async fn a_dead_refresh_token_answered_401_ends_the_session_once() {
    // The API answers a dead refresh token with 401 `invalid_token`, not RFC 6749's
    // `invalid_grant`: the refresh grant is dead all the same.
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.mock_call(http::Method::POST, "/__mock/revoke", Some(json!({"all": true}))).await;
    let cookie = browser.cookie();
    let first = browser.get("/api/shoppers/me").await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first.error_code().as_deref(), Some("session_expired"), "{}", first.text());
    assert!(first.clears_cookie());
    assert_eq!(env.refresh_calls().await, 1);
    let dead = browser.fresh();
    for _ in 0..3 {
        // Each answer clears the cookie; a careless browser keeps sending it.
        dead.set_cookie(cookie.clone());
        let again = dead.get("/api/shoppers/me").await;
        assert_eq!(again.error_code().as_deref(), Some("session_expired"));
    }
    assert_eq!(env.refresh_calls().await, 1, "a dead session asks for no more refreshes");
}

#[tokio::test]
async fn a_401_from_the_token_endpoint_with_another_code_also_ends_the_session_once() {
    // Any 401 from the token endpoint but `invalid_client` means the grant is dead.
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    env.set_faults(json!({"token_status": 401})).await;
    let first = browser.get("/api/shoppers/me").await;
    assert_eq!(first.error_code().as_deref(), Some("session_expired"));
    assert_eq!(env.refresh_calls().await, 1);
}

#[tokio::test]
async fn a_token_query_parameter_never_reaches_the_api() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.get("/api/debug/echo?token=abc&x=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["query"], "x=1");
    let encoded = browser.get("/api/debug/echo?a=%2F&%74oken=abc&tokens=2").await;
    assert_eq!(encoded.json()["query"], "a=%2F&tokens=2", "names are compared decoded, the rest kept");
    assert_eq!(env.stats().await["query_token_seen"], 0, "the API never saw a token parameter");
}
