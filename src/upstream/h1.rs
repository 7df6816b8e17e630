//! tokengate's own HTTP/1.1 client for forwarded calls (`upstream.protocol = "http1"`,
//! the default), the way nginx's `proxy_pass` and pingora reach an upstream.
//!
//! Why not hyper-util's pooled client: its profile showed a third of a forwarded call's
//! instructions in the client alone (a pool behind one mutex keyed by a SipHashed
//! authority, a spawned task per connection that every request and answer crosses by
//! channel, and the wake-ups that go with it). Here the request is written and the
//! answer read by the task that serves the browser, on a connection taken from a pool
//! sharded by worker thread (an uncontended lock, never one mutex for the process).
//!
//! What it does:
//! * the request head (and a buffered body) goes out in one write; streamed uploads are
//!   not sent here (the forwarder sends them through hyper's client, which reads an early
//!   answer while the body is still going out);
//! * the answer's head is parsed with `httparse` (at most [`MAX_HEADERS`] headers and
//!   [`MAX_HEAD_BYTES`]), its header values are slices of the read buffer (no copy);
//!   interim `1xx` answers are skipped, `101` is refused;
//! * the body is framed as RFC 9112 §6.3 says: none (`HEAD`, 204, 304), chunked
//!   (trailers read and dropped), `Content-Length` (all values must agree), or until the
//!   connection closes. A body already whole in the read buffer is handed on as one
//!   buffer and the connection goes back to the pool before the answer leaves;
//! * a connection goes back to the pool only when its answer was read to the end,
//!   nothing follows it, and neither side asked to close; one taken from the pool is
//!   first checked for a close or stray bytes from the API, and dropped when it has been
//!   idle longer than `pool_idle_timeout` (a sweeper also drops those);
//! * a call that failed on a reused connection before any byte of an answer came back
//!   is sent once more on a new one when that is safe: always when the request could not
//!   be written, else only for idempotent methods (RFC 9110 §9.2.2).
//!
//! HTTPS goes over rustls with ALPN `http/1.1`; with `upstream.protocol = "auto"` the
//! forwarder uses hyper's client instead, which offers HTTP/2.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use httparse::ParserConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::deadline::Deadline;
use crate::head_scan;
#[doc(hidden)]
pub use crate::header_memo::HeaderMemo;
use crate::header_memo::{BadLine, HeadLine, Replayed};
use crate::header_pool;
pub use crate::http1::BodyFault;
use crate::http1::{format_len, itoa_buffer, merge_length, push_header, Chunk, Framing, Step};
use crate::protocol::{self, list_tokens, Direction, Filter};

/// Most headers an answer may have (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Largest answer head read.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// A buffered request body up to this size goes out in the head's write.
const COALESCE_BODY: usize = 16 * 1024;

/// Why a call failed. Its words never hold a URL, a header or a body.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("request failed: {0}")]
    Io(io::Error),
    #[error("request failed: the connection closed before an answer")]
    Closed,
    #[error("request failed: the answer is not valid HTTP/1.1 ({0})")]
    Invalid(&'static str),
    #[error("request failed: a streamed body is not sent by this client")]
    Streamed,
    #[error("the API did not answer in time")]
    TimedOut,
}

/// When a call started and by when its answer's head must have come: the start stands in
/// for the clock where a moment's precision does not matter (the pool's idle times).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub started: tokio::time::Instant,
    pub deadline: tokio::time::Instant,
}

/// The pooled HTTP/1.1 client to one origin (`upstream.base_url`'s).
#[derive(Debug, Clone)]
pub struct H1Client {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// `Host` for requests that carry none.
    host_header: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    pool: Pool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl H1Client {
    /// A client to `config.base`'s origin. Fails only on an unusable `ca_file` or host.
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let authority = &config.base.authority;
        let https = config.base.scheme == http::uri::Scheme::HTTPS;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut tls = super::tls_client_config(config.ca_file.as_deref(), "upstream.ca_file")?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("upstream.base_url: {host} is not a valid TLS server name"))?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "upstream.base_url: the authority is not a valid Host".to_owned())?;
        let pool = Pool::new(config.pool_max_idle_per_host, config.pool_idle_timeout);
        let inner =
            Arc::new(Inner { host, port, host_header, tls, connect_timeout: config.connect_timeout, pool });
        spawn_sweeper(&inner);
        Ok(Self { inner })
    }

    /// Sends `parts` with `body` (empty or one buffer) and reads the answer's head by
    /// `window.deadline` ([`CallError::TimedOut`] after it); the answer's body follows as it
    /// is read. `bearer`: the access token, written as `Authorization: Bearer` (the caller
    /// has checked it is visible ASCII).
    pub async fn send(
        &self,
        parts: &Parts,
        body: &Body,
        bearer: Option<&[u8]>,
        window: Window,
    ) -> Result<Response<Body>, CallError> {
        let payload: &[u8] = match body {
            Body::Empty | Body::Full(None) => &[],
            Body::Full(Some(bytes)) => bytes,
            _ => return Err(CallError::Streamed),
        };
        let target = parts.uri.path_and_query().map_or("/", |target| target.as_str());
        let head = RequestHead {
            method: &parts.method,
            target,
            headers: &parts.headers,
            keep: &|_| true,
            added: &[],
        };
        self.send_head(head, payload, bearer, window).await
    }

    /// [`H1Client::send`] from borrowed parts (a request kept for a replay is sent
    /// without a copy of its headers).
    pub async fn send_head(
        &self,
        head: RequestHead<'_>,
        payload: &[u8],
        bearer: Option<&[u8]>,
        window: Window,
    ) -> Result<Response<Body>, CallError> {
        let Window { started, deadline } = window;
        let retry_allowed = is_idempotent(head.method);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut conn, reused) = match self.inner.pool.take(started.into_std()) {
                Some(conn) => (conn, true),
                // Boxed: a TLS handshake's future is large, and a new connection is rare;
                // inline it would be copied with every call's future.
                None => (Box::pin(self.connect(deadline)).await?, false),
            };
            encode_head(&mut conn.write, head, payload.len(), &self.inner.host_header, bearer);
            // The connection's own sleep bounds the exchange (no timer per call).
            let mut timer = std::mem::take(&mut conn.deadline);
            let exchanged = timer.within(deadline, conn.exchange(payload)).await;
            conn.deadline = timer;
            let Some(exchanged) = exchanged else { return Err(CallError::TimedOut) };
            match exchanged {
                Ok(answer) => return Ok(self.answer(conn, answer, *head.method == Method::HEAD, started)),
                Err(failure) => {
                    let retry =
                        reused && attempt == 1 && (failure.unsent || (retry_allowed && failure.nothing_read));
                    if !retry {
                        return Err(failure.error);
                    }
                }
            }
        }
    }

    /// A new connection within `connect_timeout`, and by the call's `deadline`.
    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Box<Conn>, CallError> {
        let inner = &self.inner;
        let connect = async {
            let tcp =
                TcpStream::connect((inner.host.as_str(), inner.port)).await.map_err(CallError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let io = match &inner.tls {
                None => Io::Plain(tcp),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(CallError::Tls)?;
                    Io::Tls(Box::new(tls))
                }
            };
            Ok(Box::new(Conn::new(io)))
        };
        let connect_by = tokio::time::Instant::now() + inner.connect_timeout;
        match tokio::time::timeout_at(connect_by.min(deadline), connect).await {
            Ok(connected) => connected,
            Err(_) if deadline <= connect_by => Err(CallError::TimedOut),
            Err(_) => Err(CallError::ConnectTimeout),
        }
    }

    /// The answer to hand on: its body whole when it is already read (the connection
    /// back in the pool at once), else a body that reads the rest from the connection.
    /// `started`: when the call began, taken as the connection's idle time if it goes
    /// back to the pool now (earlier than the truth by the exchange: it is dropped that
    /// much sooner, never later, and no clock is read).
    fn answer(
        &self,
        mut conn: Box<Conn>,
        head: Head,
        head_request: bool,
        started: tokio::time::Instant,
    ) -> Response<Body> {
        let Head { status, mut headers, mut close, transfer_encoding, length, rest } = head;
        let framing =
            framing(status, &mut headers, transfer_encoding.as_ref(), length, head_request, &mut close);
        let body = match framing {
            Framing::Length(length) if length <= rest.len() as u64 => {
                // `length` fits in the buffer, so it fits in usize.
                let bytes = rest.slice(..length as usize);
                if !close && rest.len() as u64 == length {
                    self.inner.pool.put(conn, started.into_std());
                }
                if bytes.is_empty() {
                    Body::Empty
                } else {
                    Body::Full(Some(bytes))
                }
            }
            framing => {
                conn.read.extend_from_slice(&rest);
                Body::Upstream(Box::new(ResponseBody {
                    conn: Some(conn),
                    framing,
                    close,
                    pool: Arc::clone(&self.inner),
                }))
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        response
    }

    /// Idle connections in the pool now (for tests and metrics).
    pub fn idle_connections(&self) -> usize {
        self.inner.pool.len()
    }
}

/// Drops idle connections past their time, every half `pool_idle_timeout`, for as long
/// as the client lives (outside a runtime, as in some unit tests, nothing is spawned).
fn spawn_sweeper(inner: &Arc<Inner>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let every = (inner.pool.idle_timeout / 2).max(Duration::from_secs(1));
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match weak.upgrade() {
                Some(inner) => inner.pool.sweep(),
                None => return,
            }
        }
    });
}

/// What a request's head is made of, borrowed: the headers of `headers` that `keep`
/// allows, then the `added` ones.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The request target: path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub keep: &'a (dyn Fn(&HeaderName) -> bool + Sync),
    /// Headers written after `headers` (names in lower case).
    pub added: &'a [Option<(&'a str, &'a [u8])>],
}

impl std::fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No header values: they may carry credentials.
        f.debug_struct("RequestHead").field("method", self.method).finish_non_exhaustive()
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request head: the request line, `Host` unless the request has one, every header
/// but the framing ones, and our own `Content-Length`.
fn encode_head(
    out: &mut Vec<u8>,
    parts: RequestHead<'_>,
    body_len: usize,
    host: &HeaderValue,
    bearer: Option<&[u8]>,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.target;
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut wrote_host = false;
    for (name, value) in parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::AUTHORIZATION
            || !(parts.keep)(name)
        {
            continue;
        }
        wrote_host |= name == header::HOST;
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !wrote_host {
        push_header(out, b"host", host.as_bytes());
    }
    for (name, value) in parts.added.iter().flatten() {
        push_header(out, name.as_bytes(), value);
    }
    if let Some(token) = bearer {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(token);
        out.extend_from_slice(b"\r\n");
    }
    // A body of zero bytes is announced where a body is expected, as hyper does.
    let expects_body = matches!(*parts.method, Method::POST | Method::PUT | Method::PATCH);
    if body_len > 0 || expects_body {
        let mut digits = itoa_buffer();
        push_header(out, b"content-length", format_len(&mut digits, body_len));
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 9112 §6.3, for an answer that is not `1xx`. A `Transfer-Encoding` wins over a
/// `Content-Length` (which is then removed: the browser's answer is framed anew), and an
/// answer framed by neither, or by a coding other than a final `chunked`, ends at close.
fn framing(
    status: StatusCode,
    headers: &mut HeaderMap,
    transfer_encoding: Option<&HeaderValue>,
    length: Result<Option<u64>, ()>,
    head_request: bool,
    close: &mut bool,
) -> Framing {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Framing::Length(0);
    }
    if let Some(codings) = transfer_encoding {
        let chunked = Some(codings)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            // A sender of both may be smuggling: never reuse the connection.
            *close = true;
        }
        if chunked {
            return Framing::Chunked(Chunk::Size);
        }
        *close = true;
        return Framing::UntilClose;
    }
    match length {
        Ok(Some(length)) => Framing::Length(length),
        Ok(None) => {
            *close = true;
            Framing::UntilClose
        }
        Err(()) => {
            // Lengths that disagree or are not numbers: read to close, reuse nothing,
            // and let the browser's answer be framed anew.
            headers.remove(header::CONTENT_LENGTH);
            *close = true;
            Framing::UntilClose
        }
    }
}

/// An answer's parsed head.
struct Head {
    status: StatusCode,
    /// What the browser may see: hop-by-hop and withheld headers are not kept.
    headers: HeaderMap,
    /// The API asked to close (or spoke HTTP/1.0 without keep-alive).
    close: bool,
    /// The last `Transfer-Encoding` line, for the framing (the header itself is
    /// hop-by-hop and not in `headers`).
    transfer_encoding: Option<HeaderValue>,
    /// The one length all kept `Content-Length` lines agree on (read as the head is, so
    /// the map is not searched for it); `Err` if they disagree or are not numbers.
    length: Result<Option<u64>, ()>,
    /// The bytes read after the head (the body's start).
    rest: Bytes,
}

/// A failed exchange, with what decides whether it may be sent again.
struct Failure {
    error: CallError,
    /// The request could not be written.
    unsent: bool,
    /// No byte of an answer came back.
    nothing_read: bool,
}

/// The transport: plain TCP or rustls over TCP.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection to the API, with its buffers (kept across requests).
#[derive(Debug)]
struct Conn {
    io: Io,
    read: BytesMut,
    write: Vec<u8>,
    idle_since: Instant,
    /// Bounds each exchange; kept with the connection across calls.
    deadline: Deadline,
    /// The header lines of the last answers, so alike ones are not made again.
    memo: HeaderMemo,
}

impl Conn {
    fn new(io: Io) -> Self {
        Self {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            idle_since: Instant::now(),
            deadline: Deadline::default(),
            memo: HeaderMemo::default(),
        }
    }

    /// Writes the request (the head in `self.write`, then `payload`) and reads the head
    /// of the answer.
    async fn exchange(&mut self, payload: &[u8]) -> Result<Head, Failure> {
        let unsent = |error| Failure { error: CallError::Io(error), unsent: true, nothing_read: true };
        if payload.len() <= COALESCE_BODY {
            self.write.extend_from_slice(payload);
            self.io.write_all(&self.write).await.map_err(unsent)?;
        } else {
            self.io.write_all(&self.write).await.map_err(unsent)?;
            self.io.write_all(payload).await.map_err(unsent)?;
        }
        self.io.flush().await.map_err(unsent)?;
        self.read_head().await
    }

    async fn read_head(&mut self) -> Result<Head, Failure> {
        let mut read_any = false;
        let failed = |error, read_any: bool| Failure { error, unsent: false, nothing_read: !read_any };
        loop {
            if !self.read.is_empty() {
                match parse_head(&mut self.read, &mut self.memo) {
                    Ok(Some(head)) if head.status.is_informational() => {
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(failed(
                                CallError::Invalid("101 to a request that asked no upgrade"),
                                true,
                            ));
                        }
                        // 100, 102, 103: the real answer follows.
                        self.read.extend_from_slice(&head.rest);
                        continue;
                    }
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.read.len() >= MAX_HEAD_BYTES => {
                        return Err(failed(CallError::Invalid("head too large"), true));
                    }
                    Ok(None) => {}
                    Err(reason) => return Err(failed(CallError::Invalid(reason), true)),
                }
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => return Err(failed(CallError::Closed, read_any || !self.read.is_empty())),
                Ok(_) => read_any = true,
                Err(error) => return Err(failed(CallError::Io(error), read_any || !self.read.is_empty())),
            }
        }
    }

    /// Reads what the connection has into `self.read`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Whether an idle connection can carry a request: the API has neither closed it
    /// nor sent anything unasked. Polls the socket without waiting (readiness is cached
    /// by tokio, so this is usually no system call at all).
    fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 64];
        let mut buf = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

/// Parses an answer's head from the front of `read`, taking it off; `None` (and `read`
/// as it was) until it is whole. The buffer is frozen first, so header values are
/// slices of it, not copies; what follows the head comes back as `Head::rest`. A head
/// shaped like the connection's last ones is read by the memo (`HeaderMemo::replay`), any
/// other by `httparse`; both hand the same lines to [`head_of`].
fn parse_head(read: &mut BytesMut, memo: &mut HeaderMemo) -> Result<Option<Head>, &'static str> {
    let buf = read.split().freeze();
    if let Some(line) = head_scan::status_line(&buf) {
        let mut lines = Replayed::new();
        if let Some(length) = memo.replay(&buf, line.end, &mut lines) {
            return head_of(&buf, (line.code, line.http10, length), lines.iter().copied(), memo).map(Some);
        }
    }
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let head_length =
        match ParserConfig::default().parse_response_with_uninit_headers(&mut response, &buf, &mut slots) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => {
                *read = buf.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err("too many headers"),
            Err(_) => return Err("malformed head"),
        };
    let lines = response.headers.iter().map(|header| HeadLine::parsed(header.name.as_bytes(), header.value));
    let start = (response.code.unwrap_or_default(), response.version == Some(0), head_length);
    head_of(&buf, start, lines, memo).map(Some)
}

/// The head read whole from `buf`: its status, HTTP/1.0 or not and length (`start`), and
/// its header lines, each typed through the connection's memo; what never reaches the
/// browser is dropped here, as the head is read (`protocol`).
fn head_of<'b>(
    buf: &Bytes,
    (code, http10, head_length): (u16, bool, usize),
    lines: impl Iterator<Item = HeadLine<'b>> + Clone,
    memo: &mut HeaderMemo,
) -> Result<Head, &'static str> {
    let status = StatusCode::from_u16(code).map_err(|_| "bad status")?;
    let is_connection = |line: &HeadLine<'_>| protocol::is_connection(line.name);
    let connection = lines.clone().filter(is_connection).map(|line| line.value);
    let filter = Filter::new(Direction::Response, connection);
    let mut map = header_pool::take(lines.size_hint().0);
    let (mut close, mut transfer_encoding, mut length) = (http10, None, Ok(None));
    for (place, line) in lines.enumerate() {
        if is_connection(&line) {
            let lists = |want: &[u8]| list_tokens(line.value).any(|token| token.eq_ignore_ascii_case(want));
            if lists(b"close") {
                close = true;
            } else if http10 && lists(b"keep-alive") {
                close = false;
            }
        }
        // What the browser never sees is not even made (`Transfer-Encoding` is, for the
        // framing). The memo still learns it, so that the next head can be replayed.
        let wanted = |name: &HeaderName| *name == header::TRANSFER_ENCODING || !filter.drops(name.as_str());
        let line = memo.line_if(place, line, buf, wanted, filter.by_name());
        let Some((name, value)) = line.map_err(|bad| match bad {
            BadLine::Name => "bad header name",
            BadLine::Value => "bad header value",
        })?
        else {
            continue;
        };
        if name == header::TRANSFER_ENCODING {
            // The last line's last coding decides the framing.
            transfer_encoding = Some(value);
        } else {
            if name == header::CONTENT_LENGTH {
                length = length.and_then(|mut seen| merge_length(value.as_bytes(), &mut seen).map(|()| seen));
            }
            map.append(name, value);
        }
    }
    Ok(Head { status, headers: map, close, transfer_encoding, length, rest: buf.slice(head_length..) })
}

/// `head` (an answer's) read on a connection whose memo has read the heads before it (and
/// may replay it) and on a connection of its own, each as what it came to: the two must
/// be the same (the proptest below, and the fuzz target `heads`).
#[doc(hidden)]
pub fn read_alike_and_alone(memo: &mut HeaderMemo, head: &[u8]) -> (String, String) {
    let read = |memo: &mut HeaderMemo| outcome(parse_head(&mut BytesMut::from(head), memo));
    (read(memo), read(&mut HeaderMemo::default()))
}

/// What a parse came to, to compare two: the head as read, or why not.
fn outcome(result: Result<Option<Head>, &'static str>) -> String {
    match result {
        Ok(Some(head)) => format!(
            "{} {:?} {} {:?} {:?} {:?}",
            head.status, head.headers, head.close, head.transfer_encoding, head.length, head.rest
        ),
        Ok(None) => "partial".to_owned(),
        Err(why) => why.to_owned(),
    }
}

/// The rest of an answer's body, read from its connection as the browser's side asks
/// for it; the connection goes back to the pool at the body's clean end.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    close: bool,
    pool: Arc<Inner>,
}

impl ResponseBody {
    /// The next data frame, `None` at the end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match self.framing.step(&mut conn.read) {
                Step::Data(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Step::Continue => {}
                Step::End => {
                    self.release();
                    return Poll::Ready(None);
                }
                Step::Fail(fault) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(fault)));
                }
                Step::Fill => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) if self.framing == Framing::UntilClose => {
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(BodyFault::Truncated)));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(BodyFault::Read)));
                    }
                },
            }
        }
    }

    /// The body ended cleanly: its connection goes back to the pool if it can carry more.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.close && conn.read.is_empty() {
                self.pool.pool.put(conn, Instant::now());
            }
        }
    }

    /// Whether the body has ended.
    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    /// What is known of the rest's length.
    pub fn size_hint(&self) -> SizeHint {
        match (self.conn.is_some(), self.framing) {
            (false, _) => SizeHint::with_exact(0),
            (true, Framing::Length(left)) => SizeHint::with_exact(left),
            _ => SizeHint::new(),
        }
    }
}

/// Idle connections, one shard per worker thread (a connection worker's own, else picked
/// once per thread), so taking and returning a connection is an uncontended lock; a
/// thread takes only from its own shard (see [`Pool::take`]).
#[derive(Debug)]
struct Pool {
    // Boxed: a connection moves between the pool and an answer's body by pointer.
    #[allow(clippy::vec_box)]
    shards: Box<[Mutex<Vec<Box<Conn>>>]>,
    per_shard: usize,
    idle_timeout: Duration,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

impl Pool {
    fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        let shards = std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(1, 64);
        let per_shard = max_idle.div_ceil(shards).max(usize::from(max_idle > 0));
        Self { shards: (0..shards).map(|_| Mutex::new(Vec::new())).collect(), per_shard, idle_timeout }
    }

    /// This thread's shard: a connection worker's own (`server::worker_index`), else one
    /// picked once per thread.
    fn home(&self) -> usize {
        crate::server::worker_index().unwrap_or_else(|| SHARD.with(|shard| *shard)) % self.shards.len()
    }

    /// A usable idle connection of this thread's shard, the most recently used first;
    /// stale ones are dropped. Other shards are not looked at: on the connection workers
    /// (`server::Workers`) a shard's connections are registered with its thread's own
    /// runtime, which alone reads their readiness, so another thread using one would wait
    /// for that runtime's next turn.
    /// `now`: the call's start, a moment ago (no clock read of its own).
    fn take(&self, now: Instant) -> Option<Box<Conn>> {
        let mut idle = self.shards[self.home()].lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut conn) = idle.pop() {
            if now.saturating_duration_since(conn.idle_since) < self.idle_timeout && conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// `idle_since`: when the connection became idle, or a moment before.
    fn put(&self, mut conn: Box<Conn>, idle_since: Instant) {
        if self.per_shard == 0 {
            return;
        }
        conn.idle_since = idle_since;
        let mut idle = self.shards[self.home()].lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.per_shard {
            idle.push(conn);
        }
    }

    fn sweep(&self) {
        for shard in self.shards.iter() {
            let mut idle = shard.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain_mut(|conn| conn.idle_since.elapsed() < self.idle_timeout && conn.is_reusable());
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::chunked_step;

    fn parse(text: &str) -> Head {
        let mut read = BytesMut::from(text);
        parse_head(&mut read, &mut HeaderMemo::default()).expect("valid").expect("whole")
    }

    fn body_of(chunked: &str) -> Result<Vec<u8>, BodyFault> {
        let mut read = BytesMut::from(chunked);
        let mut chunk = Chunk::Size;
        let mut out = Vec::new();
        loop {
            let (next, step) = chunked_step(&mut read, chunk)?;
            chunk = next;
            match step {
                Step::Data(bytes) => out.extend_from_slice(&bytes),
                Step::Continue => {}
                Step::End => return Ok(out),
                Step::Fill => return Err(BodyFault::Truncated),
                Step::Fail(fault) => return Err(fault),
            }
        }
    }

    async fn idle_connection() -> (Box<Conn>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let stream = TcpStream::connect(listener.local_addr().expect("an address")).await.expect("connects");
        let (server, _) = listener.accept().await.expect("accepts");
        (Box::new(Conn::new(Io::Plain(stream))), server)
    }

    #[tokio::test]
    async fn a_pooled_connection_is_taken_only_within_the_idle_timeout_of_when_it_was_put() {
        let pool = Pool::new(64, Duration::from_secs(30));
        let put_at = Instant::now();
        let (conn, _server) = idle_connection().await;
        pool.put(conn, put_at);
        assert!(pool.take(put_at + Duration::from_secs(31)).is_none(), "idle past the timeout: dropped");
        assert_eq!(pool.len(), 0, "and not kept");
        let (conn, _server) = idle_connection().await;
        pool.put(conn, put_at);
        assert!(pool.take(put_at + Duration::from_secs(29)).is_some(), "idle within the timeout: reused");
    }

    #[test]
    fn a_head_is_parsed_and_taken_off_the_buffer() {
        let mut read =
            BytesMut::from("HTTP/1.1 201 Whatever\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok");
        let head = parse_head(&mut read, &mut HeaderMemo::default()).expect("valid").expect("whole");
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(!head.close);
        assert_eq!(&head.rest[..], b"ok");
        assert!(read.is_empty());
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(parse_head(&mut partial, &mut HeaderMemo::default()).expect("valid").is_none());
        assert_eq!(&partial[..], b"HTTP/1.1 200 OK\r\nContent-Le", "a partial head stays in the buffer");
        assert!(parse_head(&mut BytesMut::from("NOT HTTP\r\n\r\n"), &mut HeaderMemo::default()).is_err());
    }

    #[test]
    fn what_the_browser_never_sees_is_dropped_as_the_head_is_read() {
        let head = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nAccess-Control-Allow-Origin: *\r\n\
             Clear-Site-Data: \"cookies\"\r\nETag: \"1\"\r\n\r\n",
        );
        let kept: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(kept, ["etag"]);
        assert_eq!(
            head.transfer_encoding,
            Some(HeaderValue::from_static("chunked")),
            "still frames the body"
        );
    }

    #[test]
    fn a_header_a_connection_names_is_dropped_though_the_memo_knew_it_kept() {
        // One connection's memo across three answers: the verdict remembered for `X-Hop`
        // (kept) must not outlive the answer whose `Connection` names it.
        let mut memo = HeaderMemo::default();
        let mut kept = |text: &str| {
            let mut read = BytesMut::from(text);
            let head = parse_head(&mut read, &mut memo).expect("valid").expect("whole");
            head.headers.keys().map(|name| name.as_str().to_owned()).collect::<Vec<_>>()
        };
        let plain = "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nETag: \"1\"\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(kept(plain), ["x-hop", "etag", "content-length"]);
        let named =
            "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nETag: \"1\"\r\nContent-Length: 0\r\nConnection: x-hop\r\n\r\n";
        assert_eq!(kept(named), ["etag", "content-length"]);
        assert_eq!(kept(plain), ["x-hop", "etag", "content-length"]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Answers read on one connection (replayed by its memo when alike) come out as
        /// each does on a connection of its own (read by httparse).
        #[test]
        fn a_replayed_head_is_read_as_httparse_reads_it(heads in crate::header_memo::alike_heads(
            &["HTTP/1.1 200 OK\r\n", "HTTP/1.1 401 Unauthorized\r\n", "HTTP/1.0 200 OK\n", "HTTP/1.1 204\r\n",
              "HTTP/1.1 200 \u{e9}\r\n", "HTTP/1.1 20 OK\r\n"],
            &["Server: nginx", "Date: Fri, 04 Dec 2026 15:00:00 GMT", "Date: Fri, 04 Dec 2026 15:00:01 GMT",
              "Content-Type: application/json", "Content-Length: 4", "Content-Length: 5", "Connection: keep-alive",
              "Connection: close", "Connection: x-hop", "X-Hop: 1", "Set-Cookie: a=1", "Set-Cookie: b=2",
              "Transfer-Encoding: chunked", "X-Custom:  v \t", "X-Empty:", "X-Bad: a\x7fb", "X-Fold: a\r\n b",
              "Bad Name: x", "Access-Control-Allow-Origin: *"],
        )) {
            let mut memo = HeaderMemo::default();
            for head in heads {
                let (mine, own) = read_alike_and_alone(&mut memo, &head);
                proptest::prop_assert_eq!(mine, own, "{:?}", String::from_utf8_lossy(&head));
            }
        }
    }

    #[test]
    fn close_is_read_from_the_version_and_connection() {
        assert!(parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n").close);
        assert!(parse("HTTP/1.0 200 OK\r\n\r\n").close);
        assert!(!parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").close);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let frame = |text: &str, head_request: bool| {
            let mut head = parse(text);
            let te = head.transfer_encoding.clone();
            let framing = framing(
                head.status,
                &mut head.headers,
                te.as_ref(),
                head.length,
                head_request,
                &mut head.close,
            );
            (framing, head.close, head.headers.contains_key(header::CONTENT_LENGTH))
        };
        let length = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(frame(length, false), (Framing::Length(5), false, true));
        assert_eq!(frame(length, true), (Framing::Length(0), false, true));
        assert_eq!(frame("HTTP/1.1 204 No\r\n\r\n", false).0, Framing::Length(0));
        assert_eq!(frame("HTTP/1.1 304 No\r\n\r\n", false).0, Framing::Length(0));
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(frame(both, false), (Framing::Chunked(Chunk::Size), true, false));
        let not_chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(frame(not_chunked, false), (Framing::UntilClose, true, false));
        assert_eq!(frame("HTTP/1.1 200 OK\r\n\r\n", false), (Framing::UntilClose, true, false));
        let agree = "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(frame(agree, false).0, Framing::Length(5));
        let disagree = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(frame(disagree, false), (Framing::UntilClose, true, false));
        let garbage = "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n";
        assert_eq!(frame(garbage, false), (Framing::UntilClose, true, false));
    }

    #[test]
    fn chunked_bodies_are_decoded_and_trailers_dropped() {
        assert_eq!(body_of("3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n").expect("valid"), b"abcde");
        assert_eq!(body_of("3\nabc\n0\nX-Token: t\r\n\r\n").expect("valid"), b"abc");
        assert_eq!(body_of("A\r\n0123456789\r\n0\r\n\r\n").expect("valid"), b"0123456789");
        assert_eq!(body_of("zz\r\n"), Err(BodyFault::Framing));
        assert_eq!(body_of("3\r\nabcX\r\n"), Err(BodyFault::Framing));
        assert_eq!(body_of("3\r\nab"), Err(BodyFault::Truncated));
        assert_eq!(body_of("ffffffffffffffff\r\n"), Err(BodyFault::Framing));
    }

    #[test]
    fn the_request_head_is_written_with_our_own_framing() {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("http://api.example/v1/carts?x=1")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("x-a", "1")
            .header("x-b", "dropped")
            .body(())
            .expect("a request");
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        let head = RequestHead {
            method: &parts.method,
            target: "/v1/carts?x=1",
            headers: &parts.headers,
            keep: &|name| name != "x-b",
            added: &[Some(("x-added", b"2")), None],
        };
        encode_head(&mut out, head, 0, &HeaderValue::from_static("api.example"), Some(b"t0k"));
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "POST /v1/carts?x=1 HTTP/1.1\r\nx-a: 1\r\nhost: api.example\r\nx-added: 2\r\n\
             authorization: Bearer t0k\r\ncontent-length: 0\r\n\r\n"
        );
        let (get, ()) = http::Request::get("http://api.example").body(()).expect("a request").into_parts();
        let mut out = Vec::new();
        let head = RequestHead {
            method: &get.method,
            target: "",
            headers: &get.headers,
            keep: &|_| true,
            added: &[],
        };
        encode_head(&mut out, head, 0, &HeaderValue::from_static("api.example"), None);
        assert_eq!(String::from_utf8(out).expect("text"), "GET / HTTP/1.1\r\nhost: api.example\r\n\r\n");
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        let mut buffer = itoa_buffer();
        assert_eq!(format_len(&mut buffer, 0), b"0");
        assert_eq!(format_len(&mut buffer, 1_048_576), b"1048576");
        assert_eq!(format_len(&mut buffer, usize::MAX), usize::MAX.to_string().as_bytes());
    }
}
