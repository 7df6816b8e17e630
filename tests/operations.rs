//! What an SRE relies on: Prometheus metrics that move as traffic flows, structured JSON
//! logs with one line per request and no secrets, and configuration reload on SIGHUP.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// `name{labels}` → value, from the OpenMetrics text.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(env: &Env) -> HashMap<String, f64> {
    let admin = env.proxy.admin.expect("the harness config has an admin listener");
    let reply = env.raw(Method::GET, &format!("http://{admin}/metrics"), &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    parse_metrics(&reply.text())
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_as_a_scenario_runs() {
    let env = Env::start().await;
    let browser = env.browser();
    let before = scrape(&env).await;
    assert_eq!(before.get(r#"tokengate_sessions{kind="guest"}"#), Some(&0.0));

    browser.get("/api/shoppers/me").await; // mint a guest
    browser.post("/api/shoppers/me/carts/active?productId=5104501700").await;
    let mid = scrape(&env).await;
    assert_eq!(mid.get(r#"tokengate_sessions{kind="guest"}"#), Some(&1.0));

    browser.login().await;
    env.expire_access_tokens().await;
    browser.get("/api/shoppers/me").await; // upstream 401, refresh, replay
    browser.get("/nowhere").await; // 404
    let shopper = scrape(&env).await;
    assert_eq!(shopper.get(r#"tokengate_sessions{kind="shopper"}"#), Some(&1.0));
    assert_eq!(shopper.get(r#"tokengate_sessions{kind="guest"}"#), Some(&0.0));
    browser.post("/session/logout").await;
    let after = scrape(&env).await;

    let expectations = [
        (r#"tokengate_requests_total{route="/api/",status_class="2xx"}"#, 3.0),
        (r#"tokengate_requests_total{route="/session/login",status_class="2xx"}"#, 1.0),
        (r#"tokengate_requests_total{route="(not found)",status_class="4xx"}"#, 1.0),
        (r#"tokengate_token_calls_total{op="mint",result="ok"}"#, 1.0),
        (r#"tokengate_token_calls_total{op="login",result="ok"}"#, 1.0),
        (r#"tokengate_token_calls_total{op="refresh",result="ok"}"#, 1.0),
        (r#"tokengate_token_calls_total{op="revoke",result="ok"}"#, 1.0),
        (r#"tokengate_rejected_requests_total{code="not_found"}"#, 1.0),
        (r#"tokengate_upstream_request_duration_seconds_count{route="/api/"}"#, 4.0),
        (r#"tokengate_token_call_duration_seconds_count{op="refresh"}"#, 1.0),
    ];
    for (key, expected) in expectations {
        assert_eq!(delta(&before, &after, key), expected, "{key}");
    }
    assert_eq!(after.get(r#"tokengate_sessions{kind="shopper"}"#), Some(&0.0));
    assert!(after.get("tokengate_open_connections").is_some_and(|v| *v >= 0.0));
    assert!(after.keys().any(|k| k.starts_with("tokengate_build_info{")));
}

#[tokio::test]
async fn failures_show_up_by_result_and_code() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    let before = scrape(&env).await;
    env.set_faults(json!({"token_status": 503})).await;
    env.expire_access_tokens().await;
    browser.get("/api/shoppers/me").await;
    env.set_faults(json!({"reject_refresh": true})).await;
    browser.get("/api/shoppers/me").await;
    browser.post_json("/session/login", json!({"username": USERNAME, "password": "nope"})).await;
    let after = scrape(&env).await;
    for (key, expected) in [
        (r#"tokengate_token_calls_total{op="refresh",result="unavailable"}"#, 1.0),
        (r#"tokengate_token_calls_total{op="refresh",result="rejected"}"#, 1.0),
        (r#"tokengate_token_calls_total{op="login",result="rejected"}"#, 1.0),
        (r#"tokengate_rejected_requests_total{code="token_service_unavailable"}"#, 1.0),
        (r#"tokengate_rejected_requests_total{code="session_expired"}"#, 1.0),
        (r#"tokengate_rejected_requests_total{code="invalid_credentials"}"#, 1.0),
    ] {
        assert_eq!(delta(&before, &after, key), expected, "{key}");
    }
}

#[tokio::test]
async fn the_access_log_is_off_unless_asked_for() {
    let env = Env::with(with_env(&[
        ("TOKENGATE_LOG_FORMAT", "json"),
        ("TOKENGATE_LOG_LEVEL", "info"),
        ("TOKENGATE_LOG_ACCESS", "false"),
    ]))
    .await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let response = browser.get("/api/shoppers/me").await;
    assert_eq!(response.status, StatusCode::OK);
    let log = env.proxy_log();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or(Value::Null)).collect();
    assert!(!lines.is_empty(), "the proxy logs its start at info:\n{log}");
    assert!(!lines.iter().any(|l| l["message"] == "request"), "no line per request by default:\n{log}");
}

#[tokio::test]
async fn json_logs_have_one_line_per_request_and_no_session_id() {
    // Through the environment on purpose: the overrides are part of what is tested.
    let env = Env::with(with_env(&[("TOKENGATE_LOG_FORMAT", "json"), ("TOKENGATE_LOG_LEVEL", "info")])).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    browser.send(Method::GET, "/api/shoppers/me", &[("x-request-id", "trace-me-42")], None).await;
    let log = env.proxy_log();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or(Value::Null)).collect();
    assert!(lines.iter().all(|l| l.is_object()), "every line must be JSON:\n{log}");
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(requests.len(), 2, "{log}");
    let Some(line) = requests.iter().find(|l| l["request_id"] == "trace-me-42") else {
        panic!("no request line with our request id in:\n{log}");
    };
    assert_eq!(line["route"], "/api/");
    assert_eq!(line["status"], 200);
    assert_eq!(line["session"], "guest");
    assert!(line["latency_ms"].is_number());
    let cookie = browser.cookie().unwrap_or_default();
    assert!(!cookie.is_empty() && !log.contains(&cookie));
}

#[tokio::test]
async fn sighup_reloads_routes_and_origins_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let mut env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    assert_eq!(browser.get("/shop/shoppers/me").await.status, StatusCode::NOT_FOUND);
    let foreign = [("origin", "https://new-shop.test")];
    assert_eq!(browser.send(Method::GET, "/session", &foreign, None).await.status, StatusCode::FORBIDDEN);

    let updated = env
        .config()
        .clone()
        .set("server", "allowed_origins", vec!["http://shop.test", "https://new-shop.test"])
        .route("/shop/", "/v1/", "required");
    env.write_config(updated);
    let pid = env.proxy.pid().expect("the proxy is running");
    signal(pid, "HUP");
    let reloaded = eventually(Duration::from_secs(10), || {
        let b = browser.clone();
        async move { (b.get("/shop/shoppers/me").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
    assert!(reloaded.is_some(), "the new route never appeared");
    assert_eq!(browser.send(Method::GET, "/session", &foreign, None).await.status, StatusCode::OK);
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "sessions survive a reload");

    std::fs::write(env.config_path(), "this is [not valid toml").expect("the config file is writable");
    signal(pid, "HUP");
    let logged = eventually(Duration::from_secs(10), || async {
        env.proxy_log().contains("reload refused").then_some(())
    })
    .await;
    assert!(logged.is_some(), "a refused reload must say why");
    assert_eq!(browser.get("/shop/shoppers/me").await.status, StatusCode::OK, "the old config stays");
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args(["-s", name, &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()));
}
