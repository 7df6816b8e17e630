//! Session lifetimes and capacity, readiness, and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_full_store_refuses_new_sessions_and_keeps_existing_ones() {
    let env = Env::with(Options::default().set("session", "max_sessions", 2)).await;
    let first = env.browser();
    let second = first.fresh();
    assert_eq!(first.post("/session/guest").await.status, StatusCode::OK);
    assert_eq!(second.get("/api/shoppers/me").await.status, StatusCode::OK);
    let third = first.fresh();
    let refused = third.get("/api/shoppers/me").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code().as_deref(), Some("sessions_full"));
    assert_eq!(third.post("/session/guest").await.error_code().as_deref(), Some("sessions_full"));
    assert_eq!(first.get("/api/shoppers/me").await.status, StatusCode::OK);
    assert_eq!(second.get("/session").await.status, StatusCode::OK);
    assert_eq!(env.stats().await["token_calls"]["anonymous"], 2, "no token is minted when the store is full");
}

#[tokio::test]
async fn an_idle_session_expires() {
    let env = Env::with(Options::default().set("session", "idle_timeout", "2s")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    assert_eq!(browser.get("/session").await.status, StatusCode::OK);
    // Any request would count as activity, so the only way to observe idleness is to let
    // the clock run past the idle timeout without touching the session.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = browser.get("/session").await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.error_code().as_deref(), Some("session_expired"));
    assert!(expired.clears_cookie());
}

#[tokio::test]
async fn activity_keeps_a_session_alive_past_the_idle_timeout() {
    let env = Env::with(Options::default().set("session", "idle_timeout", "2s")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(browser.get("/session").await.status, StatusCode::OK, "expired despite activity");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_absolute_timeout_ends_even_a_busy_session() {
    let env = Env::with(Options::default().set("session", "absolute_timeout", "2s")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let ended = eventually(Duration::from_secs(10), || {
        let b = browser.clone();
        async move { (b.get("/session").await.status == StatusCode::UNAUTHORIZED).then_some(()) }
    })
    .await;
    assert!(ended.is_some(), "the session outlived its absolute timeout");
}

#[tokio::test]
async fn admin_health_and_readiness_answer() {
    let env = Env::start().await;
    let admin = env.proxy.admin.expect("the harness config has an admin listener");
    let browser = env.browser();
    let mut admin_browser = browser.fresh();
    admin_browser.base = format!("http://{admin}");
    assert_eq!(admin_browser.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(admin_browser.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(admin_browser.get("/session").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let mut env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    env.set_faults(json!({"resource_latency_ms": 1500})).await;
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let b = browser.clone();
            tokio::spawn(async move { b.get("/api/shoppers/me").await })
        })
        .collect();
    // Wait until the mock has all five calls in hand, then signal.
    let arrived = eventually(Duration::from_secs(10), || async {
        (env.stats().await["resource_calls"].as_u64().unwrap_or(0) >= 5).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "the slow calls never reached the mock");
    let status = env.proxy.signal_and_wait("TERM", Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    for call in in_flight {
        let reply = call.await.expect("the in-flight call finishes without panicking");
        assert_eq!(reply.status, StatusCode::OK, "an in-flight request was cut off");
    }
}
