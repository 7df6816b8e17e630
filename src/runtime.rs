//! Assembling and running the proxy: build every part from the config, bind the
//! listeners, run until told to stop, drain.
//!
//! The steps, in the order `run` takes them: (1) metrics and, with `[tracing]`, the trace
//! exporter, (2) the pooled upstream
//! client, (3) the token service, (4) the store with its snapshot loaded, (5) the session
//! core, the forwarder and the app, (6) the TLS acceptor — any failure so far is
//! [`RunError::Config`] and nothing is bound yet; (7) bind both listeners, failing before
//! anything serves if either cannot be bound; (8) announce the bound addresses; (9) serve
//! with the sweeper, the SIGHUP reloader and the snapshot writer until `shutdown` fires;
//! (10) drain within `server.shutdown_timeout`, flush the traces, then write the final
//! snapshot. The demo
//! binds first (it needs its port for the config) and then runs 1–6 and 8–10.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::app::App;
use crate::clock::Clock;
use crate::config::{ClientAuthMethod, Config, Fixed, OidcSettings, StoreKind, UpstreamProtocol};
use crate::forward::Forwarder;
use crate::hosted_login::HostedLogin;
use crate::metrics::Metrics;
use crate::oidc::discovery::{Backoff, EndpointOverrides, ProviderCache};
use crate::ratelimit::SessionRateLimit;
use crate::server::{self, ServeOptions};
use crate::session::{Parts, Sessions, Settings};
use crate::store::{snapshot, MemoryStore, RedisStore, Store};
use crate::telemetry;
use crate::tokens::oauth2::{ClientAuth, OAuth2Settings};
use crate::tokens::{DigitalRiverClient, OAuth2Client, Tokens};
use crate::trace;
use crate::upstream;
use crate::upstream::h1::H1Client;
use crate::upstream::HttpClient;

/// The addresses the proxy actually listens on (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// Whether the public listener serves HTTPS.
    pub https: bool,
}

/// The two listeners, bound before anything serves.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Step 7: binds the listeners the config names, failing if either cannot be bound.
pub async fn bind(fixed: &Fixed) -> Result<Listeners, String> {
    let server = &fixed.server;
    let public = TcpListener::bind(server.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", server.listen))?;
    let admin = match server.admin_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|error| format!("cannot listen on {address} (admin): {error}"))?,
        ),
        None => None,
    };
    Ok(Listeners { public, admin })
}

/// Why the proxy could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file or value the config points at is unusable (TLS files, the CA file, the
    /// snapshot): the operator's to fix, like a config error (exit 78).
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound, or the final snapshot write failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

/// Everything the proxy runs, built from the config before a port is bound.
struct Assembled {
    fixed: Fixed,
    source: Option<PathBuf>,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    sessions: Arc<Sessions>,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The OpenID provider's metadata and how to load it (`flavor = "oauth2"`).
    provider: Option<ProviderLoad>,
}

/// What the background discovery of `flavor = "oauth2"` needs.
struct ProviderLoad {
    cache: Arc<ProviderCache>,
    http: HttpClient,
    issuer: String,
    overrides: EndpointOverrides,
    timeout: Duration,
}

/// Runs the proxy until `shutdown` is cancelled: assembles every part (failing before a
/// port is bound), binds both listeners, then serves. `on_bound` is called once both
/// listeners are bound, before the first request is served.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), RunError> {
    let assembled = assemble(config)?;
    let listeners = bind(&assembled.fixed).await.map_err(RunError::Failed)?;
    serve(assembled, listeners, shutdown, on_bound).await
}

/// Runs the proxy on listeners bound already (the demo binds first, to learn its port).
pub async fn run_on(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), RunError> {
    let assembled = assemble(config)?;
    serve(assembled, listeners, shutdown, on_bound).await
}

/// Steps 1–6: builds every part from the config, in the order each needs the last.
fn assemble(config: Config) -> Result<Assembled, RunError> {
    let Config { fixed, live, source, warnings: _ } = config;
    // 1. Metrics, with a handle for every route label, and the trace exporter when
    // `[tracing]` is configured (nothing at all otherwise).
    let metrics = Arc::new(Metrics::new(&crate::router::all_labels(&live.routes)));
    if let Some(tracing) = &fixed.tracing {
        trace::install(tracing).map_err(RunError::Config)?;
    }
    // 2. The pooled upstream client (the CA file is read here).
    let http = upstream::build_client(&fixed.upstream).map_err(RunError::Config)?;
    // 3. The token service (with the OpenID provider's cache, loaded once serving).
    let (tokens, provider) = token_service(&fixed, &http, &metrics)?;
    let tokens = Arc::new(tokens);
    // 4. The store, with the snapshot loaded into it.
    let store = Arc::new(match &fixed.store.kind {
        StoreKind::Memory => Store::Memory(MemoryStore::new(fixed.session.max_sessions)),
        StoreKind::Redis(redis) => {
            let counters = metrics.session_cache();
            let store = RedisStore::connect(redis, fixed.session.idle_timeout, counters);
            Store::Redis(store.map_err(RunError::Config)?)
        }
    });
    snapshot::load_into(&store, &fixed.store).map_err(RunError::Config)?;
    // 5. The session core and the request path.
    let sessions = Arc::new(Sessions::new(Parts {
        settings: match &fixed.store.kind {
            StoreKind::Redis(redis) => {
                Settings::new(&fixed.session, &fixed.oauth).with_lock_lease(redis.lock_lease)
            }
            StoreKind::Memory => Settings::new(&fixed.session, &fixed.oauth),
        },
        store: Arc::clone(&store),
        tokens,
        rate_limit: SessionRateLimit::new(&fixed.rate_limit),
        hosted_login: HostedLogin::new(&fixed),
        clock: Clock::System,
        metrics: Arc::clone(&metrics),
    }));
    let h1 = match fixed.upstream.protocol {
        UpstreamProtocol::Http1 => Some(H1Client::new(&fixed.upstream).map_err(RunError::Config)?),
        UpstreamProtocol::Auto => None,
    };
    let forwarder = Forwarder::new(
        http,
        h1,
        fixed.upstream.base.clone(),
        fixed.upstream.request_timeout,
        fixed.server.public_origin.as_deref(),
        Arc::clone(&metrics),
    );
    let app = Arc::new(App::new(fixed.clone(), live, Arc::clone(&sessions), forwarder, Arc::clone(&metrics)));
    // 6. The TLS acceptor, when the listener serves HTTPS.
    let tls = fixed.server.tls.as_ref().map(crate::tls::acceptor).transpose().map_err(RunError::Config)?;
    Ok(Assembled { fixed, source, metrics, store, sessions, app, tls, provider })
}

/// The token service `oauth.flavor` names; for `"oauth2"` also its provider cache (empty
/// until discovery, started by `serve`, succeeds).
fn token_service(
    fixed: &Fixed,
    http: &HttpClient,
    metrics: &Arc<Metrics>,
) -> Result<(Tokens, Option<ProviderLoad>), RunError> {
    let timeout = fixed.upstream.request_timeout;
    let Some(oidc) = &fixed.oauth.oidc else {
        let client = DigitalRiverClient::new(
            http.clone(),
            &fixed.upstream.base,
            &fixed.oauth,
            timeout,
            fixed.rate_limit.token_concurrency,
            Arc::clone(metrics),
        )
        .map_err(RunError::Config)?;
        return Ok((Tokens::DigitalRiver(client), None));
    };
    let cache = Arc::new(ProviderCache::new());
    let settings = OAuth2Settings {
        issuer: oidc.issuer.clone(),
        client_id: fixed.oauth.client_id.clone(),
        client_secret: fixed.oauth.client_secret.clone(),
        client_auth: match oidc.client_auth {
            ClientAuthMethod::Basic => ClientAuth::Basic,
            ClientAuthMethod::Post => ClientAuth::Post,
        },
        scope: oidc.scope.clone(),
        request_timeout: timeout,
        concurrency: fixed.rate_limit.token_concurrency,
        jwks_refetch_interval: oidc.jwks_refetch_interval,
        jwks_max_age: Duration::from_secs(3600),
    };
    let client =
        OAuth2Client::new(http.clone(), Arc::clone(&cache), settings, Clock::System, Arc::clone(metrics))
            .map_err(RunError::Config)?;
    let load = ProviderLoad {
        cache,
        http: http.clone(),
        issuer: oidc.issuer.clone(),
        overrides: overrides(oidc),
        timeout,
    };
    Ok((Tokens::OAuth2(client), Some(load)))
}

/// The configured endpoint paths that replace discovery's.
fn overrides(oidc: &OidcSettings) -> EndpointOverrides {
    EndpointOverrides {
        authorization_endpoint: oidc.authorize_path.clone(),
        token_endpoint: oidc.token_path.clone(),
        revocation_endpoint: oidc.revocation_path.clone(),
        ..EndpointOverrides::default()
    }
}

/// Steps 8–10: announces, serves with the background tasks until `shutdown`, drains,
/// writes the final snapshot.
async fn serve(
    assembled: Assembled,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), RunError> {
    let Assembled { fixed, source, metrics, store, sessions, app, tls, provider } = assembled;
    let Listeners { public, admin } = listeners;
    let bound = Bound {
        public: public.local_addr().map_err(|error| RunError::Failed(error.to_string()))?,
        admin: admin.as_ref().and_then(|listener| listener.local_addr().ok()),
        https: tls.is_some(),
    };
    // Before the announcement: from then on a SIGHUP may come, and until the handler is
    // registered its default action would kill the process.
    let hangups = listen_for_hangups();
    // Sessions restored from a snapshot join the back-channel logout index.
    sessions.relink_identities(sessions.clock().now()).await;
    // 8. Announce.
    tracing::info!(public = %bound.public, admin = ?bound.admin, "listening");
    on_bound(bound);

    // 9. Serve, with the sweeper, the reloader and the snapshot writer beside (and the
    // OpenID provider's discovery, retried until it succeeds or we stop).
    let readiness = provider.as_ref().map(|load| Arc::clone(&load.cache));
    let discovery = provider.map(|load| {
        load.cache.spawn_load(
            load.http,
            load.issuer,
            load.overrides,
            load.timeout,
            Backoff::default(),
            shutdown.clone(),
        )
    });
    let options = ServeOptions::from_config(&fixed.server);
    let sweeper =
        tokio::spawn(sweep_forever(Arc::clone(&sessions), fixed.session.sweep_interval, shutdown.clone()));
    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&app), source, hangups, shutdown.clone()));
    let snapshot_writer = snapshot::spawn_writer(Arc::clone(&store), &fixed.store, shutdown.clone());
    let admin_task = admin.map(|listener| {
        let admin = Arc::new(Admin::new(Arc::clone(&store), Arc::clone(&metrics), readiness));
        tokio::spawn(server::serve(listener, admin, options, shutdown.clone(), None, None))
    });
    // 10. Drain (inside `server::serve_on`), stop the workers and the background tasks,
    // write the snapshot.
    let drained = match server::Workers::per_core() {
        Ok(workers) => {
            let drained =
                server::serve_on(&workers, public, app, options, shutdown.clone(), Some(metrics), tls).await;
            workers.stop().await;
            drained
        }
        Err(error) => {
            tracing::warn!(%error, "no connection workers; serving on the main runtime");
            server::serve(public, app, options, shutdown.clone(), Some(metrics), tls).await
        }
    };
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let _ = sweeper.await;
    if let Some(task) = discovery {
        let _ = task.await;
    }
    let _ = reloader.await;
    if let Some(writer) = snapshot_writer {
        let _ = writer.await;
    }
    // The drained requests' spans go out before the process does.
    trace::shutdown().await;
    snapshot::write_final(&store, &fixed.store).await.map_err(RunError::Failed)?;
    tracing::info!(drained, "stopped");
    Ok(())
}

/// The SIGHUP stream (none off Unix, or when it cannot be registered).
#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

fn listen_for_hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; config reload is off");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// On SIGHUP, re-reads the config file (`source`) and applies what can change safely
/// (the `Live` settings); an invalid file keeps the running config.
async fn reload_on_sighup(
    app: Arc<App>,
    source: Option<PathBuf>,
    hangups: Option<Hangups>,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    {
        let Some(mut hangups) = hangups else { return };
        loop {
            tokio::select! {
                received = hangups.recv() => if received.is_none() { return },
                () = shutdown.cancelled() => return,
            }
            reload(&app, source.as_deref());
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (app, source, hangups, shutdown);
    }
}

/// One reload: the new file's `Live` settings replace the running ones (log level
/// included); changes to `Fixed` settings are named in a warning and wait for a restart.
fn reload(app: &App, source: Option<&Path>) {
    let Some(path) = source else {
        tracing::warn!("SIGHUP: this config did not come from a file; nothing to reload");
        return;
    };
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(errors) => {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::error!(file = %path.display(), problems = ?problems, "config reload refused; the running config stays");
            return;
        }
    };
    let reloaded = new.reloaded(app.fixed());
    if !reloaded.restart_needed.is_empty() {
        tracing::warn!(
            sections = ?reloaded.restart_needed,
            "config reload: these changes need a restart and were not applied"
        );
    }
    if let Err(error) = telemetry::set_level(&reloaded.live.log_level) {
        tracing::warn!(%error, "config reload: log level not changed");
    }
    let routes = reloaded.live.routes.len();
    app.reload(reloaded.live);
    tracing::info!(file = %path.display(), routes, "config reloaded");
}

/// Deletes expired sessions and pending logins every `interval` until shutdown.
async fn sweep_forever(sessions: Arc<Sessions>, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let now = sessions.clock().now();
        match sessions.sweep(now).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired sessions swept"),
            Err(error) => tracing::warn!(%error, "session sweep failed"),
        }
    }
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
