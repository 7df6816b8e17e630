//! Hostile input fails closed: CSRF modes, cookie attributes, session fixation, request
//! limits (431, 413, slowloris, idle keep-alive, connection cap), rate limits and the
//! leak guard. Each test fails if its protection is removed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn csrf_origin_mode_needs_an_allowed_origin_or_referer() {
    let env = Env::with(with_env(&[("TOKENGATE_SERVER_CSRF", "origin")])).await;
    let browser = env.browser();
    // X-CSRF alone proves nothing in this mode.
    let header_only = browser.send(Method::POST, "/session/guest", &[("x-csrf", "1")], None).await;
    assert_eq!(header_only.error_code().as_deref(), Some("csrf_required"));
    let neither = browser.send(Method::POST, "/session/guest", &[("x-csrf", "")], None).await;
    assert_eq!(neither.error_code().as_deref(), Some("csrf_required"));
    let foreign = browser
        .send(Method::POST, "/session/guest", &[("x-csrf", ""), ("referer", "https://evil.test/x")], None)
        .await;
    assert_eq!(foreign.error_code().as_deref(), Some("origin_rejected"));
    let by_referer = browser
        .send(Method::POST, "/session/guest", &[("x-csrf", ""), ("referer", "http://shop.test/cart")], None)
        .await;
    assert_eq!(by_referer.status, StatusCode::OK, "{}", by_referer.text());
    let by_origin = browser
        .send(Method::POST, "/session/logout", &[("x-csrf", ""), ("origin", "http://shop.test")], None)
        .await;
    assert_eq!(by_origin.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn host_prefixed_cookies_carry_every_protective_attribute() {
    let env = Env::with(with_env(&[
        ("TOKENGATE_SESSION_COOKIE_NAME", "__Host-tokengate"),
        ("TOKENGATE_SESSION_COOKIE_SECURE", "true"),
        ("TOKENGATE_SESSION_SAME_SITE", "strict"),
    ]))
    .await;
    let reply = env.browser().post("/session/guest").await;
    assert_eq!(reply.status, StatusCode::OK);
    let cookie =
        reply.set_cookies().into_iter().find(|c| c.starts_with("__Host-tokengate=")).unwrap_or_default();
    for attribute in ["HttpOnly", "Secure", "Path=/", "SameSite=Strict", "Max-Age=86400"] {
        assert!(cookie.contains(attribute), "{attribute} missing from {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain"), "{cookie}");
}

#[tokio::test]
async fn a_cookie_the_store_never_issued_never_gets_a_session() {
    let env = Env::start().await;
    let browser = env.browser();
    let chosen = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE";
    browser.set_cookie(Some(chosen.to_string()));
    assert_eq!(browser.get("/session").await.error_code().as_deref(), Some("session_expired"));
    browser.set_cookie(Some(chosen.to_string()));
    let guest = browser.post("/session/guest").await;
    assert_eq!(guest.status, StatusCode::OK);
    assert_ne!(browser.cookie().as_deref(), Some(chosen), "a client-chosen id must never be adopted");
    browser.set_cookie(Some(chosen.to_string()));
    let login = browser.login().await;
    assert_eq!(login.status, StatusCode::OK);
    assert_ne!(browser.cookie().as_deref(), Some(chosen));
}

#[tokio::test]
async fn oversized_headers_are_431_and_chunked_bodies_over_the_limit_are_413() {
    let env = Env::with(Options::default().set("server", "max_body_bytes", 2048)).await;
    let browser = env.browser();
    let big = "x".repeat(64 * 1024);
    let reply = browser.send(Method::GET, "/session", &[("x-big", &big)], None).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    browser.post("/session/guest").await;
    let mut stream = TcpStream::connect(env.proxy.addr).expect("the proxy accepts a connection");
    let cookie = browser.cookie().unwrap_or_default();
    let chunk = "y".repeat(1500);
    let request = format!(
        "POST /api/debug/echo HTTP/1.1\r\nHost: x\r\nX-CSRF: 1\r\nCookie: {COOKIE}={cookie}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    stream.write_all(request.as_bytes()).expect("the proxy reads the request");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    let env = Env::with(Options::default().set("upstream", "request_timeout", "1s")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let mut stream = TcpStream::connect(env.proxy.addr).expect("the proxy accepts a connection");
    let cookie = browser.cookie().unwrap_or_default();
    let head = format!(
        "POST /api/debug/echo HTTP/1.1\r\nHost: x\r\nX-CSRF: 1\r\nCookie: {COOKIE}={cookie}\r\n\
         Content-Length: 100\r\n\r\nonly ten b"
    );
    stream.write_all(head.as_bytes()).expect("the proxy reads the request");
    let started = Instant::now();
    let answer = read_head(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "the session survives");
}

fn read_head(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("a read timeout on the socket");
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).unwrap_or(0);
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

/// Whether the server closed `stream` (a read sees EOF or a reset) within `deadline`.
fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("a read timeout on the socket");
    let start = Instant::now();
    let mut byte = [0u8; 1024];
    while start.elapsed() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_while_normal_traffic_flows() {
    let env = Env::with(with_env(&[("TOKENGATE_SERVER_HEADER_READ_TIMEOUT", "1s")])).await;
    let browser = env.browser();
    let addr = env.proxy.addr;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("the proxy accepts a connection");
        stream.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n").expect("the proxy reads the request");
        let started = Instant::now();
        // Trickle a header byte now and then: it never finishes the head.
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(6) {
            if stream.write_all(b"X").is_err() || closed_within(&mut stream, Duration::from_millis(300)) {
                closed = true;
                break;
            }
        }
        (closed, started.elapsed())
    });
    // Meanwhile, ordinary requests are served.
    for _ in 0..10 {
        assert_eq!(browser.get("/session").await.status, StatusCode::UNAUTHORIZED);
    }
    let (closed, after) = slow.join().expect("the slow client thread finishes without panicking");
    assert!(closed, "the slowloris connection was never closed");
    assert!(after < Duration::from_secs(4), "closed only after {after:?}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let env = Env::with(with_env(&[
        ("TOKENGATE_SERVER_KEEP_ALIVE_TIMEOUT", "1s"),
        ("TOKENGATE_SERVER_HEADER_READ_TIMEOUT", "30s"),
    ]))
    .await;
    let mut stream = TcpStream::connect(env.proxy.addr).expect("the proxy accepts a connection");
    stream.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n").expect("the proxy reads the request");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(closed_within(&mut stream, Duration::from_secs(5)), "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let env = Env::with(with_env(&[("TOKENGATE_SERVER_MAX_CONNECTIONS", "2")])).await;
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(env.proxy.addr).expect("the proxy accepts a connection");
            stream
                .write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("the proxy reads the request");
            assert!(read_head(&mut stream).starts_with("HTTP/1.1 401"));
            stream
        })
        .collect();
    let mut third = TcpStream::connect(env.proxy.addr).expect("the proxy accepts a connection");
    third.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n").expect("the proxy reads the request");
    third.set_read_timeout(Some(Duration::from_millis(700))).expect("a read timeout on the socket");
    let mut buffer = [0u8; 64];
    assert!(third.read(&mut buffer).is_err(), "a third connection was served beyond max_connections = 2");
    held.pop();
    let head = read_head(&mut third);
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "the waiting connection was not served once a slot freed: {head}"
    );
}

#[tokio::test]
async fn ten_thousand_cookieless_requests_mint_at_most_the_configured_number() {
    let env = Env::with(with_env(&[
        ("TOKENGATE_RATE_LIMIT_NEW_SESSIONS_BURST", "20"),
        ("TOKENGATE_RATE_LIMIT_NEW_SESSIONS_PER_MINUTE", "60"),
    ]))
    .await;
    let browser = env.browser();
    let started = Instant::now();
    let workers = (0..50).map(|_| {
        let b = browser.fresh();
        async move {
            let (mut ok, mut limited) = (0u32, 0u32);
            for _ in 0..200 {
                let reply = b.fresh().get("/api/shoppers/me").await;
                match reply.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        assert_eq!(reply.error_code().as_deref(), Some("rate_limited"));
                        assert!(reply.headers.contains_key("retry-after"));
                        limited += 1;
                    }
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
            }
            (ok, limited)
        }
    });
    let results = join_all(workers).await;
    let elapsed = started.elapsed();
    let ok: u32 = results.iter().map(|r| r.0).sum();
    let limited: u32 = results.iter().map(|r| r.1).sum();
    assert_eq!(ok + limited, 10_000);
    // The burst plus one a second of refill (rounded up), and nothing more.
    let allowed = 20 + elapsed.as_secs() + 1;
    let minted = env.stats().await["token_calls"]["anonymous"].as_u64().unwrap_or(u64::MAX);
    assert!(minted <= allowed, "{minted} guest tokens minted, at most {allowed} allowed");
    assert_eq!(u64::from(ok), minted);
    eprintln!("10000 cookieless requests in {elapsed:?}: {ok} served, {limited} limited, {minted} minted");
}

#[tokio::test]
async fn a_burst_of_new_shoppers_behind_one_address_passes_with_the_defaults() {
    let env = Env::start().await;
    let browser = env.browser();
    let replies = join_all((0..50).map(|_| {
        let b = browser.fresh();
        async move { b.get("/api/shoppers/me").await }
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK), "a shopper behind the NAT was refused");
}

#[tokio::test]
async fn trusted_forwarded_for_gives_each_client_its_own_bucket() {
    let env = Env::with(with_env(&[
        ("TOKENGATE_SERVER_TRUSTED_PROXY_DEPTH", "1"),
        ("TOKENGATE_RATE_LIMIT_NEW_SESSIONS_BURST", "2"),
    ]))
    .await;
    let browser = env.browser();
    for _ in 0..2 {
        let reply = browser
            .fresh()
            .send(Method::GET, "/api/shoppers/me", &[("x-forwarded-for", "198.51.100.1")], None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let third = browser
        .fresh()
        .send(Method::GET, "/api/shoppers/me", &[("x-forwarded-for", "198.51.100.1")], None)
        .await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    let other = browser
        .fresh()
        .send(Method::GET, "/api/shoppers/me", &[("x-forwarded-for", "198.51.100.2")], None)
        .await;
    assert_eq!(other.status, StatusCode::OK, "another client behind the same proxy must not be limited");
    let echo = browser
        .fresh()
        .send(Method::GET, "/api/debug/echo", &[("x-forwarded-for", "198.51.100.3")], None)
        .await;
    let forwarded = echoed_headers(&echo).get("x-forwarded-for").and_then(|v| v.as_str().map(str::to_string));
    assert_eq!(forwarded.as_deref(), Some("198.51.100.3, 127.0.0.1"));
}

#[tokio::test]
async fn the_leak_guard_blocks_a_token_echoed_by_the_api() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    env.set_faults(json!({"echo_token": true})).await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.error_code().as_deref(), Some("token_leak_blocked"));
    assert!(env.proxy_log().contains("token_leak_blocked"), "the security event must be logged");
    env.clear_faults().await;
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK, "the session survives");
    // The end-of-test leak check (in Env's Drop) proves nothing reached the browser.
}

#[tokio::test]
async fn large_and_binary_bodies_still_stream_with_the_leak_guard_on() {
    let env = Env::with(Options::default().set("leak_guard", "max_body_bytes", 1024)).await;
    let browser = env.browser();
    let reply = browser.get("/api/debug/bytes?n=500000").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 500_000);
    let body = Bytes::from(vec![b'z'; 300_000]);
    let echo =
        browser.send(Method::PUT, "/api/debug/echo", &[("content-type", "text/plain")], Some(body)).await;
    assert_eq!(echo.json()["body_len"], 300_000);
}

#[tokio::test]
async fn a_cross_site_image_cannot_make_a_browser_mint_a_guest() {
    let env = Env::start().await;
    let browser = env.browser();
    // What a browser sends for <img src="https://shop/api/..."> on another site.
    let reply = browser
        .send(
            Method::GET,
            "/api/shoppers/me",
            &[("sec-fetch-site", "cross-site"), ("sec-fetch-dest", "image")],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code().as_deref(), Some("origin_rejected"));
    assert!(reply.set_cookies().is_empty());
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
    let own = browser.send(Method::GET, "/api/shoppers/me", &[("sec-fetch-site", "same-origin")], None).await;
    assert_eq!(own.status, StatusCode::OK);
}
