//! The OpenID provider harness itself (`tests/common/oidc.rs`), without tokengate: the real
//! `oidc-provider` starts, registers clients, its login and consent pages are driven over
//! HTTP, and its code, refresh, revocation, introspection, refresh-token reuse detection and
//! back-channel logout behave as the tokengate tests will rely on.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::oidc::{
    jwt_claims, jwt_header, query_params, random_token, ClientSpec, Consent, OidcOptions, OidcProvider, Pkce,
    RegisteredClient,
};
use http_body_util::{BodyExt, Full};

const REDIRECT_URI: &str = "http://shop.test/session/callback";
const LOGGED_OUT_URI: &str = "http://shop.test/logged-out";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What a login through the provider's pages yields.
struct Login {
    access_token: String,
    refresh_token: String,
    id_token: String,
    nonce: String,
}

/// Logs `login` in through the pages and exchanges the code, checking `state` on the way back.
async fn log_in(
    op: &OidcProvider,
    client: &RegisteredClient,
    login: &str,
) -> (Login, common::oidc::UserAgent) {
    log_in_with_scope(op, client, login, "openid profile email offline_access").await
}

async fn log_in_with_scope(
    op: &OidcProvider,
    client: &RegisteredClient,
    login: &str,
    scope: &str,
) -> (Login, common::oidc::UserAgent) {
    let (pkce, state, nonce) = (Pkce::new(), random_token(), random_token());
    let url = op.authorization_url(
        &client.client_id,
        REDIRECT_URI,
        &[
            ("scope", scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
            ("prompt", "consent"),
        ],
    );
    let mut agent = op.user_agent();
    let callback = agent.authorize(&url, login).await.expect("the login and consent pages lead back");
    assert!(callback.starts_with(&format!("{REDIRECT_URI}?")), "back at the redirect_uri: {callback}");
    let params = query_params(&callback);
    assert_eq!(params.get("state"), Some(&state), "the provider echoes state");
    assert_eq!(params.get("iss").map(String::as_str), Some(op.issuer()), "RFC 9207 iss");
    let code = params.get("code").expect("a code in the callback");
    let reply = op
        .token_request(
            client,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "code exchange: {}", reply.text());
    let body = reply.json();
    let field = |name: &str| body[name].as_str().unwrap_or_else(|| panic!("{name} in {body}")).to_string();
    assert_eq!(body["token_type"], "Bearer");
    let login = Login {
        access_token: field("access_token"),
        refresh_token: field("refresh_token"),
        id_token: field("id_token"),
        nonce,
    };
    (login, agent)
}

async fn refresh(op: &OidcProvider, client: &RegisteredClient, refresh_token: &str) -> common::Reply {
    op.token_request(client, &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
}

#[tokio::test]
async fn code_flow_with_pkce_refresh_revocation_and_introspection() {
    let op = OidcProvider::start(OidcOptions::default());
    let discovery = op.discovery().await;
    assert_eq!(discovery["issuer"], op.issuer());
    assert_eq!(discovery["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(discovery["backchannel_logout_supported"], true);
    let client = op.register_client(ClientSpec::web(REDIRECT_URI)).await;

    let (login, _agent) = log_in(&op, &client, "alice@example.com").await;

    // The ID token: signed RS256 by a key in the JWKS, for this client, with the nonce and claims.
    let header = jwt_header(&login.id_token);
    assert_eq!(header["alg"], "RS256");
    let jwks = op.discovery().await["jwks_uri"].as_str().map(str::to_string).expect("a jwks_uri");
    assert!(jwks.starts_with(op.issuer()));
    let claims = jwt_claims(&login.id_token);
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], client.client_id.as_str());
    assert_eq!(claims["nonce"], login.nonce.as_str());
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["name"], "Test alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims.get("sid").is_none(), "sid only for clients with a back-channel logout URI: {claims}");

    // Refresh rotates the refresh token and issues a new access token.
    let reply = refresh(&op, &client, &login.refresh_token).await;
    assert_eq!(reply.status, 200, "refresh: {}", reply.text());
    let (access, rotated) = (reply.json()["access_token"].clone(), reply.json()["refresh_token"].clone());
    let (access, rotated) =
        (access.as_str().expect("an access token"), rotated.as_str().expect("a refresh token"));
    assert_ne!(rotated, login.refresh_token, "refresh tokens rotate");
    assert_eq!(op.introspect(&client, access).await["active"], true);

    // Revoking the refresh token ends the grant: its access tokens go with it.
    let reply = op.revoke(&client, rotated, Some("refresh_token")).await;
    assert_eq!(reply.status, 200, "revocation: {}", reply.text());
    assert_eq!(op.introspect(&client, access).await["active"], false);
    assert_eq!(op.introspect(&client, rotated).await["active"], false);
    assert_eq!(op.introspect(&client, &login.access_token).await["active"], false);

    // The control surface saw it all.
    let stats = op.stats().await;
    assert_eq!(stats["token"]["authorization_code"]["200"], 1, "{stats}");
    assert_eq!(stats["token"]["refresh_token"]["200"], 1, "{stats}");
    assert_eq!(stats["revocation"]["refresh_token"]["200"], 1, "{stats}");
    assert_eq!(stats["introspection"], 4, "{stats}");
    let tokens = op.tokens().await;
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["grant_type"], "authorization_code");
    assert!(tokens.iter().all(|t| t["access_token_active"] == false && t["refresh_token_state"] == "gone"));
    let grants = op.grants().await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["account_id"], "alice@example.com");
    assert_eq!(grants[0]["active"], false, "the grant is revoked: {grants:?}");
    assert_eq!(
        op.issued_token_values().await.len(),
        6,
        "access, refresh and ID token from each of the two grants"
    );
}

#[tokio::test]
async fn presenting_a_rotated_refresh_token_revokes_the_whole_grant() {
    let op = OidcProvider::start(OidcOptions::default());
    let mut spec = ClientSpec::web(REDIRECT_URI);
    spec.token_endpoint_auth_method = "client_secret_post".into();
    let client = op.register_client(spec).await;
    assert_eq!(client.token_endpoint_auth_method, "client_secret_post");
    let (login, _agent) = log_in(&op, &client, "bob").await;

    let reply = refresh(&op, &client, &login.refresh_token).await;
    assert_eq!(reply.status, 200, "first refresh: {}", reply.text());
    let body = reply.json();
    let (access, rotated) = (body["access_token"].as_str().unwrap(), body["refresh_token"].as_str().unwrap());
    assert_eq!(op.tokens().await[0]["refresh_token_state"], "consumed");

    // The old refresh token again: refused, and the grant is gone...
    let reuse = refresh(&op, &client, &login.refresh_token).await;
    assert_eq!(reuse.status, 400);
    assert_eq!(reuse.json()["error"], "invalid_grant", "{}", reuse.text());
    // ...so the token that replaced it is dead too, and so is the access token issued with it.
    let after = refresh(&op, &client, rotated).await;
    assert_eq!(after.status, 400);
    assert_eq!(after.json()["error"], "invalid_grant", "{}", after.text());
    assert_eq!(op.introspect(&client, access).await["active"], false);
    assert_eq!(op.token_calls("refresh_token", 400).await, 2);
    assert!(op.grants().await.iter().all(|g| g["active"] == false));
    assert!(op.log().contains("grant.error"), "the provider logs the refusals:\n{}", op.log());
}

#[tokio::test]
async fn an_authorization_code_works_once_and_cancel_returns_access_denied() {
    let op = OidcProvider::start(OidcOptions::default());
    let client = op.register_client(ClientSpec::web(REDIRECT_URI)).await;
    let pkce = Pkce::new();
    let params = [
        ("scope", "openid"),
        ("state", "s1"),
        ("nonce", "n1"),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let url = op.authorization_url(&client.client_id, REDIRECT_URI, &params);
    let mut agent = op.user_agent();
    let denied = agent.authorize_with(&url, "carol", Consent::Deny).await.expect("back at the client");
    let denied = query_params(&denied);
    assert_eq!(denied.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(denied.get("state").map(String::as_str), Some("s1"));

    // Same browser, now approving: the provider session remains, only consent is asked.
    let callback = agent.authorize(&url, "carol").await.expect("back at the client");
    let code = query_params(&callback).remove("code").expect("a code");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    assert_eq!(op.token_request(&client, &form).await.status, 200);
    let replay = op.token_request(&client, &form).await;
    assert_eq!(replay.json()["error"], "invalid_grant", "a replayed code: {}", replay.text());

    // Without PKCE the provider refuses (error redirect to the client).
    let url = op.authorization_url(&client.client_id, REDIRECT_URI, &[("scope", "openid"), ("state", "s2")]);
    let refused = query_params(&agent.authorize(&url, "carol").await.expect("an error redirect"));
    assert_eq!(refused.get("error").map(String::as_str), Some("invalid_request"), "{refused:?}");

    // An unregistered redirect_uri is an error page at the provider, never a redirect.
    let url = op.authorization_url(&client.client_id, "http://evil.test/cb", &params);
    let error = agent.authorize(&url, "carol").await.expect_err("no redirect to an unregistered URI");
    assert!(error.starts_with("400"), "{error}");
}

#[tokio::test]
async fn end_session_sends_a_backchannel_logout_token_to_the_updated_uri() {
    let op = OidcProvider::start(OidcOptions::default());
    let mut spec = ClientSpec::web(REDIRECT_URI);
    spec.post_logout_redirect_uris = vec![LOGGED_OUT_URI.into()];
    let client = op.register_client(spec).await;
    // The receiver's port is known only now, after registration, as tokengate's will be.
    let receiver = LogoutReceiver::start().await;
    let metadata = op.update_client(&client, &receiver.url()).await;
    assert_eq!(metadata["backchannel_logout_uri"], receiver.url().as_str());
    let (login, mut agent) = log_in(&op, &client, "dave@example.com").await;
    let sid = jwt_claims(&login.id_token)["sid"].clone();
    assert!(sid.is_string(), "the ID token names the provider session");

    let url = op.end_session_url(&[
        ("client_id", &client.client_id),
        ("post_logout_redirect_uri", LOGGED_OUT_URI),
        ("state", "bye"),
    ]);
    let landed = agent.end_session(&url).await.expect("the logout is confirmed");
    assert_eq!(landed, format!("{LOGGED_OUT_URI}?state=bye"));

    let received = receiver.bodies();
    assert_eq!(received.len(), 1, "one logout token delivered: {received:?}");
    let form = query_params(&format!("http://x/?{}", received[0]));
    let token = form.get("logout_token").expect("a logout_token form field");
    assert_eq!(jwt_header(token)["alg"], "RS256");
    let claims = jwt_claims(token);
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], client.client_id.as_str());
    assert_eq!(claims["sub"], "dave@example.com");
    assert_eq!(claims["sid"], sid);
    assert!(claims["events"][BACKCHANNEL_EVENT].is_object(), "{claims}");
    assert!(claims.get("nonce").is_none(), "a logout token has no nonce");

    let stats = op.stats().await;
    assert_eq!(stats["end_session"], 1);
    assert_eq!(stats["backchannel_logout"][0]["status"], 200, "{stats}");
    assert_eq!(stats["backchannel_logout"][0]["url"], receiver.url().as_str());
    // An offline_access grant outlives the provider session: the relying party that gets the
    // logout token must revoke its tokens itself.
    assert_eq!(op.introspect(&client, &login.refresh_token).await["active"], true);
}

#[tokio::test]
async fn end_session_revokes_a_grant_without_offline_access() {
    let op = OidcProvider::start(OidcOptions::default());
    let client = op.register_client(ClientSpec::web(REDIRECT_URI)).await;
    let (login, mut agent) = log_in_with_scope(&op, &client, "frank", "openid email").await;
    // Issued regardless of offline_access (the test config), but bound to the provider session.
    let reply = refresh(&op, &client, &login.refresh_token).await;
    assert_eq!(reply.status, 200, "refresh without offline_access: {}", reply.text());
    let rotated =
        reply.json()["refresh_token"].as_str().map(str::to_string).expect("a rotated refresh token");

    let landed = agent.end_session(&op.end_session_url(&[("client_id", &client.client_id)])).await;
    let landed = landed.expect("the logout is confirmed");
    assert!(landed.starts_with(&format!("{}/session/end/success", op.issuer())), "{landed}");
    assert_eq!(op.introspect(&client, &rotated).await["active"], false);
    assert_eq!(op.stats().await["backchannel_logout"], serde_json::json!([]), "no URI, no delivery");
}

#[tokio::test]
async fn the_provider_process_is_gone_after_drop() {
    let op = OidcProvider::start(OidcOptions { access_token_ttl: 2, ..OidcOptions::default() });
    let client = op.register_client(ClientSpec::web(REDIRECT_URI)).await;
    let (login, _agent) = log_in(&op, &client, "erin").await;
    let reply = op.introspect(&client, &login.access_token).await;
    let lifetime = reply["exp"].as_i64().unwrap_or(0) - reply["iat"].as_i64().unwrap_or(0);
    assert_eq!(lifetime, 2, "OIDC_TTL_ACCESS_TOKEN is applied: {reply}");
    let pid = op.pid();
    drop(op);
    let gone = common::eventually(Duration::from_secs(5), || async {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "node (pid {pid}) still runs after drop");
}

/// A stand-in for a client's back-channel logout endpoint: records each POST body, answers 200.
struct LogoutReceiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LogoutReceiver {
    async fn start() -> LogoutReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                let service =
                    hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let body =
                                request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            seen.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        });
        LogoutReceiver { addr, bodies, task }
    }

    fn url(&self) -> String {
        format!("http://{}/session/backchannel-logout", self.addr)
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for LogoutReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
