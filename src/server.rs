//! Listeners: the accept loop, HTTP/1.1 and HTTP/2 on one port, and the graceful drain.
//!
//! It knows nothing of routes, sessions or tokens: it hands each request to a
//! [`Handler`] with the connection's facts. On shutdown the listener is dropped at once
//! (new connections are refused), in-flight requests get up to the grace period to
//! finish, and idle keep-alive connections are closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, ConnInfo};
use crate::body::Body;

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; never fails.
    fn call(&self, request: Request<Incoming>, conn: ConnInfo)
        -> impl Future<Output = Response<Body>> + Send;
}

impl Handler for App {
    fn call(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.handle(request, conn)
    }
}

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a client may take to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after shutdown begins.
    pub grace: Duration,
}

/// Serves `listener` until `shutdown` fires, then drains. Returns whether every
/// connection finished within the grace period.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> bool {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: log and go on; the loop must live.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo { peer, tls: false };
        let handler = Arc::clone(&handler);
        let service = service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, std::convert::Infallible>(handler.call(request, conn).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!(grace = ?options.grace, "connections still open after the shutdown grace period");
            false
        }
    }
}
