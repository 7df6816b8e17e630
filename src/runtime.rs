//! Assembling and running the proxy: build every part from the config, bind the
//! listeners, run until told to stop, drain.
//!
//! The steps, in order: (1) the pooled upstream client, (2) the token client, (3) the
//! store, (4) the session manager, (5) the app and the admin service, (6) bind both
//! listeners — failing before anything serves if either cannot be bound, (7) announce
//! the bound addresses, (8) serve with a background sweeper until `shutdown` fires,
//! (9) drain within `server.shutdown_timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::app::App;
use crate::clock::Clock;
use crate::config::{Config, StoreKind};
use crate::forward::Forwarder;
use crate::hosted_login::HostedLogin;
use crate::metrics::Metrics;
use crate::ratelimit::SessionRateLimit;
use crate::server::{self, ServeOptions};
use crate::session::{Parts, Sessions, Settings};
use crate::store::{snapshot, MemoryStore, Store};
use crate::telemetry;
use crate::tokens::DigitalRiverClient;
use crate::upstream;

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

/// Binds the listeners `config` names, failing if either cannot be bound.
pub async fn bind(config: &Config) -> Result<Listeners, String> {
    let server = &config.fixed.server;
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

/// Runs the proxy until `shutdown` is cancelled. `on_bound` is called once both
/// listeners are bound, before the first request is served.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), String> {
    let listeners = bind(&config).await?;
    run_on(config, listeners, shutdown, on_bound).await
}

/// Runs the proxy on listeners bound already (the demo binds first, to learn its port).
pub async fn run_on(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), String> {
    let Config { fixed: config, live, source, warnings: _ } = config;
    let metrics = Arc::new(Metrics::new(&crate::router::all_labels(&live.routes)));
    let http = upstream::build_client(&config.upstream)?;
    let tokens = Arc::new(DigitalRiverClient::new(
        http.clone(),
        &config.upstream.base,
        &config.oauth,
        config.upstream.request_timeout,
        config.rate_limit.token_concurrency,
        Arc::clone(&metrics),
    )?);
    let store = Arc::new(match config.store.kind {
        StoreKind::Memory => Store::Memory(MemoryStore::new(config.session.max_sessions)),
    });
    snapshot::load_into(&store, &config.store)?;
    let sessions = Arc::new(Sessions::new(Parts {
        settings: Settings::new(&config.session, &config.oauth),
        store: Arc::clone(&store),
        tokens,
        rate_limit: SessionRateLimit::new(&config.rate_limit),
        hosted_login: HostedLogin::new(&config),
        clock: Clock::System,
        metrics: Arc::clone(&metrics),
    }));
    let forwarder = Forwarder::new(
        http,
        config.upstream.base.clone(),
        config.upstream.request_timeout,
        config.server.public_origin.as_deref(),
        Arc::clone(&metrics),
    );
    let app =
        Arc::new(App::new(config.clone(), live, Arc::clone(&sessions), forwarder, Arc::clone(&metrics)));
    let tls = config.server.tls.as_ref().map(crate::tls::acceptor).transpose()?;

    let Listeners { public, admin } = listeners;
    let bound = Bound {
        public: public.local_addr().map_err(|error| error.to_string())?,
        admin: admin.as_ref().and_then(|listener| listener.local_addr().ok()),
        https: tls.is_some(),
    };
    // Before the announcement: from then on a SIGHUP may come, and until the handler is
    // registered its default action would kill the process.
    let hangups = listen_for_hangups();
    tracing::info!(public = %bound.public, admin = ?bound.admin, "listening");
    on_bound(bound);

    let options = ServeOptions::from_config(&config.server);
    let sweeper =
        tokio::spawn(sweep_forever(Arc::clone(&sessions), config.session.sweep_interval, shutdown.clone()));
    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&app), source, hangups, shutdown.clone()));
    let snapshot_writer = snapshot::spawn_writer(Arc::clone(&store), &config.store, shutdown.clone());
    let admin_task = admin.map(|listener| {
        let admin = Arc::new(Admin::new(Arc::clone(&store), Arc::clone(&metrics)));
        tokio::spawn(server::serve(listener, admin, options, shutdown.clone(), None, None))
    });
    let drained = server::serve(public, app, options, shutdown.clone(), Some(metrics), tls).await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let _ = sweeper.await;
    let _ = reloader.await;
    if let Some(writer) = snapshot_writer {
        let _ = writer.await;
    }
    snapshot::write_final(&store, &config.store).await?;
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
