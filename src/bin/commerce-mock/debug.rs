//! The `/v1/debug/*` resources used by header and streaming tests: `echo` describes the
//! request the mock received (with credentials redacted) and `bytes` streams a body of
//! a requested size in 16 KiB chunks without buffering it.
//!
//! Security: `echo` never reflects the `authorization` value or a `?token=` value, so
//! the echo itself can never be the source of a token leak in proxy tests.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::respond::{bearer_of, param, resource_error, set_static, to_hex, Params};
use crate::shopper::{Caller, Outcome};

/// Largest body `/v1/debug/bytes` produces (64 MiB).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
const CHUNK_BYTES: usize = 16 * 1024;
static CHUNK_OF_A: [u8; CHUNK_BYTES] = [b'a'; CHUNK_BYTES];
const DEBUG: &str = "DebugResource";

/// `ANY /v1/debug/echo[/...]`: method, path, redacted query and headers, body size and hash.
pub async fn echo(request: Request<Incoming>, caller: &Caller) -> Outcome {
    let (parts, body) = request.into_parts();
    let Some((body_len, body_sha256)) = hash_body(body).await else {
        let response = resource_error(
            StatusCode::BAD_REQUEST,
            DEBUG,
            "body-read-failed",
            "The request body could not be read",
        );
        return Outcome::Failed(response);
    };
    let token_kind = if caller.session.user.is_some() { "shopper" } else { "guest" };
    Outcome::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().map(redact_query),
        "headers": echo_headers(&parts.headers, &caller.token),
        "body_len": body_len,
        "body_sha256": body_sha256,
        "token": token_kind,
        "credential": caller.credential.name(),
    }))
}

/// Streams the body through SHA-256 so large uploads are never held in memory.
async fn hash_body(mut body: Incoming) -> Option<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut length: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.ok()?.data_ref() {
            hasher.update(data);
            length = length.saturating_add(data.len() as u64);
        }
    }
    Some((length, to_hex(&hasher.finalize())))
}

/// Header name → value, or an array when the header repeats.
fn echo_headers(headers: &HeaderMap, live_token: &str) -> Map<String, Value> {
    let mut echoed = Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|value| {
                if *name == AUTHORIZATION {
                    redact_authorization(value, live_token)
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                }
            })
            .map(Value::String)
            .collect();
        let entry = match <[Value; 1]>::try_from(values) {
            Ok([single]) => single,
            Err(values) => Value::Array(values),
        };
        echoed.insert(name.as_str().to_owned(), entry);
    }
    echoed
}

fn redact_authorization(value: &HeaderValue, live_token: &str) -> String {
    match bearer_of(value) {
        Some(token) if token == live_token => "bearer <valid>".to_owned(),
        _ => "<invalid>".to_owned(),
    }
}

/// Replaces `token=<anything>` segments, keeping every other segment byte for byte.
fn redact_query(query: &str) -> String {
    let segments: Vec<String> = query
        .split('&')
        .map(|segment| {
            let raw_name = segment.split_once('=').map_or(segment, |(name, _)| name);
            let name = form_urlencoded::parse(raw_name.as_bytes()).next();
            match name {
                Some((name, _)) if name == "token" => "token=<redacted>".to_owned(),
                _ => segment.to_owned(),
            }
        })
        .collect();
    segments.join("&")
}

/// `GET /v1/debug/bytes?n=<count>[&chunked=1][&type=json][&stall_ms=<ms>]`: with
/// `stall_ms`, the body stops for that long after its first chunk (a trickling API);
/// with `type=json`, it is labelled JSON (so a proxy's leak guard reads it).
pub fn bytes(query: &Params) -> Outcome {
    let count =
        param(query, "n").and_then(|text| text.parse::<u64>().ok()).filter(|count| *count <= MAX_BYTES);
    let Some(count) = count else {
        let description = format!("n must be an integer from 0 to {MAX_BYTES}");
        let response = resource_error(StatusCode::BAD_REQUEST, DEBUG, "invalid-parameter", &description);
        return Outcome::Failed(response);
    };
    let stall = param(query, "stall_ms")
        .and_then(|text| text.parse::<u64>().ok())
        .map(|ms| Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000)))));
    let body = RepeatBody {
        remaining: count,
        exact_length: param(query, "chunked") != Some("1"),
        stall,
        sent_first: false,
    };
    let mut response = Response::new(body.boxed());
    let json = param(query, "type") == Some("json");
    set_static(
        &mut response,
        CONTENT_TYPE,
        if json { "application/json" } else { "application/octet-stream" },
    );
    Outcome::Raw(response)
}

/// `remaining` bytes of `a`, one static 16 KiB chunk at a time. Without an exact
/// length hint hyper sends HTTP/1.1 chunked encoding (no `content-length`).
struct RepeatBody {
    remaining: u64,
    exact_length: bool,
    /// A pause after the first chunk.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    sent_first: bool,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.sent_first {
            if let Some(stall) = this.stall.as_mut() {
                if stall.as_mut().poll(context).is_pending() {
                    return Poll::Pending;
                }
                this.stall = None;
            }
        }
        this.sent_first = true;
        let length = usize::try_from(this.remaining).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
        this.remaining -= length as u64;
        let chunk = Bytes::from_static(&CHUNK_OF_A).slice(..length);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        // Claiming the end early would make hyper send `content-length: 0` even when the
        // caller asked for chunked encoding.
        self.exact_length && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_length {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_is_redacted_and_the_rest_kept_verbatim() {
        assert_eq!(redact_query("a=1&token=secret&b=%20x"), "a=1&token=<redacted>&b=%20x");
        assert_eq!(redact_query("to%6Ben=secret"), "token=<redacted>");
        assert_eq!(redact_query("tokens=1"), "tokens=1");
    }

    #[test]
    fn authorization_is_never_echoed() {
        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, HeaderValue::from_static("bearer live"));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Basic c2VjcmV0"));
        headers.insert("x-one", HeaderValue::from_static("1"));
        let echoed = echo_headers(&headers, "live");
        assert_eq!(echoed["authorization"], json!(["bearer <valid>", "<invalid>"]));
        assert_eq!(echoed["x-one"], "1");
    }

    #[test]
    fn repeat_body_reports_exact_or_unknown_length() {
        let body =
            |remaining, exact_length| RepeatBody { remaining, exact_length, stall: None, sent_first: false };
        assert_eq!(body(40_000, true).size_hint().exact(), Some(40_000));
        assert_eq!(body(40_000, false).size_hint().exact(), None);
        assert!(!body(0, false).is_end_stream());
    }
}
