//! The leak guard: the last line of defence if the API ever echoes a session's token.
//!
//! Every forwarded response is checked before and while it goes to the browser:
//! * its header names and values are searched for the session's access and refresh
//!   tokens (a hit replaces the response with 502 `token_leak_blocked`); the reason phrase
//!   and trailers never reach the browser at all (`forward::clean_response`, `body`);
//! * its body, whatever its type or size, is searched as it streams, in every form a page
//!   could decode (`scan`): the first frame before the head goes out (a hit there is a
//!   clean 502), every later frame before it goes out (a hit there cuts the response off:
//!   the connection or stream is reset, never completed);
//! * a body tokengate cannot decode (a `Content-Encoding` other than `identity`: forwarding
//!   asks the API for `identity` while the guard is on) is refused with 502, never passed
//!   unscanned;
//! * a body that stops flowing for `upstream.request_timeout` is cut off and counted,
//!   scanned or not.
//!
//! Each hit is logged once as a security event (target `tokengate::security`) without the
//! token, and counted.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_ENCODING;
use http::{HeaderMap, Response};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::body::{Body, Reporter, Watched};
use crate::config::LeakGuardConfig;
use crate::error::Error;
use crate::scan::{Needles, Scanner};
use crate::store::SessionRecord;

/// Scans responses for the tokens of the session they answer.
#[derive(Debug, Clone, Copy)]
pub struct LeakGuard {
    config: LeakGuardConfig,
    /// How long a response body may stall (`upstream.request_timeout`).
    deadline: Duration,
}

impl LeakGuard {
    /// A guard configured by `[leak_guard]`, cutting off bodies that stall for `deadline`.
    pub fn new(config: LeakGuardConfig, deadline: Duration) -> Self {
        Self { config, deadline }
    }

    /// Whether the guard is on (forwarding then asks for uncompressed bodies).
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// Passes `response` on, watched; fails with `TokenLeakBlocked` if its head or first
    /// frame carries one of `record`'s tokens. Without a session (or with the guard off)
    /// only the stall deadline applies.
    pub async fn inspect(
        &self,
        response: Response<Body>,
        record: Option<&SessionRecord>,
        reporter: Reporter,
    ) -> Result<Response<Body>, Error> {
        let needles = record.filter(|_| self.config.enabled).and_then(needles_of);
        let Some(needles) = needles else {
            return Ok(response.map(|body| self.watched(None, body, None, reporter)));
        };
        if headers_leak(response.headers(), &needles) {
            return Err(blocked("header"));
        }
        let (parts, mut body) = response.into_parts();
        if !is_identity(&parts.headers) && !body.is_end_stream() {
            return Err(Error::UpstreamUnavailable(
                "the API answered in a content encoding the leak guard cannot decode".into(),
            ));
        }
        let mut scanner = Scanner::new(needles);
        let first = tokio::time::timeout(self.deadline, first_data(&mut body))
            .await
            .map_err(|_| Error::UpstreamTimeout)??;
        if let Some(first) = &first {
            scanner.push(first).map_err(|_| blocked("body"))?;
        }
        Ok(Response::from_parts(parts, self.watched(first, body, Some(scanner), reporter)))
    }

    fn watched(
        &self,
        first: Option<Bytes>,
        body: Body,
        scanner: Option<Scanner>,
        reporter: Reporter,
    ) -> Body {
        Body::Watched(Box::new(Watched::new(first, body, scanner, self.deadline, reporter)))
    }
}

/// The hit, as an error: logged (as a security event) and counted where every error
/// becomes a response, once.
fn blocked(place: &'static str) -> Error {
    Error::TokenLeakBlocked { place }
}

/// The session's tokens as needles, built once per response.
fn needles_of(record: &SessionRecord) -> Option<Needles> {
    let refresh = record.refresh_token.as_ref().map(|token| token.expose().as_bytes());
    Needles::new(std::iter::once(record.access_token.expose().as_bytes()).chain(refresh))
}

/// Names too: a page reads them through `headers.keys()`. Names arrive lowercased and
/// are searched without case.
fn headers_leak(headers: &HeaderMap, needles: &Needles) -> bool {
    headers.iter().any(|(name, value)| {
        needles.found_in_ignoring_case(name.as_str().as_bytes()) || needles.found_in(value.as_bytes())
    })
}

/// No `Content-Encoding`, or `identity`.
fn is_identity(headers: &HeaderMap) -> bool {
    let mut encodings = headers.get_all(CONTENT_ENCODING).iter();
    encodings.all(|encoding| encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The first data frame of `body` (trailers before it are skipped), or `None` at its end.
async fn first_data(body: &mut Body) -> Result<Option<Bytes>, Error> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Error::UpstreamUnavailable("the response body broke off".into()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
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

    fn guard(enabled: bool) -> LeakGuard {
        LeakGuard::new(LeakGuardConfig { enabled, max_body_bytes: 1024 }, Duration::from_secs(5))
    }

    fn reporter() -> Reporter {
        Reporter { metrics: Arc::new(Metrics::default()), request_id: http::HeaderValue::from_static("test") }
    }

    fn response(content_type: &'static str, body: &'static str) -> Response<Body> {
        let mut response = Response::new(Body::full(body));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        response
    }

    async fn inspect(guard: LeakGuard, response: Response<Body>) -> Result<Bytes, Error> {
        let passed = guard.inspect(response, Some(&record()), reporter()).await?;
        passed.into_body().collect().await.map(|c| c.to_bytes()).map_err(|_| Error::Internal("cut off"))
    }

    fn is_blocked(result: &Result<Bytes, Error>) -> bool {
        matches!(result, Err(Error::TokenLeakBlocked { .. }))
    }

    #[tokio::test]
    async fn a_token_in_a_body_of_any_type_is_blocked() {
        for (content_type, body) in [
            ("application/json", r#"{"echo":"access-0123456789abcdef"}"#),
            ("text/plain", "refresh-0123456789abcdef"),
            ("application/octet-stream", "access-0123456789abcdef"),
            ("application/pdf", "%PDF access-0123456789abcdef"),
            ("application/json", r#"{"echo":"\u0061ccess-0123456789abcdef"}"#),
        ] {
            assert!(
                is_blocked(&inspect(guard(true), response(content_type, body)).await),
                "{content_type}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_in_a_header_name_or_value_is_blocked_whatever_the_body() {
        let mut leaked = response("image/png", "binary");
        leaked.headers_mut().insert("x-debug", http::HeaderValue::from_static("t=access-0123456789abcdef"));
        assert!(is_blocked(&inspect(guard(true), leaked).await));
        let mut named = response("application/json", "{}");
        named.headers_mut().insert(
            http::HeaderName::from_static("x-access-0123456789abcdef"),
            http::HeaderValue::from_static("1"),
        );
        assert!(is_blocked(&inspect(guard(true), named).await));
    }

    #[tokio::test]
    async fn an_encoding_the_guard_cannot_read_is_refused() {
        for encoding in ["gzip", "none", "br"] {
            let mut encoded = response("application/json", "not really compressed");
            encoded.headers_mut().insert(CONTENT_ENCODING, http::HeaderValue::from_static(encoding));
            let result = inspect(guard(true), encoded).await;
            assert!(matches!(result, Err(Error::UpstreamUnavailable(_))), "{encoding}");
        }
    }

    #[tokio::test]
    async fn clean_responses_pass_intact_and_the_guard_can_be_off() {
        let clean = inspect(guard(true), response("application/json", r#"{"ok":true}"#)).await;
        assert_eq!(clean.ok().as_deref(), Some(br#"{"ok":true}"#.as_slice()));
        let off = inspect(guard(false), response("application/json", "access-0123456789abcdef")).await;
        assert!(off.is_ok(), "the guard is off");
    }
}
