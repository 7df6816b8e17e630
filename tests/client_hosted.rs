//! Client-hosted shoppers: the storefront's server signs the shopper in with its own
//! identity system and tells tokengate who it is (`POST /session/external`); tokengate
//! mints the shopper token (`client_credentials` + `dr_external_reference_id`, the guest
//! token as `dr_limited_token`), rotates the session id and hands back the new cookie.
//! Only a caller with the storefront secret, and never a browser, may do this.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "storefront-secret-7c1e";
const REFERENCE: &str = "crm-customer-0042";

async fn env() -> Env {
    Env::with(
        Options::default()
            .set("client_hosted", "secret_env", "TEST_STOREFRONT_SECRET")
            .proxy_env("TEST_STOREFRONT_SECRET", SECRET),
    )
    .await
}

/// The storefront's server calling tokengate: no cookie, no Origin, no Fetch Metadata.
async fn external(env: &Env, headers: &[(&str, &str)], body: Value) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let url = format!("http://{}/session/external", env.proxy.addr);
    env.raw(Method::POST, &url, &all, Some(body.to_string())).await
}

fn bearer() -> String {
    format!("Bearer {SECRET}")
}

/// The cookie value in a `Set-Cookie` header value.
fn cookie_value(set_cookie: &str) -> Option<String> {
    let first = set_cookie.split(';').next()?;
    let (name, value) = first.split_once('=')?;
    (name.trim() == COOKIE && !value.is_empty()).then(|| value.to_string())
}

#[tokio::test]
async fn the_storefront_signs_a_guest_in_and_the_cart_carries_over() {
    let env = env().await;
    let browser = env.browser();
    let added = browser.post("/api/shoppers/me/carts/active?productId=5104501700&quantity=2").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text());
    let guest_cookie = browser.cookie().expect("the guest's cookie");

    let authorization = bearer();
    let reply = external(
        &env,
        &[("authorization", &authorization)],
        json!({"session": guest_cookie, "external_reference_id": REFERENCE}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["authenticated"], true);
    let set_cookie = body["set_cookie"].as_str().unwrap_or_default().to_string();
    assert_eq!(reply.set_cookies(), vec![set_cookie.clone()], "the header and the body agree");
    let new_cookie = cookie_value(&set_cookie).expect("a new session cookie");
    assert_ne!(new_cookie, guest_cookie, "the session id is rotated");

    // The storefront passes the cookie on to the browser.
    browser.set_cookie(Some(new_cookie));
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
    let cart = browser.get("/api/shoppers/me/carts/active").await;
    assert_eq!(cart.json()["cart"]["totalItemsInCart"], "2", "{}", cart.text());

    // The API sees an authenticated shopper with that reference.
    let mut seen = None;
    for token in env.issued_tokens() {
        let url = format!("{}/oauth20/access-tokens", env.mock.url);
        let auth = format!("bearer {token}");
        let info = env
            .raw(Method::GET, &url, &[("authorization", &auth), ("accept", "application/json")], None)
            .await;
        if info.status == StatusCode::OK && info.json()["externalReferenceId"] == REFERENCE {
            seen = Some(info.json());
        }
    }
    let info = seen.expect("the mock knows the shopper token");
    assert_eq!(info["authenticated"], "true", "the API writes it as a string: {info}");

    let old = browser.fresh();
    old.set_cookie(Some(guest_cookie));
    let dead = old.get("/session").await;
    assert_eq!(dead.status, StatusCode::UNAUTHORIZED);
    assert_eq!(dead.error_code().as_deref(), Some("session_expired"), "the old cookie is dead at once");
    assert!(!env.proxy_log().contains(REFERENCE), "the external reference id is never logged");
}

#[tokio::test]
async fn without_a_session_the_storefront_gets_a_fresh_shopper_session() {
    let env = env().await;
    let authorization = bearer();
    let reply =
        external(&env, &[("authorization", &authorization)], json!({"external_reference_id": REFERENCE}))
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let browser = env.browser();
    browser.set_cookie(reply.json()["set_cookie"].as_str().and_then(cookie_value));
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
}

#[tokio::test]
async fn a_missing_or_wrong_secret_is_unauthorized_and_mints_nothing() {
    let env = env().await;
    let body = json!({"external_reference_id": REFERENCE});
    let missing = external(&env, &[], body.clone()).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error_code().as_deref(), Some("unauthorized"));
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    let wrong_secret = format!("Bearer {SECRET}x");
    for authorization in [wrong_secret.as_str(), "Bearer ", "Basic c3RvcmVmcm9udA==", SECRET] {
        let wrong = external(&env, &[("authorization", authorization)], body.clone()).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{authorization}");
        assert_eq!(wrong.error_code().as_deref(), Some("unauthorized"));
        assert!(wrong.set_cookies().is_empty());
    }
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
}

#[tokio::test]
async fn a_browser_can_never_choose_an_external_reference_id() {
    let env = env().await;
    let authorization = bearer();
    let body = json!({"external_reference_id": REFERENCE});
    let cookie = format!("{COOKIE}=x");
    for browserish in [
        ("origin", "http://shop.test"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
        ("cookie", cookie.as_str()),
    ] {
        // Even with the right secret (a page that stole it still cannot use a browser).
        let reply = external(&env, &[("authorization", &authorization), browserish], body.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{browserish:?}");
        assert_eq!(reply.error_code().as_deref(), Some("browser_forbidden"), "{browserish:?}");
        let unproven = external(&env, &[browserish], body.clone()).await;
        assert_eq!(
            unproven.error_code().as_deref(),
            Some("browser_forbidden"),
            "before the secret is checked"
        );
    }
    // The browser itself, through its own cookie jar and X-CSRF.
    let browser = env.browser();
    browser.post("/session/guest").await;
    let reply = browser.post_json("/session/external", body).await;
    assert_eq!(reply.error_code().as_deref(), Some("browser_forbidden"));
    assert_eq!(browser.get("/session").await.json()["authenticated"], false);
    assert_eq!(env.stats().await["token_calls"]["total"], 1, "only the guest was minted");
}

#[tokio::test]
async fn bad_external_reference_ids_are_bad_requests() {
    let env = env().await;
    let authorization = bearer();
    let long = "a".repeat(257);
    for body in [
        json!({"external_reference_id": ""}),
        json!({"external_reference_id": "  "}),
        json!({"external_reference_id": "a\nb"}),
        json!({"external_reference_id": long}),
        json!({"session": "x"}),
        json!("not an object"),
    ] {
        let reply = external(&env, &[("authorization", &authorization)], body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error_code().as_deref(), Some("bad_request"), "{body}");
    }
    assert_eq!(env.stats().await["token_calls"]["total"], 0);
}

#[tokio::test]
async fn without_client_hosted_config_the_endpoint_is_not_there() {
    let env = Env::start().await;
    let reply =
        external(&env, &[("authorization", "Bearer anything")], json!({"external_reference_id": REFERENCE}))
            .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code().as_deref(), Some("not_found"));
}
