//! The one error type of the request path and its one mapping to the contract.
//!
//! Every failure a browser can see is a variant here. [`Error::status`] and
//! [`Error::code`] are the only copy of the contract's table of status codes and error
//! codes, and [`Error::to_response`] is the only place an error becomes a response.
//! Messages are fixed text: never a token, a cookie, a password or an upstream body.
//! Upstream and internal variants keep their cause for the log line only.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;

/// Where a failure came from, for logging at the right level (after pingora's
/// `ErrorSource`): the browser's mistakes are `info`, upstream faults `warn`, bugs `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The browser sent something we refuse.
    Downstream,
    /// The Commerce API (token endpoint or resources) failed.
    Upstream,
    /// The session store failed.
    Store,
    /// A bug or an exhausted resource inside tokengate.
    Internal,
}

/// A failure that ends a request with an error response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no session")]
    NoSession,
    #[error("session expired or unknown")]
    SessionExpired,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid state")]
    InvalidState,
    #[error("missing X-CSRF header")]
    CsrfRequired,
    #[error("origin not allowed")]
    OriginRejected,
    /// A server-to-server endpoint's caller did not prove itself (`WWW-Authenticate: Bearer`).
    #[error("unauthorized")]
    Unauthorized,
    /// A server-to-server endpoint was called by what looks like a browser.
    #[error("a browser may not call this endpoint")]
    BrowserForbidden,
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A sign-in flow this `oauth.flavor` does not have; the message names the one it has.
    #[error("unsupported flow: {0}")]
    UnsupportedFlow(&'static str),
    #[error("not found")]
    NotFound,
    /// `allow` lists the methods the target takes (the `Allow` header).
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("payload too large")]
    PayloadTooLarge,
    /// The request head is larger than `server.max_header_bytes` or has too many headers.
    #[error("request head too large")]
    HeadersTooLarge,
    #[error("the request body arrived too slowly")]
    RequestTimeout,
    #[error("session store full")]
    SessionsFull,
    #[error("session store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("token service unavailable: {0}")]
    TokenServiceUnavailable(String),
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// `place` says where the guard found it (header, body), for the security log.
    #[error("an upstream response carried the session's token in its {place}")]
    TokenLeakBlocked { place: &'static str },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The HTTP status the contract gives this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoSession | Error::SessionExpired | Error::InvalidCredentials | Error::Unauthorized => {
                StatusCode::UNAUTHORIZED
            }
            Error::InvalidState | Error::BadRequest(_) | Error::UnsupportedFlow(_) => StatusCode::BAD_REQUEST,
            Error::CsrfRequired | Error::OriginRejected | Error::BrowserForbidden => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::SessionsFull | Error::StoreUnavailable(_) | Error::TokenServiceUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::UpstreamUnavailable(_) | Error::TokenLeakBlocked { .. } => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every code [`Error::code`] can return (metrics make a counter for each at start).
    pub const CODES: [&'static str; 23] = [
        "no_session",
        "session_expired",
        "invalid_credentials",
        "invalid_state",
        "csrf_required",
        "origin_rejected",
        "unauthorized",
        "browser_forbidden",
        "rate_limited",
        "bad_request",
        "unsupported_flow",
        "not_found",
        "method_not_allowed",
        "payload_too_large",
        "headers_too_large",
        "request_timeout",
        "sessions_full",
        "store_unavailable",
        "token_service_unavailable",
        "upstream_unavailable",
        "upstream_timeout",
        "token_leak_blocked",
        "internal",
    ];

    /// The contract's machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoSession => "no_session",
            Error::SessionExpired => "session_expired",
            Error::InvalidCredentials => "invalid_credentials",
            Error::InvalidState => "invalid_state",
            Error::CsrfRequired => "csrf_required",
            Error::OriginRejected => "origin_rejected",
            Error::Unauthorized => "unauthorized",
            Error::BrowserForbidden => "browser_forbidden",
            Error::RateLimited { .. } => "rate_limited",
            Error::BadRequest(_) => "bad_request",
            Error::UnsupportedFlow(_) => "unsupported_flow",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::PayloadTooLarge => "payload_too_large",
            Error::HeadersTooLarge => "headers_too_large",
            Error::RequestTimeout => "request_timeout",
            Error::SessionsFull => "sessions_full",
            Error::StoreUnavailable(_) => "store_unavailable",
            Error::TokenServiceUnavailable(_) => "token_service_unavailable",
            Error::UpstreamUnavailable(_) => "upstream_unavailable",
            Error::UpstreamTimeout => "upstream_timeout",
            Error::TokenLeakBlocked { .. } => "token_leak_blocked",
            Error::Internal(_) => "internal",
        }
    }

    /// Human text for the browser. Fixed strings only: nothing from the request or upstream.
    pub fn message(&self) -> &'static str {
        match self {
            Error::NoSession => "There is no session. Start one with POST /session/guest or /session/login.",
            Error::SessionExpired => "The session has expired or is unknown. Start a new one.",
            Error::InvalidCredentials => "The username or password is not correct.",
            Error::InvalidState => "The login callback's state is missing, unknown or already used.",
            Error::CsrfRequired => "Unsafe requests must carry the header X-CSRF: 1.",
            Error::OriginRejected => "The request's Origin is not allowed.",
            Error::Unauthorized => "Send the storefront secret as Authorization: Bearer <secret>.",
            Error::BrowserForbidden => "This endpoint is for the storefront's server, not for browsers.",
            Error::RateLimited { .. } => "Too many new sessions from this client. Retry later.",
            Error::BadRequest(why) | Error::UnsupportedFlow(why) => why,
            Error::NotFound => "Nothing is served at this path.",
            Error::MethodNotAllowed { .. } => "This method is not allowed here.",
            Error::PayloadTooLarge => "The request body is too large.",
            Error::HeadersTooLarge => "The request's headers are too large or too many.",
            Error::RequestTimeout => "The request body did not arrive in time.",
            Error::SessionsFull => "The session store is full. Retry later.",
            Error::StoreUnavailable(_) => {
                "The session store is unavailable. Retry shortly; the session is kept."
            }
            Error::TokenServiceUnavailable(_) => {
                "The token service is unavailable. Retry shortly; the session is kept."
            }
            Error::UpstreamUnavailable(_) => "The API could not be reached.",
            Error::UpstreamTimeout => "The API did not answer in time.",
            Error::TokenLeakBlocked { .. } => {
                "The API's answer was withheld because it contained a credential."
            }
            Error::Internal(_) => "Internal error.",
        }
    }

    /// Where the failure came from.
    pub fn source_kind(&self) -> Source {
        match self {
            Error::StoreUnavailable(_) => Source::Store,
            Error::TokenServiceUnavailable(_)
            | Error::UpstreamUnavailable(_)
            | Error::UpstreamTimeout
            | Error::TokenLeakBlocked { .. } => Source::Upstream,
            Error::Internal(_) | Error::SessionsFull => Source::Internal,
            _ => Source::Downstream,
        }
    }

    /// Whether the response must also clear the session cookie: the browser holds a cookie
    /// that will never work again.
    pub fn clears_cookie(&self) -> bool {
        matches!(self, Error::SessionExpired)
    }

    /// The JSON error response `{"error":{"code","message"}}` with the contract's status.
    pub fn to_response(&self) -> Response<Body> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message() }
        });
        let mut response = Response::new(Body::full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Error::RateLimited { retry_after } => {
                let seconds = retry_after.as_secs().max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Error::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Error::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's table, written out once more so a change to either side fails here.
    #[test]
    fn every_variant_maps_to_the_contract_table() {
        let table: Vec<(Error, u16, &str)> = vec![
            (Error::NoSession, 401, "no_session"),
            (Error::SessionExpired, 401, "session_expired"),
            (Error::InvalidCredentials, 401, "invalid_credentials"),
            (Error::InvalidState, 400, "invalid_state"),
            (Error::CsrfRequired, 403, "csrf_required"),
            (Error::OriginRejected, 403, "origin_rejected"),
            (Error::Unauthorized, 401, "unauthorized"),
            (Error::BrowserForbidden, 403, "browser_forbidden"),
            (Error::RateLimited { retry_after: Duration::from_secs(3) }, 429, "rate_limited"),
            (Error::BadRequest("x"), 400, "bad_request"),
            (Error::UnsupportedFlow("x"), 400, "unsupported_flow"),
            (Error::NotFound, 404, "not_found"),
            (Error::PayloadTooLarge, 413, "payload_too_large"),
            (Error::HeadersTooLarge, 431, "headers_too_large"),
            (Error::RequestTimeout, 408, "request_timeout"),
            (Error::SessionsFull, 503, "sessions_full"),
            (Error::StoreUnavailable("x".into()), 503, "store_unavailable"),
            (Error::TokenServiceUnavailable("x".into()), 503, "token_service_unavailable"),
            (Error::UpstreamUnavailable("x".into()), 502, "upstream_unavailable"),
            (Error::UpstreamTimeout, 504, "upstream_timeout"),
            (Error::MethodNotAllowed { allow: "GET" }, 405, "method_not_allowed"),
            (Error::TokenLeakBlocked { place: "body" }, 502, "token_leak_blocked"),
        ];
        assert_eq!(table.len() + 1, Error::CODES.len(), "every code but internal is in the table");
        for (error, status, code) in table {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
            assert!(Error::CODES.contains(&code), "{code} is missing from Error::CODES");
        }
        assert!(Error::CODES.contains(&Error::Internal("x").code()));
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response = Error::MethodNotAllowed { allow: "GET, POST" }.to_response();
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let response = Error::RateLimited { retry_after: Duration::from_secs(7) }.to_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn internal_detail_never_reaches_the_message() {
        let error = Error::UpstreamUnavailable("connect to 10.0.0.1 refused".into());
        assert!(!error.message().contains("10.0.0.1"));
    }
}
