//! `OAuth2Client` against the test provider of `oidc::test_support` on 127.0.0.1.

use serde_json::json;

use super::*;
use crate::oidc::discovery::{discover, EndpointOverrides};
use crate::oidc::test_support::{self, Provider, TestKey, CLIENT_ID};

/// A secret with every character Basic auth must form-urlencode first.
const SECRET: &str = "s3:cr t/+%é";
const REDIRECT: &str = "https://shop.example/session/callback";

struct Setup {
    provider: Provider,
    key: TestKey,
    client: OAuth2Client,
    start: u64,
}

impl Setup {
    async fn new(client_auth: ClientAuth) -> Self {
        let provider = Provider::start().await;
        let key = TestKey::generate("k1");
        provider.set_keys(&[&key]);
        let metadata = discover(
            &test_support::client(),
            &provider.issuer(),
            &EndpointOverrides::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let client = client(Arc::new(ProviderCache::loaded(metadata)), client_auth);
        Self { provider, key, client, start: Clock::System.now() }
    }

    fn id_token(&self, nonce: Option<&str>) -> String {
        let mut claims = json!({
            "iss": self.provider.issuer(), "aud": CLIENT_ID, "sub": "user-1", "sid": "sid-1",
            "name": "Ada", "email": "ada@example.com", "iat": self.start, "exp": self.start + 300
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        self.key.sign(&claims)
    }

    fn answer_tokens(&self, body: Value) {
        self.provider.answer("/token", StatusCode::OK, &body.to_string());
    }

    fn form_of(&self, index: usize) -> (Vec<(String, String)>, Option<String>) {
        let recorded = self.provider.recorded().into_iter().filter(|r| r.path != "/jwks").collect::<Vec<_>>();
        let request = &recorded[index];
        let pairs = form_urlencoded::parse(request.body.as_bytes()).into_owned().collect();
        (pairs, request.authorization.clone())
    }
}

fn client(provider: Arc<ProviderCache>, client_auth: ClientAuth) -> OAuth2Client {
    let settings = OAuth2Settings {
        issuer: "unused-here".into(),
        client_id: CLIENT_ID.into(),
        client_secret: ClientSecret::new(SECRET),
        client_auth,
        scope: DEFAULT_SCOPE.into(),
        request_timeout: Duration::from_secs(5),
        concurrency: 4,
        jwks_refetch_interval: Duration::ZERO,
        jwks_max_age: Duration::from_secs(3600),
    };
    OAuth2Client::new(test_support::client(), provider, settings, Clock::System, Arc::new(Metrics::new(&[])))
        .unwrap()
}

fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

#[tokio::test]
async fn the_authorize_url_carries_pkce_nonce_and_state() {
    let setup = Setup::new(ClientAuth::Basic).await;
    let verifier = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    let nonce = Nonce::new("the-nonce");
    let url = url::Url::parse(&setup.client.authorize_url(REDIRECT, "the-state", &nonce, &verifier).unwrap())
        .unwrap();
    assert_eq!(url.path(), "/authorize");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    for (name, expected) in [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("scope", DEFAULT_SCOPE),
        ("state", "the-state"),
        ("nonce", "the-nonce"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
    ] {
        assert_eq!(value(&pairs, name), Some(expected), "{name}");
    }
    assert!(value(&pairs, "code_verifier").is_none(), "the verifier never goes to the browser");
}

#[tokio::test]
async fn a_code_exchange_with_basic_auth_returns_tokens_and_claims() {
    let setup = Setup::new(ClientAuth::Basic).await;
    setup.answer_tokens(json!({
        "access_token": "at-1", "token_type": "Bearer", "expires_in": 120,
        "refresh_token": "rt-1", "id_token": setup.id_token(Some("n-1"))
    }));
    let verifier = PkceVerifier::generate().unwrap();
    let answer = setup
        .client
        .exchange_code(&AuthorizationCode::new("code-1"), &verifier, REDIRECT, &Nonce::new("n-1"))
        .await
        .unwrap();
    assert_eq!(answer.tokens.access_token.expose(), "at-1");
    assert_eq!(answer.tokens.refresh_token.as_ref().map(RefreshToken::expose), Some("rt-1"));
    assert_eq!(answer.tokens.expires_in, 120);
    let claims = answer.claims.unwrap();
    assert_eq!((claims.sub.as_str(), claims.sid.as_deref()), ("user-1", Some("sid-1")));
    assert!(answer.id_token.is_some());

    let (form, authorization) = setup.form_of(1);
    assert_eq!(value(&form, "grant_type"), Some("authorization_code"));
    assert_eq!(value(&form, "code"), Some("code-1"));
    assert_eq!(value(&form, "redirect_uri"), Some(REDIRECT));
    assert_eq!(value(&form, "code_verifier"), Some(verifier.expose()));
    assert!(value(&form, "client_secret").is_none());
    let encoded = authorization.unwrap().strip_prefix("Basic ").unwrap().to_string();
    let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
    assert_eq!(decoded, "shop-client:s3%3Acr+t%2F%2B%25%C3%A9", "RFC 6749 §2.3.1: urlencoded, then base64");
}

#[tokio::test]
async fn client_secret_post_puts_the_credentials_in_the_form() {
    let setup = Setup::new(ClientAuth::Post).await;
    setup.answer_tokens(
        json!({"access_token": "at-1", "token_type": "bearer", "id_token": setup.id_token(Some("n"))}),
    );
    let verifier = PkceVerifier::generate().unwrap();
    let answer = setup
        .client
        .exchange_code(&AuthorizationCode::new("c"), &verifier, REDIRECT, &Nonce::new("n"))
        .await
        .unwrap();
    assert_eq!(answer.tokens.expires_in, DEFAULT_EXPIRES_IN);
    let (form, authorization) = setup.form_of(1);
    assert_eq!(value(&form, "client_id"), Some(CLIENT_ID));
    assert_eq!(value(&form, "client_secret"), Some(SECRET));
    assert!(authorization.is_none());
}

#[tokio::test]
async fn an_exchange_needs_a_valid_id_token_for_this_login() {
    let setup = Setup::new(ClientAuth::Basic).await;
    let verifier = PkceVerifier::generate().unwrap();
    let code = AuthorizationCode::new("c");
    setup.answer_tokens(json!({"access_token": "a", "id_token": setup.id_token(Some("other-login"))}));
    let error = setup.client.exchange_code(&code, &verifier, REDIRECT, &Nonce::new("n")).await.unwrap_err();
    assert!(matches!(error, OAuth2Error::Jwt(JwtError::Nonce)), "{error:?}");
    setup.answer_tokens(json!({"access_token": "a"}));
    let error = setup.client.exchange_code(&code, &verifier, REDIRECT, &Nonce::new("n")).await.unwrap_err();
    assert!(matches!(error, OAuth2Error::NoIdToken), "{error:?}");
    setup.answer_tokens(
        json!({"access_token": "a", "token_type": "DPoP", "id_token": setup.id_token(Some("n"))}),
    );
    let error = setup.client.exchange_code(&code, &verifier, REDIRECT, &Nonce::new("n")).await.unwrap_err();
    assert!(matches!(error, OAuth2Error::Token(TokenError::Unavailable(_))), "{error:?}");
}

#[tokio::test]
async fn errors_never_show_the_code_the_verifier_or_the_secret() {
    let setup = Setup::new(ClientAuth::Post).await;
    setup.provider.answer(
        "/token",
        StatusCode::BAD_REQUEST,
        r#"{"error":"invalid_grant","error_description":"code code-secret-1 was used"}"#,
    );
    let verifier = PkceVerifier::new("v".repeat(43));
    let error = setup
        .client
        .exchange_code(&AuthorizationCode::new("code-secret-1"), &verifier, REDIRECT, &Nonce::new("n"))
        .await
        .unwrap_err();
    assert!(matches!(&error, OAuth2Error::Token(error) if error.is_grant_rejected()), "{error:?}");
    for shown in [error.to_string(), format!("{error:?}")] {
        for secret in ["code-secret-1", "vvvvvvvv", SECRET] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}

#[tokio::test]
async fn a_refresh_keeps_the_old_refresh_token_when_none_comes_back() {
    let setup = Setup::new(ClientAuth::Basic).await;
    setup.answer_tokens(json!({"access_token": "at-2", "expires_in": "60"}));
    let answer = setup.client.refresh_tokens(&RefreshToken::new("rt-1"), Some("user-1")).await.unwrap();
    assert_eq!(answer.tokens.refresh_token.as_ref().map(RefreshToken::expose), Some("rt-1"));
    assert_eq!(answer.tokens.expires_in, 60);
    assert!(answer.id_token.is_none());
    let (form, _) = setup.form_of(1);
    assert_eq!(value(&form, "grant_type"), Some("refresh_token"));
    assert_eq!(value(&form, "refresh_token"), Some("rt-1"));

    setup.answer_tokens(
        json!({"access_token": "at-3", "refresh_token": "rt-2", "id_token": setup.id_token(None)}),
    );
    let answer = setup.client.refresh_tokens(&RefreshToken::new("rt-1"), Some("user-1")).await.unwrap();
    assert_eq!(answer.tokens.refresh_token.as_ref().map(RefreshToken::expose), Some("rt-2"));
    assert_eq!(answer.claims.map(|c| c.sub), Some("user-1".into()), "no nonce needed at a refresh");

    setup.answer_tokens(json!({"access_token": "at-4", "id_token": setup.id_token(None)}));
    let error = setup.client.refresh_tokens(&RefreshToken::new("rt-2"), Some("user-2")).await.unwrap_err();
    assert!(matches!(error, OAuth2Error::Jwt(JwtError::Subject)), "{error:?}");

    setup.provider.answer("/token", StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#);
    let error = TokenService::refresh(&setup.client, &RefreshToken::new("rt-2")).await.unwrap_err();
    assert!(error.is_grant_rejected());
}

#[tokio::test]
async fn logout_revokes_both_tokens_refresh_first() {
    let setup = Setup::new(ClientAuth::Basic).await;
    setup.client.revoke_all(&AccessToken::new("at-1"), Some(&RefreshToken::new("rt-1"))).await.unwrap();
    let revocations: Vec<_> = setup.provider.recorded().into_iter().filter(|r| r.path == "/revoke").collect();
    assert_eq!(revocations.len(), 2);
    let forms: Vec<Vec<(String, String)>> = revocations
        .iter()
        .map(|r| form_urlencoded::parse(r.body.as_bytes()).into_owned().collect())
        .collect();
    assert_eq!(
        (value(&forms[0], "token"), value(&forms[0], "token_type_hint")),
        (Some("rt-1"), Some("refresh_token"))
    );
    assert_eq!(
        (value(&forms[1], "token"), value(&forms[1], "token_type_hint")),
        (Some("at-1"), Some("access_token"))
    );
    assert!(revocations.iter().all(|r| r.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));

    setup.provider.answer("/revoke", StatusCode::SERVICE_UNAVAILABLE, "");
    let error = TokenService::revoke(&setup.client, &AccessToken::new("at-1")).await.unwrap_err();
    assert!(matches!(error, TokenError::Unavailable(_)));
    setup.provider.answer("/revoke", StatusCode::BAD_REQUEST, r#"{"error":"invalid_client"}"#);
    let error = TokenService::revoke(&setup.client, &AccessToken::new("at-1")).await.unwrap_err();
    assert!(matches!(error, TokenError::Rejected { status: 400, .. }) && !error.is_grant_rejected());
}

#[tokio::test]
async fn before_discovery_every_call_is_unavailable() {
    let client = client(Arc::new(ProviderCache::new()), ClientAuth::Basic);
    let verifier = PkceVerifier::generate().unwrap();
    assert!(matches!(
        client.authorize_url(REDIRECT, "s", &Nonce::new("n"), &verifier),
        Err(TokenError::Unavailable(_))
    ));
    let error = client
        .exchange_code(&AuthorizationCode::new("c"), &verifier, REDIRECT, &Nonce::new("n"))
        .await
        .unwrap_err();
    assert!(matches!(error, OAuth2Error::Token(TokenError::Unavailable(_))));
    assert!(matches!(
        TokenService::refresh(&client, &RefreshToken::new("r")).await,
        Err(TokenError::Unavailable(_))
    ));
}

#[tokio::test]
async fn no_guest_and_no_password_login() {
    let setup = Setup::new(ClientAuth::Basic).await;
    let guest = setup.client.mint_guest().await.unwrap_err();
    let login = setup.client.login("ada", &Password::new("pw"), None).await.unwrap_err();
    for error in [guest, login] {
        assert!(
            matches!(&error, TokenError::Rejected { status: 400, code } if code == "unsupported_grant_type")
        );
        assert!(!error.is_grant_rejected());
    }
    assert_eq!(setup.provider.hits("/token"), 0);
}

#[tokio::test]
async fn logout_tokens_are_checked_through_the_client() {
    let setup = Setup::new(ClientAuth::Basic).await;
    let token = setup.key.sign_with_typ(
        &json!({
            "iss": setup.provider.issuer(), "aud": CLIENT_ID, "iat": setup.start, "jti": "j-1", "sid": "sid-1",
            "events": {crate::oidc::logout_token::BACKCHANNEL_LOGOUT_EVENT: {}}
        }),
        "logout+jwt",
    );
    let subject = setup.client.validate_logout_token(&token).await.unwrap();
    assert_eq!(subject, LogoutSubject { sid: Some("sid-1".into()), sub: None });
    let replay = setup.client.validate_logout_token(&token).await.unwrap_err();
    assert!(matches!(replay, OAuth2Error::Jwt(JwtError::Replayed)));
    // An ID token (it has a nonce) is no logout token.
    let id_token = setup.id_token(Some("n"));
    assert!(setup.client.validate_logout_token(&id_token).await.is_err());
}

#[test]
fn the_end_session_url_names_the_client() {
    let document = json!({
        "issuer": "https://idp.example", "authorization_endpoint": "https://idp.example/a",
        "token_endpoint": "https://idp.example/t", "jwks_uri": "https://idp.example/k",
        "end_session_endpoint": "https://idp.example/logout"
    });
    let metadata =
        crate::oidc::discovery::parse("https://idp.example", &document, &EndpointOverrides::default())
            .unwrap();
    let client = client(Arc::new(ProviderCache::loaded(metadata)), ClientAuth::Basic);
    let url = client
        .end_session_url(Some(&IdToken::new("id.tok.en")), Some("https://shop.example/"))
        .unwrap()
        .unwrap();
    let url = url::Url::parse(&url).unwrap();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(value(&pairs, "client_id"), Some(CLIENT_ID));
    assert_eq!(value(&pairs, "id_token_hint"), Some("id.tok.en"));
    assert_eq!(value(&pairs, "post_logout_redirect_uri"), Some("https://shop.example/"));
}
