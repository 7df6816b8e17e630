//! The few HTTP exchanges the OpenID Connect flavor makes, over the one pooled upstream
//! client (`upstream::HttpClient`): a bounded JSON `GET` (discovery, JWKS) and a bounded
//! form `POST` (token and revocation endpoints), each within one timeout, failures mapped
//! to [`TokenError`] the way the Digital River client maps them.
//!
//! TODO(round two): `tokens::digitalriver` has the same send-and-read-bounded step as a
//! private method (`DigitalRiverClient::send`) and the same error reading (`classify`,
//! `error_code`); make those `pub(crate)` there and drop the copies below.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::body::Body;
use crate::tokens::TokenError;
use crate::upstream::HttpClient;

/// Largest discovery document or key set read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Largest token or revocation endpoint answer read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// Sends `request` and reads at most `limit` bytes of the answer, all within `timeout`.
pub async fn send(
    http: &HttpClient,
    request: Request<Body>,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), TokenError> {
    let exchange = async {
        let response = http.request(request).await.map_err(|error| {
            TokenError::Unavailable(format!("provider: {}", crate::forward::describe_client_error(&error)))
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|_| TokenError::Unavailable("provider answer unreadable or too large".into()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| TokenError::Timeout)?
}

/// `GET uri` expecting a 200 JSON document of at most [`MAX_DOCUMENT_BYTES`].
pub async fn get_json(http: &HttpClient, uri: &Uri, timeout: Duration) -> Result<Value, TokenError> {
    let request = Request::get(uri.clone())
        .header(ACCEPT, "application/json")
        .body(Body::Empty)
        .map_err(|_| TokenError::Unavailable("could not build the request".into()))?;
    let (status, body) = send(http, request, timeout, MAX_DOCUMENT_BYTES).await?;
    if status != StatusCode::OK {
        return Err(TokenError::Unavailable(format!("provider answered {}", status.as_u16())));
    }
    serde_json::from_slice(&body).map_err(|_| TokenError::Unavailable("provider answer is not JSON".into()))
}

/// `POST uri` with a form body and an optional (sensitive) `Authorization`.
pub async fn post_form(
    http: &HttpClient,
    uri: &Uri,
    form: String,
    authorization: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), TokenError> {
    let mut builder = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json");
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value.clone());
    }
    let request = builder
        .body(Body::full(form))
        .map_err(|_| TokenError::Unavailable("could not build the request".into()))?;
    send(http, request, timeout, MAX_TOKEN_RESPONSE_BYTES).await
}

/// Turns a non-200 answer into an error: 5xx and 429 are the provider's trouble, anything
/// else a rejection with the OAuth `error` code (RFC 6749 §5.2) when it looks like one.
pub fn classify(status: StatusCode, body: &[u8]) -> TokenError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return TokenError::Unavailable(format!("provider answered {}", status.as_u16()));
    }
    TokenError::Rejected { status: status.as_u16(), code: error_code(body).unwrap_or_default() }
}

/// The `error` of an OAuth error body, kept only if it looks like a code (never the
/// description, which a provider may fill with anything).
fn error_code(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    let looks_like_a_code =
        code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    looks_like_a_code.then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_only_the_code() {
        let error =
            classify(StatusCode::BAD_REQUEST, br#"{"error":"invalid_grant","error_description":"x"}"#);
        assert!(matches!(error, TokenError::Rejected { status: 400, ref code } if code == "invalid_grant"));
        let error = classify(StatusCode::UNAUTHORIZED, br#"{"error":"has spaces"}"#);
        assert!(matches!(error, TokenError::Rejected { status: 401, ref code } if code.is_empty()));
        assert!(matches!(classify(StatusCode::SERVICE_UNAVAILABLE, b""), TokenError::Unavailable(_)));
    }
}
