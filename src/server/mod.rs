//! Listeners: the accept loop, HTTP/1.1 and HTTP/2 on one port, connection limits, and
//! the graceful drain.
//!
//! A plain TCP connection is served by tokengate's own HTTP/1.1 server ([`h1`]) unless
//! its first bytes are HTTP/2's preface (prior knowledge), which goes to hyper with the
//! bytes read put back; a TLS connection is served by hyper (HTTP/2 by ALPN, or
//! HTTP/1.1).
//!
//! It knows nothing of routes, sessions or tokens: it hands each request to a
//! [`Handler`] with the connection's facts. Limits, all from `[server]`:
//! 1. At most `max_connections` connections are served at once; further clients wait in
//!    the kernel's accept queue instead of exhausting memory or file descriptors.
//! 2. A request head larger than `max_header_bytes` gets 431 (with `h1`, the JSON error
//!    `headers_too_large`; hyper's is empty).
//! 3. A client that does not finish sending a request head within `header_read_timeout`
//!    is disconnected (slowloris). The wait for a head includes the idle time before it,
//!    so an idle HTTP/1.1 keep-alive connection also closes then (both servers).
//! 4. A connection with no bytes moving for `keep_alive_timeout` is asked to close
//!    gracefully (HTTP/2 included): in-flight requests still finish. With `h1` this is
//!    the wait for the next head, when it is shorter than `header_read_timeout`.
//!
//! On shutdown the listener is dropped at once (new connections are refused), every
//! connection is asked to close gracefully, and in-flight requests get up to the grace
//! period to finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, ConnInfo};
use crate::body::{Body, Inbound};
use crate::config::ServerConfig;
use crate::context::{RequestId, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::poll_time::PollTime;
use drain::Drain;

mod date;
mod drain;
pub mod h1;

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; never fails. `conn` is borrowed from the connection for the
    /// request's life (no per-request copy of its reference counts).
    fn call<'a>(
        &'a self,
        request: Box<Request<Inbound>>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = Answer> + Send + 'a;
}

/// An answer, and the id of the request it answers when the handler gives one, which
/// the server sends as `X-Request-Id` in place of any the answer has: the HTTP/1.1
/// server writes it straight into the head (a header-map entry made, checked and
/// dropped per request cost ~450 instructions, issue 11), hyper's path inserts it.
pub struct Answer {
    pub response: Response<Body>,
    pub request_id: Option<RequestId>,
}

impl Answer {
    /// The response as hyper sends it: the request id in its headers.
    fn into_response(self) -> Response<Body> {
        let Answer { mut response, request_id } = self;
        if let Some(id) = request_id {
            response.headers_mut().insert(X_REQUEST_ID, id.to_header_value());
        }
        response
    }
}

impl Handler for App {
    fn call<'a>(
        &'a self,
        request: Box<Request<Inbound>>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = Answer> + Send + 'a {
        self.handle(request, conn)
    }
}

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub grace: Duration,
}

impl ServeOptions {
    /// The limits `[server]` configures.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            keep_alive_timeout: config.keep_alive_timeout,
            max_header_bytes: config.max_header_bytes,
            max_connections: config.max_connections,
            grace: config.shutdown_timeout,
        }
    }
}

/// Serves `listener` until `shutdown` fires, then drains. Returns whether every
/// connection finished within the grace period. Connections are served on the runtime
/// this runs on (the admin listener's way).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
    metrics: Option<Arc<Metrics>>,
    tls: Option<TlsAcceptor>,
) -> bool {
    let shared = Shared::new(handler, options, shutdown, metrics, tls);
    accept_loop(listener, shared.clone()).await;
    shared.drain().await
}

/// [`serve`] on the connection workers: each worker accepts on its own copy of the
/// listener and serves what it accepted on its own runtime.
pub async fn serve_on<H: Handler>(
    workers: &Workers,
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
    metrics: Option<Arc<Metrics>>,
    tls: Option<TlsAcceptor>,
) -> bool {
    let shared = Shared::new(handler, options, shutdown, metrics, tls);
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "the listener cannot be handed to the workers");
            return false;
        }
    };
    let mut loops = Vec::with_capacity(workers.handles.len());
    for handle in &workers.handles {
        let copy = match listener.try_clone() {
            Ok(copy) => copy,
            Err(error) => {
                tracing::error!(%error, "the listener cannot be handed to a worker");
                continue;
            }
        };
        let shared = shared.clone();
        loops.push(handle.spawn(async move {
            // Registered with this worker's own reactor.
            match TcpListener::from_std(copy) {
                Ok(listener) => accept_loop(listener, shared).await,
                Err(error) => tracing::error!(%error, "a worker cannot listen"),
            }
        }));
    }
    drop(listener);
    for accepting in loops {
        let _ = accepting.await;
    }
    shared.drain().await
}

thread_local! {
    /// This thread's index among the connection workers (`None` on any other thread).
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the connection worker this runs on, if it runs on one: per-thread state
/// elsewhere (the upstream connection pool's shards) follows the workers with it.
pub fn worker_index() -> Option<usize> {
    WORKER.with(std::cell::Cell::get)
}

/// Connection workers, as nginx's worker processes and pingora's threads: one
/// current-thread tokio runtime per core, each accepting and serving its own connections.
/// A connection, its request walk and its upstream connections (`upstream::h1`'s pool is
/// sharded by thread) stay on one thread: no work-stealing bookkeeping per task poll (two
/// clock reads and a `powf` in tokio's multi-thread scheduler) and no cross-thread wake.
/// The process's other tasks (signals, the sweeper, the Redis client, the reloader) stay
/// on the main runtime.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// One worker per core this process may use (cgroup CPU quotas included).
    pub fn per_core() -> io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }

    /// `count` workers (at least one), each on its own thread.
    pub fn start(count: usize) -> io::Result<Self> {
        let mut workers = Self { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for index in 0..count.max(1) {
            let (ready, handle) = std::sync::mpsc::channel();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread =
                std::thread::Builder::new().name(format!("tokengate-worker-{index}")).spawn(move || {
                    WORKER.with(|worker| worker.set(Some(index)));
                    // Its requests' histogram observations go to a shard of its own.
                    crate::metrics::claim_shard();
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => {
                            let _ = ready.send(Ok(runtime.handle().clone()));
                            runtime.block_on(async {
                                let _ = stopped.await;
                            });
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                        }
                    }
                })?;
            let handle = handle.recv().map_err(|_| io::Error::other("a worker did not start"))??;
            workers.handles.push(handle);
            workers.stops.push(stop);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Stops every worker's runtime (what is still running on it is dropped) and waits
    /// for its thread.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// What every accept loop of one listener shares: the handler, the limits, the
/// connection cap and the tracker the drain waits on.
struct Shared<H> {
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
    /// The shutdown as the HTTP/1.1 connections read it.
    drain: Drain,
    metrics: Option<Arc<Metrics>>,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: TaskTracker,
    slots: Arc<Semaphore>,
}

impl<H> Clone for Shared<H> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
            options: self.options,
            shutdown: self.shutdown.clone(),
            drain: self.drain.clone(),
            metrics: self.metrics.clone(),
            tls: self.tls.clone(),
            builder: Arc::clone(&self.builder),
            connections: self.connections.clone(),
            slots: Arc::clone(&self.slots),
        }
    }
}

impl<H: Handler> Shared<H> {
    fn new(
        handler: Arc<H>,
        options: ServeOptions,
        shutdown: CancellationToken,
        metrics: Option<Arc<Metrics>>,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        Self {
            handler,
            builder: Arc::new(http_builder(&options)),
            options,
            drain: Drain::following(&shutdown),
            shutdown,
            metrics,
            tls,
            connections: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(options.max_connections)),
        }
    }

    /// After the accept loops ended: waits for the connections, at most the grace period.
    async fn drain(&self) -> bool {
        self.connections.close();
        tokio::select! {
            () = self.connections.wait() => true,
            () = tokio::time::sleep(self.options.grace) => {
                tracing::warn!(grace = ?self.options.grace, open = self.connections.len(), "connections still open after the shutdown grace period");
                false
            }
        }
    }
}

/// Accepts until shutdown, serving each connection in a task of the runtime this runs on.
async fn accept_loop<H: Handler>(listener: TcpListener, shared: Shared<H>) {
    let options = shared.options;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&shared.slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shared.shutdown.cancelled() => break,
        };
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
            () = shared.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo::new(peer, shared.tls.is_some());
        let tls = shared.tls.clone();
        let handler = Arc::clone(&shared.handler);
        let builder = Arc::clone(&shared.builder);
        let shutdown = shared.shutdown.clone();
        let drain = shared.drain.clone();
        let metrics = shared.metrics.clone();
        // One clock reading per poll of the connection (`poll_time`).
        shared.connections.spawn(PollTime::new(async move {
            if let Some(metrics) = &metrics {
                metrics.connection_opened();
            }
            match tls {
                None => serve_plain(&builder, stream, conn, handler, options, (shutdown, drain)).await,
                // The handshake is part of the request head's time budget (slowloris).
                Some(tls) => {
                    match tokio::time::timeout(options.header_read_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(
                                &builder,
                                stream,
                                Bytes::new(),
                                conn,
                                handler,
                                options.keep_alive_timeout,
                                shutdown,
                            )
                            .await
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            if let Some(metrics) = &metrics {
                metrics.connection_closed();
            }
            drop(permit);
        }));
    }
}

fn http_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// HTTP/2's connection preface, which a client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a plain TCP connection: HTTP/2 (prior knowledge) with hyper, else HTTP/1.1 with
/// [`h1`].
async fn serve_plain<H: Handler>(
    builder: &auto::Builder<TokioExecutor>,
    mut stream: TcpStream,
    conn: ConnInfo,
    handler: Arc<H>,
    options: ServeOptions,
    (shutdown, drain): (CancellationToken, Drain),
) {
    let mut first = BytesMut::with_capacity(8 * 1024);
    // Enough to tell the preface from a request line: a request never starts with it.
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        let read = tokio::select! {
            read = tokio::time::timeout(options.header_read_timeout, tokio::io::AsyncReadExt::read_buf(&mut stream, &mut first)) => read,
            () = shutdown.cancelled() => return,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    if first.starts_with(H2_PREFACE) {
        let first = first.freeze();
        return serve_connection(builder, stream, first, conn, handler, options.keep_alive_timeout, shutdown)
            .await;
    }
    let limits = h1::Limits {
        header_read_timeout: options.header_read_timeout,
        keep_alive_timeout: options.keep_alive_timeout,
        max_header_bytes: options.max_header_bytes,
    };
    h1::serve(stream, first, conn, handler, limits, drain).await;
}

/// Serves one connection with hyper until it ends, closing it gracefully when it has been idle for
/// `idle_timeout` or when shutdown begins. `first`: bytes already read from `stream`, read
/// again first.
async fn serve_connection<H: Handler, S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    first: Bytes,
    conn: ConnInfo,
    handler: Arc<H>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(ActivityIo { inner: stream, first, activity: Arc::clone(&activity) });
    let service = service_fn(move |request| {
        let handler = Arc::clone(&handler);
        let conn = conn.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handler.call(Box::new(request.map(Inbound::Hyper)), &conn).await.into_response(),
            )
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    // Idle means no byte moved during two whole ticks of half the timeout.
    let mut ticker = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(10)));
    ticker.tick().await;
    let (mut last_seen, mut quiet_ticks, mut closing) = (0, 0, false);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = ticker.tick(), if !closing => {
                let moved = activity.load(Ordering::Relaxed);
                quiet_ticks = if moved == last_seen { quiet_ticks + 1 } else { 0 };
                last_seen = moved;
                if quiet_ticks >= 2 {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// A socket that counts read and write calls that moved bytes, for the idle watchdog, and
/// hands out the bytes already read from it (`first`: HTTP/2's preface, read to tell it
/// from an HTTP/1.1 request) before reading more.
struct ActivityIo<S> {
    inner: S,
    first: Bytes,
    activity: Arc<AtomicU64>,
}

impl<S> ActivityIo<S> {
    fn moved(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
