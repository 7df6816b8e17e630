//! TLS on both sides: a self-signed upstream trusted through `upstream.ca_file`, an
//! untrusted one refused, and HTTPS (HTTP/2 by ALPN) on the storefront listener.

mod common;

use common::*;
use http::{StatusCode, Version};

#[tokio::test]
async fn a_self_signed_upstream_is_used_through_ca_file() {
    let env = Env::with(Options { mock_tls: true, ..Options::default() }).await;
    assert!(env.mock.url.starts_with("https://"), "{}", env.mock.url);
    let browser = env.browser();
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["shopper"]["id"], "Anonymous");
    assert_eq!(browser.login().await.status, StatusCode::OK);
    assert_eq!(browser.post("/session/logout").await.status, StatusCode::NO_CONTENT);
    assert_eq!(env.stats().await["access_token_delete"], 1);
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_refused() {
    let env =
        Env::with(Options { mock_tls: true, trust_mock_certificate: false, ..Options::default() }).await;
    let browser = env.browser();
    let reply = browser.post("/session/guest").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code().as_deref(), Some("token_service_unavailable"));
    assert_eq!(
        env.stats().await["token_calls"]["total"],
        0,
        "no request may cross an untrusted TLS connection"
    );
}

#[tokio::test]
async fn the_storefront_listener_serves_https_and_http2() {
    let env = Env::with(Options { proxy_tls: true, ..Options::default() }).await;
    let browser = env.browser();
    assert!(browser.base.starts_with("https://"));
    let reply = browser.get("/api/debug/echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let headers = echoed_headers(&reply);
    assert_eq!(headers.get("x-forwarded-proto").and_then(|v| v.as_str()), Some("https"));
    let version = env.raw_version(&format!("{}/session", browser.base)).await;
    assert_eq!(version, Version::HTTP_2, "ALPN should pick HTTP/2");
}
