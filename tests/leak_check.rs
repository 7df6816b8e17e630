//! The suite-wide leak check must itself be able to fail: here a mock fault echoes the
//! caller's token into a response, and the check has to find it.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_leak_check_catches_a_token_in_a_response() {
    // The leak guard would block this echo; switch it off to see that the check notices.
    let mut env = Env::with(Options::default().set("leak_guard", "enabled", false)).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    assert!(env.find_leaks().is_empty());
    env.set_faults(json!({"echo_token": true})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK);
    let leaks = env.find_leaks();
    assert!(leaks.iter().any(|l| l.contains("reached the browser")), "{leaks:?}");
    env.expect_leaks();
}

#[tokio::test]
async fn the_proxy_log_at_trace_level_holds_no_secret_after_a_full_session() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.get("/api/shoppers/me").await;
    browser.post("/api/shoppers/me/carts/active?productId=5104501700").await;
    browser.login().await;
    env.expire_access_tokens().await;
    browser.get("/api/shoppers/me/carts/active").await;
    browser.post("/session/logout").await;
    assert!(env.proxy_log().contains("request"), "the log must not be empty for this check to mean anything");
    assert!(env.issued_tokens().len() >= 4);
    assert_eq!(env.find_leaks(), Vec::<String>::new());
}
