//! The Digital River token client: everything tokengate says to the Commerce API's
//! `/oauth20/*`, as the first implementation of [`TokenService`].
//!
//! Digital River flavor (wire formats in `shared/reference/commerce-api-oauth.md`):
//! guest tokens by `grant_type=password` with HTTP Basic `api key:secret`; shopper login by
//! the password grant with the password encoded as `password_encoding` says and the guest
//! token as `dr_limited_token`; a client-hosted shopper by `grant_type=client_credentials`
//! with `dr_external_reference_id` (and the guest token as `dr_limited_token`); refresh by `grant_type=refresh_token`; revocation by
//! `DELETE` and session details by `GET` on `access_token_path`.
//!
//! Token bodies are read tolerantly (flat or wrapped in `token`, `expires_in` as number or
//! string), and errors in both the OAuth shape and DR's `{"errors":{"error":[…]}}` shape.
//! It never sees the browser's request and stores nothing; it returns a [`TokenSet`] or a
//! [`TokenError`] and leaves policy to the session layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{TokenDetails, TokenError, TokenService, TokenSet};
use crate::body::Body;
use crate::config::{BaseUrl, OAuthConfig, PasswordEncoding};
use crate::metrics::{Metrics, TokenOp, TokenOutcome};
use crate::secret::{AccessToken, Password, RefreshToken};
use crate::upstream::HttpClient;

/// How long a new guest waits for a token-endpoint slot before it is refused.
pub const MINT_SLOT_WAIT: Duration = Duration::from_secs(2);

/// Largest token-endpoint answer read; anything bigger is not a token response.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The client for `/oauth20/*`.
pub struct DigitalRiverClient {
    http: HttpClient,
    token_uri: Uri,
    access_token_uri: Uri,
    basic_auth: HeaderValue,
    password_encoding: PasswordEncoding,
    request_timeout: Duration,
    /// Caps concurrent token-endpoint calls so no flood here becomes a flood there.
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for DigitalRiverClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitalRiverClient").field("token_uri", &self.token_uri).finish_non_exhaustive()
    }
}

impl DigitalRiverClient {
    /// A client for the API at `base`, authenticating as `config.client_id`, with at most
    /// `concurrency` token-endpoint calls in flight.
    pub fn new(
        http: HttpClient,
        base: &BaseUrl,
        config: &OAuthConfig,
        request_timeout: Duration,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let credentials = format!("{}:{}", config.client_id, config.client_secret.expose());
        let mut basic_auth = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
            .map_err(|_| "oauth.client_id: not valid in an HTTP header".to_string())?;
        basic_auth.set_sensitive(true);
        Ok(Self {
            http,
            token_uri: absolute_uri(base, &config.token_path)?,
            access_token_uri: absolute_uri(base, &config.access_token_path)?,
            basic_auth,
            password_encoding: config.password_encoding,
            request_timeout,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            metrics,
        })
    }

    /// The API's session details for a token (`authenticated`, `cartId`, `locale`, …),
    /// with nothing secret in them.
    async fn session_details(&self, access_token: &AccessToken) -> Result<Value, TokenError> {
        let (status, body) = self.bearer_request(Method::GET, access_token).await?;
        if !status.is_success() {
            return Err(classify(status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|_| TokenError::Unavailable("session details are not JSON".into()))
    }

    fn record<T>(&self, op: TokenOp, result: &Result<T, TokenError>, started: Instant) {
        let outcome = match result {
            Ok(_) => TokenOutcome::Ok,
            Err(error) if error.is_grant_rejected() => TokenOutcome::Rejected,
            Err(_) => TokenOutcome::Unavailable,
        };
        self.metrics.record_token_call(op, outcome, started.elapsed());
    }

    /// Waits for a token-endpoint slot, at most the request timeout.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, TokenError> {
        match tokio::time::timeout(self.request_timeout, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(TokenError::Busy),
        }
    }

    async fn token_request_waiting(&self, body: String) -> Result<TokenSet, TokenError> {
        let slot = self.slot().await?;
        self.token_request(body, slot).await
    }

    /// One token-endpoint call; `_slot` is held until the answer is read.
    async fn token_request(&self, body: String, _slot: OwnedSemaphorePermit) -> Result<TokenSet, TokenError> {
        let request = Request::post(self.token_uri.clone())
            .header(AUTHORIZATION, self.basic_auth.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Body::full(body))
            .map_err(|_| TokenError::Unavailable("could not build the token request".into()))?;
        let (status, body) = self.send(request).await?;
        if status != StatusCode::OK {
            return Err(classify(status, &body));
        }
        parse_token_set(&body)
    }

    async fn bearer_request(
        &self,
        method: Method,
        token: &AccessToken,
    ) -> Result<(StatusCode, Bytes), TokenError> {
        let _slot = self.slot().await?;
        let mut authorization = HeaderValue::from_str(&format!("bearer {}", token.expose()))
            .map_err(|_| TokenError::Unavailable("token is not a valid header value".into()))?;
        authorization.set_sensitive(true);
        let request = Request::builder()
            .method(method)
            .uri(self.access_token_uri.clone())
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json")
            .body(Body::Empty)
            .map_err(|_| TokenError::Unavailable("could not build the request".into()))?;
        self.send(request).await
    }

    /// Sends and reads the whole (small) answer, all within `request_timeout`.
    async fn send(&self, request: Request<Body>) -> Result<(StatusCode, Bytes), TokenError> {
        send_bounded(&self.http, request, self.request_timeout, MAX_TOKEN_RESPONSE_BYTES).await
    }
}

/// Sends `request` and reads at most `limit` bytes of the answer, all within `timeout`
/// (also the OpenID client's exchanges, `oidc::fetch`).
pub(crate) async fn send_bounded(
    http: &HttpClient,
    mut request: Request<Body>,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), TokenError> {
    let span = crate::trace::ClientSpan::start(&mut request, crate::trace::Callee::TokenService);
    let exchange = async {
        let response = http.request(request).await.map_err(|error| {
            TokenError::Unavailable(format!(
                "token endpoint: {}",
                crate::forward::describe_client_error(&error)
            ))
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|_| TokenError::Unavailable("token endpoint answer unreadable or too large".into()))?
            .to_bytes();
        Ok((status, body))
    };
    let result = tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(TokenError::Timeout));
    match &result {
        Ok((status, _)) => span.answered(*status),
        Err(TokenError::Timeout) => span.failed("timeout"),
        Err(_) => span.failed("unavailable"),
    }
    result
}

impl TokenService for DigitalRiverClient {
    /// An anonymous shopper (guest, "limited") token.
    ///
    /// Waits at most [`MINT_SLOT_WAIT`] for a token-endpoint slot: a burst of new shoppers
    /// queues briefly, a flood of cookieless requests is shed (`Busy`) instead of piling up.
    async fn mint_guest(&self) -> Result<TokenSet, TokenError> {
        let started = Instant::now();
        let slot = tokio::time::timeout(MINT_SLOT_WAIT, Arc::clone(&self.slots).acquire_owned()).await;
        let result = match slot {
            Ok(Ok(slot)) => self.token_request(form(&[("grant_type", "password")]), slot).await,
            _ => Err(TokenError::Busy),
        };
        self.record(TokenOp::Mint, &result, started);
        result
    }

    /// A shopper token for `username`; `limited` carries the guest's session and cart over.
    async fn login(
        &self,
        username: &str,
        password: &Password,
        limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        let encoded;
        let password = match self.password_encoding {
            PasswordEncoding::Base64 => {
                encoded = STANDARD.encode(password.expose());
                encoded.as_str()
            }
            PasswordEncoding::Plain => password.expose(),
        };
        let mut pairs = vec![("grant_type", "password"), ("username", username), ("password", password)];
        if let Some(token) = limited {
            pairs.push(("dr_limited_token", token.expose()));
        }
        let started = Instant::now();
        let result = self.token_request_waiting(form(&pairs)).await;
        self.record(TokenOp::Login, &result, started);
        result
    }

    /// `grant_type=client_credentials&dr_external_reference_id=…` (HTTP Basic as for every
    /// grant), with the guest token as `dr_limited_token` to carry the cart over.
    async fn login_external(
        &self,
        external_reference_id: &str,
        limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        let mut pairs =
            vec![("grant_type", "client_credentials"), ("dr_external_reference_id", external_reference_id)];
        if let Some(token) = limited {
            pairs.push(("dr_limited_token", token.expose()));
        }
        let started = Instant::now();
        let result = self.token_request_waiting(form(&pairs)).await;
        self.record(TokenOp::Login, &result, started);
        result
    }

    /// New tokens for a refresh token. The API may rotate the refresh token.
    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenSet, TokenError> {
        let started = Instant::now();
        let body = form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose())]);
        let result = self.token_request_waiting(body).await;
        self.record(TokenOp::Refresh, &result, started);
        result
    }

    /// Revokes an access token (and, at Digital River, its session's refresh token).
    async fn revoke(&self, access_token: &AccessToken) -> Result<(), TokenError> {
        let started = Instant::now();
        let result = match self.bearer_request(Method::DELETE, access_token).await {
            Ok((status, _)) if status.is_success() => Ok(()),
            // Already dead upstream: the goal of a revocation is reached.
            Ok((StatusCode::UNAUTHORIZED, _)) => Ok(()),
            Ok((status, body)) => Err(classify(status, &body)),
            Err(error) => Err(error),
        };
        self.record(TokenOp::Revoke, &result, started);
        result
    }

    /// `GET` on `access_token_path`: `authenticated` (a boolean, or the string "true")
    /// and `expiresIn`.
    async fn details(&self, access_token: &AccessToken) -> Result<TokenDetails, TokenError> {
        let details = self.session_details(access_token).await?;
        let authenticated = match &details["authenticated"] {
            Value::Bool(value) => *value,
            Value::String(text) => text == "true",
            _ => false,
        };
        Ok(TokenDetails { authenticated, expires_in: details["expiresIn"].as_u64() })
    }
}

fn absolute_uri(base: &BaseUrl, path: &str) -> Result<Uri, String> {
    Uri::builder()
        .scheme(base.scheme.clone())
        .authority(base.authority.clone())
        .path_and_query(format!("{}{}", base.path, path))
        .build()
        .map_err(|_| format!("{path:?} does not make a valid URL with upstream.base_url"))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::with_capacity(256));
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// Reads `{"access_token",…}` or `{"token":{"access_token",…}}`, `expires_in` as a
/// number or a string.
fn parse_token_set(body: &[u8]) -> Result<TokenSet, TokenError> {
    let garbage = || TokenError::Unavailable("token endpoint answered 200 without a usable token".into());
    let value: Value = serde_json::from_slice(body).map_err(|_| garbage())?;
    let object = value.get("token").filter(|v| v.is_object()).unwrap_or(&value);
    let access_token =
        object.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or_else(garbage)?;
    let refresh_token = object.get("refresh_token").and_then(Value::as_str).filter(|t| !t.is_empty());
    let expires_in = match object.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    // Digital River documents 60 minutes as the default lifetime when none is said.
    .unwrap_or(3600);
    Ok(TokenSet {
        access_token: AccessToken::new(access_token),
        refresh_token: refresh_token.map(RefreshToken::new),
        expires_in,
    })
}

/// Turns a non-200 answer into an error: 5xx and 429 are the service's trouble, anything
/// else a rejection with the code found in either error shape.
pub(crate) fn classify(status: StatusCode, body: &[u8]) -> TokenError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return TokenError::Unavailable(format!("token endpoint answered {}", status.as_u16()));
    }
    TokenError::Rejected { status: status.as_u16(), code: error_code(body).unwrap_or_default() }
}

/// The error code from `{"error":"x"}`, `{"errors":{"error":[{"code":"x"}]}}` or
/// `{"errors":{"error":{"code":"x"}}}`, kept only if it looks like a code.
fn error_code(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let code = match value.get("error") {
        Some(Value::String(code)) => code.as_str(),
        _ => {
            let nested = value.get("errors")?.get("error")?;
            let first = match nested {
                Value::Array(items) => items.first()?,
                other => other,
            };
            first.get("code")?.as_str()?
        }
    };
    let looks_like_a_code =
        code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    looks_like_a_code.then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_and_wrapped_token_bodies() {
        let flat = br#"{"access_token":"a1","token_type":"bearer","expires_in":86397,"refresh_token":"r1"}"#;
        let set = parse_token_set(flat).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.access_token.expose(), "a1");
        assert_eq!(set.refresh_token.as_ref().map(RefreshToken::expose), Some("r1"));
        assert_eq!(set.expires_in, 86397);

        let wrapped = br#"{"token":{"access_token":"a2","expires_in":"3599"}}"#;
        let set = parse_token_set(wrapped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.access_token.expose(), "a2");
        assert!(set.refresh_token.is_none());
        assert_eq!(set.expires_in, 3599);
    }

    #[test]
    fn a_body_without_a_token_is_unavailable_not_a_panic() {
        for body in [&b""[..], b"{}", b"[1]", br#"{"access_token":""}"#, b"\xff\xfe"] {
            assert!(matches!(parse_token_set(body), Err(TokenError::Unavailable(_))));
        }
    }

    #[test]
    fn reads_error_codes_in_every_shape() {
        assert_eq!(
            error_code(br#"{"error":"invalid_grant","error_description":"x"}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(
            error_code(br#"{"errors":{"error":[{"code":"invalid_token"}]}}"#).as_deref(),
            Some("invalid_token")
        );
        assert_eq!(
            error_code(br#"{"errors":{"error":{"code":"invalid_client"}}}"#).as_deref(),
            Some("invalid_client")
        );
        assert_eq!(error_code(br#"{"error":"has spaces and <html>"}"#), None);
    }

    #[test]
    fn only_dead_grants_count_as_rejected() {
        let rejected =
            |status, code: &str| TokenError::Rejected { status, code: code.into() }.is_grant_rejected();
        assert!(rejected(400, "invalid_grant"));
        assert!(rejected(401, ""));
        assert!(!rejected(401, "invalid_client"));
        assert!(!rejected(400, "invalid_request"));
        assert!(!TokenError::Timeout.is_grant_rejected());
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, b""), TokenError::Unavailable(_)));
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, b""), TokenError::Unavailable(_)));
    }
}
