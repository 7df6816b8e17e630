//! The `/oauth20/*` endpoints: `POST /oauth20/token` (every grant, client authentication,
//! token-endpoint faults and both error shapes), `GET`/`DELETE /oauth20/access-tokens`
//! (both spellings), and routing of `/oauth20/authorize*` to `authorize.rs`. Also owns
//! appending issued tokens to the `--issued-tokens-file`.
//!
//! Wire formats follow /work/shared/reference/commerce-api-oauth.md §3, §5, §6.

use base64::Engine as _;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, PRAGMA};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tracing::warn;

use crate::authorize;
use crate::faults::{delay, ErrorShape, Faults};
use crate::respond::{
    api_path, constant_time_eq, json, method_not_allowed, not_found, param, parse_form, query_params,
    read_body, request_token, resource_error, set_static, status_or_500, BodyError, DropConnection,
    MockResponse, Params,
};
use crate::state::{AccessLookup, Issue, PasswordEncoding, SessionView, TokenPair};
use crate::stats::Counter;
use crate::{App, Settings};

/// Form bodies of the token endpoint are tiny; anything larger is not a real client.
pub const FORM_LIMIT_BYTES: usize = 64 * 1024;

const INVALID_CLIENT_URI: &str = "http://developers.digitalriver.com/oauth20/overview";
const BAD_CREDENTIALS: &str = "Invalid username or password";
const BAD_REFRESH_TOKEN: &str = "Invalid refresh token";
const ACCESS_TOKENS_RESOURCE: &str = "AccessTokensResource";

/// Routes `/oauth20/*`; only the token endpoint can ask to drop the connection.
pub async fn handle(app: &App, request: Request<Incoming>) -> Result<MockResponse, DropConnection> {
    let path = api_path(request.uri().path()).to_owned();
    match path.as_str() {
        "/oauth20/token" => token_endpoint(app, request).await,
        "/oauth20/access-tokens" | "/oauth20/access-token" => Ok(access_tokens(app, &request)),
        "/oauth20/authorize" => Ok(authorize::page(app, &request)),
        "/oauth20/authorize/login" => Ok(authorize::login(app, request).await),
        _ => Ok(not_found()),
    }
}

/// A token-endpoint failure, rendered in the flat or nested shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Unknown client or wrong secret.
    InvalidClient,
    /// Missing `grant_type` or an unreadable body.
    InvalidRequest,
    /// Body over `FORM_LIMIT_BYTES`.
    TooLarge,
    /// A grant type the mock does not know.
    UnsupportedGrantType,
    /// Bad credentials or refresh token; the text is the description.
    InvalidGrant(&'static str),
    /// `dr_limited_token` is not a live anonymous access token.
    LimitedTokenInvalid,
    /// A public client asked for a confidential-only grant (client-hosted shopper).
    UnauthorizedClient,
    /// The refresh token is unknown, revoked or expired: 401 `invalid_token`, as the API
    /// answers it (reference §3.3d, F5), not RFC 6749's `invalid_grant`.
    RefreshTokenDead,
    /// The `token_status` fault.
    Injected(StatusCode),
    /// The issued-tokens file could not be written.
    ServerError,
}

impl TokenError {
    fn status(self) -> StatusCode {
        match self {
            TokenError::InvalidClient | TokenError::InvalidRequest | TokenError::RefreshTokenDead => {
                StatusCode::UNAUTHORIZED
            }
            TokenError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            TokenError::UnsupportedGrantType
            | TokenError::InvalidGrant(_)
            | TokenError::LimitedTokenInvalid
            | TokenError::UnauthorizedClient => StatusCode::BAD_REQUEST,
            TokenError::Injected(status) => status,
            TokenError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(self) -> &'static str {
        match self {
            TokenError::InvalidClient => "invalid_client",
            TokenError::InvalidRequest | TokenError::TooLarge => "invalid_request",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::InvalidGrant(_) => "invalid_grant",
            TokenError::LimitedTokenInvalid => "dr_limited_token_invalid",
            TokenError::UnauthorizedClient => "unauthorized_client",
            TokenError::RefreshTokenDead => "invalid_token",
            TokenError::Injected(_) => "temporarily_unavailable",
            TokenError::ServerError => "server_error",
        }
    }

    fn description(self) -> &'static str {
        match self {
            TokenError::InvalidClient => "Request Contains Invalid Client ID",
            TokenError::InvalidRequest => "The required parameter is missing or empty",
            TokenError::TooLarge => "The request body is too large",
            TokenError::UnsupportedGrantType => "The authorization grant type is not supported",
            TokenError::InvalidGrant(description) => description,
            TokenError::LimitedTokenInvalid => "The limited token is invalid, expired, or revoked",
            TokenError::UnauthorizedClient => {
                "The client-hosted shopper grant needs a confidential client (Basic key and secret)"
            }
            TokenError::RefreshTokenDead => "The refresh token is invalid or expired.",
            TokenError::Injected(_) => "injected fault",
            TokenError::ServerError => "The server could not record the issued token",
        }
    }

    /// The error body in the requested shape, with the token endpoint's cache headers.
    pub fn into_response(self, shape: ErrorShape) -> MockResponse {
        let body = match shape {
            ErrorShape::Flat => self.flat_body(),
            ErrorShape::Nested => json!({"errors": {"error": [{
                "code": self.code(),
                "description": self.description(),
            }]}}),
        };
        no_store(json(self.status(), &body))
    }

    fn flat_body(self) -> Value {
        let mut body = json!({"error": self.code(), "error_description": self.description()});
        if self == TokenError::InvalidClient {
            if let Some(object) = body.as_object_mut() {
                object.insert("error_uri".to_owned(), INVALID_CLIENT_URI.into());
            }
        }
        body
    }
}

/// The grant a token call asks for; decides which counter it bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    Anonymous,
    Login,
    Refresh,
    ClientCredentials,
    Unsupported,
    Missing,
}

impl Grant {
    /// `password` without a `username` parameter is DR's anonymous (guest) token, and so
    /// is the literal `username=anonymous&password=anonymous` (not base64) that DR's own
    /// HTML5 client sends (reference §3.3a, F7).
    fn classify(params: &Params) -> Grant {
        let literal_anonymous =
            param(params, "username") == Some("anonymous") && param(params, "password") == Some("anonymous");
        match param(params, "grant_type") {
            None | Some("") => Grant::Missing,
            Some("password") if param(params, "username").is_none() || literal_anonymous => Grant::Anonymous,
            Some("password") => Grant::Login,
            Some("refresh_token") => Grant::Refresh,
            Some("client_credentials") => Grant::ClientCredentials,
            Some(_) => Grant::Unsupported,
        }
    }

    fn counter(self) -> Option<Counter> {
        match self {
            Grant::Anonymous => Some(Counter::Anonymous),
            Grant::Login => Some(Counter::Login),
            Grant::Refresh => Some(Counter::Refresh),
            Grant::ClientCredentials => Some(Counter::ClientCredentials),
            Grant::Unsupported | Grant::Missing => None,
        }
    }
}

/// A parsed token-endpoint request: form body merged with the query string.
struct TokenCall {
    authorization: Option<HeaderValue>,
    params: Params,
    grant: Grant,
}

impl TokenCall {
    /// Form values come first so they win over query values of the same name.
    async fn read(request: Request<Incoming>) -> Result<TokenCall, TokenError> {
        let (parts, body) = request.into_parts();
        let body = read_body(body, FORM_LIMIT_BYTES).await.map_err(|error| match error {
            BodyError::TooLarge => TokenError::TooLarge,
            BodyError::Broken => TokenError::InvalidRequest,
        })?;
        let mut params = parse_form(&body);
        params.extend(query_params(&parts.uri));
        let grant = Grant::classify(&params);
        Ok(TokenCall { authorization: parts.headers.get(AUTHORIZATION).cloned(), params, grant })
    }
}

/// `POST /oauth20/token`. Counting happens before faults so faulted calls still count.
async fn token_endpoint(app: &App, request: Request<Incoming>) -> Result<MockResponse, DropConnection> {
    if request.method() == Method::OPTIONS {
        return Ok(cors_preflight());
    }
    if request.method() != Method::POST {
        return Ok(method_not_allowed("POST, OPTIONS"));
    }
    app.stats.bump(Counter::TokenTotal);
    let call = TokenCall::read(request).await;
    if let Some(counter) = call.as_ref().ok().and_then(|call| call.grant.counter()) {
        app.stats.bump(counter);
    }
    let faults = app.faults.after_token_hold().await;
    delay(faults.token_latency_ms).await;
    if faults.token_close {
        app.stats.bump(Counter::TokenFailed);
        return Err(DropConnection);
    }
    let response = match call {
        Ok(call) => answer(app, &call, &faults).await,
        Err(error) => error.into_response(faults.error_shape),
    };
    if response.status() != StatusCode::OK {
        app.stats.bump(Counter::TokenFailed);
    }
    Ok(response)
}

async fn answer(app: &App, call: &TokenCall, faults: &Faults) -> MockResponse {
    let pair = match grant_tokens(app, call, faults) {
        Ok(pair) => pair,
        Err(error) => return error.into_response(faults.error_shape),
    };
    if let Err(error) = record_issued(&app.settings, &pair).await {
        warn!("cannot append to the issued-tokens file: {error}");
        return TokenError::ServerError.into_response(faults.error_shape);
    }
    token_success(&pair, faults)
}

fn grant_tokens(app: &App, call: &TokenCall, faults: &Faults) -> Result<TokenPair, TokenError> {
    if let Some(status) = faults.token_status {
        return Err(TokenError::Injected(status_or_500(status)));
    }
    let client = client_of(&app.settings, call.authorization.as_ref(), &call.params);
    if client == Client::Invalid {
        return Err(TokenError::InvalidClient);
    }
    match call.grant {
        Grant::Missing => Err(TokenError::InvalidRequest),
        Grant::Unsupported => Err(TokenError::UnsupportedGrantType),
        Grant::Anonymous => Ok(app.store().mint_anonymous()),
        Grant::ClientCredentials => client_credentials(app, &call.params, client),
        Grant::Login => password_login(app, &call.params),
        Grant::Refresh => refresh(app, &call.params, faults),
    }
}

/// How the caller of the token endpoint authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// Basic with the API key and the secret.
    Confidential,
    /// Basic with the API key and an empty secret, or a `client_id` parameter alone.
    Public,
    /// Unknown key, wrong secret, malformed Basic, or no client at all.
    Invalid,
}

/// Basic credentials win when present (even if malformed); otherwise a public app's
/// `client_id` parameter. Following the reference (§3.1), a Basic header with an empty
/// secret is a public app and is accepted too.
fn client_of(settings: &Settings, authorization: Option<&HeaderValue>, params: &Params) -> Client {
    let known = |id: &str| constant_time_eq(id.as_bytes(), settings.client_id.as_bytes());
    match authorization.and_then(basic_credentials) {
        Some(Some((id, secret))) if known(&id) && secret.is_empty() => Client::Public,
        Some(Some((id, secret)))
            if known(&id) && constant_time_eq(secret.as_bytes(), settings.client_secret.as_bytes()) =>
        {
            Client::Confidential
        }
        Some(_) => Client::Invalid,
        None if param(params, "client_id").is_some_and(known) => Client::Public,
        None => Client::Invalid,
    }
}

/// With `dr_external_reference_id`: the client-hosted shopper, an authenticated token,
/// confidential clients only (reference §3.3c, F6), the guest's cart carried over by
/// `dr_limited_token`. Without: a guest token, as DR's Postman collection uses it.
fn client_credentials(app: &App, params: &Params, client: Client) -> Result<TokenPair, TokenError> {
    let reference = param(params, "dr_external_reference_id").filter(|reference| !reference.is_empty());
    let Some(reference) = reference else {
        return Ok(app.store().mint_anonymous());
    };
    if client != Client::Confidential {
        return Err(TokenError::UnauthorizedClient);
    }
    let limited_token = param(params, "dr_limited_token").filter(|token| !token.is_empty());
    app.store().login_external(reference, limited_token).map_err(|_| TokenError::LimitedTokenInvalid)
}

/// `None`: not a Basic header. `Some(None)`: Basic but undecodable.
fn basic_credentials(value: &HeaderValue) -> Option<Option<(String, String)>> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    Some(decoded.map(|pair| match pair.split_once(':') {
        Some((id, secret)) => (id.to_owned(), secret.to_owned()),
        None => (pair, String::new()),
    }))
}

/// ROPC login: the password must be base64 of the stored one, as DR's clients send it.
fn password_login(app: &App, params: &Params) -> Result<TokenPair, TokenError> {
    let username = param(params, "username").unwrap_or_default();
    let password = param(params, "password").unwrap_or_default();
    let limited_token = param(params, "dr_limited_token").filter(|token| !token.is_empty());
    let mut store = app.store();
    if !store.verify_password(username, password, PasswordEncoding::Base64) {
        return Err(TokenError::InvalidGrant(BAD_CREDENTIALS));
    }
    store.login(username, limited_token, Issue::WithRefresh).map_err(|_| TokenError::LimitedTokenInvalid)
}

fn refresh(app: &App, params: &Params, faults: &Faults) -> Result<TokenPair, TokenError> {
    if faults.reject_refresh {
        return Err(TokenError::InvalidGrant(BAD_REFRESH_TOKEN));
    }
    let refresh_token = param(params, "refresh_token").unwrap_or_default();
    app.store().refresh(refresh_token, faults.rotate_refresh).ok_or(TokenError::RefreshTokenDead)
}

/// The 200 body, shaped by the `wrap_token`, `expires_in` and `expires_in_string` faults.
fn token_success(pair: &TokenPair, faults: &Faults) -> MockResponse {
    let access_ttl_secs = faults.expires_in.unwrap_or(pair.expires_in);
    let expires_in = if faults.expires_in_string {
        Value::from(access_ttl_secs.to_string())
    } else {
        Value::from(access_ttl_secs)
    };
    let mut token = json!({
        "access_token": pair.access_token,
        "token_type": "bearer",
        "expires_in": expires_in,
    });
    if let (Some(refresh_token), Some(object)) = (&pair.refresh_token, token.as_object_mut()) {
        object.insert("refresh_token".to_owned(), refresh_token.as_str().into());
    }
    let body = if faults.wrap_token { json!({ "token": token }) } else { token };
    no_store(json(StatusCode::OK, &body))
}

/// Token responses must never be cached (RFC 6749 §5.1); DR also allows any origin.
fn no_store(mut response: MockResponse) -> MockResponse {
    set_static(&mut response, CACHE_CONTROL, "no-store");
    set_static(&mut response, PRAGMA, "no-cache");
    set_static(&mut response, http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    response
}

/// DR's documented CORS answer for `OPTIONS /oauth20/token` (reference §2).
fn cors_preflight() -> MockResponse {
    use http::header::{
        ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_ORIGIN,
    };
    let mut response = crate::respond::empty(StatusCode::OK);
    set_static(&mut response, ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    set_static(&mut response, ACCESS_CONTROL_ALLOW_METHODS, "POST,OPTIONS");
    set_static(
        &mut response,
        ACCESS_CONTROL_ALLOW_HEADERS,
        "Authorization,Content-Type,Accept,Accept-Language",
    );
    set_static(&mut response, ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    response
}

/// Appends the pair's tokens to the issued-tokens file and waits until the write has
/// landed, so a test reading the file after the response sees every token.
pub async fn record_issued(settings: &Settings, pair: &TokenPair) -> std::io::Result<()> {
    let Some(path) = &settings.issued_tokens_file else {
        return Ok(());
    };
    let mut lines = format!("{}\n", pair.access_token);
    if let Some(refresh_token) = &pair.refresh_token {
        lines.push_str(refresh_token);
        lines.push('\n');
    }
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
    // One write of both lines: O_APPEND keeps concurrent mints from interleaving.
    file.write_all(lines.as_bytes()).await?;
    file.flush().await
}

/// `GET` (session info) and `DELETE` (revoke the pair) on `/oauth20/access-tokens`.
fn access_tokens(app: &App, request: &Request<Incoming>) -> MockResponse {
    let deleting = match *request.method() {
        Method::GET => false,
        Method::DELETE => true,
        _ => return method_not_allowed("GET, DELETE"),
    };
    let counter = if deleting { Counter::AccessTokenDelete } else { Counter::AccessTokenGet };
    app.stats.bump(counter);
    if let Some(status) = app.faults.snapshot().access_token_status {
        let status = status_or_500(status);
        let body_code = "injected_fault";
        return resource_error(status, ACCESS_TOKENS_RESOURCE, body_code, "injected fault");
    }
    let query = query_params(request.uri());
    let source = request_token(request.headers(), &query);
    let Some(token) = source.token() else {
        return token_rejected("Missing token");
    };
    let lookup = {
        let mut store = app.store();
        let lookup = store.lookup_access(token);
        if deleting && matches!(lookup, AccessLookup::Live(_)) {
            store.revoke_pair_of(token);
        }
        lookup
    };
    match lookup {
        AccessLookup::Live(view) => no_store(json(StatusCode::OK, &session_info(&view))),
        AccessLookup::Expired => token_rejected("Session expired"),
        AccessLookup::Unknown => token_rejected("Invalid token for specified shopper"),
    }
}

fn token_rejected(description: &str) -> MockResponse {
    let status = StatusCode::UNAUTHORIZED;
    resource_error(status, ACCESS_TOKENS_RESOURCE, "invalid_token", description)
}

/// DR's session-info body (reference §5): no token text in it, ever.
pub fn session_info(view: &SessionView) -> Value {
    let authenticated = if view.user.is_some() { "true" } else { "false" };
    json!({
        "sessionId": view.session_id,
        "userId": view.user_id,
        "externalReferenceId": view.external_reference_id,
        "authenticated": authenticated,
        "locale": "en_US",
        "currency": "USD",
        "cartId": view.cart_id,
        "clientIpAddress": "127.0.0.1",
        "domain": "commerce-mock.local",
        "expiresIn": view.expires_in.as_secs(),
        "createdOn": humantime::format_rfc3339_millis(view.created_on).to_string(),
        "lastAccessed": humantime::format_rfc3339_millis(view.last_accessed).to_string(),
        "themeId": 38_742_700,
        "sessionTag": view.session_tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            client_id: "key".to_owned(),
            client_secret: "secret".to_owned(),
            issued_tokens_file: None,
            redirect_uris: None,
        }
    }

    fn basic(credentials: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("valid header")
    }

    #[test]
    fn basic_auth_needs_matching_id_and_secret() {
        let params = Params::new();
        assert_eq!(client_of(&settings(), Some(&basic("key:secret")), &params), Client::Confidential);
        assert_eq!(client_of(&settings(), Some(&basic("key:")), &params), Client::Public);
        assert_eq!(client_of(&settings(), Some(&basic("key:wrong")), &params), Client::Invalid);
        assert_eq!(client_of(&settings(), Some(&basic("other:secret")), &params), Client::Invalid);
        assert_eq!(client_of(&settings(), Some(&basic("other:")), &params), Client::Invalid);
    }

    #[test]
    fn malformed_basic_is_not_rescued_by_client_id_param() {
        let params = parse_form(b"client_id=key");
        let garbage = HeaderValue::from_static("Basic !!!");
        assert_eq!(client_of(&settings(), Some(&garbage), &params), Client::Invalid);
        assert_eq!(client_of(&settings(), None, &params), Client::Public);
        assert_eq!(client_of(&settings(), None, &parse_form(b"client_id=nope")), Client::Invalid);
        assert_eq!(client_of(&settings(), None, &Params::new()), Client::Invalid);
    }

    #[test]
    fn grants_are_classified_like_dr() {
        assert_eq!(Grant::classify(&parse_form(b"grant_type=password")), Grant::Anonymous);
        let login = parse_form(b"grant_type=password&username=u&password=p");
        assert_eq!(Grant::classify(&login), Grant::Login);
        assert_eq!(Grant::classify(&parse_form(b"grant_type=")), Grant::Missing);
        assert_eq!(Grant::classify(&parse_form(b"grant_type=code")), Grant::Unsupported);
        let literal = parse_form(b"grant_type=password&username=anonymous&password=anonymous");
        assert_eq!(Grant::classify(&literal), Grant::Anonymous);
        let half = parse_form(b"grant_type=password&username=anonymous&password=x");
        assert_eq!(Grant::classify(&half), Grant::Login);
    }

    #[test]
    fn error_shapes_match_the_reference() {
        let flat = TokenError::InvalidClient.flat_body();
        assert_eq!(flat["error"], "invalid_client");
        assert_eq!(flat["error_description"], "Request Contains Invalid Client ID");
        assert_eq!(flat["error_uri"], INVALID_CLIENT_URI);
        let grant = TokenError::InvalidGrant(BAD_CREDENTIALS).flat_body();
        assert!(grant.get("error_uri").is_none());
    }
}
