//! Reading an upstream 401: is it about the access token, or about something else?
//!
//! The Commerce API answers 401 both for a dead token and for reasons a new token cannot
//! fix ("Request Site ID does not match Token Site ID", `invalid_client`). Only the first
//! is worth one refresh and one replay. A 401 is about the token when:
//! 1. `WWW-Authenticate: Bearer … error="invalid_token"` (RFC 6750 §3.1), or
//! 2. the body's error code is `invalid_token`: flat `{"error":"invalid_token"}`, one
//!    object `{"error":{"code":"invalid_token"}}`, DR's `{"errors":{"error":[{"code":…}]}}`
//!    (a list or one object), or XML `<code>invalid_token</code>` (the API answers XML
//!    unless asked for JSON), or
//! 3. neither names any error code (a bare 401 says nothing else).
//!
//! Any other code (`invalid_client`, `invalid_request`, …) means the 401 goes back as it
//! came. Pure: it looks at bytes already read (at most [`MAX_READ_BYTES`]).

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;
use serde_json::Value;

/// How much of a 401's body is read to find its error code.
pub const MAX_READ_BYTES: usize = 16 * 1024;

const INVALID_TOKEN: &str = "invalid_token";

/// Whether a 401 with these headers and (the first bytes of) this body is about the token.
pub fn is_about_the_token(headers: &HeaderMap, body: &[u8]) -> bool {
    let mut codes = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(bearer_error)
        .chain(body_error_code(body));
    let Some(first) = codes.next() else { return true };
    first == INVALID_TOKEN || codes.any(|code| code == INVALID_TOKEN)
}

/// The `error` parameter of a `Bearer` challenge, if it has one.
fn bearer_error(challenge: &str) -> Option<String> {
    let (scheme, parameters) = challenge.trim().split_once(' ').unwrap_or((challenge.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    parameters.split(',').find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim().eq_ignore_ascii_case("error").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The error code of a JSON or XML error body.
fn body_error_code(body: &[u8]) -> Option<String> {
    let code = match serde_json::from_slice::<Value>(body) {
        Ok(value) => json_error_code(&value)?,
        Err(_) => xml_error_code(body)?,
    };
    let looks_like_a_code = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    looks_like_a_code.then_some(code)
}

fn json_error_code(value: &Value) -> Option<String> {
    let coded = |object: &Value| object.get("code").and_then(Value::as_str).map(str::to_string);
    match value.get("error") {
        Some(Value::String(code)) => return Some(code.clone()),
        Some(object @ Value::Object(_)) => return coded(object),
        _ => {}
    }
    match value.get("errors")?.get("error")? {
        Value::Array(items) => items.iter().find_map(coded),
        object => coded(object),
    }
}

/// The text of the first `<code>…</code>` element.
fn xml_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<code>")? + "<code>".len();
    let length = text[start..].find("</code>")?;
    Some(text[start..start + length].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn about_token(challenge: Option<&'static str>, body: &str) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(challenge) = challenge {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        is_about_the_token(&headers, body.as_bytes())
    }

    #[test]
    fn an_invalid_token_code_in_any_shape_is_about_the_token() {
        for body in [
            r#"{"error":"invalid_token","error_description":"expired"}"#,
            r#"{"error":{"code":"invalid_token","description":"x"}}"#,
            r#"{"errors":{"error":[{"relation":"r","code":"invalid_token","description":"x"}]}}"#,
            r#"{"errors":{"error":{"code":"invalid_token"}}}"#,
            "<?xml version=\"1.0\"?><errors><error><relation>r</relation><code>invalid_token</code></error></errors>",
        ] {
            assert!(about_token(None, body), "{body}");
        }
    }

    #[test]
    fn a_bearer_challenge_or_silence_is_about_the_token() {
        assert!(about_token(Some("Bearer error=\"invalid_token\""), ""));
        assert!(about_token(
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"x\""),
            ""
        ));
        assert!(about_token(None, ""));
        assert!(about_token(None, "Unauthorized"));
        assert!(about_token(None, r#"{"message":"no"}"#));
        assert!(about_token(Some("Bearer realm=\"api\""), "<html>401</html>"));
    }

    #[test]
    fn another_code_is_not_about_the_token() {
        for body in [
            r#"{"error":"invalid_client"}"#,
            r#"{"errors":{"error":[{"code":"invalid_request","description":"Request Site ID does not match Token Site ID"}]}}"#,
            "<errors><error><code>invalid_client</code></error></errors>",
        ] {
            assert!(!about_token(None, body), "{body}");
        }
        assert!(!about_token(Some("Bearer error=\"insufficient_scope\""), ""));
        assert!(about_token(Some("Bearer error=\"invalid_token\""), r#"{"error":"invalid_request"}"#));
    }
}
