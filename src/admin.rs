//! The operator-facing listener, never the public one.
//!
//! Endpoints: `GET /healthz` (200 while the process serves), `GET /readyz` (200 when the
//! store answers and, with `flavor = "oauth2"`, the OpenID provider's metadata is loaded;
//! else 503), `GET /metrics` (Prometheus). It touches the request path only
//! through the shared store handle.

use std::future::Future;
use std::sync::Arc;

use crate::body::Inbound;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::app::ConnInfo;
use crate::body::Body;
use crate::metrics::Metrics;
use crate::oidc::discovery::ProviderCache;
use crate::server::{Answer, Handler};
use crate::store::{SessionStore, Store};

/// The admin service.
#[derive(Debug)]
pub struct Admin {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// The OpenID provider's metadata, which must be loaded to be ready (`oauth2`).
    provider: Option<Arc<ProviderCache>>,
}

impl Admin {
    /// Admin endpoints over the store (and the provider cache of `flavor = "oauth2"`).
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, provider: Option<Arc<ProviderCache>>) -> Self {
        Self { store, metrics, provider }
    }

    async fn handle(&self, request: Request<Inbound>) -> Response<Body> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.provider.as_ref().is_some_and(|cache| cache.get().is_err()) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "OpenID provider metadata not loaded\n")
            }
            "/readyz" => match self.store.ping().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(error) => {
                    tracing::warn!(%error, "not ready: store does not answer");
                    text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
                }
            },
            "/metrics" => {
                let body = self.metrics.render(self.store.counts());
                let mut response = Response::new(Body::full(Bytes::from(body)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Handler for Admin {
    fn call<'a>(
        &'a self,
        request: Box<Request<Inbound>>,
        _conn: &'a ConnInfo,
    ) -> impl Future<Output = Answer> + Send + 'a {
        let response = self.handle(*request);
        async move { Answer { response: response.await, request_id: None } }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
