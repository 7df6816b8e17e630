//! The API's hosted login through `/session/authorize` and `/session/callback`: the
//! registered `redirect_uri` (the same for every login), the pending login found through
//! the session cookie and used once, an echoed state checked, the fragment posted back by
//! the callback page, the id rotated, the carried guest token revoked, and `return_to`
//! kept on this site.

mod common;

use std::collections::HashMap;

use common::*;
use http::{Method, StatusCode};

fn query_of(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// Follows the API's hosted login as the browser would, up to the redirect back.
/// Returns the callback path (with its query) and the fragment.
async fn sign_in_at_the_api(env: &mut Env, location: &str, password: &str) -> (String, String) {
    let params = query_of(location);
    if let Some(guest) = params.get("dr_limited_token") {
        // By Digital River's design the guest token rides in the authorize URL.
        env.allow_in_responses(guest);
    }
    let page = env.raw(Method::GET, location, &[], None).await;
    assert_eq!(page.status, StatusCode::OK, "the API's login page: {}", page.text());
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("username", USERNAME).append_pair("password", password);
    for field in ["client_id", "redirect_uri", "response_type", "state", "dr_limited_token"] {
        if let Some(value) = params.get(field) {
            form.append_pair(field, value);
        }
    }
    let login_url = format!("{}/oauth20/authorize/login", env.mock.url);
    let back = env
        .raw(
            Method::POST,
            &login_url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(form.finish()),
        )
        .await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.text());
    let redirect = back.headers["location"].to_str().unwrap_or_default().to_string();
    let (url, fragment) = redirect.split_once('#').unwrap_or((&redirect, ""));
    let path = url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()));
    (path.unwrap_or_default(), fragment.to_string())
}

/// What the callback page's script does: post the fragment back as a plain form, without
/// X-CSRF, with the shop's own Origin (what a browser sends under the page's
/// `Referrer-Policy: same-origin`; under `no-referrer` it would send `Origin: null`).
async fn post_fragment(browser: &Browser, callback_path: &str, fragment: &str) -> Reply {
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("fragment", fragment);
    browser
        .send(
            Method::POST,
            callback_path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-csrf", ""),
                ("origin", "http://shop.test"),
            ],
            Some(body.finish().into()),
        )
        .await
}

#[tokio::test]
async fn hosted_login_carries_the_cart_rotates_the_id_and_revokes_the_guest_token() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let added = browser.post("/api/shoppers/me/carts/active?productId=5104501700&quantity=3").await;
    assert_eq!(added.status, StatusCode::OK);
    let guest_cookie = browser.cookie();

    let start = browser.get("/session/authorize?return_to=/cart").await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location = start.headers["location"].to_str().unwrap_or_default().to_string();
    let params = query_of(&location);
    assert_eq!(params.get("response_type").map(String::as_str), Some("token"));
    assert_eq!(params.get("client_id").map(String::as_str), Some(CLIENT_ID));
    let state = params.get("state").cloned().unwrap_or_default();
    assert!(state.len() >= 43, "state must carry 256 random bits");
    assert_eq!(
        params.get("redirect_uri").map(String::as_str),
        Some("http://shop.test/session/callback"),
        "redirect_uri is exactly the registered one: public_origin + /session/callback, no query"
    );
    let guest_token = params.get("dr_limited_token").cloned().unwrap_or_default();
    assert!(!guest_token.is_empty());

    let (callback, fragment) = sign_in_at_the_api(&mut env, &location, PASSWORD).await;
    assert_eq!(callback, "/session/callback", "the API redirects to the registered URI");
    assert!(query_of(&format!("?{fragment}")).get("state") == Some(&state), "the mock echoes state");
    let page = browser.get(&callback).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .contains("script-src 'sha256-"));
    assert!(page.text().contains("replaceState"), "the page must wipe the fragment from the address bar");
    assert_eq!(
        page.headers["referrer-policy"], "same-origin",
        "no-referrer would make the POST's Origin null"
    );

    let done = post_fragment(&browser, &callback, &fragment).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(done.headers["location"], "/cart");
    assert_ne!(browser.cookie(), guest_cookie, "the session id must change at login");
    let info = browser.get("/session").await;
    assert_eq!(info.json()["authenticated"], true);
    let cart = browser.get("/api/shoppers/me/carts/active").await;
    assert_eq!(cart.json()["cart"]["totalItemsInCart"], "3", "{}", cart.text());

    let old = browser.fresh();
    old.set_cookie(guest_cookie);
    assert_eq!(old.get("/session").await.error_code().as_deref(), Some("session_expired"));
    assert_eq!(env.stats().await["access_token_delete"], 1, "the carried guest token is revoked");

    let replay = post_fragment(&browser, &callback, &fragment).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.error_code().as_deref(), Some("invalid_state"), "a state works once");
}

#[tokio::test]
async fn a_callback_from_another_browser_is_refused() {
    let mut env = Env::start().await;
    let victim = env.browser();
    let start = victim.get("/session/authorize").await;
    let location = start.headers["location"].to_str().unwrap_or_default().to_string();
    let (callback, fragment) = sign_in_at_the_api(&mut env, &location, PASSWORD).await;
    let attacker = victim.fresh();
    attacker.post("/session/guest").await;
    let stolen = post_fragment(&attacker, &callback, &fragment).await;
    assert_eq!(stolen.error_code().as_deref(), Some("invalid_state"));
    assert_eq!(attacker.get("/session").await.json()["authenticated"], false);
}

/// Starts a hosted login in `browser` and signs in at the API; the callback's fragment.
async fn signed_in_fragment(env: &mut Env, browser: &Browser) -> String {
    let start = browser.get("/session/authorize?return_to=/account").await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location = start.headers["location"].to_str().unwrap_or_default().to_string();
    let (callback, fragment) = sign_in_at_the_api(env, &location, PASSWORD).await;
    assert_eq!(callback, "/session/callback");
    fragment
}

/// `fragment` with its `state` replaced (or dropped, for `None`).
fn with_state(fragment: &str, state: Option<&str>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(fragment.as_bytes()) {
        if name != "state" {
            out.append_pair(&name, &value);
        }
    }
    if let Some(state) = state {
        out.append_pair("state", state);
    }
    out.finish()
}

#[tokio::test]
async fn a_wrong_state_is_refused_and_ends_the_pending_login() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let fragment = signed_in_fragment(&mut env, &browser).await;
    let wrong = post_fragment(&browser, "/session/callback", &with_state(&fragment, Some("forged"))).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.error_code().as_deref(), Some("invalid_state"));
    let right = post_fragment(&browser, "/session/callback", &fragment).await;
    assert_eq!(right.error_code().as_deref(), Some("invalid_state"), "the pending login is gone");
    assert_eq!(browser.get("/session").await.json()["authenticated"], false);
}

#[tokio::test]
async fn a_callback_without_state_is_bound_by_the_session_cookie() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let fragment = signed_in_fragment(&mut env, &browser).await;
    let guest_cookie = browser.cookie();
    let done = post_fragment(&browser, "/session/callback", &with_state(&fragment, None)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(done.headers["location"], "/account");
    assert_ne!(browser.cookie(), guest_cookie);
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
}

#[tokio::test]
async fn a_callback_without_a_cookie_or_with_another_browsers_is_refused() {
    let mut env = Env::start().await;
    let victim = env.browser();
    let fragment = signed_in_fragment(&mut env, &victim).await;
    let stateless = with_state(&fragment, None);
    let cookieless = victim.fresh();
    let reply = post_fragment(&cookieless, "/session/callback", &stateless).await;
    assert_eq!(reply.error_code().as_deref(), Some("invalid_state"));
    assert!(cookieless.cookie().is_none(), "no session is made for a callback");
    let other = victim.fresh();
    other.post("/session/guest").await;
    let reply = post_fragment(&other, "/session/callback", &stateless).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("invalid_state"),
        "the other browser has no pending login"
    );
    assert_eq!(other.get("/session").await.json()["authenticated"], false);
    let done = post_fragment(&victim, "/session/callback", &fragment).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "the victim's own login is untouched");
}

#[tokio::test]
async fn unknown_state_and_garbage_callbacks_are_invalid_state() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    for fragment in
        ["access_token=abc&state=never-issued", "", "state=x&state=y", "access_token=a%0Ab&state=s"]
    {
        let reply = post_fragment(&browser, "/session/callback", fragment).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{fragment}");
        assert_eq!(reply.error_code().as_deref(), Some("invalid_state"), "{fragment}");
    }
    let query = browser.get("/session/callback?access_token=abc&state=never-issued").await;
    assert_eq!(query.error_code().as_deref(), Some("invalid_state"));
}

#[tokio::test]
async fn return_to_must_be_a_path_on_this_site() {
    let env = Env::start().await;
    let browser = env.browser();
    for target in ["//evil.test/x", "https://evil.test/", "/\\evil.test", "cart", "/a\nb"] {
        let encoded: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
        let reply = browser.get(&format!("/session/authorize?return_to={encoded}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(reply.error_code().as_deref(), Some("bad_request"));
    }
    assert_eq!(env.stats().await["token_calls"]["total"], 0, "a refused return_to starts nothing");
}

#[tokio::test]
async fn a_failed_login_at_the_api_returns_to_the_shop_with_the_reason() {
    let mut env = Env::start().await;
    let browser = env.browser();
    let start = browser.get("/session/authorize?return_to=/account").await;
    let location = start.headers["location"].to_str().unwrap_or_default().to_string();
    let state = query_of(&location).get("state").cloned().unwrap_or_default();
    if let Some(guest) = query_of(&location).get("dr_limited_token") {
        env.allow_in_responses(guest);
    }
    let callback = format!("/session/callback?state={state}");
    let reply = post_fragment(&browser, &callback, "error=access_denied&error_description=cancelled").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.headers["location"], "/account#login_error=access_denied");
    assert_eq!(browser.get("/session").await.json()["authenticated"], false);
    assert_eq!(env.refresh_calls().await, 1, "the guest token that travelled in the URL is replaced");
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK, "the guest session goes on");
}

#[tokio::test]
async fn pending_logins_are_rate_limited_per_client() {
    let env = Env::with(with_env(&[("TOKENGATE_RATE_LIMIT_NEW_SESSIONS_BURST", "3")])).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    for _ in 0..2 {
        assert_eq!(browser.get("/session/authorize").await.status, StatusCode::FOUND);
    }
    let refused = browser.get("/session/authorize").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code().as_deref(), Some("rate_limited"));
    let mut env = env;
    for token in env.issued_tokens() {
        env.allow_in_responses(&token);
    }
}

#[tokio::test]
async fn without_carry_guest_no_token_is_put_in_the_url() {
    let env = Env::with(with_env(&[("TOKENGATE_OAUTH_AUTHORIZE_CARRY_GUEST", "false")])).await;
    let browser = env.browser();
    let start = browser.get("/session/authorize").await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location = start.headers["location"].to_str().unwrap_or_default().to_string();
    assert!(!query_of(&location).contains_key("dr_limited_token"), "{location}");
    // The end-of-test leak check confirms no token reached the browser at all.
}
