//! tokengate's own HTTP/1.1 server connection, for plain TCP listeners (TLS and HTTP/2
//! stay with hyper, `server`).
//!
//! Why not hyper's: its profile was a tenth of a forwarded call's instructions (a
//! dispatcher between the connection and the service, a header-read timer created for
//! every request, buffered writes flushed in a second pass), all of it for one request
//! at a time on a connection. Here one loop reads a head, calls the handler in the same
//! task, and writes the answer:
//!
//! * heads are parsed with `httparse` (at most [`MAX_HEADERS`] headers and
//!   `server.max_header_bytes`, else 431; anything malformed is 400, then close), header
//!   values are slices of the read buffer (no copy); pipelined requests are read from
//!   the buffer in order;
//! * a request body is framed by RFC 9112 §6.3: `Content-Length` (every value must
//!   agree) or a final `chunked` (trailers read and dropped). A request framed by both, by
//!   another coding, or with lengths that disagree, is refused with 400 and the connection
//!   closed: a request a proxy in front reads differently is how requests are smuggled.
//!   A body that arrived whole with its head is handed on as one buffer; otherwise the
//!   connection's read side goes with the body ([`RequestBody`]) and comes back at its
//!   clean end. A body the handler left unread closes the connection after the answer;
//! * `Expect: 100-continue` is answered `100 Continue` before the handler runs, when the
//!   body has not already arrived;
//! * the answer is framed by its body: no body for `HEAD`, 1xx, 204 and 304; else
//!   `Content-Length` when the body's length is known, chunked when not (HTTP/1.0: until
//!   close). Its head and the frames the body has ready go out in one write; the reason
//!   phrase is always the standard one, and `Date` is added;
//! * keep-alive as RFC 9112 §9.3 says (HTTP/1.0 only with `Connection: keep-alive`),
//!   ended by `Connection: close`, by shutdown (after the answer in flight, or at once
//!   when idle), or when no head arrives within `server.header_read_timeout` (or the
//!   shorter `keep_alive_timeout`) of the wait for it starting. That deadline costs no
//!   timer per request: one sleep per connection, moved on only when it fires early.
//!
//! A body error after the answer's head went out (the leak guard's cut, an API that
//! broke off) closes the connection without the body's end, so the browser sees a
//! broken answer, never a complete one.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use httparse::ParserConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::date;
use super::drain::Drain;
use super::Handler;
use crate::body::{Body, Inbound};
use crate::context::{ConnInfo, RequestId, X_REQUEST_ID};
use crate::deadline::Deadline;
use crate::error::Error;
use crate::head_scan;
#[doc(hidden)]
pub use crate::header_memo::HeaderMemo;
use crate::header_memo::{BadLine, HeadLine, Replayed};
use crate::header_pool;
use crate::http1::{format_len, itoa_buffer, merge_length, BodyFault, Chunk, Framing, Step};
use crate::poll_time;
use crate::protocol;

/// Most headers a request may have (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Body frames up to this size are copied behind the head (or the frame before) and go
/// out in one write; larger ones are written from where they are.
const COALESCE: usize = 16 * 1024;

/// The limits `[server]` sets on a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Serves HTTP/1.1 on `stream` until the connection ends. `first` holds the bytes already
/// read from it (the server looked at them to tell HTTP/2's preface from a request).
pub async fn serve<H: Handler>(
    stream: TcpStream,
    first: BytesMut,
    conn: ConnInfo,
    handler: Arc<H>,
    limits: Limits,
    drain: Drain,
) {
    let (read, write) = stream.into_split();
    let mut connection = Connection {
        side: Some(ReadSide { half: read, buf: first }),
        write,
        out: Vec::with_capacity(1024),
        deadline: Deadline::default(),
        drain_wait: Box::pin(drain.waiter()),
        drain_registered: false,
        drain,
        limits,
        memo: HeaderMemo::default(),
        unread_body: false,
    };
    connection.run(&*handler, &conn).await;
}

/// The read half of a connection and what was read from it but not yet used. It lives
/// in the connection, or in a request's [`RequestBody`] while that body is read.
#[derive(Debug)]
pub struct ReadSide {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl ReadSide {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.half), cx, &mut self.buf)
    }
}

struct Connection {
    /// `None` while a request's body holds it.
    side: Option<ReadSide>,
    write: OwnedWriteHalf,
    /// The answer's head and the body bytes that go out with it (kept across requests).
    out: Vec<u8>,
    /// The one sleep that watches the wait for the next head.
    deadline: Deadline,
    /// Registered once per connection with the task's waker; later waits only look at
    /// the drain's flag (the task's waker does not change, so the registration stays good).
    drain_wait: Pin<Box<OwnedNotified>>,
    drain_registered: bool,
    drain: Drain,
    limits: Limits,
    /// The header lines of the last heads, so alike ones are not made again.
    memo: HeaderMemo,
    /// The last request's body came back unread: linger before closing.
    unread_body: bool,
}

/// What the connection knows of the request it answers.
struct Meta {
    head: bool,
    http10: bool,
    keep_alive: bool,
    /// Where the read side comes back from the request's body, when the body has it.
    lent: Option<oneshot::Receiver<Home>>,
}

/// Why no request was read.
enum Stop {
    /// The connection ended (closed, failed, timed out waiting, shutdown while idle).
    Quiet,
    /// The head was bad: answer this and close.
    Refuse(Error),
}

impl Connection {
    async fn run<H: Handler>(&mut self, handler: &H, conn: &ConnInfo) {
        loop {
            let (request, mut meta) = match self.next_request().await {
                Ok(next) => next,
                Err(Stop::Quiet) => return,
                Err(Stop::Refuse(error)) => {
                    let meta = Meta { head: false, http10: false, keep_alive: false, lent: None };
                    let _ = self.respond(error.to_response(), meta, None).await;
                    self.linger().await;
                    return;
                }
            };
            if self.expects_continue(&request) && self.write.write_all(CONTINUE).await.is_err() {
                return;
            }
            let answer = handler.call(request, conn).await;
            meta.keep_alive &= !self.drain.has_begun();
            if !self.respond(answer.response, meta, answer.request_id.as_ref()).await {
                if self.unread_body {
                    self.linger().await;
                }
                return;
            }
        }
    }

    /// Closes after a refusal so that the answer is read: our side is shut first, then
    /// what the client still sends is read and dropped for a moment. Closing with unread
    /// bytes would make the kernel reset the connection, and the client could lose the
    /// answer with it.
    async fn linger(&mut self) {
        let _ = self.write.shutdown().await;
        let Some(side) = self.side.as_mut() else { return };
        let drain = async {
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                side.buf.clear();
                match poll_fn(|cx| side.poll_fill(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Whether to send `100 Continue` now: the client waits for it before the body, and
    /// the body is still to come.
    fn expects_continue(&self, request: &Request<Inbound>) -> bool {
        matches!(request.body(), Inbound::Reading(_))
            && request.version() == Version::HTTP_11
            && request
                .headers()
                .get(header::EXPECT)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    }

    /// Reads the next request's head (and, when it came along, its body).
    async fn next_request(&mut self) -> Result<(Box<Request<Inbound>>, Meta), Stop> {
        // The wait is bounded from the first time nothing is there to read: a head already
        // read (a busy keep-alive connection's usual case) costs no clock read.
        let mut wait_ends = None;
        // After a partial head, how much of the buffer is known to hold no head's end.
        let mut looked: Option<usize> = None;
        loop {
            let side = self.side.as_mut().ok_or(Stop::Quiet)?;
            let max = self.limits.max_header_bytes;
            // A head that came in pieces is parsed again only once its end has arrived:
            // parsing (and copying back) the whole head at every piece would cost the
            // square of its length for a client sending it byte by byte.
            let ready = looked.is_none_or(|from| has_head_end(&side.buf, from));
            if !side.buf.is_empty() && ready {
                if let Some(head) = parse(&mut side.buf, max, &mut self.memo)? {
                    return Ok(self.request(head));
                }
            } else if side.buf.len() >= max {
                return Err(Stop::Refuse(Error::HeadersTooLarge));
            }
            if !side.buf.is_empty() {
                looked = Some(side.buf.len());
            }
            poll_fn(|cx| self.poll_wait(cx, &mut wait_ends)).await?;
        }
    }

    /// Reads more of a head, until `wait_ends` (set at the first wait) or shutdown (when
    /// nothing of a head came).
    fn poll_wait(&mut self, cx: &mut Context<'_>, wait_ends: &mut Option<Instant>) -> Poll<Result<(), Stop>> {
        let Some(side) = self.side.as_mut() else { return Poll::Ready(Err(Stop::Quiet)) };
        match side.poll_fill(cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Stop::Quiet)),
            Poll::Ready(Ok(_)) => return Poll::Ready(Ok(())),
            Poll::Pending => {}
        }
        let idle = side.buf.is_empty();
        // Registered before the flag is read (see `server::drain`).
        if !self.drain_registered {
            self.drain_registered = true;
            let _ = self.drain_wait.as_mut().poll(cx);
        }
        if idle && self.drain.has_begun() {
            return Poll::Ready(Err(Stop::Quiet));
        }
        let limit = self.limits.header_read_timeout.min(self.limits.keep_alive_timeout);
        let ends = *wait_ends.get_or_insert_with(|| poll_time::now() + limit);
        if self.deadline.poll_passed(cx, ends) {
            return Poll::Ready(Err(Stop::Quiet));
        }
        Poll::Pending
    }

    /// The request of a parsed head, its body framed and handed on.
    fn request(&mut self, head: Head) -> (Box<Request<Inbound>>, Meta) {
        let Head { mut request, framing, keep_alive, mut rest } = head;
        let mut lent = None;
        let whole = match framing {
            Framing::Length(0) => Some(Inbound::Empty),
            // The whole body came with the head: a slice of what was read, no copy.
            Framing::Length(length) if rest.len() as u64 >= length => {
                Some(Inbound::Whole(Some(rest.split_to(length as usize))))
            }
            Framing::Length(_) | Framing::Chunked(_) | Framing::UntilClose => None,
        };
        // What is left (a pipelined request, the start of a body still coming) is read
        // again from the buffer: a copy, in the rare case there is anything.
        if let (Some(side), false) = (self.side.as_mut(), rest.is_empty()) {
            side.buf.extend_from_slice(&rest);
        }
        let body = match whole {
            Some(body) => body,
            None => self.lend(framing, &mut lent),
        };
        *request.body_mut() = body;
        let meta = Meta {
            head: request.method() == Method::HEAD,
            http10: request.version() == Version::HTTP_10,
            keep_alive,
            lent,
        };
        (request, meta)
    }

    /// A body still to be read from the connection: the read side goes with it.
    fn lend(&mut self, framing: Framing, lent: &mut Option<oneshot::Receiver<Home>>) -> Inbound {
        let (home, back) = oneshot::channel();
        *lent = Some(back);
        Inbound::Reading(Box::new(RequestBody { side: self.side.take(), framing, home: Some(home) }))
    }

    /// Writes the answer. Returns whether the connection can carry another request.
    async fn respond(
        &mut self,
        response: Response<Body>,
        mut meta: Meta,
        request_id: Option<&RequestId>,
    ) -> bool {
        // The read side must be home before the head says whether the connection stays.
        if let Some(mut back) = meta.lent.take() {
            match back.try_recv() {
                Ok(Home { side, finished }) => {
                    self.side = Some(side);
                    if !finished {
                        meta.keep_alive = false;
                        self.unread_body = true;
                    }
                }
                Err(_) => meta.keep_alive = false,
            }
        }
        let (parts, mut body) = response.into_parts();
        let bodiless = meta.head
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let framing = match body.size_hint().exact() {
            _ if bodiless => Out::None,
            Some(length) => Out::Length(length),
            None if meta.http10 => {
                meta.keep_alive = false;
                Out::Close
            }
            None => Out::Chunked,
        };
        encode_head(&mut self.out, &parts, framing, &meta, request_id);
        // Written: the map serves a later head on this thread.
        header_pool::give(parts.headers);
        if bodiless {
            return self.flush().await.is_ok() && meta.keep_alive;
        }
        match self.write_body(&mut body, framing).await {
            Ok(true) => meta.keep_alive,
            Ok(false) | Err(_) => false,
        }
    }

    /// Writes the body after the head in `self.out`. `Ok(false)`: the body broke off or
    /// did not match its length, and the connection must close without its end.
    async fn write_body(&mut self, body: &mut Body, framing: Out) -> io::Result<bool> {
        let mut written: u64 = 0;
        loop {
            let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                // Nothing more yet: send what is ready first.
                Poll::Pending if !self.out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let frame = match next {
                None => {
                    self.flush().await?;
                    continue;
                }
                Some(None) => break,
                Some(Some(Ok(frame))) => frame,
                Some(Some(Err(error))) => {
                    tracing::debug!(%error, "the answer's body broke off; closing the connection");
                    self.flush().await?;
                    return Ok(false);
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            if matches!(framing, Out::Length(length) if written > length) {
                tracing::debug!("the answer's body is longer than its length; closing the connection");
                self.flush().await?;
                return Ok(false);
            }
            self.push_data(data, framing).await?;
        }
        if framing == Out::Chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush().await?;
        Ok(!matches!(framing, Out::Length(length) if written != length) && framing != Out::Close)
    }

    /// Puts one data frame behind what is waiting in `self.out`, or writes both.
    async fn push_data(&mut self, data: Bytes, framing: Out) -> io::Result<()> {
        if framing == Out::Chunked {
            push_chunk_size(&mut self.out, data.len());
        }
        if data.len() <= COALESCE {
            self.out.extend_from_slice(&data);
        } else {
            let out = std::mem::take(&mut self.out);
            let result =
                write_all_vectored(&mut self.write, &mut [IoSlice::new(&out), IoSlice::new(&data)]).await;
            self.out = out;
            self.out.clear();
            result?;
        }
        if framing == Out::Chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        if self.out.len() >= COALESCE {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let result = self.write.write_all(&self.out).await;
            self.out.clear();
            result?;
        }
        Ok(())
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long, and how many bytes, a refused client's remaining request is read and dropped.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// How the answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 with no known length: the body ends when the connection closes.
    Close,
}

/// The answer's head: the status line with the standard reason phrase, the handler's
/// headers but the framing and connection ones, ours, the request's id (in place of any
/// the answer has) and `Date` unless it has one.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: Out,
    meta: &Meta,
    request_id: Option<&RequestId>,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in &parts.headers {
        let framing_header = *name == header::TRANSFER_ENCODING
            || *name == header::CONNECTION
            // A `HEAD` or 304 answer's length is the one the handler gives; every other
            // answer's is the body's own.
            || (*name == header::CONTENT_LENGTH && framing != Out::None)
            || (*name == header::CONTENT_LENGTH && parts.status == StatusCode::NO_CONTENT);
        // The request's id replaces any the answer carries (the upstream's own).
        let replaced = request_id.is_some() && *name == X_REQUEST_ID;
        if framing_header || replaced || name.as_str() == "keep-alive" {
            continue;
        }
        dated |= *name == header::DATE;
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(id) = request_id {
        push_header(out, X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
    }
    match framing {
        Out::Length(length) => {
            let mut digits = itoa_buffer();
            push_header(out, b"content-length", format_len(&mut digits, length as usize));
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
    }
    if !dated {
        date::with(|now| push_header(out, b"date", now));
    }
    if !meta.keep_alive || framing == Out::Close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if meta.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line, in hex.
fn push_chunk_size(out: &mut Vec<u8>, size: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

async fn write_all_vectored(write: &mut OwnedWriteHalf, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = write.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// A parsed request head.
struct Head {
    /// Boxed where it is made: a request is 264 bytes, and it goes through the handler's
    /// layers (handle, walk, proxy, prepare), each of which moved it twice inline.
    request: Box<Request<Inbound>>,
    framing: Framing,
    keep_alive: bool,
    /// The bytes read after the head: the body's start, or the next request.
    rest: Bytes,
}

/// Parses a request head from the front of `buf`, taking it off; `None` (and `buf` as it
/// was) until it is whole. The buffer is frozen first, so header values are slices of it,
/// not copies; what followed the head comes back as `Head::rest`. A head shaped like the
/// connection's last ones is read by the memo (`HeaderMemo::replay`), any other by
/// `httparse`; both hand the same lines to [`head_of`].
fn parse(buf: &mut BytesMut, max_head: usize, memo: &mut HeaderMemo) -> Result<Option<Head>, Stop> {
    let bytes = buf.split().freeze();
    if let Some(line) = head_scan::request_line(&bytes) {
        let mut lines = Replayed::new();
        if let Some(length) = memo.replay(&bytes, line.end, &mut lines).filter(|&length| length <= max_head) {
            let start = Start {
                method: &bytes[line.method],
                target: &bytes[line.target],
                http10: line.http10,
                length,
            };
            return head_of(&bytes, start, lines.iter().copied(), memo).map(Some);
        }
    }
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length =
        match ParserConfig::default().parse_request_with_uninit_headers(&mut request, &bytes, &mut slots) {
            Ok(httparse::Status::Complete(length)) if length <= max_head => length,
            Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
                return Err(Stop::Refuse(Error::HeadersTooLarge));
            }
            Ok(httparse::Status::Partial) if bytes.len() >= max_head => {
                return Err(Stop::Refuse(Error::HeadersTooLarge));
            }
            Ok(httparse::Status::Partial) => {
                // Rare (a head in pieces): the bytes go back, copied if they must be.
                *buf = bytes.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                return Ok(None);
            }
            Err(_) => return Err(bad("The request is not valid HTTP/1.1.")),
        };
    let start = Start {
        method: request.method.unwrap_or_default().as_bytes(),
        target: request.path.unwrap_or("/").as_bytes(),
        http10: request.version == Some(0),
        length,
    };
    let lines = request.headers.iter().map(|header| HeadLine::parsed(header.name.as_bytes(), header.value));
    head_of(&bytes, start, lines, memo).map(Some)
}

/// A request line as read, and the length of its whole head.
struct Start<'b> {
    method: &'b [u8],
    target: &'b [u8],
    http10: bool,
    length: usize,
}

/// The request of a head read whole from `bytes`: its start and its header lines, each
/// typed through the connection's memo, and the framing they say.
fn head_of<'b>(
    bytes: &'b Bytes,
    start: Start<'b>,
    lines: impl Iterator<Item = HeadLine<'b>>,
    memo: &mut HeaderMemo,
) -> Result<Head, Stop> {
    let method = Method::from_bytes(start.method).map_err(|_| bad("The request method is not valid."))?;
    let uri = memo.target(start.target, bytes).map_err(|_| bad("The request target is not valid."))?;
    let version = if start.http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut headers = header_pool::take(lines.size_hint().0);
    let mut keep_alive = version == Version::HTTP_11;
    let (mut chunked, mut coded, mut length_seen) = (false, false, None);
    for (place, line) in lines.enumerate() {
        let (name, value) = memo.line(place, line, bytes).map_err(|bad_line| {
            bad(match bad_line {
                BadLine::Name => "A header name is not valid.",
                BadLine::Value => "A header value is not valid.",
            })
        })?;
        if name == header::CONNECTION {
            keep_alive = keeps_alive(version, &value, keep_alive);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding of the last line counts: it must be `chunked`.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            merge_length(value.as_bytes(), &mut length_seen)
                .map_err(|()| bad("The request's Content-Length is not valid."))?;
        }
        headers.append(name, value);
    }
    let framing = request_framing(length_seen, coded, chunked, version)?;
    let mut request = Box::new(Request::new(Inbound::Empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head { request, framing, keep_alive, rest: bytes.slice(start.length..) })
}

/// `head` read on a connection whose memo has read the heads before it (and may replay
/// it) and on a connection of its own, each as what it came to (the request, or why
/// not): the two must be the same (the proptest below, and the fuzz target `heads`).
#[doc(hidden)]
pub fn read_alike_and_alone(memo: &mut HeaderMemo, head: &[u8]) -> (String, String) {
    let read = |memo: &mut HeaderMemo| outcome(parse(&mut BytesMut::from(head), 16 * 1024, memo));
    (read(memo), read(&mut HeaderMemo::default()))
}

/// What a parse came to, to compare two: the request as read, or why not.
fn outcome(result: Result<Option<Head>, Stop>) -> String {
    match result {
        Ok(Some(head)) => format!(
            "{} {} {:?} {:?} {:?} {} {:?}",
            head.request.method(),
            head.request.uri(),
            head.request.version(),
            head.request.headers(),
            head.framing,
            head.keep_alive,
            head.rest
        ),
        Ok(None) => "partial".to_owned(),
        Err(Stop::Quiet) => "quiet".to_owned(),
        Err(Stop::Refuse(error)) => format!("refused: {error}"),
    }
}

/// Whether `buf` holds the end of a head (an empty line: `\n\n` or `\n\r\n`) that ends
/// after `from`, the length already looked at.
fn has_head_end(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    let rest = buf.get(start..).unwrap_or_default();
    memchr::memchr_iter(b'\n', rest).any(|at| match rest.get(at + 1) {
        Some(b'\n') => true,
        Some(b'\r') => rest.get(at + 2) == Some(&b'\n'),
        _ => false,
    })
}

fn bad(why: &'static str) -> Stop {
    Stop::Refuse(Error::BadRequest(why))
}

/// What one `Connection` line says of keep-alive (RFC 9112 §9.3).
fn keeps_alive(version: Version, value: &HeaderValue, before: bool) -> bool {
    let mut keep = before;
    for token in protocol::list_tokens(value.as_bytes()) {
        if token.eq_ignore_ascii_case(b"close") {
            return false;
        }
        if version == Version::HTTP_10 && token.eq_ignore_ascii_case(b"keep-alive") {
            keep = true;
        }
    }
    keep
}

/// RFC 9112 §6.3 for a request, strictly: a `Transfer-Encoding` must end in `chunked` and
/// come without `Content-Length` (and not in HTTP/1.0); `length` is the one value all
/// `Content-Length` lines agreed on.
fn request_framing(
    length: Option<u64>,
    coded: bool,
    chunked: bool,
    version: Version,
) -> Result<Framing, Stop> {
    if coded {
        if !chunked || version == Version::HTTP_10 || length.is_some() {
            return Err(bad("The request's Transfer-Encoding is not one this server reads."));
        }
        return Ok(Framing::Chunked(Chunk::Size));
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

/// The read side coming back from a request's body: at its clean end, or unfinished when
/// the body was dropped before it (the connection then closes after the answer, reading
/// and dropping what the client still sends for a moment, so the answer is not lost to a
/// reset).
#[derive(Debug)]
pub struct Home {
    side: ReadSide,
    finished: bool,
}

/// The rest of a browser's request body, read from its connection as the handler asks
/// for it; the connection's read side goes home at the body's clean end, or when the body
/// is dropped.
#[derive(Debug)]
pub struct RequestBody {
    side: Option<ReadSide>,
    framing: Framing,
    home: Option<oneshot::Sender<Home>>,
}

impl RequestBody {
    /// The next data frame, `None` at the end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        loop {
            let Some(side) = self.side.as_mut() else { return Poll::Ready(None) };
            match self.framing.step(&mut side.buf) {
                Step::Data(bytes) => {
                    // The last bytes of a length: home at once, not at the next poll (a
                    // client of the body may stop at `is_end_stream`).
                    if self.framing == Framing::Length(0) {
                        self.send_home(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Step::Continue => {}
                Step::End => {
                    self.send_home(true);
                    return Poll::Ready(None);
                }
                Step::Fail(fault) => {
                    self.side = None;
                    return Poll::Ready(Some(Err(fault)));
                }
                Step::Fill => match side.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        self.side = None;
                        return Poll::Ready(Some(Err(BodyFault::Truncated)));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => {
                        self.side = None;
                        return Poll::Ready(Some(Err(BodyFault::Read)));
                    }
                },
            }
        }
    }

    /// The read side goes back to its connection: at the body's clean end (`finished`), or
    /// when the body is dropped before it.
    fn send_home(&mut self, finished: bool) {
        if let (Some(side), Some(home)) = (self.side.take(), self.home.take()) {
            let _ = home.send(Home { side, finished });
        }
    }

    /// Whether the body has ended.
    pub fn is_end_stream(&self) -> bool {
        self.side.is_none() || self.framing == Framing::Length(0)
    }

    /// What is known of the rest's length.
    pub fn size_hint(&self) -> SizeHint {
        match (self.side.is_some(), self.framing) {
            (false, _) => SizeHint::with_exact(0),
            (true, Framing::Length(left)) => SizeHint::with_exact(left),
            (true, Framing::Chunked(_) | Framing::UntilClose) => SizeHint::new(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.send_home(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, Stop> {
        parse(&mut BytesMut::from(text), 16 * 1024, &mut HeaderMemo::default())
    }

    fn refused(text: &str) -> Option<u16> {
        match head(text) {
            Err(Stop::Refuse(error)) => Some(error.status().as_u16()),
            _ => None,
        }
    }

    #[test]
    fn a_head_is_parsed_and_taken_off_the_buffer() {
        let mut buf = BytesMut::from("GET /api/x?y=1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\nGET /next");
        let parsed =
            parse(&mut buf, 16 * 1024, &mut HeaderMemo::default()).ok().flatten().expect("a whole head");
        assert_eq!(parsed.request.method(), Method::GET);
        assert_eq!(parsed.request.uri().path(), "/api/x");
        assert_eq!(parsed.request.uri().query(), Some("y=1"));
        assert_eq!(parsed.request.headers()["x-one"], "1");
        assert!(parsed.keep_alive);
        assert_eq!(parsed.framing, Framing::Length(0));
        assert_eq!(&parsed.rest[..], b"GET /next", "what follows is kept for the next request");
        assert!(buf.is_empty(), "the head is taken off");
    }

    #[test]
    fn heads_on_one_connection_keep_their_own_headers() {
        // The connection's memo answers alike lines; every head must still come out as sent.
        let mut memo = HeaderMemo::default();
        let heads = [
            "GET /a HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nCookie: tg=one\r\n\r\n",
            "GET /b HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\nCookie: tg=two\r\n\r\n",
            "POST /c HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nAccept: text/html\r\n\r\n",
            "GET /d HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nCookie: tg=one\r\n\r\n",
        ];
        for text in heads.iter().cycle().take(12) {
            let parsed =
                parse(&mut BytesMut::from(*text), 16 * 1024, &mut memo).ok().flatten().expect("a head");
            let sent: Vec<String> =
                text.lines().skip(1).filter(|line| !line.is_empty()).map(str::to_lowercase).collect();
            let got: Vec<String> = parsed
                .request
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")).to_lowercase())
                .collect();
            assert_eq!(got, sent, "{text}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Heads read on one connection (replayed by its memo when alike) come out as each
        /// does on a connection of its own (read by httparse): the same request, or the
        /// same refusal.
        #[test]
        fn a_replayed_head_is_read_as_httparse_reads_it(heads in crate::header_memo::alike_heads(
            &["GET /v1/shoppers/me HTTP/1.1\r\n", "POST /v1/carts/me?x=1 HTTP/1.1\r\n", "GET / HTTP/1.0\n",
              "GET /\x7f HTTP/1.1\r\n", "PATCH /v1/a%20b HTTP/1.1\r\n", "GET /v1/a#f HTTP/1.1\r\n",
              "OPTIONS * HTTP/1.1\r\n", "GET http://a/v1/shoppers/me HTTP/1.1\r\n"],
            &["Host: 127.0.0.1", "Accept: application/json", "Cookie: tg=abc", "Cookie: tg=xyz",
              "Content-Length: 4", "Content-Length: 5", "Transfer-Encoding: chunked", "Connection: close",
              "X-Custom:  v \t", "x-custom: w", "X-Empty:", "X-Obs: \u{e9}t\u{e9}", "X-Bad: a\x7fb",
              "X-Fold: a\r\n b", "Bad Name: x", "X-Lone: a\rb", "Host :a", "X-Tab:\tv"],
        )) {
            let mut memo = HeaderMemo::default();
            for head in heads {
                let (mine, own) = read_alike_and_alone(&mut memo, &head);
                proptest::prop_assert_eq!(mine, own, "{:?}", String::from_utf8_lossy(&head));
            }
        }
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_431() {
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(matches!(parse(&mut buf, 16 * 1024, &mut HeaderMemo::default()), Ok(None)));
        assert_eq!(buf.len(), 25, "nothing taken off");
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "x".repeat(300));
        assert!(matches!(
            parse(&mut BytesMut::from(long.as_str()), 256, &mut HeaderMemo::default()),
            Err(Stop::Refuse(Error::HeadersTooLarge))
        ));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
    }

    #[test]
    fn the_end_of_a_head_is_found_across_pieces() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 1..head.len() {
            // Looked at `cut` bytes before: the end is found once it has arrived.
            assert!(has_head_end(head, cut), "{cut}");
            assert!(!has_head_end(&head[..cut], 0) || cut >= head.len() - 1, "{cut}");
        }
        assert!(has_head_end(b"GET / HTTP/1.1\n\n", 10));
        assert!(!has_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
    }

    #[test]
    fn framing_is_strict_about_what_smuggles() {
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(refused("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), Some(400));
        assert_eq!(refused("POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n"), Some(400));
        assert_eq!(refused("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), Some(400));
        assert_eq!(refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(400));
        assert_eq!(refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), Some(400));
        assert_eq!(refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(400));
        assert_eq!(refused("GET / HTTP/1.1\r\nNo colon here\r\n\r\n"), Some(400));
        assert_eq!(refused("NOT A REQUEST\r\n\r\n"), Some(400));
        let same = head("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").ok().flatten();
        assert_eq!(same.map(|h| h.framing), Some(Framing::Length(3)));
        let chunked = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").ok().flatten();
        assert_eq!(chunked.map(|h| h.framing), Some(Framing::Chunked(Chunk::Size)));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keep = |text: &str| head(text).ok().flatten().map(|h| h.keep_alive);
        assert_eq!(keep("GET / HTTP/1.1\r\n\r\n"), Some(true));
        assert_eq!(keep("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"), Some(false));
        assert_eq!(keep("GET / HTTP/1.0\r\n\r\n"), Some(false));
        assert_eq!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), Some(true));
        assert_eq!(
            keep("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"),
            Some(false)
        );
    }

    #[test]
    fn answer_heads_are_framed_by_their_body() {
        let meta = |head, http10, keep_alive| Meta { head, http10, keep_alive, lent: None };
        let mut response = Response::new(());
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        response.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        response.headers_mut().insert("x-kept", HeaderValue::from_static("yes"));
        let (mut parts, ()) = response.into_parts();
        let text = |out: &Vec<u8>| String::from_utf8_lossy(out).into_owned();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, Out::Length(5), &meta(false, false, true), None);
        let written = text(&out);
        assert!(written.starts_with("HTTP/1.1 200 OK\r\n"), "{written}");
        assert!(
            written.contains("x-kept: yes\r\n") && written.contains("content-length: 5\r\n"),
            "{written}"
        );
        assert!(
            !written.contains("99") && !written.contains("chunked") && !written.contains("connection"),
            "{written}"
        );
        assert!(written.contains("\r\ndate: ") && written.ends_with("\r\n\r\n"), "{written}");
        encode_head(&mut out, &parts, Out::None, &meta(true, false, false), None);
        let written = text(&out);
        assert!(
            written.contains("content-length: 99\r\n") && written.contains("connection: close\r\n"),
            "{written}"
        );
        parts.status = StatusCode::NO_CONTENT;
        encode_head(&mut out, &parts, Out::None, &meta(false, true, true), None);
        let written = text(&out);
        assert!(
            written.starts_with("HTTP/1.1 204 No Content\r\n") && !written.contains("content-length"),
            "{written}"
        );
        assert!(written.contains("connection: keep-alive\r\n"), "{written}");
        parts.status = StatusCode::OK;
        encode_head(&mut out, &parts, Out::Chunked, &meta(false, false, true), None);
        assert!(text(&out).contains("transfer-encoding: chunked\r\n"));
    }

    #[test]
    fn the_request_id_is_written_once_in_place_of_the_answers() {
        let meta = Meta { head: false, http10: false, keep_alive: true, lent: None };
        let mut response = Response::new(());
        response.headers_mut().insert(X_REQUEST_ID, HeaderValue::from_static("from-the-api"));
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let ours = RequestId::Given(HeaderValue::from_static("ours-1"));
        encode_head(&mut out, &parts, Out::Length(0), &meta, Some(&ours));
        let written = String::from_utf8_lossy(&out).into_owned();
        assert!(written.contains("x-request-id: ours-1\r\n"), "{written}");
        assert!(
            !written.contains("from-the-api") && written.matches("x-request-id").count() == 1,
            "{written}"
        );
        // Without an id (the admin listener, a refused head), the answer's own stays.
        encode_head(&mut out, &parts, Out::Length(0), &meta, None);
        assert!(String::from_utf8_lossy(&out).contains("x-request-id: from-the-api\r\n"));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = Vec::new();
        for (size, text) in [(0, "0\r\n"), (10, "a\r\n"), (255, "ff\r\n"), (65_536, "10000\r\n")] {
            out.clear();
            push_chunk_size(&mut out, size);
            assert_eq!(out, text.as_bytes());
        }
    }
}
