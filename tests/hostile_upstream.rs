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
}

async fn call(env: &Env, case: &str) -> Seen {
    call_with(env, case, false).await
}

/// One call as a browser makes it, over HTTP/1.1 or HTTP/2 (where trailers reach a page).
async fn call_with(env: &Env, case: &str, http2: bool) -> Seen {
    let client = Client::builder(TokioExecutor::new()).http2_only(http2).build_http::<Full<bytes::Bytes>>();
    let url = format!("{}/api/hostile/{case}", env.browser().base);
    // `TE: trailers`: a client that says it takes trailers (hyper sends none otherwise).
    let request = http::Request::get(url).header("te", "trailers").body(Full::default()).expect("a request");
    let response = client.request(request).await.expect("tokengate answers");
    let status = response.status();
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|reason| String::from_utf8_lossy(reason.as_bytes()).to_string());
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.expect("the body arrives");
    let trailers = collected.trailers().cloned();
    Seen { status, reason, headers, body: collected.to_bytes(), trailers }
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
