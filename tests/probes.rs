//! What an attacker's probe of the request path found, each pinned by a test: bodies
//! that lost their framing, races on one cookie, headers that claimed an address or
//! rewrote the call, methods that should never carry a Bearer, redirects that climbed
//! out of the site.

mod common;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request body sent as separate frames with no declared length (HTTP/2 then sends no
/// `content-length`, as `curl --http2-prior-knowledge -T -` does).
struct Frames(VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Posts `total` bytes over HTTP/2 (prior knowledge) in 10 KiB frames without a length.
async fn post_h2_without_length(env: &Env, cookie: &str, total: usize) -> (StatusCode, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Frames>();
    let frames: VecDeque<Bytes> = (0..total)
        .step_by(10 * 1024)
        .map(|start| Bytes::from(vec![b'z'; (total - start).min(10 * 1024)]))
        .collect();
    let request = Request::post(format!("http://{}/api/debug/echo", env.proxy.addr))
        .header("cookie", format!("{COOKIE}={cookie}"))
        .header("x-csrf", "1")
        .header("content-type", "application/octet-stream")
        .body(Frames(frames))
        .expect("a valid request");
    let response = client.request(request).await.expect("the proxy answers over HTTP/2");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status();
    let body = response.into_body().collect().await.expect("a whole answer").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn an_http2_body_without_content_length_arrives_whole_and_is_limited() {
    let env = Env::with(Options::default().set("server", "max_body_bytes", 256 * 1024)).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let cookie = browser.cookie().expect("a guest cookie");
    for size in [3 * 1024, 200 * 1024] {
        let (status, echo) = post_h2_without_length(&env, &cookie, size).await;
        assert_eq!(status, StatusCode::OK, "{echo}");
        assert_eq!(echo["body_len"], size, "a {size}-byte body must reach the API whole");
    }
    let (status, answer) = post_h2_without_length(&env, &cookie, 300 * 1024).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "the session survives");
}

#[tokio::test]
async fn a_large_chunked_upload_streams_to_the_api_before_it_is_complete() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let cookie = browser.cookie().expect("a guest cookie");
    let calls_before = env.stats().await["resource_calls"].as_u64().expect("a counter");
    let mut stream = tokio::net::TcpStream::connect(env.proxy.addr).await.expect("connects");
    let first = "a".repeat(100 * 1024);
    let head = format!(
        "POST /api/debug/echo HTTP/1.1\r\nHost: shop.test\r\nX-CSRF: 1\r\nCookie: {COOKIE}={cookie}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
        first.len()
    );
    stream.write_all(head.as_bytes()).await.expect("sends the first part");
    // The API sees the call while the browser is still sending: nothing holds it whole.
    let reached = eventually(Duration::from_secs(10), || async {
        let calls = env.stats().await["resource_calls"].as_u64().unwrap_or(0);
        (calls > calls_before).then_some(())
    })
    .await;
    assert!(reached.is_some(), "the upload was held back until complete");
    let rest = "b".repeat(50 * 1024);
    let tail = format!("{:x}\r\n{rest}\r\n0\r\n\r\n", rest.len());
    stream.write_all(tail.as_bytes()).await.expect("sends the rest");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 8192];
        loop {
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("body_sha256") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the proxy answered");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&format!("\"body_len\":{}", 150 * 1024)), "{text}");
}

#[tokio::test]
async fn two_logins_racing_on_one_guest_cookie_leave_one_session() {
    let env = Env::start().await;
    let first = env.browser();
    first.post("/session/guest").await;
    let second = first.fresh();
    second.set_cookie(first.cookie());
    // Both logins wait at the token endpoint together.
    env.set_faults(json!({"token_latency_ms": 400})).await;
    let (a, b) = tokio::join!(first.login(), second.login());
    env.clear_faults().await;
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED], "{} / {}", a.text(), b.text());
    let (winner, loser) = if a.status == StatusCode::OK { (&first, &b) } else { (&second, &a) };
    assert_eq!(loser.error_code().as_deref(), Some("session_expired"));
    assert!(loser.clears_cookie());
    assert_eq!(winner.get("/session").await.json()["kind"], "shopper");
    // The loser's new tokens are revoked: nobody holds them.
    let revoked = eventually(Duration::from_secs(10), || async {
        (env.stats().await["access_token_delete"].as_u64() == Some(1)).then_some(())
    })
    .await;
    assert!(revoked.is_some(), "{}", env.stats().await);
}

#[tokio::test]
async fn a_logout_racing_a_login_leaves_no_session() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let logging_in = browser.fresh();
    logging_in.set_cookie(browser.cookie());
    env.set_faults(json!({"token_latency_ms": 1000})).await;
    let login = tokio::spawn(async move { logging_in.login().await });
    let at_token_endpoint = eventually(Duration::from_secs(10), || async {
        (env.stats().await["token_calls"]["login"].as_u64() == Some(1)).then_some(())
    })
    .await;
    assert!(at_token_endpoint.is_some());
    let logout = browser.post("/session/logout").await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let login = login.await.expect("the login task ends");
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{}", login.text());
    assert_eq!(login.error_code().as_deref(), Some("session_expired"));
    env.clear_faults().await;
    // The guest's token (at logout) and the login's new one are both revoked.
    let revoked = eventually(Duration::from_secs(10), || async {
        (env.stats().await["access_token_delete"].as_u64() == Some(2)).then_some(())
    })
    .await;
    assert!(revoked.is_some(), "{}", env.stats().await);
    let admin = env.proxy.admin.expect("an admin listener");
    let metrics = env.raw(Method::GET, &format!("http://{admin}/metrics"), &[], None).await.text();
    assert!(metrics.contains("tokengate_sessions{kind=\"shopper\"} 0"), "{metrics}");
    assert!(metrics.contains("tokengate_sessions{kind=\"guest\"} 0"), "{metrics}");
}

#[tokio::test]
async fn address_claims_and_call_rewrites_never_reach_the_api() {
    let env = Env::start().await;
    let browser = env.browser();
    let claims = [
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x-original-url", "/oauth20/token"),
        ("x-rewrite-url", "/oauth20/token"),
        ("x-http-method-override", "DELETE"),
        ("x-forwarded-host", "evil.example"),
        ("host", "evil.example"),
    ];
    let reply = browser.send(Method::GET, "/api/debug/echo", &claims, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = echoed_headers(&reply);
    for (name, _) in claims.iter().filter(|(name, _)| *name != "host" && *name != "x-forwarded-host") {
        assert!(!seen.contains_key(*name), "{name} reached the API: {seen:?}");
    }
    assert_eq!(seen.get("x-forwarded-host").and_then(|v| v.as_str()), Some("shop.test"), "{seen:?}");
    assert_eq!(seen.get("x-forwarded-for").and_then(|v| v.as_str()), Some("127.0.0.1"), "{seen:?}");
}

#[tokio::test]
async fn methods_beyond_the_standard_seven_never_carry_the_bearer() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let before = env.stats().await["resource_calls"].as_u64();
    for method in ["TRACE", "PROPFIND", "MKCOL"] {
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let reply = browser.send(method.clone(), "/api/debug/echo", &[], None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}: {}", reply.text());
        assert_eq!(reply.error_code().as_deref(), Some("method_not_allowed"));
        let allow = reply.headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(allow.contains("GET") && allow.contains("DELETE"), "{allow}");
    }
    assert_eq!(env.stats().await["resource_calls"].as_u64(), before, "nothing reached the API");
    let options = browser.send(Method::OPTIONS, "/api/debug/echo", &[], None).await;
    assert_ne!(options.status, StatusCode::METHOD_NOT_ALLOWED, "OPTIONS is standard");
}

#[tokio::test]
async fn a_route_may_allow_a_method_beyond_the_standard_seven() {
    let mut options = Options::default();
    options.config = options.config.route_with([
        ("prefix", toml::Value::from("/dav/")),
        ("upstream_prefix", toml::Value::from("/v1/debug/")),
        ("extra_methods", toml::Value::Array(vec!["PROPFIND".into()])),
    ]);
    let env = Env::with(options).await;
    let browser = env.browser();
    let propfind = Method::from_bytes(b"PROPFIND").expect("a method");
    let reply = browser.send(propfind.clone(), "/dav/echo", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["method"], "PROPFIND");
    let elsewhere = browser.send(propfind, "/api/debug/echo", &[], None).await;
    assert_eq!(elsewhere.status, StatusCode::METHOD_NOT_ALLOWED, "only the route that names it");
    let trace = browser.send(Method::TRACE, "/dav/echo", &[], None).await;
    assert_eq!(trace.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn return_to_is_normalised_before_it_is_checked() {
    let env = Env::start().await;
    let browser = env.browser();
    for sneaky in ["/..//evil.example", "/%2e%2e//evil.example", "/./..//evil.example/cart"] {
        let query = form_urlencoded::byte_serialize(sneaky.as_bytes()).collect::<String>();
        let reply = browser.get(&format!("/session/authorize?return_to={query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{sneaky}: {}", reply.text());
        assert_eq!(reply.error_code().as_deref(), Some("bad_request"));
        assert!(reply.set_cookies().is_empty(), "no guest was started for a refused login");
    }
}

#[tokio::test]
async fn a_scanned_body_streams_and_is_cut_off_when_it_stalls_for_the_request_timeout() {
    let env = Env::with(Options::default().set("upstream", "request_timeout", "500ms")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    // A JSON body the leak guard scans: the API sends 16 KiB, then stalls for 30 s. The
    // first bytes reach the browser at once; the stall cuts the response off.
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
    let request =
        Request::get(format!("{}/api/debug/bytes?n=40000&chunked=1&type=json&stall_ms=30000", browser.base))
            .header("cookie", format!("{COOKIE}={}", browser.cookie().expect("a session")))
            .header("accept", "application/json")
            .body(http_body_util::Full::default())
            .expect("a request");
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("the head arrives long before the API's stall ends")
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrives before the stall ends")
        .expect("a frame")
        .expect("data");
    assert!(first.data_ref().is_some_and(|data| !data.is_empty()), "the first bytes streamed");
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the cut comes long before the API's stall ends");
    assert!(rest.is_err(), "the body is cut off, never completed");
    assert!(started.elapsed() < Duration::from_secs(25), "bounded by request_timeout, not the API's stall");
    let admin = env.proxy.admin.expect("an admin listener");
    let metrics = env.raw(Method::GET, &format!("http://{admin}/metrics"), &[], None).await.text();
    assert!(metrics.contains("tokengate_response_bodies_stalled_total 1"), "counted:\n{metrics}");
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "the session survives");
}
