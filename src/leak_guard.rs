//! The leak guard: the last line of defence if the API ever echoes a session's token.
//!
//! Before a forwarded response goes to the browser, its headers are searched for the
//! session's access and refresh tokens, always. Its body is searched too when it is
//! JSON or text, not compressed, and at most `leak_guard.max_body_bytes` long; larger
//! bodies stream through unscanned (the scan would have to hold them whole). A scanned
//! body is read whole before its first byte goes out, within `upstream.request_timeout`
//! (504 `upstream_timeout` past it). A hit
//! replaces the response with 502 `token_leak_blocked` and is logged as a security event
//! without the token. To keep bodies scannable, forwarding asks the API for uncompressed
//! responses while the guard is on.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use memchr::memmem;

use crate::body::Body;
use crate::config::LeakGuardConfig;
use crate::error::Error;
use crate::store::SessionRecord;

/// Scans responses for the tokens of the session they answer.
#[derive(Debug, Clone, Copy)]
pub struct LeakGuard {
    config: LeakGuardConfig,
    /// How long the body to scan may take to arrive (`upstream.request_timeout`).
    deadline: Duration,
}

impl LeakGuard {
    /// A guard configured by `[leak_guard]`, reading a body for at most `deadline`.
    pub fn new(config: LeakGuardConfig, deadline: Duration) -> Self {
        Self { config, deadline }
    }

    /// Whether the guard is on (forwarding then asks for uncompressed bodies).
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// Passes `response` through, or fails with `TokenLeakBlocked` if it carries one of
    /// `record`'s tokens where the guard looks.
    pub async fn inspect(
        &self,
        response: Response<Body>,
        record: &SessionRecord,
    ) -> Result<Response<Body>, Error> {
        if !self.config.enabled {
            return Ok(response);
        }
        let secrets = secrets_of(record);
        if headers_leak(response.headers(), &secrets) {
            return Err(blocked("header"));
        }
        let declared = crate::protocol::declared_length(response.body());
        if !is_scannable(response.headers(), declared, self.config.max_body_bytes) {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        // The scanned part is held before the first byte goes out: bounded in size above,
        // in time here, so a trickling API cannot hold the browser's request for ever.
        let read = tokio::time::timeout(self.deadline, read_prefix(body, self.config.max_body_bytes));
        match read.await.map_err(|_| Error::UpstreamTimeout)?? {
            Prefix::Whole(bytes) => {
                if contains_any(&bytes, &secrets) {
                    return Err(blocked("body"));
                }
                Ok(Response::from_parts(parts, Body::full(bytes)))
            }
            // Longer than the limit: what was read is scanned, the rest streams on unscanned.
            Prefix::Partial(prefix, rest) => {
                if contains_any(&prefix, &secrets) {
                    return Err(blocked("body"));
                }
                Ok(Response::from_parts(parts, Body::Prefixed(Some(prefix), rest)))
            }
        }
    }
}

/// The hit, as an error: logged (as a security event) and counted where every error
/// becomes a response, once.
fn blocked(place: &'static str) -> Error {
    Error::TokenLeakBlocked { place }
}

/// One searcher per token, built once per response (building one per header value was
/// most of the guard's cost).
fn secrets_of(record: &SessionRecord) -> Vec<memmem::Finder<'_>> {
    let mut secrets = vec![record.access_token.expose().as_bytes()];
    if let Some(refresh) = &record.refresh_token {
        secrets.push(refresh.expose().as_bytes());
    }
    secrets.into_iter().filter(|secret| secret.len() >= 8).map(memmem::Finder::new).collect()
}

fn contains_any(haystack: &[u8], secrets: &[memmem::Finder<'_>]) -> bool {
    secrets.iter().any(|secret| haystack.len() >= secret.needle().len() && secret.find(haystack).is_some())
}

fn headers_leak(headers: &HeaderMap, secrets: &[memmem::Finder<'_>]) -> bool {
    headers.values().any(|value| contains_any(value.as_bytes(), secrets))
}

/// JSON or text, uncompressed, and not declared longer than the limit.
fn is_scannable(headers: &HeaderMap, declared: Option<u64>, max_body_bytes: usize) -> bool {
    let identity = headers
        .get(CONTENT_ENCODING)
        .is_none_or(|encoding| encoding.as_bytes().eq_ignore_ascii_case(b"identity"));
    let textual = headers.get(CONTENT_TYPE).and_then(|t| t.to_str().ok()).is_none_or(|content_type| {
        let content_type = content_type.to_ascii_lowercase();
        content_type.starts_with("text/")
            || content_type.contains("json")
            || content_type.contains("xml")
            || content_type.contains("javascript")
            || content_type.starts_with("application/x-www-form-urlencoded")
    });
    let small = declared.is_none_or(|length| length <= max_body_bytes as u64);
    identity && textual && small
}

enum Prefix {
    /// The whole body, read.
    Whole(Bytes),
    /// The body was longer than the limit: what was read, and the rest of the stream.
    Partial(Bytes, hyper::body::Incoming),
}

async fn read_prefix(mut body: Body, limit: usize) -> Result<Prefix, Error> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Error::UpstreamUnavailable("the response body broke off".into()))?;
        let Ok(data) = frame.into_data() else { continue };
        buffer.extend_from_slice(&data);
        if buffer.len() > limit {
            let rest = match body {
                Body::Stream(incoming) => incoming,
                _ => return Ok(Prefix::Whole(buffer.freeze())),
            };
            return Ok(Prefix::Partial(buffer.freeze(), rest));
        }
    }
    Ok(Prefix::Whole(buffer.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{AccessToken, RefreshToken};
    use crate::store::SessionKind;

    fn record() -> SessionRecord {
        SessionRecord {
            kind: SessionKind::Guest,
            access_token: AccessToken::new("access-0123456789abcdef"),
            refresh_token: Some(RefreshToken::new("refresh-0123456789abcdef")),
            access_expires_at: 0,
            created_at: 0,
            absolute_expires_at: 0,
            generation: 0,
            identity: None,
        }
    }

    fn guard() -> LeakGuard {
        LeakGuard::new(LeakGuardConfig { enabled: true, max_body_bytes: 1024 }, Duration::from_secs(5))
    }

    fn response(content_type: &'static str, body: &'static str) -> Response<Body> {
        let mut response = Response::new(Body::full(body));
        response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        response
    }

    #[tokio::test]
    async fn a_token_in_a_json_body_is_blocked() {
        let leaked = response("application/json", r#"{"echo":"access-0123456789abcdef"}"#);
        assert!(matches!(guard().inspect(leaked, &record()).await, Err(Error::TokenLeakBlocked { .. })));
        let refresh = response("text/plain", "refresh-0123456789abcdef");
        assert!(matches!(guard().inspect(refresh, &record()).await, Err(Error::TokenLeakBlocked { .. })));
    }

    #[tokio::test]
    async fn a_token_in_a_header_is_blocked_whatever_the_body() {
        let mut leaked = response("image/png", "binary");
        leaked.headers_mut().insert("x-debug", http::HeaderValue::from_static("t=access-0123456789abcdef"));
        assert!(matches!(guard().inspect(leaked, &record()).await, Err(Error::TokenLeakBlocked { .. })));
    }

    #[tokio::test]
    async fn clean_responses_and_unscanned_types_pass_intact() {
        let clean = guard().inspect(response("application/json", r#"{"ok":true}"#), &record()).await;
        let body = match clean {
            Ok(response) => response.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
            Err(error) => panic!("{error}"),
        };
        assert_eq!(&body[..], br#"{"ok":true}"#);
        let binary = response("application/octet-stream", "access-0123456789abcdef");
        assert!(guard().inspect(binary, &record()).await.is_ok(), "binary bodies are not scanned");
        let off =
            LeakGuard::new(LeakGuardConfig { enabled: false, max_body_bytes: 1024 }, Duration::from_secs(5));
        assert!(off
            .inspect(response("application/json", "access-0123456789abcdef"), &record())
            .await
            .is_ok());
    }
}
