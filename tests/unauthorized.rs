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
    // The mock's injected resource status answers `{"errors":{"error":[{"code":"injected_fault"}]}}`:
    // a 401 with an error code that is not `invalid_token`, like `invalid_client`.
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.set_faults(json!({"resource_status": 401})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.json()["errors"]["error"][0]["code"],
        "injected_fault",
        "the API's own body: {}",
        reply.text()
    );
    assert!(!reply.clears_cookie(), "the session is not touched");
    assert_eq!(env.refresh_calls().await, 0);
    env.clear_faults().await;
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_dead_refresh_token_answered_401_ends_the_session_once() {
    // Every token-endpoint call answers 401 with a code that is not `invalid_grant`
    // (`temporarily_unavailable`): the refresh grant is dead all the same.
    let env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.expire_access_tokens().await;
    env.set_faults(json!({"token_status": 401})).await;
    let cookie = browser.cookie();
    let first = browser.get("/api/shoppers/me").await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first.error_code().as_deref(), Some("session_expired"));
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
async fn a_token_query_parameter_never_reaches_the_api() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.get("/api/debug/echo?token=abc&x=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["query"], "x=1");
    let encoded = browser.get("/api/debug/echo?a=%2F&%74oken=abc&tokens=2").await;
    assert_eq!(encoded.json()["query"], "a=%2F&tokens=2", "names are compared decoded, the rest kept");
}
