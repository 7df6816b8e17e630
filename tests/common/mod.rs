//! The test harness: real `tokengate` and real `commerce-mock` processes on 127.0.0.1
//! ports, a cookie-keeping "browser", and a leak check that runs when every test ends.
//!
//! * Each [`Env`] starts its own mock and proxy, each binding port 0 and announcing the
//!   bound address on one stdout line, so parallel tests never race for ports.
//! * The mock appends every token it issues to a file; the proxy's stderr goes to a file.
//! * Every response the browser receives is recorded. When the `Env` drops (and the test
//!   has not already failed), it asserts that no issued token appears in any recorded
//!   response header or body, and that no token, cookie value, password or client
//!   secret appears in the proxy's log. So the "no token reaches the browser" rule is
//!   checked across the whole suite, not in one test.
//! * Children are stopped by PID when the `Env` drops. Nothing sleeps to synchronise:
//!   [`eventually`] polls against a deadline.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

mod config;
pub use config::ProxyToml;
pub mod hostile;
pub mod oidc;
pub mod otlp;
pub mod redis;

pub const CLIENT_ID: &str = "test-api-key";
pub const CLIENT_SECRET: &str = "test-client-secret-5f2a";
pub const USERNAME: &str = "jdoe@example.com";
pub const PASSWORD: &str = "p4ssw0rd!";
pub const COOKIE: &str = "tg";

/// A response as the browser saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The contract's error code, if the body is an error.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    /// Every `Set-Cookie` value.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    }

    /// Whether the response clears our cookie.
    pub fn clears_cookie(&self) -> bool {
        self.set_cookies().iter().any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Options for one environment: how to start the mock, the proxy's environment, TLS,
/// and the proxy's config (a [`ProxyToml`]; `Env` points `upstream.base_url` at the mock
/// unless the test set it, and adds the TLS files). Read like the builder it wraps:
///
/// ```ignore
/// Env::with(Options::default().set("session", "idle_timeout", "2s")).await;
/// Env::with(Options::default().mock_args(&["--access-ttl", "30"]).set("oauth", "refresh_ahead", "60s")).await;
/// Env::with(Options { mock_tls: true, ..Options::default() }).await;
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub mock_args: Vec<String>,
    /// Extra environment for the proxy, e.g. `TOKENGATE_SERVER_CSRF=origin` overrides.
    pub proxy_env: Vec<(String, String)>,
    /// The mock serves HTTPS with a self-signed certificate...
    pub mock_tls: bool,
    /// ...which the proxy trusts through `upstream.ca_file` (when true).
    pub trust_mock_certificate: bool,
    /// The proxy serves HTTPS with the same self-signed certificate.
    pub proxy_tls: bool,
    /// The proxy's config file.
    pub config: ProxyToml,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mock_args: Vec::new(),
            proxy_env: Vec::new(),
            mock_tls: false,
            trust_mock_certificate: true,
            proxy_tls: false,
            config: ProxyToml::harness(),
        }
    }
}

impl Options {
    /// Sets `section.key` in the proxy's config (see [`ProxyToml::set`]).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.config = self.config.set(section, key, value);
        self
    }

    /// Removes `section.key` from the proxy's config (see [`ProxyToml::remove`]).
    pub fn remove(mut self, section: &str, key: &str) -> Self {
        self.config = self.config.remove(section, key);
        self
    }

    /// Appends a `[[route]]` to the proxy's config.
    pub fn route(mut self, prefix: &str, upstream_prefix: &str, session: &str) -> Self {
        self.config = self.config.route(prefix, upstream_prefix, session);
        self
    }

    /// Extra command-line arguments for the mock, e.g. `["--access-ttl", "2"]`.
    pub fn mock_args(mut self, args: &[&str]) -> Self {
        self.mock_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the proxy.
    pub fn proxy_env(mut self, name: &str, value: &str) -> Self {
        self.proxy_env.push((name.to_string(), value.to_string()));
        self
    }
}

/// Everything a test's browser can see, shared with the leak check.
#[derive(Default)]
struct Transcript {
    responses: Vec<String>,
    cookie_values: Vec<String>,
}

/// A running commerce-mock.
pub struct Mock {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
    pub issued_tokens_file: PathBuf,
}

/// A running tokengate.
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log_file: PathBuf,
}

/// One test's world: a mock, a proxy, and what the browser saw.
pub struct Env {
    pub mock: Mock,
    pub proxy: Proxy,
    pub dir: tempfile::TempDir,
    pub options: Options,
    /// What was last written to `proxy.toml`.
    config: ProxyToml,
    client: HttpClient,
    transcript: Arc<Mutex<Transcript>>,
    leak_check: bool,
    /// Tokens a test lets reach the browser on purpose (the hosted login's authorize URL
    /// carries the guest token, by Digital River's design).
    allowed_in_responses: Vec<String>,
    /// Secrets from elsewhere (an OpenID provider's tokens, its client secret) that must
    /// reach neither the browser nor the proxy's log, like the mock's tokens.
    watched: Vec<String>,
}

impl Env {
    pub async fn start() -> Env {
        Env::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory for the test");
        let certificate =
            (options.mock_tls || options.proxy_tls).then(|| TestCertificate::create(dir.path()));
        let mut mock_args = options.mock_args.clone();
        if let (true, Some(cert)) = (options.mock_tls, &certificate) {
            mock_args.extend(["--tls-cert".into(), cert.cert_file.display().to_string()]);
            mock_args.extend(["--tls-key".into(), cert.key_file.display().to_string()]);
        }
        let mock = start_mock(dir.path(), &mock_args);
        let mut config = options.config.clone();
        if config.get("upstream", "base_url").is_none() {
            config = config.set("upstream", "base_url", mock.url.as_str());
        }
        if let Some(cert) = &certificate {
            if options.proxy_tls {
                config = config.set("server.tls", "cert_file", cert.cert_file.display().to_string()).set(
                    "server.tls",
                    "key_file",
                    cert.key_file.display().to_string(),
                );
            }
            if options.mock_tls && options.trust_mock_certificate {
                config = config.set("upstream", "ca_file", cert.cert_file.display().to_string());
            }
        }
        let config_path = dir.path().join("proxy.toml");
        config.write(&config_path);
        let env: Vec<(&str, &str)> =
            options.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let proxy = start_proxy(&config_path, dir.path(), &env);
        Env {
            mock,
            proxy,
            dir,
            options,
            config,
            client: http_client(certificate.as_ref()),
            transcript: Arc::default(),
            leak_check: true,
            allowed_in_responses: Vec::new(),
            watched: Vec::new(),
        }
    }

    /// The config the proxy runs on (what is in [`Env::config_path`]), to derive a
    /// variant from: `env.config().clone().set(...)`.
    pub fn config(&self) -> &ProxyToml {
        &self.config
    }

    /// The proxy's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Replaces the proxy's config file (the running proxy reads it on SIGHUP or restart).
    pub fn write_config(&mut self, config: ProxyToml) {
        config.write(&self.config_path());
        self.config = config;
    }

    /// A browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        Browser {
            client: self.client.clone(),
            base: format!("{}://{}", if self.options.proxy_tls { "https" } else { "http" }, self.proxy.addr),
            cookie: Arc::new(Mutex::new(None)),
            transcript: Arc::clone(&self.transcript),
        }
    }

    /// A plain GET/PUT/POST to the mock's control API (not recorded: it is not the browser).
    pub async fn mock_call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.mock.url))
            .header("content-type", "application/json")
            .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
            .expect("a valid control request");
        let response = self.client.request(request).await.expect("the mock's control API answers");
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    /// A request to any URL that is not recorded as something the browser saw (for
    /// talking to the mock's own pages, as a browser would on the API's hosted login).
    pub async fn raw(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request =
            builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("a valid request");
        let response = self.client.request(request).await.expect("the raw request gets an answer");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Reply { status, headers, body }
    }

    /// The HTTP version a GET to `url` was answered with.
    pub async fn raw_version(&self, url: &str) -> http::Version {
        let request = Request::get(url).body(Full::new(Bytes::new())).expect("a valid GET");
        let response = self.client.request(request).await.expect("the GET gets an answer");
        response.version()
    }

    pub async fn stats(&self) -> Value {
        self.mock_call(Method::GET, "/__mock/stats", None).await
    }

    /// How many refresh grants the token endpoint has served.
    pub async fn refresh_calls(&self) -> u64 {
        self.stats().await["token_calls"]["refresh"].as_u64().unwrap_or(u64::MAX)
    }

    pub async fn set_faults(&self, faults: Value) {
        self.mock_call(Method::PUT, "/__mock/faults", Some(faults)).await;
    }

    pub async fn clear_faults(&self) {
        self.mock_call(Method::DELETE, "/__mock/faults", None).await;
    }

    /// Makes every live access token expired at the mock (refresh tokens stay valid).
    pub async fn expire_access_tokens(&self) {
        self.mock_call(Method::POST, "/__mock/expire", Some(serde_json::json!({"all": true}))).await;
    }

    /// Disables the end-of-test leak check, for a test that leaks on purpose.
    pub fn expect_leaks(&mut self) {
        self.leak_check = false;
    }

    /// Lets `token` appear in responses to the browser (never in the log).
    pub fn allow_in_responses(&mut self, token: &str) {
        self.allowed_in_responses.push(token.to_string());
    }

    /// Adds secrets the leak check searches for, in what the browser saw and in the log
    /// (e.g. `OidcProvider::issued_token_values`).
    pub fn watch_secrets(&mut self, secrets: impl IntoIterator<Item = String>) {
        self.watched.extend(secrets);
    }

    /// Every token the mock issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        read_lines(&self.mock.issued_tokens_file)
    }

    /// The leaks found so far: descriptions of each secret found where it must not be.
    pub fn find_leaks(&self) -> Vec<String> {
        let transcript = self.transcript.lock().unwrap_or_else(|e| e.into_inner());
        let log = std::fs::read_to_string(&self.proxy.log_file).unwrap_or_default();
        let mut tokens = self.issued_tokens();
        tokens.extend(self.watched.iter().cloned());
        let mut leaks = Vec::new();
        for token in tokens.iter().filter(|t| t.len() >= 16) {
            let allowed = self.allowed_in_responses.contains(token);
            if !allowed && transcript.responses.iter().any(|r| r.contains(token.as_str())) {
                leaks.push(format!("token {}… reached the browser", &token[..8]));
            }
            if log.contains(token.as_str()) {
                leaks.push(format!("token {}… is in the proxy log", &token[..8]));
            }
        }
        for cookie in &transcript.cookie_values {
            if log.contains(cookie.as_str()) {
                leaks.push("a session cookie value is in the proxy log".into());
            }
        }
        for secret in [CLIENT_SECRET, PASSWORD] {
            if log.contains(secret) {
                leaks.push(format!("secret {secret:?} is in the proxy log"));
            }
        }
        leaks
    }

    /// The proxy's log so far.
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(&self.proxy.log_file).unwrap_or_default()
    }

    /// Stops the proxy (SIGKILL) and starts a new one on the same config.
    pub fn restart_proxy(&mut self) {
        self.proxy.stop();
        let env: Vec<(&str, &str)> =
            self.options.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.proxy = start_proxy(&self.config_path(), self.dir.path(), &env);
    }

    /// Writes `config` and restarts the proxy on it.
    pub fn restart_proxy_with_config(&mut self, config: ProxyToml) {
        self.write_config(config);
        self.restart_proxy();
    }

    /// Stops the mock, to make the whole upstream unreachable.
    pub fn stop_mock(&mut self) {
        let _ = self.mock.child.kill();
        let _ = self.mock.child.wait();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.proxy.stop();
        let _ = self.mock.child.kill();
        let _ = self.mock.child.wait();
        if std::thread::panicking() {
            eprintln!("--- proxy log (last 40 lines) ---");
            let log = self.proxy_log();
            for line in log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev() {
                eprintln!("{line}");
            }
            return;
        }
        if self.leak_check {
            let leaks = self.find_leaks();
            assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
        }
    }
}

/// A proxy a test started (an `Env`'s or an extra replica) is stopped by PID when it goes
/// out of scope, even when the test fails.
impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Proxy {
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal to the proxy process (by its PID) and polls, until `deadline`, for
    /// its exit status (`None` if it is still running then).
    pub async fn signal_and_wait(
        &mut self,
        signal: &str,
        deadline: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-s", signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -s {signal} {pid} failed");
        let status = eventually(deadline, || {
            let exited = child.try_wait().ok().flatten();
            async move { exited }
        })
        .await;
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A browser: keeps our cookie, sends `X-CSRF: 1` on unsafe methods and
/// `Accept: application/json` by default (the API answers XML otherwise, as the real one
/// does), and records every response for the leak check.
#[derive(Clone)]
pub struct Browser {
    client: HttpClient,
    pub base: String,
    cookie: Arc<Mutex<Option<String>>>,
    transcript: Arc<Mutex<Transcript>>,
}

impl Browser {
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_cookie(&self, value: Option<String>) {
        *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// A second browser that shares nothing with this one but the proxy.
    pub fn fresh(&self) -> Browser {
        Browser { cookie: Arc::new(Mutex::new(None)), ..self.clone() }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(Bytes::from(body.to_string())),
        )
        .await
    }

    pub async fn post(&self, path: &str) -> Reply {
        self.send(Method::POST, path, &[], None).await
    }

    pub async fn login(&self) -> Reply {
        self.post_json("/session/login", serde_json::json!({"username": USERNAME, "password": PASSWORD}))
            .await
    }

    /// Sends a request with our cookie, `Accept: application/json`, and `X-CSRF: 1` on
    /// unsafe methods, plus `headers` (a header given here replaces the default).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Reply {
        let mut builder = Request::builder().method(method.clone()).uri(format!("{}{path}", self.base));
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if method != Method::GET && method != Method::HEAD && !has("x-csrf") {
            builder = builder.header("x-csrf", "1");
        }
        if !has("accept") {
            builder = builder.header("accept", "application/json");
        }
        if let (Some(cookie), false) = (self.cookie(), has("cookie")) {
            builder = builder.header("cookie", format!("{COOKIE}={cookie}"));
        }
        for (name, value) in headers {
            if !value.is_empty() {
                builder = builder.header(*name, *value);
            }
        }
        let request = builder.body(Full::new(body.unwrap_or_default())).expect("a valid request");
        let response = self.client.request(request).await.expect("the proxy answers the browser");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let reply = Reply { status, headers, body };
        self.record(&reply);
        reply
    }

    fn record(&self, reply: &Reply) {
        let mut text = String::new();
        for (name, value) in &reply.headers {
            text.push_str(name.as_str());
            text.push_str(": ");
            text.push_str(&String::from_utf8_lossy(value.as_bytes()));
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(&reply.body));
        let mut transcript = self.transcript.lock().unwrap_or_else(|e| e.into_inner());
        transcript.responses.push(text);
        for cookie in reply.set_cookies() {
            if let Some(value) = cookie_value(&cookie) {
                if !value.is_empty() {
                    transcript.cookie_values.push(value.clone());
                    *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
                } else {
                    *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
        }
    }
}

fn cookie_value(set_cookie: &str) -> Option<String> {
    let first = set_cookie.split(';').next()?;
    let (name, value) = first.split_once('=')?;
    (name.trim() == COOKIE).then(|| value.trim().to_string())
}

/// The redirect URI the mock registers for the client: the harness's `public_origin`
/// (`http://shop.test`, see `config.rs`) plus `/session/callback`.
pub const REDIRECT_URI: &str = "http://shop.test/session/callback";

fn start_mock(dir: &Path, extra_args: &[String]) -> Mock {
    let issued_tokens_file = dir.join("issued-tokens.txt");
    let log = std::fs::File::create(dir.join("mock.log")).expect("the mock's log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_commerce-mock"));
    command
        .args(["--listen", "127.0.0.1:0", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
        .args(["--user", &format!("{USERNAME}:{PASSWORD}"), "--user", "other@example.com:0ther-pass"])
        .args(["--redirect-uri", REDIRECT_URI])
        .env_remove("MOCK_REDIRECT_URIS")
        .env_remove("MOCK_ANY_REDIRECT_URI")
        .arg("--issued-tokens-file")
        .arg(&issued_tokens_file)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let (child, line) = spawn_and_read_line(command, "commerce-mock");
    let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://") || w.starts_with("https://"))
    else {
        panic!("commerce-mock announced no URL: {line:?}");
    };
    let url = url.to_string();
    let addr = url.split("://").nth(1).unwrap_or("").parse().expect("the mock's URL holds an address");
    Mock { child, url, addr, issued_tokens_file }
}

/// Starts tokengate on `config`, with the test client secret in its environment.
pub fn start_proxy(config: &Path, dir: &Path, extra_env: &[(&str, &str)]) -> Proxy {
    let log_file = dir.join(format!("proxy-{}.log", Instant::now().elapsed().as_nanos() ^ rand_suffix()));
    let log = std::fs::File::create(&log_file).expect("the proxy's log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command
        .arg("--config")
        .arg(config)
        .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
        .env_remove("RUST_LOG")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let (child, line) = spawn_and_read_line(command, "tokengate");
    // "tokengate listening on http://A admin http://B"
    let mut urls =
        line.split_whitespace().filter(|w| w.starts_with("http")).filter_map(|w| w.split("://").nth(1));
    let Some(addr) = urls.next().and_then(|a| a.parse().ok()) else {
        panic!("tokengate announced no address: {line:?}");
    };
    let admin = urls.next().and_then(|a| a.parse().ok());
    Proxy { child: Some(child), addr, admin, log_file }
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u128::from(N.fetch_add(1, Ordering::Relaxed))
}

/// Spawns `command` and waits (at most 30 s) for its first stdout line.
fn spawn_and_read_line(mut command: Command, name: &str) -> (Child, String) {
    let mut child = command.spawn().expect("the binary under test starts");
    let stdout = child.stdout.take().expect("a piped stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = sender.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    match receiver.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if !line.is_empty() => (child, line),
        _ => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!("{name} did not announce its address (exit: {status:?})");
        }
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Headers the mock's echo endpoint saw, by lowercase name.
pub fn echoed_headers(reply: &Reply) -> HashMap<String, Value> {
    reply.json()["headers"].as_object().map(|o| o.clone().into_iter().collect()).unwrap_or_default()
}

pub fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("a valid header value")
}

/// Runs the futures as concurrent tasks and returns their outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("the task finishes without panicking"));
    }
    outputs
}

/// `Options` with extra proxy environment variables.
pub fn with_env(pairs: &[(&str, &str)]) -> Options {
    Options {
        proxy_env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Options::default()
    }
}

/// The harness's HTTP client: plain HTTP, or HTTPS trusting the test certificate.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(certificate: Option<&TestCertificate>) -> HttpClient {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(certificate) = certificate {
        let pem = std::fs::read(&certificate.cert_file).unwrap_or_default();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls_pki_types::CertificateDer<'static> = cert.expect("a PEM certificate");
            roots.add(cert).expect("the test certificate is a valid root");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files in a test's folder.
pub struct TestCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCertificate {
    pub fn create(dir: &Path) -> TestCertificate {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(names).expect("a self-signed certificate");
        let cert_file = dir.join("test-cert.pem");
        let key_file = dir.join("test-key.pem");
        std::fs::write(&cert_file, cert.pem()).expect("the certificate file is writable");
        std::fs::write(&key_file, key_pair.serialize_pem()).expect("the key file is writable");
        TestCertificate { cert_file, key_file }
    }
}
