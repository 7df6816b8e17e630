//! `server.cors = true`: a storefront on another origin (`https://www.shop.example`) calling
//! tokengate with credentialed `fetch`. Preflights from an allowed origin are answered by
//! tokengate alone (no session, no API call: the mock's counters say so), every answer to
//! that origin carries the grant (tokengate's own errors too), other origins get none, the
//! API's own `Access-Control-*` headers never get through, CORS off sends no CORS header
//! at all, and a SIGHUP turns it on and changes its origins.

mod common;

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use common::*;

const STOREFRONT: &str = "https://www.shop.example";
const OTHER: &str = "https://evil.example";
const DEADLINE: Duration = Duration::from_secs(10);

fn cors_on() -> Options {
    Options::default().set("server", "cors", true).set("server", "allowed_origins", vec![STOREFRONT])
}

/// A browser's preflight for `method` to `path` from `origin`: no cookie (browsers never
/// send one on a preflight), no `X-CSRF`.
async fn preflight(browser: &Browser, path: &str, origin: &str, method: &str) -> Reply {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", "content-type,x-csrf"),
        ("x-csrf", ""),
        ("cookie", ""),
    ];
    browser.send(Method::OPTIONS, path, &headers, None).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|value| value.to_str().ok())
}

fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
}

/// Whether the reply grants `origin` credentialed access, exactly as the contract says.
fn assert_granted(reply: &Reply, origin: &str, what: &str) {
    assert_eq!(all(&reply.headers, "access-control-allow-origin"), [origin], "{what}: {:?}", reply.headers);
    assert_eq!(header(reply, "access-control-allow-credentials"), Some("true"), "{what}");
    assert!(varies_by_origin(reply), "{what}: no Vary: Origin in {:?}", reply.headers);
    let exposed = header(reply, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("x-request-id"), "{what}: exposes {exposed:?}");
}

fn assert_no_grant(reply: &Reply, what: &str) {
    let granted: Vec<_> =
        reply.headers.keys().filter(|name| name.as_str().starts_with("access-control-")).collect();
    assert!(granted.is_empty(), "{what}: {granted:?}");
}

fn varies_by_origin(reply: &Reply) -> bool {
    all(&reply.headers, "vary")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

/// The mock's token and resource counters (what a preflight must never move).
async fn api_calls(env: &Env) -> (Value, Value) {
    let stats = env.stats().await;
    (stats["token_calls"]["total"].clone(), stats["resource_calls"].clone())
}

#[tokio::test]
async fn a_preflight_from_the_storefront_gets_exactly_the_grant_and_touches_nothing() {
    let env = Env::with(cors_on()).await;
    let browser = env.browser();
    let before = api_calls(&env).await;
    for (path, method) in [
        ("/api/shoppers/me/carts/active", "POST"),
        ("/session/guest", "POST"),
        ("/session/login", "POST"),
        ("/session", "GET"),
        ("/api/shoppers/me", "DELETE"),
    ] {
        let reply = preflight(&browser, path, STOREFRONT, method).await;
        let what = format!("preflight of {method} {path}");
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{what}: {}", reply.text());
        assert_granted(&reply, STOREFRONT, &what);
        assert_eq!(
            header(&reply, "access-control-allow-methods"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE")
        );
        let allowed = header(&reply, "access-control-allow-headers").unwrap_or_default();
        for needed in ["x-csrf", "content-type"] {
            assert!(allowed.split(", ").any(|h| h == needed), "{what}: allows {allowed:?}");
        }
        assert!(!allowed.contains('*') && !allowed.contains("authorization"), "{what}: allows {allowed:?}");
        assert_eq!(header(&reply, "access-control-max-age"), Some("600"));
        assert!(reply.set_cookies().is_empty(), "{what} started a session");
        assert!(reply.body.is_empty(), "{what}");
    }
    assert_eq!(api_calls(&env).await, before, "a preflight reached the API");
    assert_eq!(browser.cookie(), None);
}

#[tokio::test]
async fn a_preflight_from_another_origin_gets_no_grant() {
    let env = Env::with(cors_on()).await;
    let browser = env.browser();
    let before = api_calls(&env).await;
    for origin in [OTHER, "null", "https://www.shop.example.evil.test", "http://www.shop.example"] {
        let reply = preflight(&browser, "/api/shoppers/me/carts/active", origin, "POST").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(reply.error_code().as_deref(), Some("origin_rejected"), "{origin}");
        assert_no_grant(&reply, origin);
        assert!(varies_by_origin(&reply), "{origin}: a cache must keep answers per origin");
        assert!(reply.set_cookies().is_empty());
    }
    assert_eq!(api_calls(&env).await, before);
    // The storefront's own calls from a foreign origin get no grant either.
    let reply = browser.send(Method::GET, "/api/shoppers/me", &[("origin", OTHER)], None).await;
    assert_eq!(reply.error_code().as_deref(), Some("origin_rejected"));
    assert_no_grant(&reply, "GET from another origin");
}

#[tokio::test]
async fn the_storefronts_credentialed_calls_carry_the_grant() {
    let env = Env::with(cors_on()).await;
    let browser = env.browser();
    let from = [("origin", STOREFRONT)];
    let guest = browser.send(Method::POST, "/session/guest", &from, None).await;
    assert_eq!(guest.status, StatusCode::OK, "{}", guest.text());
    assert_granted(&guest, STOREFRONT, "POST /session/guest");
    assert!(browser.cookie().is_some(), "the guest got its cookie");

    let add = browser
        .send(Method::POST, "/api/shoppers/me/carts/active?productId=5104501700&quantity=2", &from, None)
        .await;
    assert_eq!(add.status, StatusCode::OK, "{}", add.text());
    assert_granted(&add, STOREFRONT, "POST to the cart");
    let cart = browser.send(Method::GET, "/api/shoppers/me/carts/active", &from, None).await;
    assert_eq!(cart.status, StatusCode::OK);
    assert_granted(&cart, STOREFRONT, "GET the cart");
    assert_eq!(cart.json()["cart"]["totalItemsInCart"], "2", "{}", cart.text());

    let session = browser.send(Method::GET, "/session", &from, None).await;
    assert_granted(&session, STOREFRONT, "GET /session");
    let logout = browser.send(Method::POST, "/session/logout", &from, None).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_granted(&logout, STOREFRONT, "POST /session/logout");

    // Without Origin (a same-origin GET, or a server): no grant, but the answer still varies.
    let plain = browser.fresh().get("/session").await;
    assert_no_grant(&plain, "GET without Origin");
    assert!(varies_by_origin(&plain));
}

#[tokio::test]
async fn tokengates_own_errors_carry_the_grant_so_the_page_can_read_them() {
    let env = Env::with(
        cors_on().set("server", "max_body_bytes", 1024).set("rate_limit", "new_sessions_burst", 1).set(
            "rate_limit",
            "new_sessions_per_minute",
            1,
        ),
    )
    .await;
    let browser = env.browser();
    let from = [("origin", STOREFRONT)];
    let expect = |reply: Reply, status: StatusCode, code: &str| {
        assert_eq!(reply.status, status, "{code}: {}", reply.text());
        assert_eq!(reply.error_code().as_deref(), Some(code));
        assert_granted(&reply, STOREFRONT, code);
        reply
    };
    expect(browser.send(Method::GET, "/session", &from, None).await, StatusCode::UNAUTHORIZED, "no_session");
    let no_csrf = [("origin", STOREFRONT), ("x-csrf", "")];
    expect(
        browser.send(Method::POST, "/session/guest", &no_csrf, None).await,
        StatusCode::FORBIDDEN,
        "csrf_required",
    );
    expect(
        browser.send(Method::POST, "/oauth20/token", &from, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let unknown = [("origin", STOREFRONT), ("cookie", "tg=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")];
    let expired = browser.send(Method::GET, "/api/shoppers/me", &unknown, None).await;
    expect(expired, StatusCode::UNAUTHORIZED, "session_expired");
    let large = Some(bytes::Bytes::from(vec![b'x'; 4096]));
    let with_length = [("origin", STOREFRONT), ("content-type", "application/json")];
    expect(
        browser.fresh().send(Method::POST, "/api/public/echo", &with_length, large).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    env.set_faults(json!({"token_status": 503})).await;
    expect(
        browser.fresh().send(Method::POST, "/session/guest", &from, None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "token_service_unavailable",
    );
    env.clear_faults().await;
    // The burst of one was spent on the refused guest above; the next one waits.
    let limited = expect(
        browser.fresh().send(Method::POST, "/session/guest", &from, None).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    let exposed = header(&limited, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("retry-after"), "a page must be able to read Retry-After: {exposed:?}");
}

#[tokio::test]
async fn the_apis_own_cors_headers_never_reach_the_browser() {
    let env = Env::with(cors_on()).await;
    env.set_faults(json!({"resource_cors": true})).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    // The fault is really on: the API grants `*` to anyone.
    let direct =
        env.raw(Method::GET, &format!("{}/v1/shoppers/me", env.mock.url), &[("origin", OTHER)], None).await;
    assert_eq!(header(&direct, "access-control-allow-origin"), Some("*"));

    let reply = browser.send(Method::GET, "/api/shoppers/me", &[("origin", STOREFRONT)], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_granted(&reply, STOREFRONT, "a forwarded answer");
    assert_eq!(header(&reply, "access-control-expose-headers"), Some("x-request-id, retry-after"));
    // The API's own error answers too.
    env.set_faults(json!({"resource_cors": true, "resource_status": 500})).await;
    let failed = browser.send(Method::GET, "/api/shoppers/me", &[("origin", STOREFRONT)], None).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_granted(&failed, STOREFRONT, "a forwarded API error");
    env.set_faults(json!({"resource_cors": true})).await;
    let same_origin = browser.get("/api/shoppers/me").await;
    assert_eq!(same_origin.status, StatusCode::OK);
    assert_no_grant(&same_origin, "a forwarded answer without Origin");
}

#[tokio::test]
async fn cors_off_sends_no_cors_header_and_options_is_forwarded_as_before() {
    let env = Env::start().await;
    env.set_faults(json!({"resource_cors": true})).await;
    let browser = env.browser();
    // The harness's public_origin is the only allowed origin: a same-origin page.
    let ours = "http://shop.test";
    let forwarded = preflight(&browser, "/api/debug/echo", ours, "POST").await;
    assert_eq!(forwarded.status, StatusCode::OK, "OPTIONS goes to the API as before: {}", forwarded.text());
    assert_eq!(forwarded.json()["method"], "OPTIONS", "{}", forwarded.text());
    assert_no_grant(&forwarded, "a forwarded OPTIONS with CORS off");
    assert!(!varies_by_origin(&forwarded));
    let foreign = preflight(&browser, "/api/debug/echo", STOREFRONT, "POST").await;
    assert_eq!(foreign.error_code().as_deref(), Some("origin_rejected"));
    assert_no_grant(&foreign, "another origin with CORS off");
    let guest = browser.send(Method::POST, "/session/guest", &[("origin", ours)], None).await;
    assert_eq!(guest.status, StatusCode::OK);
    assert_no_grant(&guest, "a call from the allowed origin with CORS off");
    assert!(!varies_by_origin(&guest));
    let api = browser.send(Method::GET, "/api/shoppers/me", &[("origin", ours)], None).await;
    assert_eq!(api.status, StatusCode::OK);
    assert_no_grant(&api, "an API answer that had its own grant, CORS off");
}

#[tokio::test]
async fn an_allowed_storefront_on_another_site_passes_fetch_metadata_only_with_cors_on() {
    let cross_site = [("origin", STOREFRONT), ("sec-fetch-site", "cross-site")];
    let off = Env::with(Options::default().set("server", "allowed_origins", vec![STOREFRONT])).await;
    let refused = off.browser().send(Method::POST, "/session/guest", &cross_site, None).await;
    assert_eq!(refused.error_code().as_deref(), Some("origin_rejected"));

    let on = Env::with(cors_on()).await;
    let browser = on.browser();
    let guest = browser.send(Method::POST, "/session/guest", &cross_site, None).await;
    assert_eq!(guest.status, StatusCode::OK, "{}", guest.text());
    assert_granted(&guest, STOREFRONT, "a cross-site call from the allowed storefront");
    // Without Origin (an <img>, a link) a cross-site request is still refused.
    let image = browser
        .fresh()
        .send(Method::GET, "/api/shoppers/me", &[("sec-fetch-site", "cross-site")], None)
        .await;
    assert_eq!(image.error_code().as_deref(), Some("origin_rejected"));
    let forged = [("origin", OTHER), ("sec-fetch-site", "cross-site")];
    let other = browser.fresh().send(Method::POST, "/session/guest", &forged, None).await;
    assert_eq!(other.error_code().as_deref(), Some("origin_rejected"));
    assert_no_grant(&other, "another site");
}

/// Rewrites the proxy's config, sends SIGHUP by PID and waits (polling the log, with a
/// deadline) until the proxy says it reloaded.
async fn reload_with(env: &mut Env, edit: impl FnOnce(ProxyToml) -> ProxyToml) {
    let config = edit(env.config().clone());
    env.write_config(config);
    let reloads = env.proxy_log().matches("config reloaded").count();
    let pid = env.proxy.pid().expect("the proxy is running");
    let status = std::process::Command::new("kill").args(["-s", "HUP", &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -HUP {pid} failed");
    let reloaded = eventually(DEADLINE, || async {
        (env.proxy_log().matches("config reloaded").count() > reloads).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "the proxy never logged a reload");
}

#[tokio::test]
async fn a_reload_turns_cors_on_changes_its_origins_and_turns_it_off() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let shop = "https://shop2.example";
    let ask = |origin: &'static str| {
        let browser = browser.clone();
        async move { preflight(&browser, "/session/guest", origin, "POST").await }
    };
    assert_eq!(ask(STOREFRONT).await.error_code().as_deref(), Some("origin_rejected"));

    reload_with(&mut env, |config| {
        config.set("server", "cors", true).set("server", "allowed_origins", vec![STOREFRONT])
    })
    .await;
    let on = ask(STOREFRONT).await;
    assert_eq!(on.status, StatusCode::NO_CONTENT);
    assert_granted(&on, STOREFRONT, "after turning CORS on");

    reload_with(&mut env, |config| config.set("server", "allowed_origins", vec![shop])).await;
    let removed = ask(STOREFRONT).await;
    assert_eq!(removed.error_code().as_deref(), Some("origin_rejected"));
    assert_no_grant(&removed, "a removed origin");
    let added = ask(shop).await;
    assert_eq!(added.status, StatusCode::NO_CONTENT);
    assert_granted(&added, shop, "an added origin");

    reload_with(&mut env, |config| config.remove("server", "cors")).await;
    let off = browser.send(Method::POST, "/session/guest", &[("origin", shop)], None).await;
    assert_eq!(off.status, StatusCode::OK);
    assert_no_grant(&off, "after turning CORS off");
    assert!(!varies_by_origin(&off));
}
