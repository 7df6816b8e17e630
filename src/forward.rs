//! Forwarding a browser's API call to the Commerce API.
//!
//! Request side: the path is mapped through the route (`/api/x` → base path +
//! `upstream_prefix` + `x`, query kept), hop-by-hop headers and everything the API must
//! not see are dropped (`protocol`), `X-Forwarded-For`/`-Proto`/`-Host` and
//! `X-Request-Id` are set (the host from `public_origin`, never the client's `Host`),
//! and the access token is injected as `Authorization: Bearer`, marked sensitive.
//!
//! Bodies: a declared length above `max_body_bytes` is 413 at once. A small body of a
//! session's call (at most [`REPLAY_LIMIT_BYTES`], declared or not) is read whole so the
//! call can be replayed once after a refresh, if the process-wide replay budget
//! ([`REPLAY_BUDGET_BYTES`]) has room; every other body streams through as it arrives,
//! counted against `max_body_bytes` (413 past it, however it was framed). A body that
//! trickles in is cut off at `request_timeout` with 408.
//!
//! Response side: hop-by-hop headers and every upstream `Set-Cookie` are dropped (the
//! browser's only cookie is ours), by the h1 client as it reads the head or here from
//! hyper's answers, so every answer [`Forwarder::send`] returns is clean; the body
//! streams back as it arrives.
//!
//! This module never parses cookies or decides session policy: it is handed an
//! `&AccessToken` or none.

use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::body::Inbound;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{Body, Upload, UploadWatch, Watch};
use crate::config::{BaseUrl, Route};
use crate::context::{RequestContext, RequestId, X_REQUEST_ID};
use crate::error::Error;
use crate::header_pool;
use crate::metrics::Metrics;
use crate::poll_time;
use crate::protocol::{self, Direction};
use crate::secret::AccessToken;
use crate::trace;
use crate::upstream::h1::{CallError, H1Client, RequestHead, Window};
use crate::upstream::HttpClient;

/// Bodies up to this size are kept for one replay after an upstream 401.
pub const REPLAY_LIMIT_BYTES: u64 = 64 * 1024;

/// Most bytes held for replays across all requests at once; past it, bodies stream
/// (and their calls are not replayed) instead of filling memory.
pub const REPLAY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;

/// The replay budget counts in units of this many bytes.
const BUDGET_UNIT: u64 = 1024;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Forwards calls over the pooled clients.
#[derive(Debug)]
pub struct Forwarder {
    /// hyper's client: streamed uploads, and every call with `upstream.protocol = "auto"`.
    client: HttpClient,
    /// tokengate's own HTTP/1.1 client (`upstream.protocol = "http1"`): every call whose
    /// body is empty or buffered.
    h1: Option<H1Client>,
    base: BaseUrl,
    request_timeout: Duration,
    /// `X-Forwarded-Host`: the host of `public_origin`, when there is one.
    forwarded_host: Option<HeaderValue>,
    /// `X-Forwarded-Proto` for plain-HTTP connections: "https" behind a TLS terminator
    /// (`public_origin` is https), else "http".
    forwarded_proto: &'static str,
    replay_budget: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// What the browser's request becomes upstream, before the token is added.
///
/// The browser's headers are kept as they came, with the headers tokengate adds beside
/// them: the h1 client writes the request head straight from the two, leaving out what
/// [`protocol::Filter`] drops (no header removed or inserted one by one); a request for
/// hyper's client is built from them with [`Prepared::into_request`].
#[derive(Debug)]
pub struct Prepared {
    method: Method,
    /// The upstream path and query (on the configured base): a valid request-target by
    /// construction, so not parsed again for the h1 client (see [`Forwarder::upstream_target`]).
    target: String,
    /// The browser's headers, as they came.
    headers: HeaderMap,
    added: Added,
    body: PreparedBody,
    watch: Watch,
    /// The share of the replay budget a buffered body holds until the call is done.
    _budget: Option<OwnedSemaphorePermit>,
}

/// The headers tokengate writes on every forwarded call, in place of any the browser
/// sent by those names.
#[derive(Debug)]
struct Added {
    forwarded_for: HeaderValue,
    forwarded_proto: &'static str,
    forwarded_host: Option<HeaderValue>,
    request_id: RequestId,
    /// `Accept-Encoding: br, gzip, deflate` (only what the leak guard decodes).
    accept_encoding: bool,
}

/// `Accept-Encoding` when the leak guard decodes answers: only what it can decode (it
/// refuses anything else).
const DECODABLE: &str = "br, gzip, deflate";

impl Added {
    /// Whether the browser's header `name` is replaced by one of these.
    fn replaces(&self, name: &HeaderName) -> bool {
        name == X_REQUEST_ID || (self.accept_encoding && name == header::ACCEPT_ENCODING)
    }

    /// The headers as name and value, for the h1 client's head.
    fn pairs(&self) -> [Option<(&'static str, &[u8])>; 5] {
        [
            Some(("x-forwarded-for", self.forwarded_for.as_bytes())),
            Some(("x-forwarded-proto", self.forwarded_proto.as_bytes())),
            self.forwarded_host.as_ref().map(|host| ("x-forwarded-host", host.as_bytes())),
            Some(("x-request-id", self.request_id.as_bytes())),
            self.accept_encoding.then_some(("accept-encoding", DECODABLE.as_bytes())),
        ]
    }

    /// Writes them into `headers` (for hyper's client).
    fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.forwarded_proto));
        if let Some(host) = &self.forwarded_host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        headers.insert(X_REQUEST_ID, self.request_id.to_header_value());
        if self.accept_encoding {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(DECODABLE));
        }
    }
}

#[derive(Debug)]
enum PreparedBody {
    Empty,
    /// Read whole, so the call can be replayed.
    Buffered(Bytes),
    Streaming(Box<Upload>),
}

/// A prepared body, the watch on the browser's upload, and its share of the budget.
type BodyParts = (PreparedBody, Watch, Option<OwnedSemaphorePermit>);

/// The live limits a call is forwarded under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: u64,
    /// Keep a small body for a replay (the call runs with a session's token).
    pub replayable: bool,
    /// Ask the API only for encodings the leak guard decodes.
    pub decodable_encodings: bool,
}

impl Forwarder {
    /// A forwarder to the API at `base`; `public_origin` names the storefront's origin.
    pub fn new(
        client: HttpClient,
        h1: Option<H1Client>,
        base: BaseUrl,
        request_timeout: Duration,
        public_origin: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let forwarded_host = public_origin
            .and_then(|origin| origin.split_once("://"))
            .and_then(|(_, host)| HeaderValue::from_str(host).ok());
        let behind_https = public_origin.is_some_and(|origin| origin.starts_with("https://"));
        let permits = usize::try_from(REPLAY_BUDGET_BYTES / BUDGET_UNIT).unwrap_or(usize::MAX);
        Self {
            client,
            h1,
            base,
            request_timeout,
            forwarded_host,
            forwarded_proto: if behind_https { "https" } else { "http" },
            replay_budget: Arc::new(Semaphore::new(permits)),
            metrics,
        }
    }

    /// Rewrites the browser's request for the route. Reads the body only when it is
    /// small enough to keep for a replay.
    pub async fn prepare(
        &self,
        request: Box<Request<Inbound>>,
        route: &Route,
        ctx: &RequestContext<'_>,
        limits: Limits,
    ) -> Result<Box<Prepared>, Error> {
        let (parts, incoming) = (*request).into_parts();
        let target = self.upstream_target(&parts.uri, route);
        let added = Added {
            forwarded_for: ctx.client.forwarded_for.clone(),
            forwarded_proto: if ctx.conn.tls { "https" } else { self.forwarded_proto },
            forwarded_host: self.forwarded_host.clone(),
            request_id: ctx.request_id.clone(),
            accept_encoding: limits.decodable_encodings,
        };
        let declared = protocol::declared_length(&incoming);
        let (body, watch, budget) = if declared == Some(0) {
            // No body (most calls): nothing to read, so no timer to arm (a clock read and
            // the timer's handle, per call).
            (PreparedBody::Empty, Watch::whole(), None)
        } else {
            // A body trickled in byte by byte would otherwise hold the connection for ever.
            tokio::time::timeout(self.request_timeout, self.prepare_body(incoming, declared, limits))
                .await
                .map_err(|_| Error::RequestTimeout)??
        };
        // Boxed: 352 bytes, kept across the call and handed down by value.
        Ok(Box::new(Prepared {
            method: parts.method,
            target,
            headers: parts.headers,
            added,
            body,
            watch,
            _budget: budget,
        }))
    }

    /// The one body-limit check, and the choice between buffering and streaming, for a
    /// body that may hold bytes (an empty one is settled in [`Forwarder::prepare`]) and
    /// declares `declared` bytes, if it says.
    async fn prepare_body(
        &self,
        incoming: Inbound,
        declared: Option<u64>,
        limits: Limits,
    ) -> Result<BodyParts, Error> {
        if declared.is_some_and(|length| length > limits.max_body_bytes) {
            return Err(Error::PayloadTooLarge);
        }
        let keep = declared.unwrap_or(REPLAY_LIMIT_BYTES).min(REPLAY_LIMIT_BYTES).min(limits.max_body_bytes);
        let budget = if limits.replayable && declared.is_none_or(|length| length <= REPLAY_LIMIT_BYTES) {
            self.reserve_replay(keep)
        } else {
            None
        };
        let Some(permit) = budget else {
            let watch = Arc::new(UploadWatch::default());
            let upload = Upload::new(None, incoming, limits.max_body_bytes, Arc::clone(&watch));
            return Ok((PreparedBody::Streaming(Box::new(upload)), Watch::on(watch), None));
        };
        let read = read_up_to(incoming, keep)
            .await
            .map_err(|_| Error::BadRequest("The request body could not be read."))?;
        match read {
            Read::Whole(bytes) => Ok((PreparedBody::Buffered(bytes), Watch::whole(), Some(permit))),
            Read::Prefix(_, _) if keep == limits.max_body_bytes => Err(Error::PayloadTooLarge),
            // Longer than a replay may hold: stream it, the part read first.
            Read::Prefix(prefix, rest) => {
                drop(permit);
                let watch = Arc::new(UploadWatch::default());
                let upload = Upload::new(Some(prefix), rest, limits.max_body_bytes, Arc::clone(&watch));
                Ok((PreparedBody::Streaming(Box::new(upload)), Watch::on(watch), None))
            }
        }
    }

    fn reserve_replay(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).ok()?;
        Arc::clone(&self.replay_budget).try_acquire_many_owned(units).ok()
    }

    /// The upstream path and query of the browser's `uri` on `route`. Every piece is
    /// already valid in a request-target, so their concatenation is too, without a
    /// second parse (~230 instructions a request): the base path comes from a parsed URL,
    /// `upstream_prefix` is checked at load (a path, no `?` or `#`), the rest of the path
    /// and the query from the request's URI, parsed by the same rules as `PathAndQuery`.
    fn upstream_target(&self, uri: &Uri, route: &Route) -> String {
        let rest = uri.path().get(route.prefix.len()..).unwrap_or("");
        let mut path_and_query =
            String::with_capacity(self.base.path.len() + route.upstream_prefix.len() + rest.len() + 64);
        path_and_query.push_str(&self.base.path);
        path_and_query.push_str(&route.upstream_prefix);
        path_and_query.push_str(rest);
        if let Some(query) = uri.query() {
            push_query_without_token(&mut path_and_query, query);
        }
        path_and_query
    }

    /// The whole upstream URI of a prepared call (for hyper's client).
    fn upstream_uri(&self, target: String) -> Result<Uri, Error> {
        let target = PathAndQuery::try_from(target)
            .map_err(|_| Error::BadRequest("The request path cannot be forwarded."))?;
        Uri::builder()
            .scheme(self.base.scheme.clone())
            .authority(self.base.authority.clone())
            .path_and_query(target)
            .build()
            .map_err(|_| Error::BadRequest("The request path cannot be forwarded."))
    }

    /// Sends once and returns the upstream response head, adding the wait to
    /// `ctx.upstream` and the upstream latency histogram. A failure caused by the browser's upload (too large, too slow)
    /// is the browser's error, not the API's.
    ///
    /// With tracing on, the call is a client span whose `traceparent` goes with it.
    pub async fn send(
        &self,
        mut request: Request<Body>,
        token: Option<&AccessToken>,
        watch: &UploadWatch,
        ctx: &mut RequestContext<'_>,
    ) -> Result<Response<Body>, Error> {
        let span = trace::ClientSpan::start(&mut request, trace::Callee::Api(ctx.route));
        // The h1 client writes the token straight into the request head; hyper's needs
        // it as a header value.
        let via_h1 = self.h1.is_some() && !matches!(request.body(), Body::Upload(_));
        let token = match token {
            Some(token) if via_h1 => Some(header_safe(token)?),
            Some(token) => {
                request.headers_mut().insert(header::AUTHORIZATION, bearer(token)?);
                None
            }
            None => None,
        };
        let started = poll_time::now();
        let bounded = via_h1;
        let call =
            pin!(self.call(request, token, Window { started, deadline: started + self.request_timeout }));
        let result = self.timed(call, started, bounded, watch, ctx).await;
        match &result {
            Ok(response) => span.answered(response.status()),
            Err(error) => span.failed(error.code()),
        }
        result
    }

    /// Sends `prepared` once, keeping it for a replay. Over the h1 client with tracing
    /// off (the common case), straight from the kept parts: no request is built and no
    /// header copied. Otherwise as [`Forwarder::send`] with a copy.
    pub async fn send_prepared(
        &self,
        prepared: &Prepared,
        token: Option<&AccessToken>,
        ctx: &mut RequestContext<'_>,
    ) -> Result<Response<Body>, Error> {
        let payload: &[u8] = match &prepared.body {
            PreparedBody::Empty => &[],
            PreparedBody::Buffered(bytes) => bytes,
            PreparedBody::Streaming(_) => return Err(Error::Internal("a streamed body cannot be replayed")),
        };
        let Some(h1) = self.h1.as_ref().filter(|_| !trace::is_on()) else {
            // Boxed, so the common future does not carry a second call inline.
            return Box::pin(self.send(prepared.to_request(self)?, token, &prepared.watch, ctx)).await;
        };
        let token = token.map(header_safe).transpose()?;
        let filter = protocol::Filter::of(&prepared.headers, Direction::Request);
        let keep = |name: &HeaderName| !filter.drops(name.as_str()) && !prepared.added.replaces(name);
        let added = prepared.added.pairs();
        let head = RequestHead {
            method: &prepared.method,
            target: prepared.target.as_str(),
            headers: &prepared.headers,
            keep: &keep,
            added: &added,
        };
        let started = poll_time::now();
        let window = Window { started, deadline: started + self.request_timeout };
        // Pinned where it is made: `timed` holds a reference, so the call's future (~600
        // bytes with the h1 exchange inside) is not moved into it and again into its await.
        let call = pin!(async { h1.send_head(head, payload, token, window).await.map_err(CallFailed::from) });
        self.timed(call, started, true, &prepared.watch, ctx).await
    }

    /// Runs one call started at `started` within `request_timeout` (`bounded`: the call
    /// keeps that deadline itself, as the h1 client does on its connection's own sleep),
    /// adding the wait to `ctx.upstream` and the latency histogram, and names its failure:
    /// the browser's (its upload too large or too slow) or the API's.
    async fn timed(
        &self,
        call: Pin<&mut impl std::future::Future<Output = Result<Response<Body>, CallFailed>>>,
        started: Instant,
        bounded: bool,
        watch: &UploadWatch,
        ctx: &mut RequestContext<'_>,
    ) -> Result<Response<Body>, Error> {
        let outcome = if bounded {
            call.await
        } else {
            tokio::time::timeout(self.request_timeout, call).await.unwrap_or(Err(CallFailed::TimedOut))
        };
        let waited = poll_time::now().saturating_duration_since(started);
        ctx.upstream += waited;
        self.metrics.record_upstream(ctx.route, ctx.route_metrics, waited);
        match outcome {
            Ok(response) => Ok(response),
            _ if watch.exceeded() => Err(Error::PayloadTooLarge),
            Err(CallFailed::TimedOut) if !watch.is_finished() => Err(Error::RequestTimeout),
            Err(CallFailed::TimedOut) => Err(Error::UpstreamTimeout),
            Err(CallFailed::Error(error)) => Err(Error::UpstreamUnavailable(error)),
        }
    }

    /// One call on the client that carries it (the h1 client bounded by the window's
    /// deadline); an error in words for the logs.
    async fn call(
        &self,
        request: Request<Body>,
        token: Option<&[u8]>,
        window: Window,
    ) -> Result<Response<Body>, CallFailed> {
        match &self.h1 {
            Some(h1) if !matches!(request.body(), Body::Upload(_)) => {
                let (parts, body) = request.into_parts();
                h1.send(&parts, &body, token, window).await.map_err(CallFailed::from)
            }
            // The h1 client drops what the browser must not see as it reads the head;
            // hyper's answers are cleaned here.
            _ => match self.client.request(request).await {
                Ok(response) => Ok(clean_response(response.map(Body::Stream))),
                Err(error) => Err(CallFailed::Error(describe_client_error(&error))),
            },
        }
    }
}

/// Why an upstream call gave no answer.
enum CallFailed {
    TimedOut,
    /// In words for the logs.
    Error(String),
}

impl From<CallError> for CallFailed {
    fn from(error: CallError) -> Self {
        match error {
            CallError::TimedOut => CallFailed::TimedOut,
            error => CallFailed::Error(error.to_string()),
        }
    }
}

impl Prepared {
    /// Whether the request can be sent a second time (its body is known in full).
    pub fn is_replayable(&self) -> bool {
        !matches!(self.body, PreparedBody::Streaming(_))
    }

    /// Done with (the call answered and no replay is coming): the headers' map goes back
    /// to this thread's spares (`header_pool`).
    pub fn recycle(self: Box<Self>) {
        header_pool::give(self.headers);
    }

    /// What the browser's upload did, for [`Forwarder::send`].
    pub fn watch(&self) -> Watch {
        self.watch.clone()
    }

    /// The request to send, keeping `self` for a replay (headers are copied); the
    /// token goes with it in [`Forwarder::send`].
    fn to_request(&self, forwarder: &Forwarder) -> Result<Request<Body>, Error> {
        let body = match &self.body {
            PreparedBody::Empty => Body::Empty,
            PreparedBody::Buffered(bytes) => Body::full(bytes.clone()),
            PreparedBody::Streaming(_) => return Err(Error::Internal("a streamed body cannot be replayed")),
        };
        let uri = forwarder.upstream_uri(self.target.clone())?;
        Ok(build(self.method.clone(), uri, self.headers.clone(), &self.added, body))
    }

    /// The request to send, consuming `self` (no copies of the headers).
    pub fn into_request(self: Box<Self>, forwarder: &Forwarder) -> Result<Request<Body>, Error> {
        let body = match self.body {
            PreparedBody::Empty => Body::Empty,
            PreparedBody::Buffered(bytes) => Body::full(bytes),
            PreparedBody::Streaming(upload) => Body::Upload(upload),
        };
        let uri = forwarder.upstream_uri(self.target)?;
        Ok(build(self.method, uri, self.headers, &self.added, body))
    }
}

/// The request as the API gets it: the browser's headers without what
/// [`protocol::strip`] removes, with tokengate's own added.
fn build(method: Method, uri: Uri, mut headers: HeaderMap, added: &Added, body: Body) -> Request<Body> {
    protocol::strip(&mut headers, Direction::Request);
    added.insert_into(&mut headers);
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// The token's bytes, if they can go in a header as they are (visible ASCII: a token
/// from the token service is never trusted to be free of a line break).
fn header_safe(token: &AccessToken) -> Result<&[u8], Error> {
    token.header_bytes().ok_or(Error::Internal("an access token is not a valid header value"))
}

/// `Bearer <token>`, marked sensitive so HPACK never indexes it and `Debug` hides it.
fn bearer(token: &AccessToken) -> Result<HeaderValue, Error> {
    let mut value = BytesMut::with_capacity(7 + token.expose().len());
    value.put_slice(b"Bearer ");
    value.put_slice(token.expose().as_bytes());
    let mut header = HeaderValue::from_maybe_shared(value.freeze())
        .map_err(|_| Error::Internal("an access token is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// A body read up to a limit.
pub enum Read<B> {
    /// The whole body, at most the asked-for size.
    Whole(Bytes),
    /// The body is longer: what was read, and the rest of the stream.
    Prefix(Bytes, B),
}

impl<B> Read<B> {
    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Read::Whole(bytes) | Read::Prefix(bytes, _) => bytes,
        }
    }
}

impl Read<Body> {
    /// The body again, whole: what was read, then the rest of the stream.
    pub fn into_body(self) -> Body {
        match self {
            Read::Whole(bytes) => Body::full(bytes),
            Read::Prefix(bytes, rest) => Body::Prefixed(Some(bytes), Box::new(rest)),
        }
    }
}

/// Appends `?query` without any `token` parameter (the API takes `?token=` as a
/// credential, so a browser must not choose one). Every other parameter goes on byte for
/// byte, in order; a name is compared after percent-decoding, so `%74oken` goes too.
fn push_query_without_token(out: &mut String, query: &str) {
    let kept: Vec<&str> = query.split('&').filter(|pair| !names_token(pair)).collect();
    if kept.is_empty() {
        return;
    }
    out.push('?');
    out.push_str(&kept.join("&"));
}

fn names_token(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or("");
    let decoded: std::borrow::Cow<'_, [u8]> = percent_decode(name.as_bytes());
    decoded.as_ref() == b"token"
}

/// Percent-decodes `input` (a `%` not followed by two hex digits stays as it is).
fn percent_decode(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !input.contains(&b'%') {
        return std::borrow::Cow::Borrowed(input);
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match (input[i], input.get(i + 1).copied().and_then(hex), input.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(0));
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Reads a body whole if it is at most `limit` bytes, else returns what was read so far.
pub async fn read_up_to<B>(mut incoming: B, limit: u64) -> Result<Read<B>, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buffer = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else { continue };
        buffer.extend_from_slice(&data);
        if buffer.len() as u64 > limit {
            return Ok(Read::Prefix(buffer.freeze(), incoming));
        }
    }
    Ok(Read::Whole(buffer.freeze()))
}

/// The upstream response as the browser may see it.
fn clean_response(mut response: Response<Body>) -> Response<Body> {
    protocol::strip(response.headers_mut(), Direction::Response);
    // hyper would write the API's own reason phrase, which a page reads as `statusText`:
    // the browser gets the standard one for the status, nothing the API chose.
    response.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    response
}

/// Short words for a client error, for logs: never a URL with a query or a header.
pub fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
    let mut text =
        if error.is_connect() { "connect failed".to_string() } else { "request failed".to_string() };
    let mut source = std::error::Error::source(error);
    let mut depth = 0;
    while let Some(cause) = source {
        if depth == 3 {
            break;
        }
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
        depth += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder() -> Forwarder {
        let upstream = crate::config::UpstreamConfig {
            base: BaseUrl {
                scheme: http::uri::Scheme::HTTP,
                authority: http::uri::Authority::from_static("127.0.0.1:9"),
                path: String::new(),
            },
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ca_file: None,
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            protocol: crate::config::UpstreamProtocol::Http1,
        };
        let client = crate::upstream::build_client(&upstream).expect("a client");
        let h1 = H1Client::new(&upstream).expect("a client");
        Forwarder::new(
            client,
            Some(h1),
            upstream.base,
            Duration::from_secs(1),
            Some("https://shop.example"),
            Arc::default(),
        )
    }

    #[tokio::test]
    async fn bodies_kept_for_replays_share_one_bounded_budget() {
        let forwarder = forwarder();
        let per_body = REPLAY_LIMIT_BYTES;
        let fits = usize::try_from(REPLAY_BUDGET_BYTES / per_body).expect("a small count");
        let held: Vec<_> = (0..fits).map(|_| forwarder.reserve_replay(per_body)).collect();
        assert!(held.iter().all(Option::is_some), "the budget holds {fits} full replay bodies");
        assert!(forwarder.reserve_replay(per_body).is_none(), "one more streams instead");
        assert!(forwarder.reserve_replay(1).is_none(), "not even a byte is left");
        drop(held);
        assert!(forwarder.reserve_replay(per_body).is_some(), "finished calls give their share back");
    }

    #[test]
    fn the_forwarded_host_is_the_public_origins() {
        let forwarder = forwarder();
        assert_eq!(forwarder.forwarded_host.as_ref().map(|h| h.to_str().unwrap_or("")), Some("shop.example"));
        assert_eq!(forwarder.forwarded_proto, "https");
    }

    #[test]
    fn a_token_parameter_is_dropped_and_every_other_kept_byte_for_byte() {
        let forwarded = |query: &str| {
            let mut out = String::from("/v1/x");
            push_query_without_token(&mut out, query);
            out
        };
        assert_eq!(forwarded("token=abc&x=1"), "/v1/x?x=1");
        assert_eq!(forwarded("a=%2F&token=abc&b=+&c"), "/v1/x?a=%2F&b=+&c");
        assert_eq!(forwarded("%74oken=abc&tokens=1&TOKEN=2&x=1&token"), "/v1/x?tokens=1&TOKEN=2&x=1");
        assert_eq!(forwarded("token=abc"), "/v1/x");
        assert_eq!(forwarded("x=1&&y=2"), "/v1/x?x=1&&y=2");
        assert_eq!(forwarded(""), "/v1/x?");
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        let header = bearer(&AccessToken::new("abc")).expect("a token is a header value");
        assert!(header.is_sensitive());
        assert_eq!(header, "Bearer abc");
    }
}
