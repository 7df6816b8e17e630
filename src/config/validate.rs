//! Turns the raw file into a typed [`Config`], applying defaults and collecting every
//! problem with its key. Secrets are resolved here, so an unset `client_secret_env` is
//! reported like any other bad key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use url::{Host, Url};

use super::raw::{
    RawClientHosted, RawConfig, RawLeakGuard, RawLog, RawOAuth, RawRateLimit, RawRoute, RawServer,
    RawSession, RawStore, RawTracing, RawUpstream,
};
use super::*;
use crate::secret::SecretString;

/// Collects problems while building the typed config.
struct Checker<'e> {
    errors: Vec<ConfigError>,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// The client secret's file, when it comes from one (for the permission warning).
    secret_file: Option<PathBuf>,
}

impl Checker<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: &str) -> Duration {
        match parse_duration(value.unwrap_or(default)) {
            Ok(duration) => duration,
            Err(message) => {
                self.error(key, message);
                Duration::from_secs(1)
            }
        }
    }

    fn address(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.error(key, format!("{value:?} is not an address like \"127.0.0.1:8080\""));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn path(&mut self, key: &str, value: Option<String>, default: &str) -> String {
        let value = value.unwrap_or_else(|| default.to_string());
        if !value.starts_with('/') || value.contains(['?', '#', ' ']) {
            self.error(key, "must be an absolute path starting with '/'");
        }
        value
    }

    fn choice<T: Copy>(&mut self, key: &str, value: Option<&str>, default: T, options: &[(&str, T)]) -> T {
        let Some(value) = value else { return default };
        if let Some((_, choice)) = options.iter().find(|(name, _)| *name == value) {
            return *choice;
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.error(key, format!("{value:?} is not one of {names:?}"));
        default
    }
}

/// Validates `raw` into a [`Config`], or returns every problem found.
pub fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
    let mut checker = Checker { errors: Vec::new(), env, secret_file: None };
    let (server, live_server) = server(&mut checker, raw.server);
    let upstream = upstream(&mut checker, raw.upstream);
    let oauth = oauth(&mut checker, raw.oauth, upstream.request_timeout);
    let guest_given = raw.session.guest.is_some();
    let session = session(&mut checker, raw.session);
    let store = store(&mut checker, raw.store);
    let (log_format, log_level, log_access) = log(&mut checker, raw.log);
    let rate_limit = rate_limit(&mut checker, raw.rate_limit);
    let leak_guard = leak_guard(raw.leak_guard);
    let routes = routes(&mut checker, raw.route);
    let client_hosted = client_hosted(&mut checker, raw.client_hosted);
    let tracing = tracing(&mut checker, raw.tracing);
    let mut fixed =
        Fixed { server, upstream, oauth, session, store, rate_limit, log_format, client_hosted, tracing };
    oauth2_rules(&mut checker, &mut fixed, guest_given);
    if !checker.errors.is_empty() {
        return Err(checker.errors);
    }
    let LiveServer { allowed_origins, cors, csrf, max_body_bytes, trusted_proxy_depth, demo_page } =
        live_server;
    let mut config = Config {
        fixed,
        live: Live {
            allowed_origins,
            cors,
            csrf,
            max_body_bytes,
            trusted_proxy_depth,
            demo_page,
            log_level,
            log_access,
            leak_guard,
            routes,
        },
        source: None,
        warnings: Vec::new(),
    };
    config.warnings = insecure_settings(&config, checker.secret_file.as_deref());
    Ok(config)
}

/// The reloadable keys of `[server]` (they go to [`Live`]).
struct LiveServer {
    allowed_origins: Vec<String>,
    cors: Option<CorsPolicy>,
    csrf: CsrfMode,
    max_body_bytes: u64,
    trusted_proxy_depth: usize,
    demo_page: bool,
}

fn server(checker: &mut Checker, raw: RawServer) -> (ServerConfig, LiveServer) {
    let listen = checker.address("server.listen", raw.listen.as_deref().unwrap_or("0.0.0.0:8080"));
    let admin_listen = match raw.admin_listen.as_deref() {
        Some("") | Some("off") => None,
        other => Some(checker.address("server.admin_listen", other.unwrap_or("127.0.0.1:9090"))),
    };
    let public_origin = raw.public_origin.and_then(|text| match origin(&text) {
        Ok(origin) => Some(origin),
        Err(message) => {
            checker.error("server.public_origin", message);
            None
        }
    });
    let allowed_origins: Vec<String> = match raw.allowed_origins {
        Some(list) => list
            .iter()
            .filter_map(|text| {
                origin(text).map_err(|message| checker.error("server.allowed_origins", message)).ok()
            })
            .collect(),
        None => public_origin.iter().cloned().collect(),
    };
    // Built here, once: the request path only compares `Origin` with ready values.
    let cors = match raw.cors {
        Some(true) => {
            CorsPolicy::new(&allowed_origins).map_err(|message| checker.error("server.cors", message)).ok()
        }
        _ => None,
    };
    let live = LiveServer {
        allowed_origins,
        cors,
        csrf: checker.choice(
            "server.csrf",
            raw.csrf.as_deref(),
            CsrfMode::Header,
            &[("header", CsrfMode::Header), ("origin", CsrfMode::Origin)],
        ),
        max_body_bytes: raw.max_body_bytes.unwrap_or(1024 * 1024),
        trusted_proxy_depth: bounded(
            checker,
            "server.trusted_proxy_depth",
            raw.trusted_proxy_depth,
            0,
            0,
            16,
        ),
        demo_page: raw.demo_page.unwrap_or(false),
    };
    let server = ServerConfig {
        listen,
        admin_listen,
        public_origin,
        shutdown_timeout: checker.duration("server.shutdown_timeout", raw.shutdown_timeout.as_deref(), "30s"),
        max_header_bytes: bounded(
            checker,
            "server.max_header_bytes",
            raw.max_header_bytes,
            16 * 1024,
            8192,
            1 << 20,
        ),
        header_read_timeout: checker.duration(
            "server.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            "15s",
        ),
        keep_alive_timeout: checker.duration(
            "server.keep_alive_timeout",
            raw.keep_alive_timeout.as_deref(),
            "60s",
        ),
        max_connections: bounded(checker, "server.max_connections", raw.max_connections, 10_000, 1, 1 << 24),
        tls: raw.tls.and_then(|tls| tls_files(checker, tls)),
    };
    (server, live)
}

/// An origin, serialized the way browsers send `Origin` (the guard compares the two as
/// strings): `scheme://host[:port]` with the scheme and host in lowercase, an IDN host in
/// punycode, an IPv6 host in brackets and no default port. `https://Shop.Example.com:443/`
/// becomes `https://shop.example.com`. Only http and https; a trailing `/` is accepted,
/// any other path, a query, a fragment or user info is not.
fn origin(text: &str) -> Result<String, String> {
    let problem = |what: &str| format!("{text:?} is not an origin like \"https://shop.example.com\": {what}");
    let url = Url::parse(text).map_err(|error| problem(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(problem("the scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(problem("it names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(problem("it has user info"));
    }
    if url.path() != "/" {
        return Err(problem("it has a path"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(problem("it has a query or fragment"));
    }
    Ok(url.origin().ascii_serialization())
}

fn tls_files(checker: &mut Checker, raw: super::raw::RawTls) -> Option<TlsFiles> {
    let mut file = |key: &str, value: Option<String>| {
        let Some(value) = value else {
            checker.error(key, "is required in [server.tls]");
            return None;
        };
        let path = PathBuf::from(value);
        if !path.is_file() {
            checker.error(key, format!("{} is not a readable file", path.display()));
        }
        Some(path)
    };
    let cert_file = file("server.tls.cert_file", raw.cert_file);
    let key_file = file("server.tls.key_file", raw.key_file);
    Some(TlsFiles { cert_file: cert_file?, key_file: key_file? })
}

/// A number within `[min, max]`, or an error naming the range.
fn bounded(checker: &mut Checker, key: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> usize {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        checker.error(key, format!("must be between {min} and {max}"));
        return usize::try_from(default).unwrap_or(usize::MAX);
    }
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn rate_limit(checker: &mut Checker, raw: RawRateLimit) -> RateLimitConfig {
    let per_minute =
        bounded(checker, "rate_limit.new_sessions_per_minute", raw.new_sessions_per_minute, 120, 1, 1 << 30);
    let burst = bounded(checker, "rate_limit.new_sessions_burst", raw.new_sessions_burst, 60, 1, 1 << 30);
    RateLimitConfig {
        new_sessions_per_minute: u32::try_from(per_minute).unwrap_or(u32::MAX),
        new_sessions_burst: u32::try_from(burst).unwrap_or(u32::MAX),
        token_concurrency: bounded(
            checker,
            "rate_limit.token_concurrency",
            raw.token_concurrency,
            32,
            1,
            1 << 16,
        ),
    }
}

fn leak_guard(raw: RawLeakGuard) -> LeakGuardConfig {
    LeakGuardConfig {
        enabled: raw.enabled.unwrap_or(true),
        max_body_bytes: usize::try_from(raw.max_body_bytes.unwrap_or(256 * 1024)).unwrap_or(usize::MAX),
    }
}

fn upstream(checker: &mut Checker, raw: RawUpstream) -> UpstreamConfig {
    let base_text = raw.base_url.unwrap_or_else(|| "https://api.digitalriver.com".to_string());
    let base = base_url(&base_text).unwrap_or_else(|message| {
        checker.error("upstream.base_url", message);
        BaseUrl { scheme: Scheme::HTTP, authority: Authority::from_static("invalid"), path: String::new() }
    });
    let ca_file = raw.ca_file.map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !path.is_file() {
            checker.error("upstream.ca_file", format!("{} is not a readable file", path.display()));
        }
    }
    let pool_max_idle_per_host = usize::try_from(raw.pool_max_idle_per_host.unwrap_or(64)).unwrap_or(64);
    UpstreamConfig {
        base,
        connect_timeout: checker.duration("upstream.connect_timeout", raw.connect_timeout.as_deref(), "2s"),
        request_timeout: checker.duration("upstream.request_timeout", raw.request_timeout.as_deref(), "30s"),
        ca_file,
        pool_idle_timeout: checker.duration(
            "upstream.pool_idle_timeout",
            raw.pool_idle_timeout.as_deref(),
            "90s",
        ),
        pool_max_idle_per_host,
        protocol: checker.choice(
            "upstream.protocol",
            raw.protocol.as_deref(),
            UpstreamProtocol::Http1,
            &[("http1", UpstreamProtocol::Http1), ("auto", UpstreamProtocol::Auto)],
        ),
    }
}

/// `upstream.base_url`: an http or https URL with a host, no user info, query or
/// fragment, split for cheap URI building. The url crate normalizes it (lowercase host,
/// no default port, percent-encoded path, dot segments resolved); the path loses its
/// trailing `/`.
fn base_url(text: &str) -> Result<BaseUrl, String> {
    let url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    let scheme = match url.scheme() {
        "https" => Scheme::HTTPS,
        "http" => Scheme::HTTP,
        _ => return Err("must start with http:// or https://".to_string()),
    };
    let host = url.host_str().filter(|host| !host.is_empty()).ok_or("must name a host")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not have user info (the API is authenticated by [oauth])".to_string());
    }
    if url.query().is_some() {
        return Err("must not have a query".to_string());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".to_string());
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let authority = Authority::try_from(authority)
        .map_err(|_| format!("{host:?} cannot be used as a request authority"))?;
    let path = url.path().trim_end_matches('/').to_string();
    Ok(BaseUrl { scheme, authority, path })
}

fn oauth(checker: &mut Checker, raw: RawOAuth, request_timeout: Duration) -> OAuthConfig {
    let flavor = checker.choice(
        "oauth.flavor",
        raw.flavor.as_deref(),
        Flavor::DigitalRiver,
        &[("digitalriver", Flavor::DigitalRiver), ("oauth2", Flavor::OAuth2)],
    );
    let client_id = raw.client_id.clone().unwrap_or_default();
    if client_id.is_empty() {
        let what = match flavor {
            Flavor::DigitalRiver => "is required (your Commerce API key)",
            Flavor::OAuth2 => "is required (the client id registered at the OpenID provider)",
        };
        checker.error("oauth.client_id", what);
    }
    let client_secret = client_secret(checker, raw.client_secret_env.clone(), raw.client_secret_file.clone());
    let oidc = match flavor {
        Flavor::OAuth2 => Some(oidc_settings(checker, &raw)),
        Flavor::DigitalRiver => {
            for (key, given) in [
                ("oauth.issuer", raw.issuer.is_some()),
                ("oauth.client_auth", raw.client_auth.is_some()),
                ("oauth.scope", raw.scope.is_some()),
                ("oauth.revocation_path", raw.revocation_path.is_some()),
                ("oauth.jwks_refetch_interval", raw.jwks_refetch_interval.is_some()),
            ] {
                if given {
                    checker.error(key, "applies only to flavor = \"oauth2\"");
                }
            }
            None
        }
    };
    let password_encoding = checker.choice(
        "oauth.password_encoding",
        raw.password_encoding.as_deref(),
        PasswordEncoding::Base64,
        &[("base64", PasswordEncoding::Base64), ("plain", PasswordEncoding::Plain)],
    );
    let wait_default = humantime::format_duration(request_timeout).to_string();
    let (token_path, authorize_path) = match flavor {
        // The overrides of the oauth2 flavor were checked into `oidc`.
        Flavor::OAuth2 => ("/oauth20/token".to_string(), "/oauth20/authorize".to_string()),
        Flavor::DigitalRiver => (
            checker.path("oauth.token_path", raw.token_path, "/oauth20/token"),
            checker.path("oauth.authorize_path", raw.authorize_path, "/oauth20/authorize"),
        ),
    };
    OAuthConfig {
        flavor,
        client_id,
        client_secret,
        token_path,
        access_token_path: checker.path(
            "oauth.access_token_path",
            raw.access_token_path,
            "/oauth20/access-tokens",
        ),
        password_encoding,
        authorize_carry_guest: raw.authorize_carry_guest.unwrap_or(true),
        authorize_path,
        refresh_ahead: checker.duration("oauth.refresh_ahead", raw.refresh_ahead.as_deref(), "60s"),
        refresh_wait_timeout: checker.duration(
            "oauth.refresh_wait_timeout",
            raw.refresh_wait_timeout.as_deref(),
            &wait_default,
        ),
        oidc,
    }
}

/// The keys of `flavor = "oauth2"`; the Digital River keys are refused with it.
fn oidc_settings(checker: &mut Checker, raw: &RawOAuth) -> OidcSettings {
    for (key, given) in [
        ("oauth.access_token_path", raw.access_token_path.is_some()),
        ("oauth.password_encoding", raw.password_encoding.is_some()),
        ("oauth.authorize_carry_guest", raw.authorize_carry_guest.is_some()),
    ] {
        if given {
            checker.error(key, "applies only to flavor = \"digitalriver\" (remove it for \"oauth2\")");
        }
    }
    let issuer = match raw.issuer.as_deref() {
        None | Some("") => {
            checker.error("oauth.issuer", "is required with flavor = \"oauth2\" (the provider's issuer URL)");
            String::new()
        }
        Some(text) => match issuer(text) {
            Ok(issuer) => issuer,
            Err(message) => {
                checker.error("oauth.issuer", message);
                String::new()
            }
        },
    };
    let client_auth = checker.choice(
        "oauth.client_auth",
        raw.client_auth.as_deref(),
        ClientAuthMethod::Basic,
        &[("basic", ClientAuthMethod::Basic), ("post", ClientAuthMethod::Post)],
    );
    let scope = raw.scope.clone().unwrap_or_else(|| "openid profile email offline_access".to_string());
    if !scope.split(' ').any(|s| s == "openid") || scope.chars().any(|c| c.is_control() || c == '"') {
        checker.error("oauth.scope", "must be space-separated scopes including \"openid\"");
    }
    let mut override_path =
        |key: &str, value: &Option<String>| value.clone().map(|value| checker.path(key, Some(value), "/"));
    let token_path = override_path("oauth.token_path", &raw.token_path);
    let authorize_path = override_path("oauth.authorize_path", &raw.authorize_path);
    let revocation_path = override_path("oauth.revocation_path", &raw.revocation_path);
    OidcSettings {
        issuer,
        client_auth,
        scope,
        token_path,
        authorize_path,
        revocation_path,
        jwks_refetch_interval: checker.duration(
            "oauth.jwks_refetch_interval",
            raw.jwks_refetch_interval.as_deref(),
            "30s",
        ),
    }
}

/// An issuer identifier: an https URL without query or fragment (http only on a loopback
/// host, for tests and local providers). Kept exactly as written: the discovery document's
/// `issuer` and every token's `iss` must equal it.
fn issuer(text: &str) -> Result<String, String> {
    let url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    let local = url.host().map(|host| host.to_owned()).is_some_and(|host| is_local_host(&host));
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        _ => return Err(format!("{text:?} must be https (http only on a loopback host)")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("{text:?} must have no query, fragment or user info"));
    }
    Ok(text.to_string())
}

/// Rules across sections for `flavor = "oauth2"`: a `public_origin` (the exact
/// `redirect_uri`), no guests (`session.guest` defaults to `"off"`; `"lazy"` is refused)
/// and no `[client_hosted]`.
fn oauth2_rules(checker: &mut Checker, fixed: &mut Fixed, guest_given: bool) {
    if fixed.oauth.flavor != Flavor::OAuth2 {
        return;
    }
    if fixed.server.public_origin.is_none() {
        checker.error(
            "server.public_origin",
            "is required with flavor = \"oauth2\" (the redirect_uri is public_origin + /session/callback)",
        );
    }
    if guest_given && fixed.session.guest == GuestMode::Lazy {
        checker
            .error("session.guest", "must be \"off\" with flavor = \"oauth2\" (the provider has no guests)");
    }
    fixed.session.guest = GuestMode::Off;
    if fixed.client_hosted.is_some() {
        checker.error("client_hosted", "is a Digital River feature; remove it with flavor = \"oauth2\"");
    }
}

/// Resolves the client secret from exactly one of `client_secret_env` and
/// `client_secret_file` (default: the variable `TOKENGATE_CLIENT_SECRET`).
fn client_secret(checker: &mut Checker, env_key: Option<String>, file_key: Option<String>) -> ClientSecret {
    let value = match (env_key, file_key) {
        (Some(_), Some(_)) => {
            checker.error("oauth.client_secret_env", "set client_secret_env or client_secret_file, not both");
            None
        }
        (None, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(text) => {
                checker.secret_file = Some(PathBuf::from(&file));
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
            Err(error) => {
                checker.error("oauth.client_secret_file", format!("cannot read {file}: {error}"));
                None
            }
        },
        (env_key, None) => {
            let name = env_key.unwrap_or_else(|| "TOKENGATE_CLIENT_SECRET".to_string());
            let value = (checker.env)(&name).filter(|v| !v.is_empty());
            if value.is_none() {
                checker
                    .error("oauth.client_secret_env", format!("the environment variable {name} is not set"));
            }
            value
        }
    };
    ClientSecret::new(value.unwrap_or_default())
}

/// `[client_hosted]`: absent (both keys unset) is off; else exactly one of `secret_env`
/// and `secret_file`, naming a non-empty secret.
fn client_hosted(checker: &mut Checker, raw: RawClientHosted) -> Option<ClientHostedConfig> {
    let secret = match (raw.secret_env, raw.secret_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            checker.error("client_hosted.secret_env", "set secret_env or secret_file, not both");
            return None;
        }
        (Some(name), None) => {
            let value = (checker.env)(&name).filter(|value| !value.is_empty());
            if value.is_none() {
                checker
                    .error("client_hosted.secret_env", format!("the environment variable {name} is not set"));
            }
            value?
        }
        (None, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(text) if !text.trim_end_matches(['\r', '\n']).is_empty() => {
                text.trim_end_matches(['\r', '\n']).to_string()
            }
            Ok(_) => {
                checker.error("client_hosted.secret_file", format!("{file} is empty"));
                return None;
            }
            Err(error) => {
                checker.error("client_hosted.secret_file", format!("cannot read {file}: {error}"));
                return None;
            }
        },
    };
    Some(ClientHostedConfig { secret: StorefrontSecret::new(secret) })
}

fn session(checker: &mut Checker, raw: RawSession) -> SessionConfig {
    let cookie_name = raw.cookie_name.unwrap_or_else(|| "__Host-tokengate".to_string());
    if cookie_name.is_empty()
        || !cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        checker.error("session.cookie_name", "must be a non-empty token of letters, digits, '-', '_' or '.'");
    }
    let cookie_secure = raw.cookie_secure.unwrap_or(true);
    if (cookie_name.starts_with("__Host-") || cookie_name.starts_with("__Secure-")) && !cookie_secure {
        checker.error("session.cookie_secure", "a __Host- or __Secure- cookie needs cookie_secure = true");
    }
    let same_site = checker.choice(
        "session.same_site",
        raw.same_site.as_deref(),
        SameSite::Lax,
        &[("strict", SameSite::Strict), ("lax", SameSite::Lax), ("none", SameSite::None)],
    );
    if same_site == SameSite::None && !cookie_secure {
        checker
            .error("session.same_site", "\"none\" needs cookie_secure = true (browsers refuse it otherwise)");
    }
    let idle_timeout = checker.duration("session.idle_timeout", raw.idle_timeout.as_deref(), "24h");
    let absolute_timeout =
        checker.duration("session.absolute_timeout", raw.absolute_timeout.as_deref(), "30d");
    if idle_timeout.is_zero() || absolute_timeout.is_zero() {
        checker.error("session.idle_timeout", "timeouts must be longer than zero");
    }
    let max_sessions = usize::try_from(raw.max_sessions.unwrap_or(1_000_000)).unwrap_or(usize::MAX);
    if max_sessions == 0 {
        checker.error("session.max_sessions", "must be at least 1");
    }
    SessionConfig {
        cookie_name,
        cookie_secure,
        same_site,
        idle_timeout,
        absolute_timeout,
        max_sessions,
        guest: checker.choice(
            "session.guest",
            raw.guest.as_deref(),
            GuestMode::Lazy,
            &[("lazy", GuestMode::Lazy), ("off", GuestMode::Off)],
        ),
        sweep_interval: checker.duration("session.sweep_interval", raw.sweep_interval.as_deref(), "60s"),
    }
}

fn store(checker: &mut Checker, raw: RawStore) -> StoreConfig {
    let kind = match raw.kind.as_deref().unwrap_or("memory") {
        "memory" => {
            for (key, set) in [
                ("store.url_env", raw.url_env.is_some()),
                ("store.pool_size", raw.pool_size.is_some()),
                ("store.key_prefix", raw.key_prefix.is_some()),
                ("store.lock_lease", raw.lock_lease.is_some()),
                ("store.ca_file", raw.ca_file.is_some()),
                ("store.local_cache", raw.local_cache.is_some()),
                ("store.local_cache_max", raw.local_cache_max.is_some()),
            ] {
                if set {
                    checker.error(key, "is for kind = \"redis\"");
                }
            }
            StoreKind::Memory
        }
        "redis" => StoreKind::Redis(redis(checker, &raw)),
        other => {
            checker.error("store.kind", format!("{other:?} is not one of [\"memory\", \"redis\"]"));
            StoreKind::Memory
        }
    };
    if raw.snapshot_file.is_some() && kind != StoreKind::Memory {
        checker.error("store.snapshot_file", "is for kind = \"memory\" (Redis keeps its own data)");
    }
    let snapshot = raw.snapshot_file.filter(|_| kind == StoreKind::Memory).map(|file| SnapshotConfig {
        file: PathBuf::from(file),
        keys: encryption_keys(
            checker,
            raw.encryption_key_env.as_deref(),
            "snapshot_file (the snapshot is sealed)",
        ),
        interval: checker.duration("store.snapshot_interval", raw.snapshot_interval.as_deref(), "5m"),
        on_error: checker.choice(
            "store.snapshot_on_error",
            raw.snapshot_on_error.as_deref(),
            SnapshotOnError::Fail,
            &[("fail", SnapshotOnError::Fail), ("empty", SnapshotOnError::Empty)],
        ),
    });
    StoreConfig { kind, snapshot }
}

/// `[store]` for Redis: the URL from `url_env` (default `TOKENGATE_REDIS_URL`), checked by
/// the client's own parser (the message never repeats the URL: it may hold a password),
/// and the keys that seal records.
fn redis(checker: &mut Checker, raw: &RawStore) -> RedisConfig {
    let variable = raw.url_env.clone().unwrap_or_else(|| "TOKENGATE_REDIS_URL".to_string());
    let url = match (checker.env)(&variable).filter(|v| !v.trim().is_empty()) {
        Some(url) => {
            if let Err(error) = fred::types::config::Config::from_url(url.trim()) {
                checker.error(
                    "store.url_env",
                    format!("{variable} is not a Redis URL the client accepts: {}", error.kind().to_str()),
                );
            }
            url.trim().to_string()
        }
        None => {
            checker.error("store.url_env", format!("the environment variable {variable} is not set"));
            String::new()
        }
    };
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| "tokengate".to_string());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        checker.error("store.key_prefix", "must be non-empty, without braces or spaces");
    }
    let lock_lease = checker.duration("store.lock_lease", raw.lock_lease.as_deref(), "10s");
    if lock_lease < Duration::from_millis(300) {
        checker.error("store.lock_lease", "must be at least 300ms (it is renewed every third of it)");
    }
    let ca_file = raw.ca_file.as_ref().map(PathBuf::from);
    if let Some(path) = ca_file.as_ref().filter(|path| !path.is_file()) {
        checker.error("store.ca_file", format!("{} is not a readable file", path.display()));
    }
    RedisConfig {
        ca_file,
        url: SecretString::new(url),
        keys: encryption_keys(
            checker,
            raw.encryption_key_env.as_deref(),
            "kind = \"redis\" (records are sealed)",
        ),
        pool_size: bounded(checker, "store.pool_size", raw.pool_size, 4, 1, 256),
        connect_timeout: checker.duration("store.connect_timeout", raw.connect_timeout.as_deref(), "2s"),
        command_timeout: checker.duration("store.command_timeout", raw.command_timeout.as_deref(), "1s"),
        key_prefix,
        lock_lease,
        local_cache: raw.local_cache.unwrap_or(true),
        local_cache_max: bounded(
            checker,
            "store.local_cache_max",
            raw.local_cache_max,
            100_000,
            1,
            10_000_000,
        ),
    }
}

/// Reads the comma-separated, standard-base64, 32-byte keys from the named variable.
fn encryption_keys(checker: &mut Checker, variable: Option<&str>, needed_by: &str) -> Vec<EncryptionKey> {
    let Some(variable) = variable else {
        checker.error("store.encryption_key_env", format!("is required with {needed_by}"));
        return Vec::new();
    };
    let Some(value) = (checker.env)(variable).filter(|v| !v.trim().is_empty()) else {
        checker.error("store.encryption_key_env", format!("the environment variable {variable} is not set"));
        return Vec::new();
    };
    let mut keys = Vec::new();
    for (index, part) in value.split(',').map(str::trim).enumerate() {
        match STANDARD.decode(part).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok()) {
            Some(bytes) => keys.push(EncryptionKey::new(bytes)),
            None => checker.error(
                "store.encryption_key_env",
                format!("key {} in {variable} is not 32 bytes of standard base64", index + 1),
            ),
        }
    }
    keys
}

/// `[log]`: the format (fixed), the level and the access log (live).
fn log(checker: &mut Checker, raw: RawLog) -> (LogFormat, String, bool) {
    let format = checker.choice(
        "log.format",
        raw.format.as_deref(),
        LogFormat::Text,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    let level = raw.level.unwrap_or_else(|| "info".to_string());
    if crate::telemetry::parse_filter(&level).is_err() {
        checker.error(
            "log.level",
            format!("{level:?} is not a level or filter like \"info\" or \"tokengate=debug\""),
        );
    }
    (format, level, raw.access.unwrap_or(false))
}

/// `[tracing]`: off (`None`) unless `otlp_endpoint` names a collector.
fn tracing(checker: &mut Checker, raw: RawTracing) -> Option<TracingConfig> {
    let endpoint = raw.otlp_endpoint.filter(|endpoint| !endpoint.trim().is_empty())?;
    let traces_url = match traces_url(endpoint.trim()) {
        Ok(url) => url,
        Err(message) => {
            checker.error("tracing.otlp_endpoint", message);
            String::new()
        }
    };
    let service_name = raw.service_name.unwrap_or_else(|| "tokengate".to_string());
    if service_name.trim().is_empty() {
        checker.error("tracing.service_name", "must not be empty");
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        checker.error("tracing.sample_ratio", "must be between 0 and 1");
    }
    let max_queue = bounded(checker, "tracing.max_queue", raw.max_queue, 2048, 1, 1_000_000);
    Some(TracingConfig {
        traces_url,
        service_name,
        sample_ratio,
        trust_traceparent: raw.trust_traceparent.unwrap_or(false),
        export_timeout: checker.duration("tracing.export_timeout", raw.export_timeout.as_deref(), "10s"),
        batch_delay: checker.duration("tracing.batch_delay", raw.batch_delay.as_deref(), "5s"),
        max_queue,
        ca_file: raw.ca_file.map(PathBuf::from),
    })
}

/// The OTLP/HTTP traces URL for a collector's base URL (`http://collector:4318` gives
/// `http://collector:4318/v1/traces`), as `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
fn traces_url(text: &str) -> Result<String, String> {
    let refused = |why: &str| Err(format!("{text:?} {why}"));
    let Ok(url) = Url::parse(text) else {
        return refused("is not a URL like \"http://127.0.0.1:4318\"");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return refused("must be an http or https URL with a host");
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return refused("must not have user info, a query or a fragment");
    }
    let base = url.as_str().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        return Ok(base.to_string());
    }
    Ok(format!("{base}/v1/traces"))
}

fn routes(checker: &mut Checker, raw: Vec<RawRoute>) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (index, route) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("route[{index}].{field}");
        let prefix = route.prefix.unwrap_or_default();
        if !prefix.starts_with('/') {
            checker.error(&key("prefix"), "is required and must start with '/'");
        }
        if prefix.starts_with("/session") || prefix.starts_with("/oauth20") || prefix.starts_with("/__") {
            checker.error(&key("prefix"), "must not shadow /session, /oauth20 or internal paths");
        }
        let upstream_prefix = route.upstream_prefix.unwrap_or_else(|| prefix.clone());
        if !upstream_prefix.starts_with('/') {
            checker.error(&key("upstream_prefix"), "must start with '/'");
        }
        // The upstream target is built by concatenation and not parsed again per request
        // (`forward::Forwarder::upstream_target`), so the prefix must be a valid path here.
        if upstream_prefix.contains(['?', '#'])
            || http::uri::PathAndQuery::try_from(upstream_prefix.as_str()).is_err()
        {
            checker.error(
                &key("upstream_prefix"),
                "must be a URL path: no spaces, '?' or '#' (percent-encode other characters)",
            );
        }
        if upstream_prefix.starts_with("/oauth20") {
            checker.error(
                &key("upstream_prefix"),
                "must not point at /oauth20 (the token endpoints are never exposed)",
            );
        }
        if routes.iter().any(|r| r.prefix == prefix) {
            checker.error(&key("prefix"), format!("{prefix:?} is already a route"));
        }
        let session = checker.choice(
            &key("session"),
            route.session.as_deref(),
            SessionPolicy::Required,
            &[
                ("required", SessionPolicy::Required),
                ("optional", SessionPolicy::Optional),
                ("none", SessionPolicy::None),
            ],
        );
        let extra_methods =
            extra_methods(checker, &key("extra_methods"), route.extra_methods.unwrap_or_default());
        routes.push(Route {
            label: prefix.clone(),
            prefix,
            upstream_prefix,
            session,
            extra_methods,
            metrics: Default::default(),
        });
    }
    routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
    routes
}

/// Methods a route forwards beyond the standard seven: valid method tokens, and never
/// CONNECT (it would tunnel the Bearer anywhere).
fn extra_methods(checker: &mut Checker, key: &str, names: Vec<String>) -> Vec<http::Method> {
    let mut methods = Vec::with_capacity(names.len());
    for name in names {
        match http::Method::from_bytes(name.as_bytes()) {
            Ok(method) if method == http::Method::CONNECT => checker.error(key, "CONNECT is never forwarded"),
            Ok(method) if name.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') => {
                methods.push(method)
            }
            _ => checker.error(key, format!("{name:?} is not a method name like \"PROPFIND\"")),
        }
    }
    methods
}

/// Settings that work but weaken security; `check-config` prints them, `run` logs them.
fn insecure_settings(config: &Config, secret_file: Option<&std::path::Path>) -> Vec<ConfigError> {
    let Fixed { server, upstream, session, .. } = &config.fixed;
    let mut warnings = Vec::new();
    let public_origin = server.public_origin.as_deref();
    let local = public_origin.is_none_or(is_local_origin);
    if !session.cookie_secure && !local {
        warnings.push(ConfigError::new(
            "session.cookie_secure",
            "is false while public_origin is not localhost: the session cookie would travel over plain HTTP",
        ));
    }
    if let Some(origin) = public_origin.filter(|o| o.starts_with("http://") && !is_local_origin(o)) {
        warnings.push(ConfigError::new("server.public_origin", format!("{origin} is plain HTTP")));
    }
    let base = &upstream.base;
    let local_base = Host::parse(base.authority.host()).is_ok_and(|host| is_local_host(&host));
    if base.scheme == http::uri::Scheme::HTTP && !local_base {
        warnings.push(ConfigError::new(
            "upstream.base_url",
            "is plain HTTP to a remote host: tokens, the client secret and passwords would travel unencrypted",
        ));
    }
    if let Some(admin) = server.admin_listen.filter(|address| !address.ip().is_loopback()) {
        warnings.push(ConfigError::new(
            "server.admin_listen",
            format!("{admin} is not loopback: /metrics and /readyz have no authentication; keep them off the internet"),
        ));
    }
    if !config.live.leak_guard.enabled {
        warnings.push(ConfigError::new(
            "leak_guard.enabled",
            "is false: an API that echoes a token would reach the browser",
        ));
    }
    if session.same_site == SameSite::None {
        warnings.push(ConfigError::new(
            "session.same_site",
            "is \"none\": cross-site requests carry the cookie, only the CSRF check stands in the way",
        ));
    }
    if let Some(path) = secret_file.filter(|path| is_readable_by_others(path)) {
        warnings.push(ConfigError::new(
            "oauth.client_secret_file",
            format!("{} is open to its group or other users (chmod 600 it)", path.display()),
        ));
    }
    warnings
}

/// Whether an origin (as [`origin`] leaves it) is on this machine.
fn is_local_origin(origin: &str) -> bool {
    Url::parse(origin)
        .ok()
        .and_then(|url| url.host().map(|host| host.to_owned()))
        .is_some_and(|host| is_local_host(&host))
}

/// `localhost`, a `*.localhost` name, or a loopback address.
fn is_local_host(host: &Host<String>) -> bool {
    match host {
        Host::Domain(name) => name == "localhost" || name.ends_with(".localhost"),
        Host::Ipv4(address) => address.is_loopback(),
        Host::Ipv6(address) => address.is_loopback(),
    }
}

#[cfg(unix)]
fn is_readable_by_others(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn is_readable_by_others(_path: &std::path::Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKENGATE_CLIENT_SECRET").then(|| "s3cret".to_string())
    }

    const MINIMAL: &str = r#"
        [oauth]
        client_id = "key"
        [[route]]
        prefix = "/api/"
        upstream_prefix = "/v1/"
    "#;

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let config = Config::from_toml(MINIMAL, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(config.fixed.session.cookie_name, "__Host-tokengate");
        assert!(config.fixed.session.cookie_secure);
        assert_eq!(config.fixed.session.idle_timeout, Duration::from_secs(24 * 3600));
        assert_eq!(config.fixed.session.absolute_timeout, Duration::from_secs(30 * 86400));
        assert_eq!(config.fixed.oauth.refresh_ahead, Duration::from_secs(60));
        assert_eq!(config.fixed.oauth.access_token_path, "/oauth20/access-tokens");
        assert_eq!(config.fixed.oauth.client_secret.expose(), "s3cret");
        assert_eq!(config.live.routes[0].session, SessionPolicy::Required);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            [oauth]
            client_secret_env = "UNSET_VARIABLE_FOR_TEST"
            refresh_ahead = "soon"
            [session]
            cookie_secure = false
            same_site = "sideways"
            [[route]]
            prefix = "/oauth20/"
        "#;
        let errors = Config::from_toml(text, &env).err().unwrap_or_default();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "server.listen",
            "oauth.client_id",
            "oauth.client_secret_env",
            "oauth.refresh_ahead",
            "session.cookie_secure",
            "session.same_site",
            "route[0].prefix",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn an_upstream_prefix_that_is_not_a_url_path_is_refused_at_load() {
        for bad in ["/v1 x/", "/v1/?debug=1", "/v1/#top", "/v1/\\u0001"] {
            let text = format!(
                "[oauth]\nclient_id = \"key\"\n[[route]]\nprefix = \"/api/\"\nupstream_prefix = \"{bad}\"\n"
            );
            let errors = Config::from_toml(&text, &env).err().unwrap_or_default();
            assert!(
                errors.iter().any(|e| e.key == "route[0].upstream_prefix"),
                "{bad:?} accepted: {errors:?}"
            );
        }
        for good in ["/v1/", "/v1/%20x/", "/"] {
            let text = format!(
                "[oauth]\nclient_id = \"key\"\n[[route]]\nprefix = \"/api/\"\nupstream_prefix = \"{good}\"\n"
            );
            assert!(Config::from_toml(&text, &env).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn routes_are_sorted_longest_prefix_first() {
        let text = r#"
            [oauth]
            client_id = "key"
            [[route]]
            prefix = "/api/"
            [[route]]
            prefix = "/api/public/"
            session = "none"
        "#;
        let config = Config::from_toml(text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(config.live.routes[0].prefix, "/api/public/");
    }

    #[test]
    fn insecure_settings_are_warned_about() {
        let text = format!(
            "{MINIMAL}\n[server]\npublic_origin = \"http://shop.example.com\"\n[session]\ncookie_name = \"tg\"\ncookie_secure = false\n[leak_guard]\nenabled = false\n[upstream]\nbase_url = \"http://api.example.com\"\n"
        );
        let config = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let keys: Vec<&str> = config.warnings.iter().map(|w| w.key.as_str()).collect();
        for expected in
            ["session.cookie_secure", "server.public_origin", "leak_guard.enabled", "upstream.base_url"]
        {
            assert!(keys.contains(&expected), "{expected} not warned: {keys:?}");
        }
        let local = format!(
            "{MINIMAL}\n[server]\npublic_origin = \"http://127.0.0.1:8080\"\n[session]\ncookie_name = \"tg\"\ncookie_secure = false\n"
        );
        let config = Config::from_toml(&local, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_gets_its_defaults_with_one() {
        let off = Config::from_toml(MINIMAL, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(off.fixed.tracing.is_none());
        let empty = format!("{MINIMAL}\n[tracing]\notlp_endpoint = \"\"\nservice_name = \"x\"\n");
        let empty = Config::from_toml(&empty, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(empty.fixed.tracing.is_none(), "an empty endpoint is off");
        let on = format!("{MINIMAL}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\n");
        let on = Config::from_toml(&on, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let tracing = on.fixed.tracing.unwrap_or_else(|| panic!("tracing is on"));
        assert_eq!(tracing.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(tracing.service_name, "tokengate");
        assert_eq!(tracing.sample_ratio, 1.0);
        assert!(!tracing.trust_traceparent);
        assert_eq!(tracing.export_timeout, Duration::from_secs(10));
        assert_eq!(tracing.batch_delay, Duration::from_secs(5));
        assert_eq!(tracing.max_queue, 2048);
    }

    #[test]
    fn the_traces_url_is_the_collectors_base_url_and_v1_traces() {
        assert_eq!(
            traces_url("https://otel.internal:4318/").as_deref(),
            Ok("https://otel.internal:4318/v1/traces")
        );
        assert_eq!(traces_url("http://collector/otlp").as_deref(), Ok("http://collector/otlp/v1/traces"));
        assert_eq!(
            traces_url("http://collector:4318/v1/traces").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        for bad in
            ["collector:4318", "ftp://collector", "http://user:pw@collector", "http://c/?x=1", "http://c/#f"]
        {
            assert!(traces_url(bad).is_err(), "{bad} accepted");
        }
        assert!(!traces_url("http://user:pw@collector").unwrap_err().is_empty());
    }

    #[test]
    fn bad_tracing_values_are_reported_with_their_keys() {
        let text = format!(
            "{MINIMAL}\n[tracing]\notlp_endpoint = \"grpc://collector:4317\"\nsample_ratio = 1.5\nservice_name = \" \"\nbatch_delay = \"soon\"\nmax_queue = 0\n"
        );
        let errors = Config::from_toml(&text, &env).err().unwrap_or_default();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "tracing.otlp_endpoint",
            "tracing.sample_ratio",
            "tracing.service_name",
            "tracing.batch_delay",
            "tracing.max_queue",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let overridden = |name: &str| match name {
            "TOKENGATE_TRACING_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318".to_string()),
            "TOKENGATE_TRACING_SAMPLE_RATIO" => Some("0.25".to_string()),
            other => env(other),
        };
        let config = Config::from_toml(MINIMAL, &overridden).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(config.fixed.tracing.map(|t| t.sample_ratio), Some(0.25));
    }

    #[test]
    fn a_secret_value_never_appears_in_an_error() {
        let text = "[oauth]\nclient_secret_env = \"TOKENGATE_CLIENT_SECRET\"\nclient_secret_file = \"/nonexistent\"\n";
        let errors = Config::from_toml(text, &env).err().unwrap_or_default();
        assert!(!errors.iter().any(|e| e.to_string().contains("s3cret")));
    }

    #[test]
    fn every_problem_of_every_stage_is_reported_in_one_run() {
        let text = r#"
            [server]
            surprise = true
            allowed_origins = ["https://shop.example.com/cart"]
            max_connections = "many"
            [oauth]
            client_id = 42
            client_secret_env = "UNSET_VARIABLE_FOR_TEST"
            [session]
            same_site = "sideways"
            idle_timeout = "a while"
            [[route]]
            prefix = "/api/"
            extra = 1
        "#;
        let errors = Config::from_toml(text, &env).err().unwrap_or_default();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "server.surprise",
            "server.allowed_origins",
            "server.max_connections",
            "oauth.client_id",
            "oauth.client_secret_env",
            "session.same_site",
            "session.idle_timeout",
            "route[0].extra",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        // The mistyped client_id is reported once, for its type, not again as missing.
        assert_eq!(keys.iter().filter(|k| **k == "oauth.client_id").count(), 1, "{errors:?}");
        assert_eq!(errors.len(), 8, "{errors:?}");
    }

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        let text = format!(
            "{MINIMAL}[server]\npublic_origin = \"HTTPS://Shop.Example.COM:443/\"\nallowed_origins = [\"https://shop.example.com\", \"http://[::1]:80\", \"http://localhost:8080/\", \"https://bücher.example\"]\n"
        );
        let config = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(config.fixed.server.public_origin.as_deref(), Some("https://shop.example.com"));
        assert_eq!(
            config.live.allowed_origins,
            [
                "https://shop.example.com",
                "http://[::1]",
                "http://localhost:8080",
                "https://xn--bcher-kva.example"
            ]
        );
        let defaulted = Config::from_toml(
            &format!("{MINIMAL}[server]\npublic_origin = \"http://Shop.test:8080\"\n"),
            &env,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(defaulted.live.allowed_origins, ["http://shop.test:8080"]);
    }

    #[test]
    fn cors_is_off_by_default_and_needs_an_allowed_origin() {
        let off = Config::from_toml(MINIMAL, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(off.live.cors.is_none());
        let text =
            format!("{MINIMAL}[server]\ncors = true\nallowed_origins = [\"HTTPS://WWW.Shop.Example:443\"]\n");
        let on = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::ORIGIN, http::HeaderValue::from_static("https://www.shop.example"));
        let granted = on.live.cors.as_ref().and_then(|policy| policy.grant(&headers));
        assert_eq!(granted.as_ref().map(http::HeaderValue::as_bytes), Some(&b"https://www.shop.example"[..]));
        let nothing_allowed = format!("{MINIMAL}[server]\ncors = true\nallowed_origins = []\n");
        let errors = Config::from_toml(&nothing_allowed, &env).err().unwrap_or_default();
        assert!(errors.iter().any(|e| e.key == "server.cors"), "{errors:?}");
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for bad in [
            "shop.example.com",
            "ftp://shop.example.com",
            "https://shop.example.com/cart",
            "https://shop.example.com?x=1",
            "https://shop.example.com#top",
            "https://user:pw@shop.example.com",
            "https://",
            "null",
        ] {
            assert!(origin(bad).is_err(), "{bad} was accepted as {:?}", origin(bad));
            let text = format!("{MINIMAL}[server]\nallowed_origins = [{bad:?}]\n");
            let errors = Config::from_toml(&text, &env).err().unwrap_or_default();
            assert!(errors.iter().any(|e| e.key == "server.allowed_origins"), "{bad}: {errors:?}");
            let text = format!("{MINIMAL}[server]\npublic_origin = {bad:?}\n");
            let errors = Config::from_toml(&text, &env).err().unwrap_or_default();
            assert!(errors.iter().any(|e| e.key == "server.public_origin"), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn base_urls_are_parsed_with_the_url_crate() {
        let base = base_url("HTTPS://API.Example.com:443/prefix/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (base.scheme.as_str(), base.authority.as_str(), base.path.as_str()),
            ("https", "api.example.com", "/prefix")
        );
        let base = base_url("http://127.0.0.1:8081").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (base.scheme.as_str(), base.authority.as_str(), base.path.as_str()),
            ("http", "127.0.0.1:8081", "")
        );
        let base = base_url("http://[::1]:9/a/../v/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((base.authority.as_str(), base.path.as_str()), ("[::1]:9", "/v"));
        for bad in [
            "api.example.com",
            "ftp://api.example.com",
            "https://api.example.com/?x=1",
            "https://api.example.com/#x",
            "https://key:secret@api.example.com",
            "http://",
        ] {
            assert!(base_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn loopback_upstreams_and_origins_are_local() {
        for local in ["http://127.0.0.2:1", "http://[::1]", "http://localhost", "http://shop.localhost:8080"]
        {
            assert!(is_local_origin(local), "{local}");
        }
        for remote in ["http://shop.test", "http://10.0.0.1", "http://localhost.example.com"] {
            assert!(!is_local_origin(remote), "{remote}");
        }
        let text = format!("{MINIMAL}[upstream]\nbase_url = \"http://[::1]:8081\"\n");
        let config = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!config.warnings.iter().any(|w| w.key == "upstream.base_url"), "{:?}", config.warnings);
    }

    #[test]
    fn a_reload_takes_the_live_settings_and_names_each_changed_fixed_section() {
        let running = Config::from_toml(MINIMAL, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let text = format!(
            "{MINIMAL}[[route]]\nprefix = \"/shop/\"\n[server]\ncsrf = \"origin\"\nmax_body_bytes = 10\ntrusted_proxy_depth = 2\ndemo_page = true\nallowed_origins = [\"https://a.example\"]\ncors = true\n[log]\nlevel = \"debug\"\n[leak_guard]\nenabled = false\nmax_body_bytes = 5\n"
        );
        let new = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let expected = new.live.clone();
        let reloaded = new.reloaded(&running.fixed);
        assert!(reloaded.restart_needed.is_empty(), "{:?}", reloaded.restart_needed);
        assert_eq!(reloaded.live, expected);
        assert_eq!(reloaded.live.routes.len(), 2);
        assert_ne!(reloaded.live, running.live);

        // Only a changed secret: noticed although Debug cannot show it.
        let rotated = |name: &str| (name == "TOKENGATE_CLIENT_SECRET").then(|| "n3w-secret".to_string());
        let new = Config::from_toml(MINIMAL, &rotated).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(format!("{:?}", new.fixed), format!("{:?}", running.fixed));
        assert_eq!(new.reloaded(&running.fixed).restart_needed, ["oauth"]);

        let text = format!(
            "{MINIMAL}[server]\nlisten = \"127.0.0.1:1\"\n[session]\nidle_timeout = \"1h\"\n[log]\nformat = \"json\"\n[upstream]\nbase_url = \"https://other.example\"\n[rate_limit]\nnew_sessions_burst = 1\n[store]\nsnapshot_file = \"/tmp/x\"\nencryption_key_env = \"KEY\"\n"
        );
        let with_key = |name: &str| match name {
            "KEY" => Some(STANDARD.encode([1u8; 32])),
            _ => env(name),
        };
        let new = Config::from_toml(&text, &with_key).unwrap_or_else(|e| panic!("{e:?}"));
        let reloaded = new.reloaded(&running.fixed);
        assert_eq!(
            reloaded.restart_needed,
            ["server", "upstream", "session", "store", "rate_limit", "log.format"]
        );
        assert_eq!(reloaded.live, running.live, "only restart-only keys changed");
    }

    #[test]
    fn extra_methods_are_method_names_and_never_connect() {
        let route = |methods: &str| {
            format!(
                "[oauth]\nclient_id = \"key\"\n[[route]]\nprefix = \"/dav/\"\nextra_methods = {methods}\n"
            )
        };
        let config = Config::from_toml(&route(r#"["PROPFIND", "MKCOL"]"#), &env).expect("valid methods");
        let names: Vec<&str> = config.live.routes[0].extra_methods.iter().map(http::Method::as_str).collect();
        assert_eq!(names, ["PROPFIND", "MKCOL"]);
        for bad in [r#"["CONNECT"]"#, r#"["propfind"]"#, r#"["NO SPACE"]"#] {
            let errors = Config::from_toml(&route(bad), &env).err().unwrap_or_default();
            assert!(errors.iter().any(|e| e.key == "route[0].extra_methods"), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn the_redis_store_needs_its_url_and_keys_and_refuses_a_snapshot() {
        let text = "[oauth]\nclient_id = \"key\"\n[store]\nkind = \"redis\"\nsnapshot_file = \"/tmp/x\"\n";
        let errors = Config::from_toml(text, &env).err().unwrap_or_default();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in ["store.url_env", "store.encryption_key_env", "store.snapshot_file"] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let with = |name: &str| match name {
            "TOKENGATE_REDIS_URL" => Some("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001".to_string()),
            "STORE_KEY" => Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_string()),
            other => env(other),
        };
        let text = "[oauth]\nclient_id = \"key\"\n[store]\nkind = \"redis\"\nencryption_key_env = \"STORE_KEY\"\nlock_lease = \"3s\"\n";
        let config = Config::from_toml(text, &with).expect("a valid redis config");
        let StoreKind::Redis(redis) = &config.fixed.store.kind else { panic!("redis") };
        assert_eq!(redis.lock_lease, Duration::from_secs(3));
        assert_eq!((redis.pool_size, redis.key_prefix.as_str()), (4, "tokengate"));
        assert_eq!((redis.local_cache, redis.local_cache_max), (true, 100_000));
        let off = format!("{text}local_cache = false\nlocal_cache_max = 5\n");
        let config = Config::from_toml(&off, &with).expect("a valid redis config");
        let StoreKind::Redis(off) = &config.fixed.store.kind else { panic!("redis") };
        assert_eq!((off.local_cache, off.local_cache_max), (false, 5));
        let zero = format!("{text}local_cache_max = 0\n");
        let errors = Config::from_toml(&zero, &with).err().unwrap_or_default();
        assert!(errors.iter().any(|e| e.key == "store.local_cache_max"), "{errors:?}");
        let memory = "[oauth]\nclient_id = \"key\"\n[store]\nlocal_cache = true\n";
        let errors = Config::from_toml(memory, &env).err().unwrap_or_default();
        assert!(errors.iter().any(|e| e.key == "store.local_cache"), "{errors:?}");
        let debug = format!("{:?}", config.fixed.store);
        assert!(!debug.contains("7000"), "the URL may hold a password: {debug}");
    }

    const OAUTH2: &str = "[server]\npublic_origin = \"https://shop.example\"\n[oauth]\nflavor = \"oauth2\"\nclient_id = \"shop\"\nissuer = \"https://idp.example/realms/shop\"\n";

    #[test]
    fn the_oauth2_flavor_gets_its_defaults_and_no_guests() {
        let config = Config::from_toml(OAUTH2, &env).expect("a valid oauth2 config");
        let oidc = config.fixed.oauth.oidc.as_ref().expect("oidc settings");
        assert_eq!(oidc.issuer, "https://idp.example/realms/shop");
        assert_eq!(oidc.client_auth, ClientAuthMethod::Basic);
        assert_eq!(oidc.scope, "openid profile email offline_access");
        assert_eq!(oidc.jwks_refetch_interval, Duration::from_secs(30));
        assert_eq!(oidc.token_path, None);
        assert_eq!(config.fixed.session.guest, GuestMode::Off);
        let text = format!("{OAUTH2}client_auth = \"post\"\ntoken_path = \"/connect/token\"\n");
        let oidc = Config::from_toml(&text, &env).expect("valid").fixed.oauth.oidc.expect("oidc");
        assert_eq!(
            (oidc.client_auth, oidc.token_path.as_deref()),
            (ClientAuthMethod::Post, Some("/connect/token"))
        );
        let local = "[server]\npublic_origin = \"http://localhost:8080\"\n[session]\ncookie_name = \"tg\"\ncookie_secure = false\n[oauth]\nflavor = \"oauth2\"\nclient_id = \"shop\"\nissuer = \"http://127.0.0.1:9000\"\n";
        assert!(Config::from_toml(local, &env).is_ok(), "http on loopback is allowed");
    }

    #[test]
    fn the_oauth2_flavor_refuses_what_it_cannot_do() {
        let cases = [
            (
                "[oauth]\nflavor = \"oauth2\"\nclient_id = \"shop\"\nissuer = \"https://idp.example\"\n",
                "server.public_origin",
            ),
            (&format!("{OAUTH2}[session]\nguest = \"lazy\"\n"), "session.guest"),
            (
                &format!("{OAUTH2}[client_hosted]\nsecret_env = \"TOKENGATE_CLIENT_SECRET\"\n"),
                "client_hosted",
            ),
            (&OAUTH2.replace("https://idp.example/realms/shop", "http://idp.example"), "oauth.issuer"),
            (&OAUTH2.replace("issuer = \"https://idp.example/realms/shop\"\n", ""), "oauth.issuer"),
            (&format!("{OAUTH2}password_encoding = \"plain\"\n"), "oauth.password_encoding"),
            (&format!("{OAUTH2}scope = \"profile\"\n"), "oauth.scope"),
            ("[oauth]\nclient_id = \"key\"\nissuer = \"https://idp.example\"\n", "oauth.issuer"),
        ];
        for (text, key) in cases {
            let errors = Config::from_toml(text, &env).err().unwrap_or_default();
            assert!(errors.iter().any(|e| e.key == key), "{key}: {errors:?}");
        }
    }
}
