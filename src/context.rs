//! The per-request context: one struct that every step of a request reads and writes,
//! owned by `App::handle` (after pingora's `CTX`).
//!
//! It is built once, before the first step, from what the connection and the request
//! head say: the request id, the client's address (worked out once), the session
//! cookie (read once), and the request's one `now`. Steps fill in the rest as they
//! learn it: the route label, the session kind, the `Set-Cookie` of a session started
//! for this request (attached to the response whether the call then succeeds or
//! fails), upstream time for the log line and metrics, and the answer's error code.
//! With `server.cors` on, it also holds the CORS grant of the request's `Origin`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};

use crate::config::{Fixed, Live};
use crate::cookie::{self, CookieLookup};
use crate::ratelimit::ClientAddress;
use crate::store::SessionKind;

/// The request id header, taken from the caller when plain, else made here.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Facts about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Everything one request's steps share.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The settings that need a restart.
    pub fixed: &'a Fixed,
    /// The live settings as they were when the request arrived (a reload mid-request
    /// does not change them under the request's feet).
    pub live: &'a Live,
    pub request_id: HeaderValue,
    pub method: Method,
    /// The route label for logs and metrics (never the raw path).
    pub route: &'a str,
    pub conn: ConnInfo,
    /// The client, as the trusted `X-Forwarded-For` depth says.
    pub client: ClientAddress,
    pub cookie: CookieLookup,
    /// Unix seconds, read once for the whole request.
    pub now: u64,
    pub started: Instant,
    /// The kind of session the request ran as, once known.
    pub session_kind: Option<SessionKind>,
    /// `Set-Cookie` for a session this request started or moved to a new id: attached to
    /// the response whether the request then succeeds or fails.
    pub set_cookie: Option<HeaderValue>,
    /// Time spent waiting for the API's answers.
    pub upstream: Duration,
    /// The contract's error code of the answer, when it is an error (for the trace).
    pub error_code: Option<&'static str>,
    /// With `server.cors`: the request's `Origin` when it is allowed, the value every
    /// answer grants (`cors`); `None` when CORS is off or the origin is not allowed.
    pub cors_origin: Option<HeaderValue>,
}

impl<'a> RequestContext<'a> {
    /// The context of `request` (its head only), arriving on `conn` at `now`.
    pub fn new<B>(
        (fixed, live): (&'a Fixed, &'a Live),
        request: &Request<B>,
        conn: ConnInfo,
        request_id: HeaderValue,
        now: u64,
    ) -> Self {
        let headers = request.headers();
        Self {
            fixed,
            live,
            request_id,
            method: request.method().clone(),
            route: "",
            conn,
            client: ClientAddress::of(conn.peer, headers, live.trusted_proxy_depth),
            cookie: cookie::read_session_cookie(headers, &fixed.session.cookie_name),
            now,
            started: Instant::now(),
            session_kind: None,
            set_cookie: None,
            upstream: Duration::ZERO,
            error_code: None,
            cors_origin: live.cors.as_ref().and_then(|policy| policy.grant(headers)),
        }
    }

    /// The client's address for rate limits.
    pub fn client_ip(&self) -> IpAddr {
        self.client.ip
    }

    /// The request id as text, for log lines.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// Request ids: the caller's `x-request-id` when it is short and plain, else our own
/// (a random per-process prefix and a counter: unique, cheap, and unguessable enough
/// for correlation, which is all they are for).
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { prefix: rand::random(), counter: AtomicU64::new(0) }
    }
}

impl RequestIds {
    /// The id for a request with these headers.
    pub fn for_request(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(given) = headers.get(X_REQUEST_ID) {
            let plain = given.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
            if plain && (1..=128).contains(&given.len()) {
                return given.clone();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}{:012x}", self.prefix, n))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}
