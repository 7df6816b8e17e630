//! SIGHUP reload: every reloadable key, changed in the file, takes effect in the running
//! proxy (routes, `allowed_origins`, `csrf`, `max_body_bytes`, `trusted_proxy_depth`,
//! `demo_page`, `log.level`, `leak_guard.enabled`, `leak_guard.max_body_bytes`), and a
//! change to a key that needs a restart is named in the log and not applied.
//!
//! Each test rewrites the proxy's file, sends SIGHUP by PID and polls the log (with a
//! deadline, never a sleep) until the proxy says it reloaded; the new live settings are
//! swapped in before that line is written, so what follows sees them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use common::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// Rewrites the proxy's config file with `edit` (on the typed config), sends SIGHUP and
/// waits until the proxy logs the reload. Returns what the proxy logged from the signal on.
async fn reload_with(env: &mut Env, edit: impl FnOnce(ProxyToml) -> ProxyToml) -> String {
    let config = edit(env.config().clone());
    env.write_config(config);
    let before = env.proxy_log();
    let reloads = before.matches("config reloaded").count();
    let pid = env.proxy.pid().expect("the proxy is running");
    let status = std::process::Command::new("kill").args(["-s", "HUP", &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -HUP {pid} failed");
    let reloaded = eventually(DEADLINE, || async {
        (env.proxy_log().matches("config reloaded").count() > reloads).then_some(())
    })
    .await;
    let log = env.proxy_log();
    assert!(reloaded.is_some(), "the proxy never logged a reload:\n{}", tail(&log));
    log.get(before.len()..).unwrap_or_default().to_string()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn needs_restart(log: &str) -> bool {
    log.contains("need a restart")
}

#[tokio::test]
async fn a_new_route_answers_and_a_removed_one_is_not_found() {
    let mut env = Env::with(Options::default().route("/old/", "/v1/", "required")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    assert_eq!(browser.get("/old/shoppers/me").await.status, StatusCode::OK);
    assert_eq!(browser.get("/shop/shoppers/me").await.error_code().as_deref(), Some("not_found"));

    let logged =
        reload_with(&mut env, |config| config.remove_route("/old/").route("/shop/", "/v1/", "required"))
            .await;
    assert_eq!(browser.get("/shop/shoppers/me").await.status, StatusCode::OK, "the new route answers");
    let old = browser.get("/old/shoppers/me").await;
    assert_eq!(old.status, StatusCode::NOT_FOUND, "the removed route is gone");
    assert_eq!(old.error_code().as_deref(), Some("not_found"));
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "sessions survive a reload");
    assert!(!needs_restart(&logged), "only live keys changed:\n{logged}");
}

/// `POST /session/guest` from a fresh browser with `headers`.
async fn guest_with(browser: &Browser, headers: &[(&str, &str)]) -> Reply {
    browser.fresh().send(Method::POST, "/session/guest", headers, None).await
}

#[tokio::test]
async fn allowed_origins_change_and_are_compared_as_browsers_send_them() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let ours = [("origin", "http://shop.test")];
    let new = [("origin", "https://new-shop.test")];
    assert_eq!(guest_with(&browser, &ours).await.status, StatusCode::OK);
    assert_eq!(guest_with(&browser, &new).await.error_code().as_deref(), Some("origin_rejected"));

    // Written the way a person might; the proxy keeps it as a browser sends it.
    reload_with(&mut env, |config| {
        config.set("server", "allowed_origins", toml::Value::Array(vec!["HTTPS://New-Shop.TEST:443/".into()]))
    })
    .await;
    assert_eq!(guest_with(&browser, &new).await.status, StatusCode::OK);
    assert_eq!(
        guest_with(&browser, &ours).await.error_code().as_deref(),
        Some("origin_rejected"),
        "the list replaces the default of [public_origin]"
    );
}

#[tokio::test]
async fn the_csrf_mode_switches_between_header_and_origin() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let header_only = [("x-csrf", "1")];
    // An empty value keeps the browser from adding its default X-CSRF.
    let origin_only = [("x-csrf", ""), ("origin", "http://shop.test")];
    let referer_only = [("x-csrf", ""), ("referer", "http://shop.test/cart?step=2")];
    assert_eq!(guest_with(&browser, &header_only).await.status, StatusCode::OK);
    assert_eq!(guest_with(&browser, &origin_only).await.error_code().as_deref(), Some("csrf_required"));

    reload_with(&mut env, |config| config.set("server", "csrf", "origin")).await;
    assert_eq!(guest_with(&browser, &header_only).await.error_code().as_deref(), Some("csrf_required"));
    assert_eq!(guest_with(&browser, &origin_only).await.status, StatusCode::OK);
    assert_eq!(guest_with(&browser, &referer_only).await.status, StatusCode::OK);

    reload_with(&mut env, |config| config.remove("server", "csrf")).await;
    assert_eq!(guest_with(&browser, &header_only).await.status, StatusCode::OK);
    assert_eq!(guest_with(&browser, &origin_only).await.error_code().as_deref(), Some("csrf_required"));
}

/// Sends a chunked `PUT /api/debug/echo` of `len` bytes on a plain socket and returns the
/// response head.
fn put_chunked(env: &Env, cookie: &str, len: usize) -> String {
    let mut stream = TcpStream::connect(env.proxy.addr).expect("the test's own file");
    stream.set_read_timeout(Some(DEADLINE)).expect("the test's own file");
    let chunk = "c".repeat(len / 2);
    let rest = "c".repeat(len - chunk.len());
    let request = format!(
        "PUT /api/debug/echo HTTP/1.1\r\nHost: x\r\nX-CSRF: 1\r\nCookie: {COOKIE}={cookie}\r\n\
         Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunk}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        chunk.len(),
        rest.len()
    );
    stream.write_all(request.as_bytes()).expect("the test's own file");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn a_lower_max_body_bytes_refuses_bodies_that_passed_before() {
    let mut env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let cookie = browser.cookie().unwrap_or_default();
    let put = |len: usize| {
        let browser = browser.clone();
        async move {
            let body = Bytes::from(vec![b'b'; len]);
            browser.send(Method::PUT, "/api/debug/echo", &[("content-type", "text/plain")], Some(body)).await
        }
    };
    let sized = put(4096).await;
    assert_eq!(sized.status, StatusCode::OK);
    assert_eq!(sized.json()["body_len"], 4096);
    let head = put_chunked(&env, &cookie, 4096);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    reload_with(&mut env, |config| config.set("server", "max_body_bytes", 1024)).await;
    let sized = put(4096).await;
    assert_eq!(sized.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", sized.text());
    assert_eq!(sized.error_code().as_deref(), Some("payload_too_large"));
    let head = put_chunked(&env, &cookie, 4096);
    assert!(head.starts_with("HTTP/1.1 413"), "a chunked body is held to the new limit too: {head}");
    assert_eq!(put(512).await.status, StatusCode::OK, "smaller bodies still pass");
    let head = put_chunked(&env, &cookie, 512);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn trusted_proxy_depth_changes_what_the_api_sees_as_x_forwarded_for() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let forwarded_for = || async {
        let echo =
            browser.send(Method::GET, "/api/debug/echo", &[("x-forwarded-for", "198.51.100.7")], None).await;
        assert_eq!(echo.status, StatusCode::OK, "{}", echo.text());
        echoed_headers(&echo).get("x-forwarded-for").and_then(|v| v.as_str().map(str::to_string))
    };
    assert_eq!(forwarded_for().await.as_deref(), Some("127.0.0.1"), "depth 0: the peer only");

    reload_with(&mut env, |config| config.set("server", "trusted_proxy_depth", 1)).await;
    assert_eq!(forwarded_for().await.as_deref(), Some("198.51.100.7, 127.0.0.1"));
}

#[tokio::test]
async fn the_demo_page_comes_and_goes() {
    let mut env = Env::start().await;
    let browser = env.browser();
    assert_eq!(browser.get("/").await.status, StatusCode::NOT_FOUND);

    reload_with(&mut env, |config| config.set("server", "demo_page", true)).await;
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");

    reload_with(&mut env, |config| config.remove("server", "demo_page")).await;
    assert_eq!(browser.get("/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_log_level_changes() {
    let mut env = Env::start().await;
    let browser = env.browser();
    // A request without a session is refused with a debug-level line naming its id.
    let refused_line = |log: &str, id: &str| log.lines().any(|l| l.contains(id) && l.contains("refused"));
    let request_line = |log: &str, id: &str| log.lines().any(|l| l.contains(id) && l.contains("request"));

    reload_with(&mut env, |config| config.set("log", "level", "info")).await;
    let quiet = browser.send(Method::GET, "/session", &[("x-request-id", "reload-quiet-1")], None).await;
    assert_eq!(quiet.error_code().as_deref(), Some("no_session"));
    let log = env.proxy_log();
    assert!(request_line(&log, "reload-quiet-1"), "the info line is written:\n{}", tail(&log));
    assert!(!refused_line(&log, "reload-quiet-1"), "no debug line at info:\n{}", tail(&log));

    reload_with(&mut env, |config| config.set("log", "level", "debug")).await;
    browser.send(Method::GET, "/session", &[("x-request-id", "reload-loud-2")], None).await;
    let logged =
        eventually(DEADLINE, || async { refused_line(&env.proxy_log(), "reload-loud-2").then_some(()) });
    assert!(logged.await.is_some(), "the debug line appears at debug:\n{}", tail(&env.proxy_log()));
}

#[tokio::test]
async fn turning_the_leak_guard_off_and_on_takes_effect() {
    let mut env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    // While the guard is on, the API is asked only for encodings the guard decodes,
    // whatever the browser takes (here: nothing but identity, so the echo stays readable).
    let accept_encoding = |browser_asks: &'static str| {
        let browser = browser.clone();
        async move {
            let headers = [("accept-encoding", browser_asks)];
            let echo = browser.send(Method::GET, "/api/debug/echo", &headers, None).await;
            echoed_headers(&echo).get("accept-encoding").and_then(|v| v.as_str().map(str::to_string))
        }
    };
    assert_eq!(accept_encoding("identity").await.as_deref(), Some("br, gzip, deflate"));
    env.set_faults(json!({"echo_token": true})).await;
    assert_eq!(browser.get("/api/shoppers/me").await.error_code().as_deref(), Some("token_leak_blocked"));

    reload_with(&mut env, |config| config.set("leak_guard", "enabled", false)).await;
    // Off: the echoed token goes through (that is what "off" means), so it is allowed in
    // this test's responses; the log is still checked for it when the test ends.
    for token in env.issued_tokens() {
        env.allow_in_responses(&token);
    }
    let leaked = browser.get("/api/shoppers/me").await;
    assert_eq!(leaked.status, StatusCode::OK, "{}", leaked.text());
    assert!(leaked.json()["leaked_token"].is_string());
    env.clear_faults().await;
    assert_eq!(
        accept_encoding("gzip").await.as_deref(),
        Some("gzip"),
        "the browser's own Accept-Encoding passes"
    );

    reload_with(&mut env, |config| config.set("leak_guard", "enabled", true)).await;
    assert_eq!(accept_encoding("identity").await.as_deref(), Some("br, gzip, deflate"));
    env.set_faults(json!({"echo_token": true})).await;
    assert_eq!(browser.get("/api/shoppers/me").await.error_code().as_deref(), Some("token_leak_blocked"));
    env.clear_faults().await;
}

#[tokio::test]
async fn the_leak_guards_body_limit_is_gone_every_body_is_scanned() {
    // `max_body_bytes` once let larger bodies stream unscanned; the guard now scans every
    // body as it streams, so a reload that sets it tiny changes nothing.
    let mut env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let note = env.issued_tokens().join(" ");
    let echo = || {
        let browser = browser.clone();
        let note = note.clone();
        async move { browser.send(Method::GET, "/api/debug/echo", &[("x-note", &note)], None).await }
    };
    assert_eq!(echo().await.error_code().as_deref(), Some("token_leak_blocked"), "scanned: blocked");
    reload_with(&mut env, |config| config.set("leak_guard", "max_body_bytes", 64)).await;
    assert_eq!(echo().await.error_code().as_deref(), Some("token_leak_blocked"), "still scanned");
}

#[tokio::test]
async fn restart_only_changes_are_reported_and_not_applied() {
    let mut env = Env::start().await;
    // The client secret comes from a file here, so that the test can change it.
    let secret_file = env.dir.path().join("client-secret");
    std::fs::write(&secret_file, CLIENT_SECRET).expect("the test's own file");
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(&secret_file, private).expect("the test's own file");
    }
    let config = env.config().clone().remove("oauth", "client_secret_env").set(
        "oauth",
        "client_secret_file",
        secret_file.display().to_string(),
    );
    env.restart_proxy_with_config(config);
    let browser = env.browser();
    assert_eq!(browser.post("/session/guest").await.status, StatusCode::OK);

    // A new secret in the file: noticed (secrets compare by value), named, not applied.
    let rotated = "rotated-secret-7d1e0b";
    std::fs::write(&secret_file, rotated).expect("the test's own file");
    let logged = reload_with(&mut env, |config| config).await;
    let warning = logged.lines().find(|line| line.contains("need a restart")).unwrap_or_default();
    assert!(warning.contains("\"oauth\""), "the oauth section must be named:\n{logged}");
    assert!(!warning.contains("\"server\"") && !warning.contains("\"session\""), "{warning}");
    assert_eq!(
        browser.fresh().post("/session/guest").await.status,
        StatusCode::OK,
        "the token endpoint still gets the secret the proxy started with"
    );
    assert!(!env.proxy_log().contains(rotated), "a secret is never logged");

    // A new client_id and a new route: the route is applied, the client_id is not.
    let logged = reload_with(&mut env, |config| {
        config.set("oauth", "client_id", "another-api-key").route("/shop/", "/v1/", "required")
    })
    .await;
    let warning = logged.lines().find(|line| line.contains("need a restart")).unwrap_or_default();
    assert!(warning.contains("\"oauth\""), "{logged}");
    assert_eq!(browser.get("/shop/shoppers/me").await.status, StatusCode::OK, "the live part is applied");
    assert_eq!(
        browser.fresh().post("/session/guest").await.status,
        StatusCode::OK,
        "the mock knows only the client id the proxy started with"
    );
}

/// The `/metrics` line `key`'s value, 0 when absent.
async fn metric(env: &Env, key: &str) -> f64 {
    let admin = env.proxy.admin.expect("the harness config has an admin listener");
    let reply = env.raw(Method::GET, &format!("http://{admin}/metrics"), &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(key).and_then(|value| value.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_new_routes_calls_are_counted_under_its_own_label() {
    // Route metrics are attached to each route as the configuration is taken, at start
    // and at every reload: a route a reload adds must not be counted as `(other)`.
    let mut env = Env::with(Options::default()).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let requests = r#"tokengate_requests_total{route="/shop/",status_class="2xx"}"#;
    let upstream = r#"tokengate_upstream_request_duration_seconds_count{route="/shop/"}"#;
    reload_with(&mut env, |config| config.route("/shop/", "/v1/", "required")).await;
    for _ in 0..3 {
        assert_eq!(browser.get("/shop/shoppers/me").await.status, StatusCode::OK);
    }
    assert_eq!(metric(&env, requests).await, 3.0, "counted under the new route's label");
    assert_eq!(metric(&env, upstream).await, 3.0, "its API calls timed under its label");
    let other = r#"tokengate_upstream_request_duration_seconds_count{route="(other)"}"#;
    assert_eq!(metric(&env, other).await, 0.0, "nothing falls to (other)");
}
