//! `commerce-mock`: an emulator of Digital River's Commerce API OAuth endpoints and a few
//! shopper resources, for tokengate's tests and the compose demo.
//!
//! This file owns the CLI (every option also reads a `MOCK_*` variable), startup (logging
//! to stderr, binding, the one `listening on` line on stdout), the accept loop serving
//! HTTP/1.1 and HTTP/2, SIGTERM/SIGINT handling, and routing each request to the module
//! that owns its path. It deliberately shares no types with the tokengate library, so a
//! wire-format mistake on one side is caught by tests instead of cancelled out.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod authorize;
mod carts;
mod control;
mod debug;
mod faults;
mod healthcheck;
mod oauth;
mod respond;
mod shopper;
mod state;
mod stats;
mod tls;
mod xml;

use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::faults::FaultSwitch;
use crate::respond::{DropConnection, MockResponse};
use crate::state::{Store, User};
use crate::stats::{Stats, Surface};

/// Longest accepted token lifetime (100 years): keeps `Instant + ttl` far from overflow.
const MAX_TTL_SECS: u64 = 3_153_600_000;

#[derive(Parser)]
#[command(
    name = "commerce-mock",
    version,
    about = "Emulates Digital River's Commerce API OAuth endpoints and a few shopper resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeOptions,
}

#[derive(Subcommand)]
enum Command {
    /// GET /__mock/health of a running mock: exit 0 on 200, else 1 (for container checks).
    Healthcheck {
        /// Base URL of the mock [default: http://<--listen address>, i.e. http://127.0.0.1:8081]
        #[arg(long, env = "MOCK_URL")]
        url: Option<String>,
    },
}

#[derive(Args)]
struct ServeOptions {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "MOCK_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The API key clients must present.
    #[arg(long, env = "MOCK_CLIENT_ID", default_value = "demo-api-key")]
    client_id: String,
    /// The client secret confidential clients must present.
    #[arg(long, env = "MOCK_CLIENT_SECRET", default_value = "demo-secret", hide_env_values = true)]
    client_secret: String,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "MOCK_ACCESS_TTL", default_value_t = 86_397, value_parser = ttl_parser())]
    access_ttl: u64,
    /// Unix time (seconds) at which every access token a sign-in mints before it expires,
    /// all at once: `expires_in` is the time left (rounded up, at least 1). Refreshes, and
    /// sign-ins from that instant on, get --access-ttl. For refresh-storm benchmarks; off
    /// by default.
    #[arg(long, env = "MOCK_ACCESS_EXPIRES_AT", value_name = "UNIX_SECS")]
    access_expires_at: Option<u64>,
    /// Refresh-token lifetime in seconds.
    #[arg(long, env = "MOCK_REFRESH_TTL", default_value_t = 31_536_000, value_parser = ttl_parser())]
    refresh_ttl: u64,
    /// A shopper as NAME:PASSWORD (repeatable; MOCK_USERS is comma-separated).
    #[arg(
        long = "user",
        value_name = "NAME:PASSWORD",
        env = "MOCK_USERS",
        value_delimiter = ',',
        default_values = ["jdoe@example.com:p4ssw0rd!", "demo@example.com:demo"],
        value_parser = parse_user,
        hide_env_values = true
    )]
    users: Vec<UserSpec>,
    /// A redirect URI registered for the client: `GET /oauth20/authorize` refuses any
    /// `redirect_uri` that is not one of these, compared as exact strings (repeatable;
    /// MOCK_REDIRECT_URIS is comma-separated). The defaults are the demo's.
    #[arg(
        long = "redirect-uri",
        value_name = "URI",
        env = "MOCK_REDIRECT_URIS",
        value_delimiter = ',',
        default_values = ["http://127.0.0.1:8080/session/callback", "http://localhost:8080/session/callback"]
    )]
    redirect_uris: Vec<String>,
    /// Accept any absolute http(s) `redirect_uri` (turns the registered-URI check off).
    #[arg(long, env = "MOCK_ANY_REDIRECT_URI")]
    any_redirect_uri: bool,
    /// Append every issued access and refresh token to this file, one per line.
    #[arg(long, env = "MOCK_ISSUED_TOKENS_FILE")]
    issued_tokens_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key), e.g. a self-signed one
    /// for testing a client's `ca_file`.
    #[arg(long, env = "MOCK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, env = "MOCK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Clone)]
struct UserSpec {
    name: String,
    password: String,
}

fn ttl_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(0..=MAX_TTL_SECS)
}

/// `NAME:PASSWORD`; the password may itself contain `:`.
fn parse_user(text: &str) -> Result<UserSpec, String> {
    match text.split_once(':') {
        Some((name, password)) if !name.trim().is_empty() => {
            Ok(UserSpec { name: name.trim().to_owned(), password: password.to_owned() })
        }
        _ => Err("expected NAME:PASSWORD with a non-empty name".to_owned()),
    }
}

/// Fixed configuration every handler reads.
pub struct Settings {
    /// API key clients must present.
    pub client_id: String,
    /// Secret confidential clients must present.
    pub client_secret: String,
    /// Where issued tokens are appended, if anywhere.
    pub issued_tokens_file: Option<PathBuf>,
    /// The registered redirect URIs; `None` accepts any (`--any-redirect-uri`).
    pub redirect_uris: Option<Vec<String>>,
}

/// Everything shared by all connections.
pub struct App {
    /// Fixed configuration.
    pub settings: Settings,
    /// Current fault injection settings.
    pub faults: FaultSwitch,
    /// Call counters.
    pub stats: Stats,
    store: Mutex<Store>,
}

impl App {
    /// Locks the state. Callers must drop the guard before any `.await`. A poisoned lock
    /// is recovered: the store has no invariant a panicking reader could half-break.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Some(Command::Healthcheck { url }) => {
            let url = url.unwrap_or_else(|| format!("http://{}", reachable(cli.serve.listen)));
            healthcheck::run(&url).await
        }
        None => match serve(cli.serve).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                tracing::error!("{message}");
                eprintln!("commerce-mock: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Binds, announces the address, serves until SIGTERM/SIGINT.
async fn serve(options: ServeOptions) -> Result<(), String> {
    let app = Arc::new(build_app(&options)?);
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", options.listen))?;
    let local = listener.local_addr().map_err(|error| format!("cannot read the bound address: {error}"))?;
    // Signal handlers go in before the ready line, so a test that reads the line and
    // sends SIGTERM at once still gets a clean exit 0.
    let shutdown = shutdown_signal().map_err(|error| format!("cannot handle signals: {error}"))?;
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    announce(local, tls.is_some());
    accept_loop(listener, app, shutdown, tls).await;
    info!("shutting down");
    Ok(())
}

fn build_app(options: &ServeOptions) -> Result<App, String> {
    let mut users: Vec<User> = Vec::new();
    for spec in &options.users {
        if users.iter().any(|user| user.name == spec.name) {
            return Err(format!("user {} is configured twice", spec.name));
        }
        users.push(User { name: spec.name.clone(), password: spec.password.clone() });
    }
    if let Some(path) = &options.issued_tokens_file {
        // Fail at startup, not at the first mint, when the file cannot be written.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    }
    let mut store =
        Store::new(users, Duration::from_secs(options.access_ttl), Duration::from_secs(options.refresh_ttl));
    if let Some(at) = options.access_expires_at {
        let deadline = std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(at))
            .ok_or_else(|| format!("--access-expires-at {at} is out of range"))?;
        store.set_access_deadline(Some(deadline));
    }
    let settings = Settings {
        client_id: options.client_id.clone(),
        client_secret: options.client_secret.clone(),
        issued_tokens_file: options.issued_tokens_file.clone(),
        redirect_uris: (!options.any_redirect_uri).then(|| options.redirect_uris.clone()),
    };
    Ok(App { settings, faults: FaultSwitch::default(), stats: Stats::default(), store: Mutex::new(store) })
}

/// The address a client should dial: an unspecified bind address means loopback.
fn reachable(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
    } else {
        address
    }
}

/// The one stdout line tests wait for, flushed at once. A closed stdout is not fatal:
/// whoever started us may simply not read it.
fn announce(local: SocketAddr, https: bool) {
    let scheme = if https { "https" } else { "http" };
    let line = format!("commerce-mock listening on {scheme}://{}", reachable(local));
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        warn!("cannot write the ready line to stdout: {error}");
    }
    info!("{line}");
}

#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = interrupt.recv() => info!("SIGINT received"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Accepts until the shutdown future resolves. In-flight connections are not drained:
/// the mock holds nothing worth finishing, and tests want a prompt exit.
async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => spawn_connection(stream, Arc::clone(&app), tls.clone()),
                Err(error) => {
                    // Usually fd exhaustion; back off so the loop does not spin hot.
                    warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (prior knowledge, or ALPN over TLS), on its
/// own task.
fn spawn_connection(stream: TcpStream, app: Arc<App>, tls: Option<tokio_rustls::TlsAcceptor>) {
    tokio::spawn(async move {
        let service = service_fn(move |request| route(Arc::clone(&app), request));
        let builder = auto::Builder::new(TokioExecutor::new());
        let result = match tls {
            None => builder.serve_connection(TokioIo::new(stream), service).await,
            Some(tls) => match tls.accept(stream).await {
                Ok(stream) => builder.serve_connection(TokioIo::new(stream), service).await,
                Err(error) => {
                    debug!("TLS handshake failed: {error}");
                    return;
                }
            },
        };
        if let Err(error) = result {
            debug!("connection ended with an error: {error}");
        }
    });
}

/// Logs one line per request: method, path (never the query, which may carry a token)
/// and status.
async fn route(app: Arc<App>, request: Request<Incoming>) -> Result<MockResponse, DropConnection> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = dispatch(&app, request).await;
    match &result {
        Ok(response) => debug!(%method, %path, status = response.status().as_u16(), "request"),
        Err(_) => debug!(%method, %path, "connection dropped by fault injection"),
    }
    result
}

/// Hands the request to the module that owns its path prefix.
async fn dispatch(app: &App, request: Request<Incoming>) -> Result<MockResponse, DropConnection> {
    let path = request.uri().path();
    if path.starts_with("/__mock/") {
        return Ok(control::handle(app, request).await);
    }
    if path.starts_with("/oauth20/") {
        app.stats.note_traceparent(Surface::OAuth, request.headers());
        return oauth::handle(app, request).await;
    }
    if path == "/v1" || path.starts_with("/v1/") {
        app.stats.note_traceparent(Surface::Resource, request.headers());
        return Ok(shopper::handle(app, request).await);
    }
    Ok(respond::not_found())
}
