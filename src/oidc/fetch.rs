//! The few HTTP exchanges the OpenID Connect flavor makes, over the one pooled upstream
//! client (`upstream::HttpClient`): a bounded JSON `GET` (discovery, JWKS) and a bounded
//! form `POST` (token and revocation endpoints), each within one timeout, failures mapped
//! to [`TokenError`] by the Digital River client's own `send_bounded` and `classify`
//! (shared, not copied).

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use serde_json::Value;

use crate::body::Body;
use crate::tokens::TokenError;
use crate::upstream::HttpClient;

/// Largest discovery document or key set read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Largest token or revocation endpoint answer read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// Sends `request` and reads at most `limit` bytes of the answer, all within `timeout`:
/// the Digital River client's step, shared.
pub(crate) use crate::tokens::digitalriver::send_bounded as send;

/// Turns a non-200 answer into an error: 5xx and 429 are the provider's trouble, anything
/// else a rejection with the OAuth `error` code (RFC 6749 §5.2) when it looks like one
/// (never the description): the Digital River client's reading, shared.
pub(crate) use crate::tokens::digitalriver::classify;

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
