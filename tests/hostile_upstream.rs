//! Regression tests against a hostile upstream (`common::hostile`): each puts the session's
//! token somewhere in a response that a page could read, and the browser must find it
//! nowhere: not in the status line, a header name or value, the body or the trailers.

mod common;

use common::hostile::{readable, Hostile};
use common::*;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What a page could read of one answer.
struct Seen {
    status: StatusCode,
    reason: Option<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
    trailers: Option<HeaderMap>,
    /// Whether the body ended cleanly (a cut-off one breaks).
    complete: bool,
}

async fn call(env: &Env, case: &str) -> Seen {
    call_with(env, case, false).await
}

/// One call as a browser makes it, over HTTP/1.1 or HTTP/2 (where trailers reach a page).
async fn call_with(env: &Env, case: &str, http2: bool) -> Seen {
    try_call_with(env, case, http2).await.expect("tokengate answers")
}

/// [`call_with`], `None` when the answer broke before its head arrived.
async fn try_call_with(env: &Env, case: &str, http2: bool) -> Option<Seen> {
    let client = Client::builder(TokioExecutor::new()).http2_only(http2).build_http::<Full<bytes::Bytes>>();
    let url = format!("{}/api/hostile/{case}", env.browser().base);
    // `TE: trailers`: a client that says it takes trailers (hyper sends none otherwise).
    let request = http::Request::get(url).header("te", "trailers").body(Full::default()).expect("a request");
    let response = client.request(request).await.ok()?;
    let status = response.status();
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|reason| String::from_utf8_lossy(reason.as_bytes()).to_string());
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let (mut bytes, mut trailers, mut complete) = (Vec::new(), None, true);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => bytes.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    Some(Seen { status, reason, headers, body: bytes.into(), trailers, complete })
}

async fn hostile_env(hostile: &Hostile) -> Env {
    Env::with(Options::default().set("upstream", "base_url", hostile.url.as_str())).await
}

fn assert_no_token(hostile: &Hostile, seen: &Seen, case: &str) {
    let text = readable(seen.reason.as_deref(), &seen.headers, &seen.body, seen.trailers.as_ref());
    let issued = hostile.issued();
    assert!(!issued.is_empty(), "{case}: the hostile upstream minted the session's tokens");
    for token in issued {
        assert!(
            !text.to_ascii_lowercase().contains(&token.to_ascii_lowercase()),
            "{case}: the token reached the browser:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_token_as_the_reason_phrase_never_reaches_the_browser() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    let seen = call(&env, "reason").await;
    assert_eq!(seen.status, StatusCode::OK, "the answer itself goes through");
    assert_eq!(seen.reason, None, "the browser gets the standard reason phrase, not the API's");
    assert_no_token(&hostile, &seen, "reason phrase");
}

#[tokio::test]
async fn a_token_as_a_header_name_is_blocked() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    let seen = call(&env, "header-name").await;
    assert_eq!(seen.status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&seen.body).contains("token_leak_blocked"));
    assert_no_token(&hostile, &seen, "header name");
}

#[tokio::test]
async fn trailers_never_reach_the_browser_over_http2() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    let seen = call_with(&env, "trailer", true).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(&seen.body[..], b"ok", "the body itself is intact");
    assert!(seen.trailers.as_ref().is_none_or(HeaderMap::is_empty), "{:?}", seen.trailers);
    assert_no_token(&hostile, &seen, "trailer");
}

#[tokio::test]
async fn an_upstream_cannot_set_or_clear_the_storefronts_cookies() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    let seen = call(&env, "cookies").await;
    assert_eq!(seen.status, StatusCode::OK);
    for name in ["set-cookie2", "clear-site-data"] {
        assert!(!seen.headers.contains_key(name), "{name} reached the browser");
    }
    let cookies: Vec<_> = seen.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies.len(), 1, "only tokengate's own session cookie: {cookies:?}");
    assert!(cookies[0].to_str().unwrap_or("").starts_with(&format!("{COOKIE}=")));
}

#[tokio::test]
async fn a_token_in_any_body_in_any_form_is_blocked() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    for case in ["octet-stream", "pdf", "two-types", "json-escaped", "percent", "base64"] {
        let seen = call(&env, case).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{case}");
        assert!(String::from_utf8_lossy(&seen.body).contains("token_leak_blocked"), "{case}");
        assert_no_token(&hostile, &seen, case);
    }
}

#[tokio::test]
async fn an_encoding_the_guard_cannot_decode_is_refused() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    for case in ["encoding-none", "gzip", "compress"] {
        let seen = call(&env, case).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{case}");
        assert!(String::from_utf8_lossy(&seen.body).contains("upstream_unavailable"), "{case}");
        assert_no_token(&hostile, &seen, case);
    }
}

#[tokio::test]
async fn a_token_after_bytes_went_out_cuts_the_response_off() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    // A chunked body with the token after 270 KiB, over both protocols, and a declared
    // length of 300 KiB (far above what the guard used to scan) with the token at its end.
    for (case, http2) in [("late", false), ("late", true), ("big-declared", false)] {
        let Some(seen) = try_call_with(&env, case, http2).await else {
            // Over HTTP/2 the API's whole body may be read and searched before the
            // connection writes the stream's HEADERS; the reset then drops them too. The
            // answer is never completed either way (and the cut is counted below).
            assert!(http2, "{case}: over HTTP/1.1 the head goes out with the first bytes");
            continue;
        };
        assert_eq!(seen.status, StatusCode::OK, "{case}: the head went out before the token came");
        assert!(!seen.complete, "{case}: the response is cut off, never completed (http2: {http2})");
        assert!(seen.body.len() >= 16 * 1024, "{case}: the harmless part streamed");
        assert_no_token(&hostile, &seen, case);
    }
    let admin = env.proxy.admin.expect("an admin listener");
    let metrics = env.raw(http::Method::GET, &format!("http://{admin}/metrics"), &[], None).await.text();
    assert!(metrics.contains("tokengate_token_leaks_blocked_total 3"), "each cut is counted:\n{metrics}");
    let log = env.proxy_log();
    assert!(log.contains("token_leak_blocked"), "each cut is logged as a security event");
}

/// One call with an `Accept-Encoding`, its body decoded as the browser would.
async fn call_accepting(env: &Env, path: &str, accept_encoding: &str) -> (Seen, Vec<u8>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let request = http::Request::get(format!("{}{path}", env.browser().base))
        .header("accept-encoding", accept_encoding)
        .header("accept", "application/json")
        .body(Full::default())
        .expect("a request");
    let response = client.request(request).await.expect("tokengate answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let decoded = match headers.get("content-encoding").map(|v| v.as_bytes()) {
        Some(b"gzip") => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                .expect("gzip");
            out
        }
        Some(b"br") => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut brotli::Decompressor::new(&bytes[..], 4096), &mut out)
                .expect("br");
            out
        }
        _ => bytes.to_vec(),
    };
    let seen = Seen { status, reason: None, headers, body: bytes, trailers: None, complete: true };
    (seen, decoded)
}

#[tokio::test]
async fn a_compressed_leak_is_blocked_and_a_clean_compressed_body_reaches_the_browser_as_it_asks() {
    let hostile = Hostile::start().await;
    let env = hostile_env(&hostile).await;
    for encoding in ["gzip", "zstd"] {
        let (leaked, _) = call_accepting(&env, &format!("/api/hostile/{encoding}-leak"), "gzip").await;
        assert_eq!(leaked.status, StatusCode::BAD_GATEWAY, "{encoding} hides nothing from the guard");
        assert_no_token(&hostile, &leaked, encoding);
    }
    let cases = [("gzip", "gzip", Some("gzip")), ("gzip", "br", Some("br")), ("gzip", "identity", None)];
    let zstd = [("zstd", "gzip", Some("gzip")), ("zstd", "br", Some("br")), ("zstd", "zstd", None)];
    for (encoding, accept, expected) in cases.into_iter().chain(zstd) {
        let (seen, decoded) = call_accepting(&env, &format!("/api/hostile/{encoding}-clean"), accept).await;
        assert_eq!(seen.status, StatusCode::OK, "{encoding} for {accept}");
        assert_eq!(
            seen.headers.get("content-encoding").map(|v| v.to_str().unwrap_or("")),
            expected,
            "{encoding} for {accept}"
        );
        let text = String::from_utf8_lossy(&decoded);
        assert!(text.starts_with("{\"ok\":\"clean clean"), "{encoding} for {accept}: {text}");
    }
}

#[tokio::test]
async fn the_browser_gets_gzip_or_br_as_it_asks_and_streaming_survives() {
    let env = Env::with(Options::default().set("upstream", "request_timeout", "20s")).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let path = "/api/debug/bytes?n=20000&type=json";
    for (accept, expected) in [("gzip, deflate, br", "br"), ("gzip", "gzip"), ("br;q=0, gzip;q=0.5", "gzip")]
    {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
        let request = http::Request::get(format!("{}{path}", browser.base))
            .header("cookie", format!("{COOKIE}={}", browser.cookie().expect("a session")))
            .header("accept-encoding", accept)
            .body(Full::default())
            .expect("a request");
        let response = client.request(request).await.expect("an answer");
        assert_eq!(
            response.headers().get("content-encoding").map(|v| v.to_str().unwrap_or("")),
            Some(expected)
        );
        assert!(response
            .headers()
            .get("vary")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("accept-encoding")));
        assert!(response.headers().get("content-length").is_none(), "the length changed");
        let bytes = response.into_body().collect().await.expect("whole").to_bytes();
        let mut decoded = Vec::new();
        if expected == "br" {
            std::io::Read::read_to_end(&mut brotli::Decompressor::new(&bytes[..], 4096), &mut decoded)
                .expect("br");
        } else {
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut decoded)
                .expect("gzip");
        }
        assert_eq!(decoded.len(), 20000, "{accept}: every byte, decoded");
        assert!(bytes.len() < decoded.len(), "{accept}: compressed");
    }
    // A compressed stream still streams: the first chunk arrives while the API stalls.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let request = http::Request::get(format!(
        "{}/api/debug/bytes?n=40000&chunked=1&type=json&stall_ms=15000",
        browser.base
    ))
    .header("cookie", format!("{COOKIE}={}", browser.cookie().expect("a session")))
    .header("accept-encoding", "gzip")
    .body(Full::default())
    .expect("a request");
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
        .await
        .expect("the head arrives before the stall ends")
        .expect("an answer");
    let mut body = response.into_body();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .expect("the first compressed chunk arrives before the stall ends");
    assert!(
        first.is_some_and(|frame| frame.is_ok_and(|frame| frame.data_ref().is_some_and(|d| !d.is_empty())))
    );
}
