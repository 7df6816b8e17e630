//! Forwarding rules: token injection, header hygiene, lazy guests, routes, upstream
//! failures and streaming.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn first_request_without_cookie_mints_one_guest_and_sets_the_cookie() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["shopper"]["id"], "Anonymous");
    assert!(browser.cookie().is_some(), "the minted guest session's cookie must come back");
    let second = browser.get("/api/shoppers/me").await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.set_cookies().is_empty());
    assert_eq!(env.stats().await["token_calls"]["anonymous"], 1);
}

#[tokio::test]
async fn concurrent_cookieless_requests_each_mint_at_most_one_guest_and_none_fails() {
    let env = Env::start().await;
    let browser = env.browser();
    let calls = (0..25).map(|_| {
        let b = browser.fresh();
        async move { b.get("/api/shoppers/me").await }
    });
    let replies = join_all(calls).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.set_cookies().len(), 1);
    }
    assert_eq!(env.stats().await["token_calls"]["anonymous"], 25);
}

#[tokio::test]
async fn the_token_is_injected_and_browser_credentials_never_go_upstream() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let reply = browser
        .send(
            Method::GET,
            "/api/debug/echo?x=1",
            &[
                ("authorization", "Bearer from-the-browser"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("x-forwarded-for", "6.6.6.6"),
                ("accept", "application/json"),
            ],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["path"], "/v1/debug/echo");
    assert_eq!(body["query"], "x=1");
    let headers = echoed_headers(&reply);
    assert_eq!(headers.get("authorization").and_then(|v| v.as_str()), Some("bearer <valid>"));
    assert!(!headers.contains_key("cookie"), "cookie forwarded: {headers:?}");
    assert!(!headers.contains_key("x-hop"));
    assert!(!headers.contains_key("x-csrf"));
    assert_eq!(headers.get("x-forwarded-for").and_then(|v| v.as_str()), Some("127.0.0.1"));
    assert_eq!(headers.get("x-forwarded-proto").and_then(|v| v.as_str()), Some("http"));
    assert!(headers.contains_key("x-forwarded-host"));
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(headers.get("accept").and_then(|v| v.as_str()), Some("application/json"));
}

#[tokio::test]
async fn upstream_set_cookie_is_dropped() {
    let env = Env::start().await;
    let reply = env.browser().get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK);
    let cookies = reply.set_cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].starts_with(&format!("{COOKIE}=")));
}

#[tokio::test]
async fn oauth_paths_are_never_forwarded() {
    let env = Env::start().await;
    let browser = env.browser();
    for (method, path) in [
        (Method::POST, "/oauth20/token"),
        (Method::GET, "/oauth20/access-tokens"),
        (Method::GET, "/api/../oauth20/token"),
        (Method::GET, "/api/%2e%2e/oauth20/token"),
    ] {
        let reply = browser.send(method, path, &[], None).await;
        assert!(matches!(reply.status.as_u16(), 400 | 404), "{path}: {}", reply.status);
        assert!(matches!(reply.error_code().as_deref(), Some("not_found" | "bad_request")));
    }
    let stats = env.stats().await;
    assert_eq!(stats["token_calls"]["total"], 0);
    assert_eq!(stats["access_token_get"], 0);
}

#[tokio::test]
async fn session_none_routes_send_no_token_and_mint_nothing() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.get("/api/public/echo").await;
    // The mock's resources need a token, so an unauthenticated call is its 401.
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(browser.cookie().is_none());
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
}

#[tokio::test]
async fn session_optional_routes_use_a_session_when_there_is_one() {
    let env = Env::start().await;
    let browser = env.browser();
    let anonymous = browser.get("/api/maybe/echo").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
    browser.post("/session/guest").await;
    let with_session = browser.get("/api/maybe/echo").await;
    assert_eq!(with_session.status, StatusCode::OK);
    assert_eq!(with_session.json()["token"], "guest");
}

#[tokio::test]
async fn guest_off_without_cookie_is_no_session() {
    let env = Env::with(Options::default().set("session", "guest", "off")).await;
    let reply = env.browser().get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code().as_deref(), Some("no_session"));
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
}

#[tokio::test]
async fn request_bodies_are_forwarded_intact_small_and_large() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    for size in [10usize, 64 * 1024, 3 * 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let expected = hex(&Sha256::digest(&body));
        let reply = browser
            .send(
                Method::PUT,
                "/api/debug/echo",
                &[("content-type", "application/octet-stream")],
                Some(Bytes::from(body)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "size {size}: {}", reply.text());
        assert_eq!(reply.json()["body_len"], size as u64);
        assert_eq!(reply.json()["body_sha256"], expected.as_str());
    }
}

#[tokio::test]
async fn large_responses_stream_back_intact() {
    let env = Env::start().await;
    let browser = env.browser();
    let n = 20 * 1024 * 1024;
    let reply = browser.get(&format!("/api/debug/bytes?n={n}&chunked=1")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), n);
    assert!(reply.body.iter().all(|b| *b == b'a'));
}

#[tokio::test]
async fn oversized_bodies_are_413_and_the_session_is_untouched() {
    let env = Env::with(Options::default().set("server", "max_body_bytes", 1024)).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let reply = browser.send(Method::POST, "/api/debug/echo", &[], Some(Bytes::from(vec![b'x'; 4096]))).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code().as_deref(), Some("payload_too_large"));
    assert_eq!(browser.get("/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn upstream_down_is_502_and_the_session_survives() {
    let mut env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    env.stop_mock();
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code().as_deref(), Some("upstream_unavailable"));
    assert_eq!(browser.get("/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let env = Env::with(Options::default().set("upstream", "request_timeout", "300ms")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    env.set_faults(json!({"resource_latency_ms": 2000})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code().as_deref(), Some("upstream_timeout"));
    env.clear_faults().await;
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
}

/// The h1 client keeps one sleep per connection for its deadlines: a deadline of an
/// earlier call that passed while the connection was idle must not cut the next call.
#[tokio::test]
async fn a_slow_answer_in_time_on_a_reused_connection_is_not_cut() {
    let env = Env::with(Options::default().set("upstream", "request_timeout", "600ms")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
    // Not synchronisation: the first call's deadline must be in the past.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    env.set_faults(json!({"resource_latency_ms": 300})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    env.set_faults(json!({"resource_latency_ms": 1500})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.error_code().as_deref(), Some("upstream_timeout"));
    env.clear_faults().await;
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let reply = browser.post("/api/shoppers/me/carts/active?productId=999").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["errors"]["error"].is_array(), "{}", reply.text());
    env.set_faults(json!({"resource_status": 500})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(browser.get("/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let env = Env::start().await;
    let reply = env.browser().get("/elsewhere").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code().as_deref(), Some("not_found"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
