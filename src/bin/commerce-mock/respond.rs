//! Small HTTP helpers shared by every handler: the response body type, JSON/HTML/empty
//! response builders, the two Digital River error shapes, query and form parsing, request
//! body reading with a size limit, and finding the caller's access token.
//!
//! Everything here is infallible at run time: headers are built from static values or
//! checked with `HeaderValue::from_str`, so no request can make a handler panic.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

/// Every response the mock sends has this body type, so handlers can mix full bodies
/// and the streamed `/v1/debug/bytes` body.
pub type MockBody = BoxBody<Bytes, Infallible>;

/// The response type of every handler.
pub type MockResponse = Response<MockBody>;

/// Relation URI prefix used by Digital River's nested `errors` shape.
pub const RELATION_PREFIX: &str = "https://developers.digitalriver.com/v1/shoppers/";

/// Returned by a handler to make hyper drop the connection without answering (the
/// `token_close` fault): hyper closes the connection when a service returns `Err`.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// The path with DR's optional `.json` format suffix removed.
pub fn api_path(path: &str) -> &str {
    path.strip_suffix(".json").unwrap_or(path)
}

/// A complete in-memory body.
pub fn full_body(bytes: impl Into<Bytes>) -> MockBody {
    Full::new(bytes.into()).boxed()
}

/// A response with the given status, no body.
pub fn empty(status: StatusCode) -> MockResponse {
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = status;
    response
}

/// A JSON response; serialising a `Value` cannot fail, so there is no error path.
pub fn json(status: StatusCode, value: &Value) -> MockResponse {
    let mut response = Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    set_static(&mut response, CONTENT_TYPE, "application/json");
    response
}

/// An HTML page that must never be cached (it may carry a guest token in a hidden field).
pub fn html(status: StatusCode, page: String) -> MockResponse {
    let mut response = Response::new(full_body(page));
    *response.status_mut() = status;
    set_static(&mut response, CONTENT_TYPE, "text/html; charset=utf-8");
    set_static(&mut response, CACHE_CONTROL, "no-store");
    response
}

/// 405 with an `Allow` header, JSON body so clients that parse every answer cope.
pub fn method_not_allowed(allow: &'static str) -> MockResponse {
    let body = json!({"error": "method_not_allowed", "error_description": "Method not allowed"});
    let mut response = json(StatusCode::METHOD_NOT_ALLOWED, &body);
    set_static(&mut response, http::header::ALLOW, allow);
    response
}

/// 404 for paths outside the emulated API.
pub fn not_found() -> MockResponse {
    json(StatusCode::NOT_FOUND, &json!({"error": "not_found", "error_description": "No such endpoint"}))
}

/// Digital River's nested resource error: `{"errors":{"error":[{relation,code,description}]}}`.
pub fn resource_error_body(resource: &str, code: &str, description: &str) -> Value {
    json!({"errors": {"error": [{
        "relation": format!("{RELATION_PREFIX}{resource}"),
        "code": code,
        "description": description,
    }]}})
}

/// A nested resource error as a response.
pub fn resource_error(status: StatusCode, resource: &str, code: &str, description: &str) -> MockResponse {
    json(status, &resource_error_body(resource, code, description))
}

/// Sets a header from a constant; constants are valid by construction.
pub fn set_static(response: &mut MockResponse, name: HeaderName, value: &'static str) {
    response.headers_mut().insert(name, HeaderValue::from_static(value));
}

/// Sets a header from run-time text, silently skipping values that are not valid header
/// text (only reachable with values the mock generated itself, which are always valid).
pub fn set_dynamic(response: &mut MockResponse, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// Turns a fault's configured status into a `StatusCode`; faults are validated on input,
/// so the fallback only guards against a future validation gap.
pub fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Decoded `application/x-www-form-urlencoded` pairs, in order.
pub type Params = Vec<(String, String)>;

/// The decoded query string of a URI (empty when there is none).
pub fn query_params(uri: &Uri) -> Params {
    parse_form(uri.query().unwrap_or("").as_bytes())
}

/// Decodes form-encoded bytes; invalid percent escapes decode leniently, never fail.
pub fn parse_form(bytes: &[u8]) -> Params {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// The first value of a parameter.
pub fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// Why a request body could not be read.
pub enum BodyError {
    /// The body was larger than the handler accepts.
    TooLarge,
    /// The connection failed while reading.
    Broken,
}

/// Reads a whole request body, refusing more than `limit` bytes so a client cannot make
/// the mock buffer unbounded input.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken),
    }
}

/// Where the caller's access token came from.
pub enum TokenSource {
    /// `Authorization: bearer <token>` (scheme matched case-insensitively).
    Bearer(String),
    /// `?token=<token>`, Digital River's documented alternative.
    Query(String),
    /// Neither was present.
    Missing,
}

impl TokenSource {
    /// The token text, if any.
    pub fn token(&self) -> Option<&str> {
        match self {
            TokenSource::Bearer(token) | TokenSource::Query(token) => Some(token),
            TokenSource::Missing => None,
        }
    }
}

/// Finds the access token: a bearer header wins, else `?token=`. A `Basic` header with a
/// `?token=` is what DR's own WordPress plugin sends, so the query is still honoured then.
pub fn request_token(headers: &HeaderMap, query: &Params) -> TokenSource {
    if let Some(token) = headers.get(AUTHORIZATION).and_then(bearer_of) {
        return TokenSource::Bearer(token);
    }
    match param(query, "token") {
        Some(token) if !token.is_empty() => TokenSource::Query(token.to_owned()),
        _ => TokenSource::Missing,
    }
}

/// The token of a `bearer <token>` header value, if it is one.
pub fn bearer_of(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Lowercase hex of random bytes, from the thread-local CSPRNG.
pub fn random_hex(byte_count: usize) -> String {
    let mut bytes = vec![0u8; byte_count];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    to_hex(&bytes)
}

/// Lowercase hex encoding (no extra crate for twelve lines).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Compares secrets without an early exit on the first differing byte, so response
/// timing does not reveal how much of a guessed secret was right.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left.iter().zip(right).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_twice_as_long() {
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(random_hex(80).len(), 160);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let value = HeaderValue::from_static("BeArEr abc");
        assert_eq!(bearer_of(&value).as_deref(), Some("abc"));
        assert!(bearer_of(&HeaderValue::from_static("Basic abc")).is_none());
        assert!(bearer_of(&HeaderValue::from_static("bearer ")).is_none());
    }

    #[test]
    fn query_token_is_used_when_header_is_basic() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
        let query = parse_form(b"token=t1&x=2");
        assert_eq!(request_token(&headers, &query).token(), Some("t1"));
    }

    #[test]
    fn html_escaping_covers_attribute_breakers() {
        assert_eq!(escape_html("<a href=\"x\">'&"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
    }
}
