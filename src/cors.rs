//! CORS for a storefront served from another origin than tokengate (`server.cors = true`),
//! e.g. a page at `https://www.shop.example` calling tokengate at `https://api.shop.example`
//! with `fetch(…, {credentials: "include"})`.
//!
//! Rules, while `cors` is on (off, the default, none of this runs and tokengate sends no
//! CORS header at all):
//! 1. An `Origin` in `allowed_origins` gets a grant on **every** answer, errors included
//!    (401 `no_session`, 403 `csrf_required`, 404, 429, 5xx…): `Access-Control-Allow-Origin`
//!    (that origin, never `*`), `Access-Control-Allow-Credentials: true` and
//!    `Access-Control-Expose-Headers` ([`EXPOSED_HEADERS`]). So a page reads a JSON 401
//!    and its `error.code` instead of an opaque CORS failure. The grant is added in the
//!    request walk's respond step, the one place every answer leaves.
//! 2. A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from such
//!    an origin is answered by tokengate itself, before any session lookup, CSRF check or
//!    rate limit: 204 with rule 1's headers, [`ALLOWED_METHODS`], [`ALLOWED_HEADERS`] and
//!    `Access-Control-Max-Age` ([`MAX_AGE_SECS`]). It never creates a session or reaches
//!    the API. The server-to-server endpoints (`/session/external`,
//!    `/session/backchannel-logout`) answer no preflight: browsers may not call them.
//! 3. A preflight from any other origin is 403 `origin_rejected` without a grant (the
//!    guard's rule that a foreign `Origin` is refused); so is every other request of it.
//! 4. Every answer carries `Vary: Origin` (appended to the API's own `Vary`), so a cache
//!    never hands one origin's answer, or an answer without a grant, to another.
//! 5. The API's own `Access-Control-*` headers never reach the browser, CORS on or off
//!    (`protocol` strips them): they could grant `*` or another origin. tokengate's grant
//!    is the only one.
//!
//! The allowed origins' header values are made once, when the config is loaded (a SIGHUP
//! reload makes new ones); a request only compares its `Origin` with them.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::Body;

/// Methods a page may send (the routes' standard ones; a route's `extra_methods` are not
/// offered to other origins).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// Request headers a page may send: the CSRF proof, JSON bodies, its own request id, and
/// the safelisted ones whose values browsers would otherwise preflight when unusual.
pub const ALLOWED_HEADERS: &str =
    "accept, accept-language, content-language, content-type, x-csrf, x-request-id";

/// Response headers a page may read besides the safelisted ones (`Content-Type`, …):
/// the request id to quote in a support ticket, and how long to wait after a 429 or 503.
pub const EXPOSED_HEADERS: &str = "x-request-id, retry-after";

/// How long a browser may cache a preflight's answer: 10 minutes (Chromium caps it at 2
/// hours, Firefox at 24). A reload that removes an origin takes effect at once anyway:
/// the answers themselves stop carrying the grant.
pub const MAX_AGE_SECS: u32 = 600;

/// The CORS settings a loaded config holds when `server.cors = true`: the allowed
/// origins as ready header values.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    origins: Vec<HeaderValue>,
}

impl CorsPolicy {
    /// The policy for `allowed_origins` (already serialized as browsers send `Origin`).
    /// Fails when the list is empty (CORS would grant nothing) or an origin is not a valid
    /// header value.
    pub fn new(allowed_origins: &[String]) -> Result<CorsPolicy, String> {
        if allowed_origins.is_empty() {
            return Err(
                "is true but no origin is allowed: set allowed_origins (or public_origin)".to_string()
            );
        }
        let origins = allowed_origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} cannot be sent as a header"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsPolicy { origins })
    }

    /// The `Access-Control-Allow-Origin` value for a request with `headers`: its `Origin`
    /// when that is allowed, else `None`. Compared as the guard compares it (ASCII case
    /// folded; the configured origins are normalized as browsers send them).
    pub fn grant(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?.as_bytes();
        self.origins.iter().find(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin)).cloned()
    }
}

/// Whether the request is a CORS preflight (rule 2).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from an allowed origin, without rule 1's headers (the
/// respond step adds them to every answer).
pub fn preflight_response() -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
    response
}

/// Rules 1 and 4 on an answer: `Vary: Origin` always, and the grant for `origin` when
/// it is allowed.
pub fn decorate(headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    headers.append(VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else { return };
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy::new(&["https://www.shop.example".to_string()]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn with_origin(origin: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, HeaderValue::from_static(origin));
        headers
    }

    #[test]
    fn only_an_allowed_origin_is_granted_and_it_is_echoed() {
        let granted = policy().grant(&with_origin("https://www.shop.example"));
        assert_eq!(granted.as_ref().map(HeaderValue::as_bytes), Some(&b"https://www.shop.example"[..]));
        assert!(policy().grant(&with_origin("HTTPS://WWW.SHOP.EXAMPLE")).is_some());
        for foreign in ["https://evil.example", "https://www.shop.example.evil", "null", "*"] {
            assert!(policy().grant(&with_origin(foreign)).is_none(), "{foreign}");
        }
        assert!(policy().grant(&HeaderMap::new()).is_none());
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert!(CorsPolicy::new(&[]).is_err());
    }

    #[test]
    fn a_preflight_needs_options_origin_and_the_requested_method() {
        let mut headers = with_origin("https://www.shop.example");
        assert!(!is_preflight(&Method::OPTIONS, &headers));
        headers.insert(ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        assert!(is_preflight(&Method::OPTIONS, &headers));
        assert!(!is_preflight(&Method::POST, &headers));
        headers.remove(ORIGIN);
        assert!(!is_preflight(&Method::OPTIONS, &headers));
    }

    #[test]
    fn decorate_grants_only_with_an_origin_and_keeps_the_apis_vary() {
        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        decorate(&mut headers, None);
        let vary: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
        assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        decorate(&mut headers, Some(HeaderValue::from_static("https://www.shop.example")));
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://www.shop.example");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }
}
