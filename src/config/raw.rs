//! The serde structs that mirror `proxy.toml`, before validation.
//!
//! Every field is optional here so that a missing key falls back to its documented
//! default in `validate`, and every struct rejects unknown keys.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub oauth: RawOAuth,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub leak_guard: RawLeakGuard,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub public_origin: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_body_bytes: Option<u64>,
    pub shutdown_timeout: Option<String>,
    pub demo_page: Option<bool>,
    pub csrf: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub keep_alive_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub trusted_proxy_depth: Option<u64>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub ca_file: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    pub flavor: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    pub token_path: Option<String>,
    pub access_token_path: Option<String>,
    pub password_encoding: Option<String>,
    pub authorize_carry_guest: Option<bool>,
    pub authorize_path: Option<String>,
    pub refresh_ahead: Option<String>,
    pub refresh_wait_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub cookie_name: Option<String>,
    pub cookie_secure: Option<bool>,
    pub same_site: Option<String>,
    pub idle_timeout: Option<String>,
    pub absolute_timeout: Option<String>,
    pub max_sessions: Option<u64>,
    pub guest: Option<String>,
    pub sweep_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub url_env: Option<String>,
    pub encryption_key_env: Option<String>,
    pub snapshot_file: Option<String>,
    pub snapshot_interval: Option<String>,
    pub snapshot_on_error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub new_sessions_per_minute: Option<u64>,
    pub new_sessions_burst: Option<u64>,
    pub token_concurrency: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeakGuard {
    pub enabled: Option<bool>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Option<String>,
    pub upstream_prefix: Option<String>,
    pub session: Option<String>,
}
