//! The `/session*` endpoints, rule by rule, against the real proxy and mock.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn get_session_without_cookie_is_no_session_and_creates_nothing() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.get("/session").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code().as_deref(), Some("no_session"));
    assert!(reply.set_cookies().is_empty());
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
}

#[tokio::test]
async fn guest_session_sets_an_httponly_cookie_and_reports_times() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.post("/session/guest").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let cookie = reply.set_cookies().into_iter().next().unwrap_or_default();
    assert!(cookie.starts_with(&format!("{COOKIE}=")), "{cookie}");
    for attribute in ["HttpOnly", "Path=/", "SameSite=Lax", "Max-Age="] {
        assert!(cookie.contains(attribute), "{attribute} missing in {cookie}");
    }
    let body = reply.json();
    assert_eq!(body["authenticated"], false);
    assert!(body["access_expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(body["session_expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(env.stats().await["token_calls"]["anonymous"], 1);

    let info = browser.get("/session").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json()["authenticated"], false);
}

#[tokio::test]
async fn session_info_counts_refreshes_and_describes_the_cookie_without_its_value() {
    let env = Env::start().await;
    let browser = env.browser();
    let guest = browser.post("/session/guest").await;
    let set_cookie = guest.set_cookies().into_iter().next().unwrap_or_default();
    let body = guest.json();
    assert_eq!(body["refreshes"], 0, "{body}");
    let cookie = &body["cookie"];
    assert_eq!(cookie["name"], COOKIE);
    assert_eq!(cookie["http_only"], true);
    assert!(set_cookie.contains("; HttpOnly"), "{set_cookie}");
    assert!(
        set_cookie.contains(&format!("; Path={};", text_of(&cookie["path"]))),
        "{cookie} vs {set_cookie}"
    );
    assert!(set_cookie.contains(&format!("; SameSite={}", text_of(&cookie["same_site"]))), "{set_cookie}");
    assert_eq!(cookie["secure"], set_cookie.contains("; Secure"), "{set_cookie}");
    // The cookie ends when its Max-Age runs out, which is what `expires_at` says.
    let max_age: u64 = set_cookie
        .split("; ")
        .find_map(|part| part.strip_prefix("Max-Age="))
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_default();
    let expires = humantime::parse_rfc3339(&text_of(&cookie["expires_at"])).expect("an RFC 3339 time");
    let by_max_age = std::time::SystemTime::now() + std::time::Duration::from_secs(max_age);
    let apart = by_max_age.duration_since(expires).unwrap_or_else(|e| e.duration());
    assert!(apart.as_secs() <= 5, "{cookie} vs Max-Age={max_age}");
    let value = browser.cookie().unwrap_or_default();
    assert!(value.len() >= 40 && !body.to_string().contains(&value), "the cookie's value is not reported");

    // A login is a new session: no refreshes yet. A call that finds the token dead
    // refreshes once; the next call uses the new token.
    assert_eq!(browser.login().await.json()["refreshes"], 0);
    env.expire_access_tokens().await;
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
    assert_eq!(browser.get("/api/shoppers/me").await.status, StatusCode::OK);
    assert_eq!(env.refresh_calls().await, 1);
    let info = browser.get("/session").await.json();
    assert_eq!(info["refreshes"], 1, "{info}");
    assert_eq!(info["authenticated"], true);
}

fn text_of(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn guest_with_a_live_session_mints_nothing_new() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let cookie = browser.cookie();
    let again = browser.post("/session/guest").await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.set_cookies().is_empty());
    assert_eq!(browser.cookie(), cookie);
    assert_eq!(env.stats().await["token_calls"]["anonymous"], 1);
}

#[tokio::test]
async fn malformed_and_unknown_cookies_are_session_expired_and_cleared() {
    let env = Env::start().await;
    let browser = env.browser();
    for forged in ["garbage", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        browser.set_cookie(Some(forged.to_string()));
        let reply = browser.get("/session").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{forged}");
        assert_eq!(reply.error_code().as_deref(), Some("session_expired"));
        assert!(reply.clears_cookie(), "{:?}", reply.set_cookies());
        browser.set_cookie(Some(forged.to_string()));
        let api = browser.get("/api/shoppers/me").await;
        assert_eq!(api.status, StatusCode::UNAUTHORIZED);
        assert_eq!(api.error_code().as_deref(), Some("session_expired"));
    }
    assert_eq!(env.stats().await["token_calls"]["total"], 0, "a forged cookie must not mint anything");
}

#[tokio::test]
async fn login_rotates_the_session_id_and_the_old_cookie_dies() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let guest_cookie = browser.cookie();
    let reply = browser.login().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["authenticated"], true);
    let shopper_cookie = browser.cookie();
    assert!(shopper_cookie.is_some());
    assert_ne!(shopper_cookie, guest_cookie);

    let old = browser.fresh();
    old.set_cookie(guest_cookie);
    let stale = old.get("/session").await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stale.error_code().as_deref(), Some("session_expired"));

    let me = browser.get("/api/shoppers/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["shopper"]["username"], USERNAME);
}

#[tokio::test]
async fn login_carries_the_guest_cart_over() {
    let env = Env::start().await;
    let browser = env.browser();
    let added = browser.post("/api/shoppers/me/carts/active?productId=5104501700&quantity=2").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text());
    let reply = browser.login().await;
    assert_eq!(reply.status, StatusCode::OK);
    let cart = browser.get("/api/shoppers/me/carts/active").await;
    assert_eq!(cart.status, StatusCode::OK);
    let items = cart.json()["cart"]["lineItems"]["lineItem"].clone();
    let quantity: u64 =
        items.as_array().map(|items| items.iter().filter_map(|i| i["quantity"].as_u64()).sum()).unwrap_or(0);
    assert_eq!(quantity, 2, "cart after login: {items}");
}

#[tokio::test]
async fn login_accepts_a_form_body() {
    let env = Env::start().await;
    let browser = env.browser();
    let body = format!("username={}&password={}", "jdoe%40example.com", "p4ssw0rd%21");
    let reply = browser
        .send(
            Method::POST,
            "/session/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.into()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["authenticated"], true);
}

#[tokio::test]
async fn wrong_password_is_invalid_credentials_and_the_guest_session_survives() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let guest_cookie = browser.cookie();
    let reply = browser.post_json("/session/login", json!({"username": USERNAME, "password": "wrong"})).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code().as_deref(), Some("invalid_credentials"));
    assert!(reply.set_cookies().is_empty());
    assert_eq!(browser.cookie(), guest_cookie);
    let info = browser.get("/session").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json()["authenticated"], false);
}

#[tokio::test]
async fn bad_login_bodies_are_bad_request() {
    let env = Env::start().await;
    let browser = env.browser();
    for body in ["{not json", "{}", r#"{"username":"","password":"x"}"#, r#"{"username":5,"password":"x"}"#] {
        let reply = browser
            .send(Method::POST, "/session/login", &[("content-type", "application/json")], Some(body.into()))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error_code().as_deref(), Some("bad_request"));
    }
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
}

#[tokio::test]
async fn logout_revokes_upstream_deletes_the_session_and_clears_the_cookie() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie();
    let reply = browser.post("/session/logout").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.clears_cookie());
    assert_eq!(env.stats().await["access_token_delete"], 1);

    let old = browser.fresh();
    old.set_cookie(cookie);
    assert_eq!(old.get("/session").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_without_a_session_is_still_204() {
    let env = Env::start().await;
    let reply = env.browser().post("/session/logout").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(env.stats().await["access_token_delete"], 0);
}

#[tokio::test]
async fn logout_completes_even_if_revocation_fails() {
    let env = Env::start().await;
    let browser = env.browser();
    browser.login().await;
    env.set_faults(json!({"access_token_status": 503})).await;
    let reply = browser.post("/session/logout").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(browser.get("/session").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unsafe_requests_need_x_csrf_and_an_allowed_origin() {
    let env = Env::start().await;
    let browser = env.browser();
    let no_header = browser.send(Method::POST, "/session/guest", &[("x-csrf", "")], None).await;
    assert_eq!(no_header.status, StatusCode::FORBIDDEN);
    assert_eq!(no_header.error_code().as_deref(), Some("csrf_required"));
    let foreign =
        browser.send(Method::POST, "/session/guest", &[("origin", "https://evil.test")], None).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(foreign.error_code().as_deref(), Some("origin_rejected"));
    let own = browser.send(Method::POST, "/session/guest", &[("origin", "http://shop.test")], None).await;
    assert_eq!(own.status, StatusCode::OK);
    let api = browser.send(Method::DELETE, "/api/shoppers/me/carts/active", &[("x-csrf", "")], None).await;
    assert_eq!(api.error_code().as_deref(), Some("csrf_required"));
    assert_eq!(env.stats().await["token_calls"]["total"], 1);
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.send(Method::GET, "/session/login", &[], None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    let reply = browser.send(Method::POST, "/session", &[], None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_are_json() {
    let env = Env::start().await;
    let browser = env.browser();
    let replies = [
        browser.get("/session").await,
        browser.get("/nowhere").await,
        browser.post("/session/guest").await,
        browser.get("/api/shoppers/me").await,
        browser.post("/session/logout").await,
    ];
    for reply in &replies {
        assert!(reply.headers.get("x-request-id").is_some_and(|v| !v.is_empty()), "{:?}", reply.status);
        if reply.status.is_client_error() {
            assert_eq!(reply.headers["content-type"], "application/json");
            assert!(reply.json()["error"]["message"].is_string());
        }
    }
    let given = browser.send(Method::GET, "/session", &[("x-request-id", "abc-123")], None).await;
    assert_eq!(given.headers["x-request-id"], "abc-123");
}
