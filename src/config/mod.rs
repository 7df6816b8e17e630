//! Configuration: `proxy.toml` plus `TOKENGATE_*` overrides, validated into a typed
//! [`Config`] before anything starts.
//!
//! Stages: TOML syntax → [`keys::check_table`] (unknown keys and wrong types, all at
//! once, each dropped after it is reported) → [`keys::apply_env_overrides`] → serde into
//! [`raw`] → [`validate`] (values, secrets resolved from `*_env`/`*_file`). Every stage
//! collects [`ConfigError`]s with the key path and the next stage still runs, so
//! `check-config` prints every problem in one run. The schema (the key table and the raw
//! structs) is written once, in [`raw`].
//!
//! The result is split in two: [`Fixed`] (read once at start; a reload only reports a
//! change) and [`Live`] (swapped in by a SIGHUP reload; the request path reads it through
//! the app's live handle only).

pub mod keys;
pub mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::cors::CorsPolicy;
use crate::secret::{ClientSecret, EncryptionKey, SecretString, StorefrontSecret};

pub use validate::validate;

/// One problem in the configuration, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, e.g. `session.idle_timeout` or `route[1].prefix`.
    pub key: String,
    /// What is wrong, in words (never the value of a secret).
    pub message: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The whole validated configuration: what needs a restart ([`Fixed`]) and what a SIGHUP
/// reload may change ([`Live`]).
#[derive(Debug, Clone)]
pub struct Config {
    pub fixed: Fixed,
    pub live: Live,
    /// Where the file came from (for reload and messages); `None` for an inline config.
    pub source: Option<PathBuf>,
    /// Settings that work but weaken security (printed by `check-config`, logged by `run`).
    pub warnings: Vec<ConfigError>,
}

/// The settings read once at start; a reload that changes one only reports it (see
/// [`Fixed::changed_sections`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Fixed {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub oauth: OAuthConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub rate_limit: RateLimitConfig,
    /// `log.format`: the subscriber is installed once.
    pub log_format: LogFormat,
    /// `[client_hosted]`, when the storefront signs shoppers in itself; `None` turns
    /// `POST /session/external` off (404).
    pub client_hosted: Option<ClientHostedConfig>,
    /// `[tracing]`, when `otlp_endpoint` is set; `None` is off (no span is ever made).
    pub tracing: Option<TracingConfig>,
}

/// `[tracing]`: OpenTelemetry traces, exported in batches over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where batches are POSTed: `otlp_endpoint` with `/v1/traces` appended (unless it
    /// already ends so).
    pub traces_url: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of new traces recorded (0 to 1); a trusted parent's decision wins.
    pub sample_ratio: f64,
    /// Continue a trace a browser's `traceparent` names (off: every request starts its own).
    pub trust_traceparent: bool,
    /// How long one export may take, retries included.
    pub export_timeout: Duration,
    /// How long finished spans wait to be sent in a batch.
    pub batch_delay: Duration,
    /// Finished spans held for export at most; more are dropped (and counted).
    pub max_queue: usize,
    /// Extra PEM roots for an `https` collector.
    pub ca_file: Option<PathBuf>,
}

/// `[client_hosted]`: what proves a call to `POST /session/external` comes from the
/// storefront's server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientHostedConfig {
    /// From `secret_env` or `secret_file`; sent as `Authorization: Bearer <secret>`.
    pub secret: StorefrontSecret,
}

/// The settings a SIGHUP reload applies in place. The request path reads them only
/// through the app's live handle (an `ArcSwap<Live>`), never from a copy made at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// `server.allowed_origins`: origins (as browsers serialize `Origin`) whose requests
    /// are accepted when they send `Origin`; defaults to `[public_origin]`.
    pub allowed_origins: Vec<String>,
    /// `server.cors`: CORS for a storefront on another origin (`Some` when true), with
    /// `allowed_origins` as ready header values (see `cors`).
    pub cors: Option<CorsPolicy>,
    /// `server.csrf`: how unsafe requests prove they come from the storefront.
    pub csrf: CsrfMode,
    /// `server.max_body_bytes`: largest request body forwarded on a route (413 above;
    /// the session endpoints have their own small limit).
    pub max_body_bytes: u64,
    /// `server.trusted_proxy_depth`: how many `X-Forwarded-For` entries, counted from the
    /// right, were added by proxies we trust (0: the socket's peer is the client).
    pub trusted_proxy_depth: usize,
    /// `server.demo_page`: serve the built-in demo storefront page at `/`.
    pub demo_page: bool,
    /// `log.level`: a level or `tracing` filter (`RUST_LOG`, when set at start, wins).
    pub log_level: String,
    /// `log.access`: one log line per request (off by default: it costs a formatted,
    /// written line on every call; metrics count every request either way).
    pub log_access: bool,
    pub leak_guard: LeakGuardConfig,
    /// Routes sorted longest prefix first, so the first match is the longest.
    pub routes: Vec<Route>,
}

/// `[server]`: the storefront-facing listener (its reloadable keys are in [`Live`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The storefront's own origin (`scheme://host[:port]`, serialized as browsers send
    /// `Origin`), if configured.
    pub public_origin: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub keep_alive_timeout: Duration,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this certificate chain and key.
    pub tls: Option<TlsFiles>,
}

/// `[server.tls]`: PEM files for the storefront listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// How unsafe requests (POST, PUT, PATCH, DELETE) prove they come from the storefront.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfMode {
    /// `X-CSRF: 1` is required (single-page storefronts).
    Header,
    /// `Origin`, or else `Referer`, must be an allowed origin; a request with neither is
    /// refused (server-rendered storefronts whose forms cannot set headers).
    Origin,
}

/// `[rate_limit]`: protection of the token endpoint from floods of new sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// New sessions one client may start per minute, sustained.
    pub new_sessions_per_minute: u32,
    /// New sessions one client may start in a burst.
    pub new_sessions_burst: u32,
    /// Most calls to the token endpoint in flight at once, across all clients.
    pub token_concurrency: usize,
}

/// `[leak_guard]`: the last line of defence against an upstream that echoes a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakGuardConfig {
    pub enabled: bool,
    /// JSON and text response bodies up to this size are scanned; larger ones stream
    /// unscanned (headers are always scanned).
    pub max_body_bytes: usize,
}

/// `[upstream]`: the Commerce API.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub base: BaseUrl,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Which client forwards calls.
    pub protocol: UpstreamProtocol,
}

/// `upstream.protocol`: the client forwarded calls go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// tokengate's own pooled HTTP/1.1 client (`upstream::h1`); streamed uploads go
    /// through hyper's.
    Http1,
    /// hyper's pooled client for every call: HTTP/2 when the API offers it by ALPN.
    Auto,
}

/// An absolute `http(s)://authority[/path]` base URL, split for cheap URI building.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The base path without a trailing slash ("" for none).
    pub path: String,
}

/// Which token protocol the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Digital River's Commerce API dialect (guest tokens, password grant, implicit
    /// hosted login, client-hosted shoppers).
    DigitalRiver,
    /// Standard OAuth 2.0 / OpenID Connect: authorization code with PKCE and `nonce`,
    /// refresh, RFC 7009 revocation, Back-Channel Logout 1.0.
    OAuth2,
}

/// How the client authenticates at the provider's token and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `client_secret_basic`.
    Basic,
    /// `client_secret_post`.
    Post,
}

/// `[oauth]` keys of `flavor = "oauth2"`.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcSettings {
    /// The provider's issuer identifier (discovery is read from it).
    pub issuer: String,
    pub client_auth: ClientAuthMethod,
    /// Space-separated scopes asked for at the authorization endpoint.
    pub scope: String,
    /// Endpoints overriding discovery (`token_path`, `authorize_path`, `revocation_path`):
    /// paths on the issuer's origin.
    pub token_path: Option<String>,
    pub authorize_path: Option<String>,
    pub revocation_path: Option<String>,
    /// An unknown signing key id refetches the provider's JWKS at most this often.
    pub jwks_refetch_interval: Duration,
}

/// How the password grant sends the shopper's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordEncoding {
    /// base64 of the UTF-8 password, as Digital River's own clients send it.
    Base64,
    /// The password as typed.
    Plain,
}

/// `[oauth]`: the token endpoint and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthConfig {
    pub flavor: Flavor,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub token_path: String,
    pub access_token_path: String,
    pub password_encoding: PasswordEncoding,
    pub authorize_carry_guest: bool,
    pub authorize_path: String,
    pub refresh_ahead: Duration,
    /// How long a request waits for another request's refresh of the same session.
    pub refresh_wait_timeout: Duration,
    /// The OpenID provider's settings; `Some` exactly when `flavor` is `OAuth2`.
    pub oidc: Option<OidcSettings>,
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Whether a request without a cookie gets a guest session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    Lazy,
    Off,
}

/// `[session]`: the cookie and the session lifetimes.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub cookie_name: String,
    pub cookie_secure: bool,
    pub same_site: SameSite,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub max_sessions: usize,
    pub guest: GuestMode,
    pub sweep_interval: Duration,
}

/// Which session store backs the sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    /// In this process (one replica), optionally kept across restarts by a snapshot.
    Memory,
    /// Shared by every replica through Redis (or Valkey): single server, Cluster or
    /// Sentinel, by the URL's scheme.
    Redis(RedisConfig),
}

/// `[store] kind = "redis"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// The server URL (it may hold a password): `redis://`, `rediss://` (TLS),
    /// `redis-cluster://…?node=…`, `redis-sentinel://…?sentinelServiceName=…`.
    pub url: SecretString,
    /// The first key seals records; every key opens them (rotation).
    pub keys: Vec<EncryptionKey>,
    /// Connections kept open to each server (commands go round-robin).
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Longest wait for one command's answer; past it the request gets 503.
    pub command_timeout: Duration,
    /// Prefix of every key tokengate writes (several deployments can share a server).
    pub key_prefix: String,
    /// How long a replica's refresh lock lives unless renewed; its holder renews it
    /// every third of this while the token call runs, so a dead holder's lock frees itself.
    pub lock_lease: Duration,
    /// Certificates trusted for `rediss://` besides the compiled-in Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Keep a local copy of sessions read, kept true by Redis's client tracking
    /// (`store::redis::tracking`); never with Redis Cluster.
    pub local_cache: bool,
    /// Most sessions the local cache holds.
    pub local_cache_max: usize,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Where the memory store keeps its sealed snapshot, if anywhere.
    pub snapshot: Option<SnapshotConfig>,
}

/// What to do at start when the snapshot cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOnError {
    /// Refuse to start (the safe default: a silent loss would log everyone out).
    Fail,
    /// Log the problem and start with no sessions.
    Empty,
}

/// The memory store's snapshot: sealed with AES-256-GCM, written atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub file: PathBuf,
    /// The first key seals; every key opens (rotation).
    pub keys: Vec<EncryptionKey>,
    pub interval: Duration,
    pub on_error: SnapshotOnError,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a route treats the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPolicy {
    /// A session is needed; without a cookie a guest is minted (when `guest = "lazy"`).
    Required,
    /// A cookie's session is used when present; without one the call goes anonymously.
    Optional,
    /// The cookie is ignored and no token is sent.
    None,
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub prefix: String,
    pub upstream_prefix: String,
    pub session: SessionPolicy,
    /// Methods forwarded besides GET, HEAD, OPTIONS, POST, PUT, PATCH and DELETE
    /// (e.g. a WebDAV `PROPFIND`); any other method gets 405.
    pub extra_methods: Vec<http::Method>,
    /// A short stable label for logs and metrics (the prefix).
    pub label: String,
    /// The label's metric handles, attached by the app when it takes this configuration.
    pub metrics: crate::metrics::RouteMetrics,
}

impl Config {
    /// Loads and validates `path`, reading overrides and secrets from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            vec![ConfigError::new(path.display().to_string(), format!("cannot read: {error}"))]
        })?;
        let mut config = Config::from_toml(&text, &process_env)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates a configuration text with overrides and secrets read through
    /// `env` (tests and the demo pass a map instead of the real environment).
    ///
    /// Every problem is collected, not only the first stage's: unknown and wrongly typed
    /// keys (and bad overrides) are reported and dropped, the rest is validated, and the
    /// errors of both stages come back together. A value problem about a key that was
    /// already reported (e.g. a required key dropped for its type) is not repeated. Only
    /// a TOML syntax error stops at once (there is no table to go on with).
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|error| vec![ConfigError::new("(file)", syntax_message(&error))])?;
        let mut errors = Vec::new();
        keys::check_table(&mut table, &mut errors);
        keys::apply_env_overrides(&mut table, env, &mut errors);
        let raw: raw::RawConfig = match toml::Value::Table(table).try_into() {
            Ok(raw) => raw,
            Err(error) => {
                let error: toml::de::Error = error;
                errors.push(ConfigError::new("(file)", error.message()));
                return Err(errors);
            }
        };
        match validate(raw, env) {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(errors),
            Err(more) => {
                let reported: Vec<String> = errors.iter().map(|e| reported_key(&e.key).to_string()).collect();
                let is_new = |error: &ConfigError| {
                    !reported.iter().any(|key| {
                        error.key == *key
                            || error.key.strip_prefix(key.as_str()).is_some_and(|rest| rest.starts_with('.'))
                    })
                };
                errors.extend(more.into_iter().filter(is_new));
                Err(errors)
            }
        }
    }
}

/// The key path of a stage-one error (`session.max_sessions (from TOKENGATE_…)` is about
/// `session.max_sessions`).
fn reported_key(key: &str) -> &str {
    key.split_once(" (from ").map_or(key, |(key, _)| key)
}

impl Fixed {
    /// The sections of `self` that `new` changes, by their names in the file (`log.format`
    /// for the one key of `[log]` that needs a restart). Each section is compared whole
    /// with `==`; secrets compare by value (in constant time), so a changed client secret
    /// or snapshot key is noticed like any other change.
    pub fn changed_sections(&self, new: &Fixed) -> Vec<&'static str> {
        // Destructured, so that a new field cannot be forgotten here.
        let Fixed { server, upstream, oauth, session, store, rate_limit, log_format, client_hosted, tracing } =
            self;
        let sections = [
            ("server", *server != new.server),
            ("upstream", *upstream != new.upstream),
            ("oauth", *oauth != new.oauth),
            ("session", *session != new.session),
            ("store", *store != new.store),
            ("rate_limit", *rate_limit != new.rate_limit),
            ("log.format", *log_format != new.log_format),
            ("client_hosted", *client_hosted != new.client_hosted),
            ("tracing", *tracing != new.tracing),
        ];
        sections.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
    }
}

/// What a SIGHUP reload applies: the new file's [`Live`] settings, kept over the running
/// [`Fixed`] ones.
#[derive(Debug)]
pub struct Reloaded {
    /// The live settings to swap in.
    pub live: Live,
    /// The `Fixed` sections the new file changes; they were not applied (restart needed).
    pub restart_needed: Vec<&'static str>,
}

impl Config {
    /// The reload of `self` (a freshly loaded file) over a process running `running`:
    /// its live settings, and the fixed sections it would change.
    pub fn reloaded(self, running: &Fixed) -> Reloaded {
        Reloaded { restart_needed: running.changed_sections(&self.fixed), live: self.live }
    }
}

fn syntax_message(error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => format!("TOML syntax error at byte {}: {}", span.start, error.message()),
        None => format!("TOML syntax error: {}", error.message()),
    }
}

/// The real environment. Reading (never writing) it is safe under threads.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses a duration string such as `"90s"`, `"30m"`, `"24h"` or `"30d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration (use e.g. \"90s\", \"30m\", \"24h\", \"30d\")"))
}
