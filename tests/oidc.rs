//! `flavor = "oauth2"` end to end against a real OpenID provider no one here wrote
//! (`oidc-provider` from npm, see `tests/oidc/README.md`): the code flow with PKCE, nonce
//! and state through the provider's own login and consent pages, a protected resource
//! (the provider's userinfo endpoint) called through tokengate, refresh after a short
//! expiry (also 20 concurrent calls under the provider's refresh-token reuse detection),
//! logout with RFC 7009 revocation seen at the provider, Back-Channel Logout 1.0 (also
//! across two replicas on one Redis), and the abuse cases. Every test ends with the leak
//! check, searching also for every token the provider issued and the client secret.

mod common;

use std::time::{Duration, SystemTime};

use common::oidc::{
    query_params, ClientSpec, Consent, OidcOptions, OidcProvider, RegisteredClient, UserAgent,
};
use common::redis::RedisServer;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;

const SHOP: &str = "http://shop.test";
const STORE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A provider with one registered client, and tokengate on it.
struct World {
    op: OidcProvider,
    client: RegisteredClient,
    env: Env,
}

/// The harness's config in the oauth2 flavor on `op`, with `/userinfo` routed to the
/// provider's userinfo endpoint (a protected resource that accepts its access tokens).
fn oauth2_options(op: &OidcProvider, client: &RegisteredClient) -> Options {
    Options::default()
        .set("oauth", "flavor", "oauth2")
        .set("oauth", "issuer", op.issuer())
        .set("oauth", "client_id", client.client_id.as_str())
        .set("oauth", "client_secret_env", "OIDC_CLIENT_SECRET")
        .set("upstream", "base_url", op.issuer())
        .remove("session", "guest")
        .route("/userinfo", "/me", "required")
        .proxy_env("OIDC_CLIENT_SECRET", &client.client_secret)
}

async fn world(provider: OidcOptions, tweak: impl FnOnce(Options) -> Options) -> World {
    let op = OidcProvider::start(provider);
    let client = op.register_client(ClientSpec::web(REDIRECT_URI)).await;
    let env = Env::with(tweak(oauth2_options(&op, &client))).await;
    // Before any login, so the ID tokens carry `sid`.
    op.update_client(&client, &backchannel_uri(&env.proxy)).await;
    wait_ready(&env, &env.proxy).await;
    World { op, client, env }
}

fn backchannel_uri(proxy: &Proxy) -> String {
    format!("http://{}/session/backchannel-logout", proxy.addr)
}

/// Polls `/readyz` until the provider's metadata is loaded.
async fn wait_ready(env: &Env, proxy: &Proxy) {
    let admin = proxy.admin.expect("the harness binds an admin listener");
    let ready = eventually(Duration::from_secs(15), || async move {
        let reply = env.raw(Method::GET, &format!("http://{admin}/readyz"), &[], None).await;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some(), "tokengate never became ready (discovery)");
}

/// The end of every test: the leak check also searches for the provider's tokens and the
/// client secret (it runs when the `Env` drops).
async fn finish(mut world: World) {
    let mut secrets = world.op.issued_token_values().await;
    secrets.push(world.client.client_secret.clone());
    world.env.watch_secrets(secrets);
}

fn location(reply: &Reply) -> String {
    reply.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// `GET /session/authorize` for `browser`: the provider's authorize URL.
async fn authorize(browser: &Browser, return_to: &str) -> String {
    let reply = browser.get(&format!("/session/authorize?return_to={return_to}")).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
    location(&reply)
}

/// The provider's pages for `login`: the callback path (on the shop) they lead back to.
async fn at_provider(op: &OidcProvider, url: &str, login: &str, consent: Consent) -> (String, UserAgent) {
    let mut agent = op.user_agent();
    let callback = agent.authorize_with(url, login, consent).await.expect("the provider's pages lead back");
    let path = callback.strip_prefix(SHOP).unwrap_or_else(|| panic!("back at the shop: {callback}"));
    (path.to_string(), agent)
}

/// A whole sign-in of `login` in `browser`; the provider-side browser (for its logout).
async fn sign_in(world: &World, browser: &Browser, login: &str) -> UserAgent {
    let url = authorize(browser, "/account").await;
    let (callback, agent) = at_provider(&world.op, &url, login, Consent::Approve).await;
    let reply = browser.get(&callback).await;
    assert_eq!(reply.status, StatusCode::FOUND, "callback: {}", reply.text());
    assert_eq!(location(&reply), "/account");
    agent
}

fn rfc3339(text: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(text.as_str().unwrap_or_default()).expect("an RFC 3339 time")
}

/// Polls until tokengate's view of the session's access token has expired.
async fn wait_until_expired(browser: &Browser) {
    let expires = rfc3339(&browser.get("/session").await.json()["access_expires_at"]);
    let expired = eventually(Duration::from_secs(20), || async move {
        (SystemTime::now() >= expires + Duration::from_secs(1)).then_some(())
    })
    .await;
    assert!(expired.is_some());
}

#[tokio::test]
async fn the_journey_signs_in_with_pkce_nonce_and_state_and_calls_the_provider_through_tokengate() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let url = authorize(&browser, "/account").await;
    let binding = browser.cookie().expect("a pre-login cookie binds the login to this browser");
    let params = query_params(&url);
    assert!(url.starts_with(&format!("{}/auth?", world.op.issuer())), "{url}");
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], world.client.client_id);
    assert_eq!(params["redirect_uri"], REDIRECT_URI, "exactly public_origin + /session/callback");
    assert_eq!(params["scope"], "openid profile email offline_access");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert!(params["state"].len() >= 43 && params["nonce"].len() >= 43);
    assert!(!params.contains_key("prompt"), "no prompt: offline_access would be dropped");

    let (callback, _agent) = at_provider(&world.op, &url, "alice@example.com", Consent::Approve).await;
    let reply = browser.get(&callback).await;
    assert_eq!((reply.status, location(&reply)), (StatusCode::FOUND, "/account".to_string()));
    assert_ne!(browser.cookie().as_deref(), Some(binding.as_str()), "signed in under a new id");

    let session = browser.get("/session").await.json();
    assert_eq!(session["authenticated"], true);
    assert_eq!(
        session["user"],
        json!({"sub": "alice@example.com", "name": "Test alice", "email": "alice@example.com"})
    );
    assert!(session["user"].get("sid").is_none(), "{session}");
    let me = browser.get("/userinfo").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["sub"], "alice@example.com", "the provider accepted the Bearer tokengate sent");

    let stale = browser.fresh();
    stale.set_cookie(Some(binding));
    assert_eq!(
        stale.get("/session").await.status,
        StatusCode::UNAUTHORIZED,
        "the pre-login id is no session"
    );
    finish(world).await;
}

#[tokio::test]
async fn other_sign_in_flows_are_refused_and_a_required_route_needs_a_session() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let login = browser.login().await;
    assert_eq!(
        (login.status, login.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("unsupported_flow"))
    );
    assert!(login.json()["error"]["message"].as_str().unwrap_or_default().contains("/session/authorize"));
    let guest = browser.post("/session/guest").await;
    assert_eq!(guest.error_code().as_deref(), Some("unsupported_flow"));
    let external = world
        .env
        .raw(
            Method::POST,
            &format!("http://{}/session/external", world.env.proxy.addr),
            &[],
            Some("{}".into()),
        )
        .await;
    assert_eq!(external.status, StatusCode::NOT_FOUND);
    let call = browser.get("/userinfo").await;
    assert_eq!((call.status, call.error_code().as_deref()), (StatusCode::UNAUTHORIZED, Some("no_session")));
    assert!(call.set_cookies().is_empty(), "no guest is minted");
    finish(world).await;
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_and_the_session_goes_on() {
    let world = world(OidcOptions { access_token_ttl: 3, ..OidcOptions::default() }, |o| {
        o.set("oauth", "refresh_ahead", "0s")
    })
    .await;
    let browser = world.env.browser();
    sign_in(&world, &browser, "bob@example.com").await;
    let before = browser.get("/session").await.json()["access_expires_at"].clone();
    wait_until_expired(&browser).await;
    let me = browser.get("/userinfo").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(world.op.token_calls("refresh_token", 200).await, 1);
    let after = browser.get("/session").await.json();
    assert!(rfc3339(&after["access_expires_at"]) > rfc3339(&before), "{after}");
    assert_eq!(after["user"]["sub"], "bob@example.com", "the refreshed ID token names the same sub");
    finish(world).await;
}

#[tokio::test]
async fn twenty_concurrent_calls_after_expiry_make_one_refresh_under_reuse_detection() {
    let world = world(OidcOptions { access_token_ttl: 3, ..OidcOptions::default() }, |o| {
        o.set("oauth", "refresh_ahead", "0s")
    })
    .await;
    let browser = world.env.browser();
    sign_in(&world, &browser, "carol@example.com").await;
    wait_until_expired(&browser).await;
    let replies = join_all((0..20).map(|_| {
        let browser = browser.clone();
        async move { browser.get("/userinfo").await }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(world.op.token_calls("refresh_token", 200).await, 1, "one refresh for all 20");
    assert_eq!(world.op.token_calls("refresh_token", 400).await, 0, "no reuse of a rotated refresh token");
    assert!(world.op.grants().await.iter().all(|grant| grant["active"] == true), "the grant lives");
    finish(world).await;
}

/// The provider's record of the code grant's latest tokens.
async fn latest_tokens(op: &OidcProvider) -> serde_json::Value {
    op.tokens().await.last().cloned().expect("the provider issued tokens")
}

#[tokio::test]
async fn logout_revokes_both_tokens_at_the_provider() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    sign_in(&world, &browser, "dave@example.com").await;
    let issued = latest_tokens(&world.op).await;
    assert_eq!(
        (issued["access_token_active"].clone(), issued["refresh_token_state"].clone()),
        (json!(true), json!("active"))
    );
    let reply = browser.post("/session/logout").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let revoked = world.op.stats().await["revocation"].clone();
    assert_eq!(revoked["refresh_token"]["200"], 1, "{revoked}");
    assert_eq!(revoked["access_token"]["200"], 1, "{revoked}");
    let after = latest_tokens(&world.op).await;
    assert_eq!(after["access_token_active"], false, "{after}");
    assert_eq!(after["refresh_token_state"], "gone", "{after}");
    assert_eq!(browser.get("/session").await.status, StatusCode::UNAUTHORIZED);
    finish(world).await;
}

/// The provider's logout page for `agent`'s provider session; the back-channel logout
/// token goes out before it answers.
async fn log_out_at_provider(world: &World, agent: &mut UserAgent) {
    let url = world.op.end_session_url(&[("client_id", &world.client.client_id)]);
    agent.end_session(&url).await.expect("the provider confirms the logout");
    let stats = world.op.stats().await;
    assert_eq!(stats["backchannel_logout"][0]["status"], 200, "{stats}");
}

async fn tokens_revoked(op: &OidcProvider) -> bool {
    let tokens = latest_tokens(op).await;
    tokens["access_token_active"] == false && tokens["refresh_token_state"] == "gone"
}

#[tokio::test]
async fn a_backchannel_logout_ends_the_session_and_revokes_its_tokens() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let other = browser.fresh();
    let mut agent = sign_in(&world, &browser, "erin@example.com").await;
    sign_in(&world, &other, "frank@example.com").await;
    log_out_at_provider(&world, &mut agent).await;
    assert_eq!(browser.get("/session").await.status, StatusCode::UNAUTHORIZED, "erin's session ended");
    assert_eq!(other.get("/session").await.status, StatusCode::OK, "frank's session is another sid");
    let op = &world.op;
    let erin =
        op.tokens().await.into_iter().find(|t| t["grant_type"] == "authorization_code").expect("erin's");
    let revoked = eventually(Duration::from_secs(10), || async {
        let all = op.tokens().await;
        let mine = all.iter().find(|t| t["access_token"] == erin["access_token"])?;
        (mine["access_token_active"] == false && mine["refresh_token_state"] == "gone").then_some(())
    })
    .await;
    assert!(revoked.is_some(), "tokengate revoked the offline grant's tokens itself");
    let admin = world.env.proxy.admin.expect("admin");
    let metrics = world.env.raw(Method::GET, &format!("http://{admin}/metrics"), &[], None).await.text();
    assert!(metrics.contains("tokengate_backchannel_logouts_total{result=\"ended\"} 1"), "{metrics}");
    finish(world).await;
}

#[tokio::test]
async fn a_backchannel_logout_delivered_to_one_replica_ends_the_session_on_the_other() {
    let redis = RedisServer::start();
    let url = redis.url();
    let world = world(OidcOptions::default(), |o| {
        o.set("store", "kind", "redis")
            .set("store", "url_env", "TEST_REDIS_URL")
            .set("store", "encryption_key_env", "TEST_STORE_KEY")
            .proxy_env("TEST_REDIS_URL", &url)
            .proxy_env("TEST_STORE_KEY", STORE_KEY)
    })
    .await;
    let env_vars: Vec<(&str, &str)> =
        world.env.options.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let second = start_proxy(&world.env.config_path(), world.env.dir.path(), &env_vars);
    wait_ready(&world.env, &second).await;
    // The provider delivers to the second replica; the browser uses the first.
    world.op.update_client(&world.client, &backchannel_uri(&second)).await;
    let browser = world.env.browser();
    let mut agent = sign_in(&world, &browser, "grace@example.com").await;
    let mut elsewhere = browser.fresh();
    elsewhere.base = format!("http://{}", second.addr);
    elsewhere.set_cookie(browser.cookie());
    assert_eq!(elsewhere.get("/session").await.status, StatusCode::OK, "shared through Redis");
    log_out_at_provider(&world, &mut agent).await;
    assert_eq!(browser.get("/session").await.status, StatusCode::UNAUTHORIZED, "ended on the first replica");
    let revoked =
        eventually(Duration::from_secs(10), || async { tokens_revoked(&world.op).await.then_some(()) });
    assert!(revoked.await.is_some());
    let log = std::fs::read_to_string(&second.log_file).unwrap_or_default();
    for secret in world.op.issued_token_values().await.iter().chain([&world.client.client_secret]) {
        assert!(!log.contains(secret.as_str()), "a secret in the second replica's log");
    }
    finish(world).await;
}

#[tokio::test]
async fn a_callback_works_once_replayed_code_and_state_are_refused() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let url = authorize(&browser, "/account").await;
    let binding = browser.cookie();
    let (callback, _agent) = at_provider(&world.op, &url, "heidi@example.com", Consent::Approve).await;
    assert_eq!(browser.get(&callback).await.status, StatusCode::FOUND);
    let signed_in = browser.cookie();
    let again = browser.get(&callback).await;
    assert_eq!(
        (again.status, again.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );
    let replay = browser.fresh();
    replay.set_cookie(binding);
    let again = replay.get(&callback).await;
    assert_eq!(again.error_code().as_deref(), Some("invalid_state"), "the pre-login binding is used up");
    assert!(replay.cookie().is_none_or(|c| Some(c) != signed_in), "no second session");
    assert_eq!(world.op.token_calls("authorization_code", 200).await, 1, "the code was redeemed once");
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "the first login stands");
    finish(world).await;
}

#[tokio::test]
async fn another_browsers_callback_is_refused_and_its_own_still_works() {
    let world = world(OidcOptions::default(), |o| o).await;
    let victim = world.env.browser();
    let attacker = victim.fresh();
    let attacker_url = authorize(&attacker, "/account").await;
    let (attacker_callback, _a) =
        at_provider(&world.op, &attacker_url, "mallory@example.com", Consent::Approve).await;
    // The victim has a login of its own pending.
    let _victim_url = authorize(&victim, "/account").await;
    // Login CSRF: the attacker's callback URL opened in the victim's browser.
    let forced = victim.get(&attacker_callback).await;
    assert_eq!(
        (forced.status, forced.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );
    assert_eq!(victim.get("/session").await.status, StatusCode::UNAUTHORIZED, "the victim is not mallory");
    assert_eq!(
        world.op.token_calls("authorization_code", 200).await,
        0,
        "the foreign code was never redeemed"
    );
    // The attacker's own browser still completes its login; the victim's pending login was
    // used up by the refused attempt, so the victim starts again.
    assert_eq!(attacker.get(&attacker_callback).await.status, StatusCode::FOUND);
    assert_eq!(attacker.get("/session").await.json()["user"]["sub"], "mallory@example.com");
    finish(world).await;
}

#[tokio::test]
async fn a_provider_error_at_the_callback_goes_back_without_a_session() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let url = authorize(&browser, "/cart").await;
    let (callback, _agent) = at_provider(&world.op, &url, "ivan@example.com", Consent::Deny).await;
    assert!(callback.contains("error=access_denied"), "{callback}");
    let reply = browser.get(&callback).await;
    assert_eq!(
        (reply.status, location(&reply)),
        (StatusCode::FOUND, "/cart#login_error=access_denied".to_string())
    );
    assert_eq!(browser.get("/session").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(world.op.token_calls("authorization_code", 200).await, 0);
    finish(world).await;
}

#[tokio::test]
async fn an_open_redirect_in_return_to_is_refused_before_the_provider_is_involved() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    for evil in ["//evil.example", "https://evil.example/", "/%2e%2e//evil.example"] {
        let reply = browser.get(&format!("/session/authorize?return_to={evil}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{evil}");
        assert!(reply.headers.get("location").is_none());
    }
    assert!(browser.cookie().is_none(), "no login was started");
    finish(world).await;
}

#[tokio::test]
async fn an_invalid_logout_token_ends_nothing() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    sign_in(&world, &browser, "judy@example.com").await;
    let endpoint = backchannel_uri(&world.env.proxy);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    // Unsigned ("alg": "none"), well-formed otherwise.
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = json!({"iss": world.op.issuer(), "aud": world.client.client_id, "iat": now, "exp": now + 60,
        "jti": "j1", "sub": "judy@example.com",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none", "typ": "logout+jwt"})), b64(claims));
    for token in ["garbage", unsigned.as_str(), ""] {
        let body = format!("logout_token={token}");
        let reply = world.env.raw(Method::POST, &endpoint, &form, Some(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{token}");
        assert_eq!(reply.json(), json!({"error": "invalid_request"}));
        assert_eq!(reply.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    }
    let browser_like = [("content-type", "application/x-www-form-urlencoded"), ("origin", SHOP)];
    let reply =
        world.env.raw(Method::POST, &endpoint, &browser_like, Some(format!("logout_token={unsigned}"))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a browser may not call it");
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "nothing ended");
    assert_eq!(world.op.stats().await["revocation"], json!({}), "nothing revoked");
    finish(world).await;
}

#[tokio::test]
async fn sessions_restored_from_a_snapshot_can_still_be_logged_out_by_the_provider() {
    let snapshot = tempfile::tempdir().expect("a directory for the snapshot");
    let file = snapshot.path().join("sessions.bin");
    let file_name = file.display().to_string();
    let world = world(OidcOptions::default(), |o| {
        o.set("store", "snapshot_file", file_name.as_str())
            .set("store", "encryption_key_env", "TEST_STORE_KEY")
            .proxy_env("TEST_STORE_KEY", STORE_KEY)
    })
    .await;
    let mut world = world;
    let mut browser = world.env.browser();
    let mut agent = sign_in(&world, &browser, "kate@example.com").await;
    let status = world.env.proxy.signal_and_wait("TERM", Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    world.env.restart_proxy();
    wait_ready(&world.env, &world.env.proxy).await;
    browser.base = format!("http://{}", world.env.proxy.addr);
    let restored = browser.get("/session").await;
    assert_eq!(
        restored.json()["user"]["email"],
        "kate@example.com",
        "the identity came back with the session"
    );
    world.op.update_client(&world.client, &backchannel_uri(&world.env.proxy)).await;
    log_out_at_provider(&world, &mut agent).await;
    assert_eq!(
        browser.get("/session").await.status,
        StatusCode::UNAUTHORIZED,
        "found through the rebuilt index"
    );
    finish(world).await;
}

#[tokio::test]
async fn client_secret_post_authenticates_the_exchange_and_the_revocations() {
    let op = OidcProvider::start(OidcOptions::default());
    let mut spec = ClientSpec::web(REDIRECT_URI);
    spec.token_endpoint_auth_method = "client_secret_post".into();
    let client = op.register_client(spec).await;
    let env = Env::with(oauth2_options(&op, &client).set("oauth", "client_auth", "post")).await;
    wait_ready(&env, &env.proxy).await;
    let world = World { op, client, env };
    let browser = world.env.browser();
    sign_in(&world, &browser, "leo@example.com").await;
    assert_eq!(browser.get("/userinfo").await.status, StatusCode::OK);
    assert_eq!(browser.post("/session/logout").await.status, StatusCode::NO_CONTENT);
    let revoked = world.op.stats().await["revocation"].clone();
    assert_eq!(
        (revoked["refresh_token"]["200"].clone(), revoked["access_token"]["200"].clone()),
        (json!(1), json!(1))
    );
    assert!(tokens_revoked(&world.op).await);
    finish(world).await;
}

#[tokio::test]
async fn before_discovery_succeeds_tokengate_is_not_ready_and_sign_in_is_503() {
    // Nothing listens on port 1: discovery keeps failing (and retrying).
    let env = Env::with(
        Options::default()
            .set("oauth", "flavor", "oauth2")
            .set("oauth", "issuer", "http://127.0.0.1:1")
            .remove("session", "guest")
            .route("/userinfo", "/me", "required"),
    )
    .await;
    let admin = env.proxy.admin.expect("admin");
    let ready = env.raw(Method::GET, &format!("http://{admin}/readyz"), &[], None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let browser = env.browser();
    let reply = browser.get("/session/authorize?return_to=/").await;
    assert_eq!(
        (reply.status, reply.error_code().as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("token_service_unavailable"))
    );
    assert!(reply.headers.get("location").is_none());
}

#[tokio::test]
async fn calls_made_while_the_login_is_under_way_keep_the_pre_login_cookie() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let url = authorize(&browser, "/account").await;
    let binding = browser.cookie();
    // Another tab of the shop asks while the shopper is at the provider.
    let info = browser.get("/session").await;
    assert_eq!((info.status, info.error_code().as_deref()), (StatusCode::UNAUTHORIZED, Some("no_session")));
    assert!(!info.clears_cookie(), "the login's binding is not cleared");
    assert_eq!(browser.get("/userinfo").await.error_code().as_deref(), Some("no_session"));
    assert_eq!(browser.cookie(), binding);
    let (callback, _agent) = at_provider(&world.op, &url, "mia@example.com", Consent::Approve).await;
    assert_eq!(browser.get(&callback).await.status, StatusCode::FOUND);
    assert_eq!(browser.get("/session").await.json()["user"]["sub"], "mia@example.com");
    // After the login the binding is an unknown cookie like any other.
    let stale = browser.fresh();
    stale.set_cookie(binding);
    assert_eq!(stale.get("/session").await.error_code().as_deref(), Some("session_expired"));
    finish(world).await;
}

#[tokio::test]
async fn a_logout_token_for_a_previous_login_in_the_same_browser_ends_only_that_login() {
    let world = world(OidcOptions::default(), |o| o).await;
    let browser = world.env.browser();
    let mut first = sign_in(&world, &browser, "nina@example.com").await;
    // The same browser signs in again as someone else (a new provider session).
    sign_in(&world, &browser, "omar@example.com").await;
    assert_eq!(browser.get("/session").await.json()["user"]["sub"], "omar@example.com");
    log_out_at_provider(&world, &mut first).await;
    assert_eq!(
        browser.get("/session").await.json()["user"]["sub"],
        "omar@example.com",
        "omar stays signed in"
    );
    finish(world).await;
}
