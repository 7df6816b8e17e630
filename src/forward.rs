//! Forwarding a browser's API call to the Commerce API.
//!
//! Request side: the browser's `Authorization`, `Cookie`, hop-by-hop headers (RFC 9110
//! §7.6.1, plus any named in `Connection`) and `X-CSRF` are dropped; `X-Forwarded-For`,
//! `-Proto` and `-Host` are set by us (never passed through); the access token is
//! injected as `Authorization: Bearer`, marked sensitive. A body with a declared length
//! above [`REPLAY_LIMIT_BYTES`] streams through (its length was checked against
//! `max_body_bytes` already); a smaller one is buffered so the call can be replayed once
//! after a refresh; a body of unknown length (chunked) is buffered up to `max_body_bytes`,
//! which both enforces the limit and makes it replayable.
//!
//! Response side: hop-by-hop headers and every upstream `Set-Cookie` are dropped (the
//! browser's only cookie is ours); the body streams back as it arrives.
//!
//! This module never parses cookies or decides session policy: it is handed an
//! `&AccessToken` or none.

use std::net::IpAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::{BaseUrl, Route};
use crate::error::Error;
use crate::secret::AccessToken;
use crate::upstream::HttpClient;

/// Bodies up to this size are kept for one replay after an upstream 401.
pub const REPLAY_LIMIT_BYTES: u64 = 64 * 1024;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and the
/// browser's credentials, which must never reach the API.
const DROPPED_REQUEST_HEADERS: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::FORWARDED,
];

const DROPPED_RESPONSE_HEADERS: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::SET_COOKIE,
];

/// Forwards calls over the shared pooled client.
#[derive(Debug)]
pub struct Forwarder {
    client: HttpClient,
    base: BaseUrl,
    request_timeout: Duration,
}

/// What the browser's request becomes upstream, before the token is added.
#[derive(Debug)]
pub struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: PreparedBody,
}

#[derive(Debug)]
enum PreparedBody {
    Empty,
    Buffered(Bytes),
    Streaming(Incoming),
}

/// Facts about the browser's connection that forwarding reports upstream.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The `X-Forwarded-For` value to send.
    pub forwarded_for: HeaderValue,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
}

/// `X-Forwarded-For` for the API: the peer alone, or, behind `trusted_depth` proxies, the
/// entries those proxies added followed by the peer. Entries to the left of them were
/// written by the client and are never passed on.
pub fn forwarded_for(peer: IpAddr, incoming: &HeaderMap, trusted_depth: usize) -> HeaderValue {
    let entries = crate::ratelimit::forwarded_for_entries(incoming);
    let trusted = &entries[entries.len().saturating_sub(trusted_depth)..];
    let mut value = trusted.join(", ");
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push_str(&peer.to_string());
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

impl Forwarder {
    /// A forwarder to the API at `base`.
    pub fn new(client: HttpClient, base: BaseUrl, request_timeout: Duration) -> Self {
        Self { client, base, request_timeout }
    }

    /// Rewrites the browser's request for the route. Reads the body only when it is
    /// small enough to keep for a replay. The caller passes the live (reloadable) values:
    /// `max_body_bytes`, the largest body of unknown length accepted (read whole, 413
    /// above), and `identity_encoding`, whether to ask the API for uncompressed bodies so
    /// the leak guard can read them (`leak_guard.enabled`).
    pub async fn prepare(
        &self,
        request: Request<Incoming>,
        route: &Route,
        origin: Origin<'_>,
        request_id: &HeaderValue,
        max_body_bytes: u64,
        identity_encoding: bool,
    ) -> Result<Prepared, Error> {
        let (parts, incoming) = request.into_parts();
        let uri = self.upstream_uri(&parts.uri, route)?;
        let mut headers = upstream_headers(&parts.headers, origin, request_id);
        if identity_encoding {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        // A body trickled in byte by byte would otherwise hold the connection for ever.
        let body = tokio::time::timeout(
            self.request_timeout,
            prepare_body(&parts.headers, incoming, max_body_bytes),
        )
        .await
        .map_err(|_| Error::RequestTimeout)??;
        Ok(Prepared { method: parts.method, uri, headers, body })
    }

    fn upstream_uri(&self, uri: &Uri, route: &Route) -> Result<Uri, Error> {
        let rest = uri.path().get(route.prefix.len()..).unwrap_or("");
        let mut path_and_query =
            String::with_capacity(self.base.path.len() + route.upstream_prefix.len() + rest.len() + 64);
        path_and_query.push_str(&self.base.path);
        path_and_query.push_str(&route.upstream_prefix);
        path_and_query.push_str(rest);
        if let Some(query) = uri.query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Uri::builder()
            .scheme(self.base.scheme.clone())
            .authority(self.base.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Error::BadRequest("The request path cannot be forwarded."))
    }

    /// Sends once, with `token` when there is one, and returns the upstream response head.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, Error> {
        match tokio::time::timeout(self.request_timeout, self.client.request(request)).await {
            Err(_) => Err(Error::UpstreamTimeout),
            Ok(Err(error)) => Err(Error::UpstreamUnavailable(describe_client_error(&error))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

impl Prepared {
    /// Whether the request can be sent a second time (its body is known in full).
    pub fn is_replayable(&self) -> bool {
        !matches!(self.body, PreparedBody::Streaming(_))
    }

    /// The request to send, keeping `self` for a replay (headers are copied).
    pub fn to_request(&self, token: Option<&AccessToken>) -> Result<Request<Body>, Error> {
        let body = match &self.body {
            PreparedBody::Empty => Body::Empty,
            PreparedBody::Buffered(bytes) => Body::full(bytes.clone()),
            PreparedBody::Streaming(_) => return Err(Error::Internal("a streamed body cannot be replayed")),
        };
        build(self.method.clone(), self.uri.clone(), self.headers.clone(), body, token)
    }

    /// The request to send, consuming `self` (no copies).
    pub fn into_request(self, token: Option<&AccessToken>) -> Result<Request<Body>, Error> {
        let body = match self.body {
            PreparedBody::Empty => Body::Empty,
            PreparedBody::Buffered(bytes) => Body::full(bytes),
            PreparedBody::Streaming(incoming) => Body::Stream(incoming),
        };
        build(self.method, self.uri, self.headers, body, token)
    }
}

fn build(
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Body,
    token: Option<&AccessToken>,
) -> Result<Request<Body>, Error> {
    if let Some(token) = token {
        headers.insert(header::AUTHORIZATION, bearer(token)?);
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
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

/// Copies the headers the API may see and adds ours.
fn upstream_headers(incoming: &HeaderMap, origin: Origin<'_>, request_id: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(incoming.len() + 4);
    for (name, value) in incoming {
        if !is_dropped_request_header(name, incoming) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(HeaderName::from_static("x-forwarded-for"), origin.forwarded_for);
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(origin.proto));
    if let Some(host) = origin.host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    headers.insert(HeaderName::from_static("x-request-id"), request_id.clone());
    headers
}

fn is_dropped_request_header(name: &HeaderName, all: &HeaderMap) -> bool {
    let text = name.as_str();
    DROPPED_REQUEST_HEADERS.contains(name)
        || text == "keep-alive"
        || text == "proxy-connection"
        || text == "x-csrf"
        || text.starts_with("x-forwarded-")
        || named_in_connection(name, all)
}

/// Headers listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
fn named_in_connection(name: &HeaderName, all: &HeaderMap) -> bool {
    all.get_all(header::CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|list| list.split(',').any(|token| token.trim().eq_ignore_ascii_case(name.as_str())))
    })
}

async fn prepare_body(
    headers: &HeaderMap,
    incoming: Incoming,
    max_body_bytes: u64,
) -> Result<PreparedBody, Error> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    match (length, chunked) {
        (Some(0), false) | (None, false) => Ok(PreparedBody::Empty),
        (Some(length), false) if length <= REPLAY_LIMIT_BYTES => {
            Ok(PreparedBody::Buffered(read_at_most(incoming, length).await?))
        }
        (Some(_), false) => Ok(PreparedBody::Streaming(incoming)),
        (_, true) => Ok(PreparedBody::Buffered(read_at_most(incoming, max_body_bytes).await?)),
    }
}

/// Reads a whole body, refusing it (413) past `limit` bytes.
async fn read_at_most(incoming: Incoming, limit: u64) -> Result<Bytes, Error> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(incoming, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(Error::PayloadTooLarge)
        }
        Err(_) => Err(Error::BadRequest("The request body could not be read.")),
    }
}

/// The upstream response as the browser may see it.
pub fn clean_response(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, incoming) = response.into_parts();
    let connection_named: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in DROPPED_RESPONSE_HEADERS.iter().chain(connection_named.iter()) {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    Response::from_parts(parts, Body::Stream(incoming))
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
    use std::net::Ipv4Addr;

    fn origin(host: &HeaderValue) -> Origin<'_> {
        let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        Origin { forwarded_for: forwarded_for(peer, &HeaderMap::new(), 0), proto: "https", host: Some(host) }
    }

    #[test]
    fn forwarded_for_trusts_the_chain_only_when_told() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 198.51.100.1"));
        let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(forwarded_for(peer, &incoming, 0), "10.0.0.2");
        assert_eq!(
            forwarded_for(peer, &incoming, 1),
            "198.51.100.1, 10.0.0.2",
            "6.6.6.6 was written by the client"
        );
        assert_eq!(forwarded_for(peer, &incoming, 2), "6.6.6.6, 198.51.100.1, 10.0.0.2");
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_never_go_upstream() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer stolen"),
            ("cookie", "__Host-tokengate=abc"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-csrf", "1"),
            ("accept", "application/json"),
        ] {
            incoming.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let host = HeaderValue::from_static("shop.example.com");
        let headers = upstream_headers(&incoming, origin(&host), &HeaderValue::from_static("rid"));
        for gone in ["authorization", "cookie", "connection", "x-secret-hop", "keep-alive", "x-csrf"] {
            assert!(!headers.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.example.com");
        assert_eq!(headers["accept"], "application/json");
        assert_eq!(headers["x-request-id"], "rid");
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        let header = bearer(&AccessToken::new("abc")).unwrap_or_else(|e| panic!("{e}"));
        assert!(header.is_sensitive());
        assert_eq!(header, "Bearer abc");
    }
}
