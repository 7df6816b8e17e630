//! OpenID Connect Discovery 1.0: the provider's metadata, fetched once from
//! `<issuer>/.well-known/openid-configuration` and kept for the process lifetime.
//!
//! The document's `issuer` must equal the configured issuer exactly (Discovery §4.3: no
//! normalisation, so a document served for another issuer is refused). Endpoints the
//! config names (`*_endpoint` overrides) take precedence over the document's. Every
//! endpoint must be `https`, or `http` on a loopback host (tests, a sidecar provider).
//!
//! [`ProviderCache`] is what the app keeps: loaded in the background at startup with
//! retry and capped exponential backoff, read lock-free (`arc-swap`) on every login and
//! refresh. Until it is loaded every read is [`NotLoaded`], which the caller maps to 503
//! `token_service_unavailable`: a provider that is down at start must not stop tokengate.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::Uri;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::fetch;
use crate::upstream::HttpClient;

/// Signing algorithms tokengate accepts for ID and logout tokens: asymmetric only (never
/// `none`, never HMAC with the client secret), each one `jsonwebtoken` verifies with ring.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What tokengate needs to know about the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderMetadata {
    /// Exactly the configured issuer (checked).
    pub issuer: String,
    /// Where the browser is sent to log in (may carry its own query).
    pub authorization_endpoint: url::Url,
    pub token_endpoint: Uri,
    /// RFC 7009; `None` when the provider has none (then logout revokes nothing).
    pub revocation_endpoint: Option<Uri>,
    /// RP-Initiated Logout 1.0; `None` when the provider has none.
    pub end_session_endpoint: Option<url::Url>,
    pub jwks_uri: Uri,
    /// The provider's ID token algorithms that tokengate accepts, never empty.
    pub id_token_algorithms: Vec<Algorithm>,
    /// `backchannel_logout_supported` (Back-Channel Logout 1.0 §2.1).
    pub backchannel_logout_supported: bool,
    /// `backchannel_logout_session_supported`: the provider puts `sid` in logout tokens.
    pub backchannel_logout_session_supported: bool,
    /// `token_endpoint_auth_methods_supported` (defaults to `client_secret_basic`).
    pub token_endpoint_auth_methods: Vec<String>,
    /// `code_challenge_methods_supported`, as advertised (may be empty: many providers
    /// support S256 without saying so).
    pub code_challenge_methods: Vec<String>,
}

/// Endpoints from the config; each one set replaces the document's. A value starting with
/// `/` is a path on the issuer's origin, anything else an absolute URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOverrides {
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
}

/// Why the provider's metadata could not be had. Messages hold no secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The document could not be fetched (network, status, timeout, not JSON).
    #[error("discovery document unavailable: {0}")]
    Unavailable(String),
    /// The document was fetched but cannot be used (wrong issuer, missing endpoint, …).
    #[error("discovery document unusable: {0}")]
    Invalid(String),
}

/// The metadata is not loaded yet (map to 503 `token_service_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the OpenID provider's metadata is not loaded yet")]
pub struct NotLoaded;

/// The discovery URL for `issuer` (Discovery §4.1: a trailing `/` is removed first).
pub fn discovery_url(issuer: &str) -> Result<Uri, DiscoveryError> {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
        .parse()
        .map_err(|_| DiscoveryError::Invalid("issuer is not a URL".into()))
}

/// Fetches and checks the metadata of `issuer`.
pub async fn discover(
    http: &HttpClient,
    issuer: &str,
    overrides: &EndpointOverrides,
    timeout: Duration,
) -> Result<ProviderMetadata, DiscoveryError> {
    let uri = discovery_url(issuer)?;
    let document = fetch::get_json(http, &uri, timeout)
        .await
        .map_err(|error| DiscoveryError::Unavailable(error.to_string()))?;
    parse(issuer, &document, overrides)
}

/// Checks a discovery document against the configured `issuer` and applies `overrides`.
pub fn parse(
    issuer: &str,
    document: &Value,
    overrides: &EndpointOverrides,
) -> Result<ProviderMetadata, DiscoveryError> {
    let found = document.get("issuer").and_then(Value::as_str).unwrap_or_default();
    if found != issuer {
        return Err(DiscoveryError::Invalid("issuer differs from the configured issuer".into()));
    }
    let origin =
        url::Url::parse(issuer).map_err(|_| DiscoveryError::Invalid("issuer is not a URL".into()))?;
    let endpoint = |name: &str, chosen: &Option<String>| -> Result<Option<url::Url>, DiscoveryError> {
        let text = match chosen {
            Some(value) => Some(value.as_str()),
            None => document.get(name).and_then(Value::as_str),
        };
        text.map(|text| endpoint_url(&origin, name, text)).transpose()
    };
    let required = |name: &str, chosen: &Option<String>| {
        endpoint(name, chosen)?.ok_or_else(|| DiscoveryError::Invalid(format!("no {name}")))
    };
    Ok(ProviderMetadata {
        issuer: issuer.to_string(),
        authorization_endpoint: required("authorization_endpoint", &overrides.authorization_endpoint)?,
        token_endpoint: to_uri(required("token_endpoint", &overrides.token_endpoint)?)?,
        revocation_endpoint: endpoint("revocation_endpoint", &overrides.revocation_endpoint)?
            .map(to_uri)
            .transpose()?,
        end_session_endpoint: endpoint("end_session_endpoint", &overrides.end_session_endpoint)?,
        jwks_uri: to_uri(required("jwks_uri", &overrides.jwks_uri)?)?,
        id_token_algorithms: accepted_algorithms(document)?,
        backchannel_logout_supported: flag(document, "backchannel_logout_supported"),
        backchannel_logout_session_supported: flag(document, "backchannel_logout_session_supported"),
        token_endpoint_auth_methods: strings(document, "token_endpoint_auth_methods_supported")
            .unwrap_or_else(|| vec!["client_secret_basic".into()]),
        code_challenge_methods: strings(document, "code_challenge_methods_supported").unwrap_or_default(),
    })
}

/// The advertised `id_token_signing_alg_values_supported` that tokengate accepts; RS256
/// when none is advertised (it is the one every provider must support, Discovery §3).
fn accepted_algorithms(document: &Value) -> Result<Vec<Algorithm>, DiscoveryError> {
    let Some(advertised) = strings(document, "id_token_signing_alg_values_supported") else {
        return Ok(vec![Algorithm::RS256]);
    };
    let accepted: Vec<Algorithm> = advertised
        .iter()
        .filter_map(|name| name.parse::<Algorithm>().ok())
        .filter(|alg| ASYMMETRIC_ALGORITHMS.contains(alg))
        .collect();
    if accepted.is_empty() {
        return Err(DiscoveryError::Invalid("no supported asymmetric ID token algorithm".into()));
    }
    Ok(accepted)
}

fn flag(document: &Value, name: &str) -> bool {
    document.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn strings(document: &Value, name: &str) -> Option<Vec<String>> {
    let items = document.get(name)?.as_array()?;
    Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

/// An endpoint as a URL: a `/path` joins the issuer's origin; the result must be https,
/// or http on a loopback host.
fn endpoint_url(origin: &url::Url, name: &str, text: &str) -> Result<url::Url, DiscoveryError> {
    let invalid = || DiscoveryError::Invalid(format!("{name} is not a usable URL"));
    let url = if text.starts_with('/') { origin.join(text) } else { url::Url::parse(text) }
        .map_err(|_| invalid())?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let secure = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !secure || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(invalid());
    }
    Ok(url)
}

fn to_uri(url: url::Url) -> Result<Uri, DiscoveryError> {
    url.as_str().parse().map_err(|_| DiscoveryError::Invalid("an endpoint is not a valid URI".into()))
}

/// Retry timing for the background load: `initial`, doubled after each failure up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(250), max: Duration::from_secs(30) }
    }
}

/// The provider's metadata for the process lifetime: empty until the first successful
/// discovery, then read without a lock.
#[derive(Debug, Default)]
pub struct ProviderCache {
    metadata: ArcSwapOption<ProviderMetadata>,
}

impl ProviderCache {
    /// An empty cache (every [`ProviderCache::get`] is [`NotLoaded`] until a load).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that already holds `metadata` (tests, or a config that names everything).
    pub fn loaded(metadata: ProviderMetadata) -> Self {
        let cache = Self::new();
        cache.set(metadata);
        cache
    }

    /// The metadata, or [`NotLoaded`].
    pub fn get(&self) -> Result<Arc<ProviderMetadata>, NotLoaded> {
        self.metadata.load_full().ok_or(NotLoaded)
    }

    /// Stores `metadata` (replacing any earlier one).
    pub fn set(&self, metadata: ProviderMetadata) {
        self.metadata.store(Some(Arc::new(metadata)));
    }

    /// Discovers until it succeeds or `cancel` fires, waiting `backoff` between tries
    /// (with up to 25 % random jitter so replicas do not retry in step). Each failure is
    /// logged at `warn`. Returns whether the metadata was loaded.
    pub async fn load_with_retry(
        &self,
        http: &HttpClient,
        issuer: &str,
        overrides: &EndpointOverrides,
        timeout: Duration,
        backoff: Backoff,
        cancel: &CancellationToken,
    ) -> bool {
        let mut wait = backoff.initial;
        loop {
            match discover(http, issuer, overrides, timeout).await {
                Ok(metadata) => {
                    self.set(metadata);
                    tracing::info!(issuer, "OpenID provider metadata loaded");
                    return true;
                }
                Err(error) => {
                    tracing::warn!(issuer, %error, retry_in_ms = wait.as_millis() as u64, "OpenID discovery failed")
                }
            }
            let jitter = wait.mul_f64(rand::random::<f64>() * 0.25);
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(wait + jitter) => {}
            }
            wait = (wait * 2).min(backoff.max);
        }
    }

    /// Starts [`ProviderCache::load_with_retry`] in the background.
    pub fn spawn_load(
        self: &Arc<Self>,
        http: HttpClient,
        issuer: String,
        overrides: EndpointOverrides,
        timeout: Duration,
        backoff: Backoff,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<bool> {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            cache.load_with_retry(&http, &issuer, &overrides, timeout, backoff, &cancel).await
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{self, Provider};
    use super::*;

    const ISSUER: &str = "https://idp.example/realms/shop";

    fn document() -> Value {
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://idp.example/auth?tenant=1",
            "token_endpoint": "https://idp.example/token",
            "revocation_endpoint": "https://idp.example/revoke",
            "end_session_endpoint": "https://idp.example/logout",
            "jwks_uri": "https://idp.example/jwks",
            "id_token_signing_alg_values_supported": ["HS256", "none", "RS256", "ES256"],
            "backchannel_logout_supported": true,
            "backchannel_logout_session_supported": true,
            "code_challenge_methods_supported": ["S256"]
        })
    }

    #[test]
    fn reads_the_document() {
        let metadata = parse(ISSUER, &document(), &EndpointOverrides::default()).unwrap();
        assert_eq!(metadata.token_endpoint, "https://idp.example/token");
        assert_eq!(metadata.authorization_endpoint.as_str(), "https://idp.example/auth?tenant=1");
        assert_eq!(
            metadata.id_token_algorithms,
            vec![Algorithm::RS256, Algorithm::ES256],
            "no HS256, no none"
        );
        assert!(metadata.backchannel_logout_supported && metadata.backchannel_logout_session_supported);
        assert_eq!(metadata.token_endpoint_auth_methods, vec!["client_secret_basic".to_string()]);
        assert_eq!(metadata.code_challenge_methods, vec!["S256".to_string()]);
    }

    #[test]
    fn the_issuer_must_match_exactly() {
        for configured in
            ["https://idp.example/realms/shop/", "https://IDP.example/realms/shop", "https://evil.example"]
        {
            let error = parse(configured, &document(), &EndpointOverrides::default()).unwrap_err();
            assert!(matches!(error, DiscoveryError::Invalid(_)), "{configured}");
        }
    }

    #[test]
    fn overrides_take_precedence() {
        let overrides = EndpointOverrides {
            token_endpoint: Some("/custom/token".into()),
            revocation_endpoint: Some("https://other.example/revoke".into()),
            ..EndpointOverrides::default()
        };
        let metadata = parse(ISSUER, &document(), &overrides).unwrap();
        assert_eq!(metadata.token_endpoint, "https://idp.example/custom/token");
        assert_eq!(metadata.revocation_endpoint.unwrap(), "https://other.example/revoke");
        assert_eq!(metadata.jwks_uri, "https://idp.example/jwks");
    }

    #[test]
    fn refuses_unusable_documents() {
        let mut without_token = document();
        without_token.as_object_mut().unwrap().remove("token_endpoint");
        let mut plain_http = document();
        plain_http["jwks_uri"] = json!("http://idp.example/jwks");
        let mut only_symmetric = document();
        only_symmetric["id_token_signing_alg_values_supported"] = json!(["HS256", "none"]);
        for bad in [without_token, plain_http, only_symmetric] {
            assert!(matches!(
                parse(ISSUER, &bad, &EndpointOverrides::default()),
                Err(DiscoveryError::Invalid(_))
            ));
        }
        let mut unadvertised = document();
        unadvertised.as_object_mut().unwrap().remove("id_token_signing_alg_values_supported");
        let metadata = parse(ISSUER, &unadvertised, &EndpointOverrides::default()).unwrap();
        assert_eq!(metadata.id_token_algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn the_discovery_url_drops_a_trailing_slash() {
        assert_eq!(
            discovery_url("https://a.example/x/").unwrap(),
            "https://a.example/x/.well-known/openid-configuration"
        );
    }

    #[tokio::test]
    async fn the_cache_is_not_loaded_until_discovery_succeeds() {
        let provider = Provider::start().await;
        provider.fail_discovery(2);
        let cache = Arc::new(ProviderCache::new());
        assert_eq!(cache.get().unwrap_err(), NotLoaded);
        let backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(5) };
        let loaded = cache
            .load_with_retry(
                &test_support::client(),
                &provider.issuer(),
                &EndpointOverrides::default(),
                Duration::from_secs(5),
                backoff,
                &CancellationToken::new(),
            )
            .await;
        assert!(loaded);
        assert_eq!(provider.hits("/.well-known/openid-configuration"), 3, "two failures, then success");
        let metadata = cache.get().unwrap();
        assert_eq!(metadata.issuer, provider.issuer());
        assert_eq!(metadata.token_endpoint, format!("{}/token", provider.issuer()).as_str());
    }

    #[tokio::test]
    async fn a_cancelled_load_stops_retrying() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let cache = ProviderCache::new();
        let loaded = cache
            .load_with_retry(
                &test_support::client(),
                "http://127.0.0.1:9",
                &EndpointOverrides::default(),
                Duration::from_millis(200),
                Backoff::default(),
                &cancel,
            )
            .await;
        assert!(!loaded);
        assert!(cache.get().is_err());
    }
}
