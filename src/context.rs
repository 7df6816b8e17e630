//! The per-request context: one struct that every step of a request reads and writes,
//! owned by `App::handle` (after pingora's `CTX`).
//!
//! It is built once, before the first step, from what the connection and the request
//! head say: the request id, the client's address (worked out once), the session
//! cookie (read once, its store key remembered per connection), and the request's one
//! `now`. Steps fill in the rest as they
//! learn it: the route label, the session kind, the `Set-Cookie` of a session started
//! for this request (attached to the response whether the call then succeeds or
//! fails), upstream time for the log line and metrics, and the answer's error code.
//! With `server.cors` on, it also holds the CORS grant of the request's `Origin`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};

use crate::config::{Fixed, Live};
use crate::cookie::{self, CookieLookup};
use crate::metrics::RouteMetrics;
use crate::ratelimit::ClientAddress;
use crate::session_id::KeyMemo;
use crate::store::SessionKind;

/// The request id header, taken from the caller when plain, else made here.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Facts about the connection a request came on, worked out once per connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as a header value, for `X-Forwarded-For`: written once per
    /// connection, not once per request (formatting an address costs ~1,500
    /// instructions; a clone of this is a reference count).
    pub peer_header: HeaderValue,
    /// The store key of the session cookie last seen on this connection.
    pub session_keys: Arc<KeyMemo>,
}

impl ConnInfo {
    /// The facts of a connection from `peer`.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { peer, tls, peer_header, session_keys: Arc::default() }
    }
}

/// Everything one request's steps share.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The settings that need a restart.
    pub fixed: &'a Fixed,
    /// The live settings as they were when the request arrived (a reload mid-request
    /// does not change them under the request's feet).
    pub live: &'a Live,
    pub request_id: RequestId,
    pub method: Method,
    /// The route label for logs and metrics (never the raw path).
    pub route: &'a str,
    /// A route's metric handles, attached to its configuration (else the label is looked up).
    pub route_metrics: &'a RouteMetrics,
    pub conn: &'a ConnInfo,
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
    /// The context of `request` (its head only), arriving on `conn` at `started`, `now` in
    /// Unix seconds.
    pub fn new<B>(
        (fixed, live): (&'a Fixed, &'a Live),
        request: &Request<B>,
        conn: &'a ConnInfo,
        request_id: RequestId,
        (now, started): (u64, Instant),
    ) -> Self {
        let headers = request.headers();
        let client = ClientAddress::of(conn, headers, live.trusted_proxy_depth);
        let cookie = cookie::read_session_cookie(headers, &fixed.session.cookie_name, &conn.session_keys);
        Self {
            fixed,
            live,
            request_id,
            method: request.method().clone(),
            route: "",
            route_metrics: &RouteMetrics::DETACHED,
            conn,
            client,
            cookie,
            now,
            started,
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
        self.request_id.as_str()
    }
}

/// A request's id: one made here (20 hex digits, held inline: a copy costs a few moves,
/// where a `HeaderValue` made per request cost an allocation, a second one at its first
/// clone and a reference count at every clone and drop), or the caller's own.
#[derive(Debug, Clone)]
pub enum RequestId {
    Made([u8; 20]),
    Given(HeaderValue),
}

impl RequestId {
    /// The id's bytes (ASCII: hex digits, or a caller's id checked to be plain).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(id) => id,
            RequestId::Given(value) => value.as_bytes(),
        }
    }

    /// The id as text, for log lines.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// The id as a header value (for the answer's `X-Request-Id`).
    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            RequestId::Made(id) => {
                HeaderValue::from_bytes(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
            }
            RequestId::Given(value) => value.clone(),
        }
    }
}

/// Request ids: the caller's `x-request-id` when it is short and plain, else our own
/// (a random per-process prefix and a counter: unique, cheap, and unguessable enough
/// for correlation, which is all they are for).
#[derive(Debug)]
pub struct RequestIds {
    /// The process's random prefix, in hex once (not per request).
    prefix: [u8; 8],
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::with(rand::random(), 0)
    }
}

impl RequestIds {
    fn with(prefix: u32, first: u64) -> Self {
        let mut hex = [0u8; 8];
        hex_into(&mut hex, u64::from(prefix));
        Self { prefix: hex, counter: AtomicU64::new(first) }
    }

    /// The id for a request with these headers.
    pub fn for_request(&self, headers: &HeaderMap) -> RequestId {
        if let Some(given) = headers.get(X_REQUEST_ID) {
            let plain = given.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
            if plain && (1..=128).contains(&given.len()) {
                return RequestId::Given(given.clone());
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(&self.prefix);
        hex_into(&mut id[8..], n);
        RequestId::Made(id)
    }
}

/// Writes the low `out.len()` hex digits of `n` into `out`, zero-padded, as
/// `format!("{n:0width$x}")` would (without `fmt`, which cost a request about 1,500
/// instructions here).
fn hex_into(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_the_prefix_and_counter_in_fixed_width_hex() {
        let ids = RequestIds::with(0x00ab_cdef, 0x1234_5678_9abc);
        let first = ids.for_request(&HeaderMap::new());
        let second = ids.for_request(&HeaderMap::new());
        assert_eq!(first.as_str(), format!("{:08x}{:012x}", 0x00ab_cdef, 0x1234_5678_9abc_u64));
        assert_eq!(second.as_str(), "00abcdef123456789abd");
        assert_eq!(second.to_header_value(), "00abcdef123456789abd");
        assert!(matches!(first, RequestId::Made(_)));
    }

    #[test]
    fn a_plain_caller_id_is_kept_and_an_odd_one_replaced() {
        let ids = RequestIds::with(1, 0);
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let given = ids.for_request(&headers);
        assert!(matches!(given, RequestId::Given(_)));
        assert_eq!(
            (given.as_str(), given.to_header_value()),
            ("abc-123", HeaderValue::from_static("abc-123"))
        );
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(ids.for_request(&headers).as_str(), "00000001000000000000");
    }
}
