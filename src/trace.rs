//! OpenTelemetry traces: one server span per request and, inside it, the session lookup's
//! store read, the refresh (its lock wait, the token-endpoint call) and the call to the
//! API, exported in batches over OTLP/HTTP (protobuf) to a collector; the W3C
//! `traceparent` of each call goes upstream with it.
//!
//! **Off unless `[tracing] otlp_endpoint` is set, and then free.** Nothing is installed,
//! and every hook starts with one read of [`TRACING`] (a `OnceLock`): no span, context
//! or attribute is made, nothing is allocated, no header touched. The `tracing` log
//! output is independent of this module (spans here are not `tracing` spans).
//!
//! **What a span may hold:** the method, the route label, status codes, the session kind
//! (`guest`/`shopper`/`none`), the request id, the contract's error code, the API's host
//! and port, and the token service's configured endpoint path. Never a session id, cookie,
//! token, query string, header, the browser's path (it may carry ids), address or user agent.
//!
//! **Trust.** A browser's `traceparent` is input from the internet: by default every
//! request starts a trace of its own (a browser cannot choose our trace ids or sampling),
//! and the API gets our `traceparent` in place of the browser's (its `tracestate` is
//! dropped too). `trust_traceparent = true` continues the browser's trace instead (for a
//! storefront whose own tracing should join). With tracing off, tokengate is not a
//! participant: the browser's trace headers pass to the API unchanged, as any header does.
//!
//! **Export.** The SDK's `BatchSpanProcessor`: a finished span goes into a bounded queue
//! (`max_queue`) with a `try_send` that never waits; a span that finds it full is dropped
//! and counted (the SDK logs the first drop, and the total at shutdown). Its own thread
//! sends a batch every `batch_delay` through [`ExportClient`], which runs each HTTP call
//! on our tokio runtime (hyper needs its reactor). [`shutdown`] flushes at drain.

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::context::FutureExt;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::config::TracingConfig;
use crate::context::RequestContext;

/// Set once, at start, when `[tracing]` is configured; never while tracing is off.
static TRACING: OnceLock<Tracing> = OnceLock::new();

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Most time the drain gives the exporter to send what is queued.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    trust_traceparent: bool,
    export_timeout: Duration,
}

/// Starts the exporter and turns spans on. Called once, at start, on the tokio runtime
/// (the export calls run on it); fails on an unusable `tracing.ca_file` or exporter setup.
pub fn install(config: &TracingConfig) -> Result<(), String> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "tracing: the exporter needs the tokio runtime".to_string())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient::new(config, runtime)?)
        .with_endpoint(config.traces_url.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|error| format!("tracing.otlp_endpoint: {error}"))?;
    // Every batch setting is ours, so no OTEL_BSP_* variable changes them.
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue)
        .with_max_export_batch_size(config.max_queue.min(512))
        .with_scheduled_delay(config.batch_delay)
        .build();
    // An empty resource builder: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are not read.
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(resource)
        .build();
    let scope = InstrumentationScope::builder("tokengate").with_version(env!("CARGO_PKG_VERSION")).build();
    let tracer = provider.tracer_with_scope(scope);
    let tracing = Tracing {
        provider,
        tracer,
        trust_traceparent: config.trust_traceparent,
        export_timeout: config.export_timeout,
    };
    TRACING.set(tracing).map_err(|refused| {
        let _ = refused.provider.shutdown();
        "tracing: installed twice in one process".to_string()
    })
}

/// Whether spans are being made.
pub fn is_on() -> bool {
    TRACING.get().is_some()
}

/// Sends what is queued and stops the exporter (the drain's last step). The SDK's
/// shutdown blocks until its thread is done, so it runs on a blocking thread.
pub async fn shutdown() {
    let Some(installed) = TRACING.get() else { return };
    let provider = installed.provider.clone();
    let limit = (installed.export_timeout * 2).min(SHUTDOWN_LIMIT);
    match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit)).await {
        Ok(Ok(())) => tracing::debug!("trace exporter flushed and stopped"),
        Ok(Err(error)) => tracing::warn!(%error, "trace exporter did not stop cleanly"),
        Err(error) => tracing::warn!(%error, "trace exporter shutdown failed"),
    }
}

/// A request's server span; the parent of every span the request makes while its steps
/// run inside [`RequestSpan::scope`].
pub struct RequestSpan {
    context: Context,
}

impl RequestSpan {
    /// The span of `request`, or `None` when tracing is off.
    pub fn start<B>(request: &Request<B>, tls: bool) -> Option<RequestSpan> {
        let tracing = TRACING.get()?;
        let parent = if tracing.trust_traceparent {
            TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()))
        } else {
            Context::new()
        };
        let method = method_name(request.method());
        let span = tracing
            .tracer
            .span_builder(method.unwrap_or("HTTP"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.unwrap_or("_OTHER")),
                KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
                KeyValue::new("network.protocol.version", protocol_version(request.version())),
            ])
            .start_with_context(&tracing.tracer, &parent);
        Some(RequestSpan { context: parent.with_span(span) })
    }

    /// Runs the request's steps with this span as the current one.
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        future.with_context(self.context.clone()).await
    }

    /// Records what the request came to and ends the span (at the response head, like
    /// the request's log line).
    pub fn finish(self, ctx: &RequestContext<'_>, status: StatusCode) {
        let span = self.context.span();
        let known_route = !ctx.route.is_empty() && !ctx.route.starts_with('(');
        if known_route {
            let method = method_name(&ctx.method).unwrap_or("HTTP");
            span.update_name(format!("{method} {}", ctx.route));
            span.set_attribute(KeyValue::new("http.route", ctx.route.to_string()));
        }
        span.set_attributes([
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            KeyValue::new(
                "tokengate.session.kind",
                ctx.session_kind.map_or("none", crate::store::SessionKind::as_str),
            ),
            KeyValue::new("tokengate.request_id", ctx.request_id_str().to_string()),
        ]);
        if let Some(code) = ctx.error_code {
            span.set_attribute(KeyValue::new("error.type", code));
        }
        // A server's 4xx is the client's doing, not an error of ours.
        if status.is_server_error() {
            span.set_status(Status::error(ctx.error_code.unwrap_or("server error")));
        }
        span.end();
    }
}

/// A span inside a request's trace, or nothing (tracing off, or no request around it:
/// background work makes no spans). Ends when dropped.
#[must_use = "a span ends when it is dropped"]
pub struct Span(Option<Context>);

impl Span {
    /// An internal span, a child of the current one.
    pub fn internal(name: &'static str) -> Span {
        Span::child(name, SpanKind::Internal, Vec::new)
    }

    fn child(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(tracing) = TRACING.get() else { return Span(None) };
        let parent = Context::current();
        if !parent.has_active_span() {
            return Span(None);
        }
        let span = tracing
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(&tracing.tracer, &parent);
        Span(Some(parent.with_span(span)))
    }

    /// Sets an attribute (nothing when there is no span).
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with a fixed description (an error code, never a message).
    pub fn fail(&self, error_type: &'static str) {
        if let Some(context) = &self.0 {
            let span = context.span();
            span.set_attribute(KeyValue::new("error.type", error_type));
            span.set_status(Status::error(error_type));
        }
    }

    /// Runs `future` with this span as the current one, so the spans it makes are its
    /// children (without a span, just runs it).
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        match &self.0 {
            Some(context) => future.with_context(context.clone()).await,
            None => future.await,
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(context) = &self.0 {
            context.span().end();
        }
    }
}

/// Sets an attribute on the current span, if any.
pub fn annotate(key: &'static str, value: impl Into<Value>) {
    if TRACING.get().is_some() {
        Context::map_current(|context| context.span().set_attribute(KeyValue::new(key, value)));
    }
}

/// The current span's context, carried into a spawned task (nothing when off).
pub struct Carried(Option<Context>);

impl Carried {
    /// What the current task is running in.
    pub fn current() -> Carried {
        Carried(TRACING.get().map(|_| Context::current()).filter(TraceContextExt::has_active_span))
    }

    /// Runs `future` in the carried context.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        match self.0 {
            Some(context) => future.with_context(context).await,
            None => future.await,
        }
    }
}

/// Who an outgoing call goes to.
#[derive(Debug, Clone, Copy)]
pub enum Callee<'a> {
    /// A browser's call forwarded to the API on this route (its label).
    Api(&'a str),
    /// The token service (the token, revocation or token-details endpoint, the provider's
    /// metadata): fixed endpoints, so their path is recorded.
    TokenService,
}

/// The client span of one HTTP call upstream; its context goes with the call as
/// `traceparent`.
#[must_use = "a span ends when it is dropped"]
pub struct ClientSpan(Span);

impl ClientSpan {
    /// Starts the span of `request` and writes its `traceparent` (and a non-empty
    /// `tracestate`) into the request, replacing any the browser sent. Tracing off, or
    /// outside a request: does nothing at all.
    pub fn start<B>(request: &mut Request<B>, callee: Callee<'_>) -> ClientSpan {
        if TRACING.get().is_none() {
            return ClientSpan(Span(None));
        }
        let method = method_name(request.method());
        let uri = request.uri();
        let span = Span::child(method.unwrap_or("HTTP"), SpanKind::Client, || {
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let mut attributes = vec![
                KeyValue::new("http.request.method", method.unwrap_or("_OTHER")),
                KeyValue::new("url.scheme", if https { "https" } else { "http" }),
                KeyValue::new("server.port", i64::from(port)),
            ];
            if let Some(host) = uri.host() {
                attributes.push(KeyValue::new("server.address", host.to_string()));
            }
            match callee {
                Callee::Api(route) => attributes.push(KeyValue::new("tokengate.route", route.to_string())),
                Callee::TokenService => attributes.push(KeyValue::new("url.path", uri.path().to_string())),
            }
            attributes
        });
        if let Some(context) = &span.0 {
            let headers = request.headers_mut();
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
            TraceContextPropagator::new().inject_context(context, &mut HeaderSetter(headers));
        }
        ClientSpan(span)
    }

    /// Records the answer's status (5xx is an error) and ends the span.
    pub fn answered(self, status: StatusCode) {
        self.0.set("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            self.0.fail("server error");
        }
    }

    /// Records a call that got no answer (`error_type`: `timeout`, `unavailable`, …).
    pub fn failed(self, error_type: &'static str) {
        self.0.fail(error_type);
    }
}

/// Writes propagation headers, leaving out empty values (an empty `tracestate`).
struct HeaderSetter<'a>(&'a mut HeaderMap);

impl Injector for HeaderSetter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::try_from(value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The method as OpenTelemetry names it: a standard one, or `None` for anything else
/// (recorded as `_OTHER`, so a browser cannot fill the collector with made-up names).
fn method_name(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return None,
    })
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The exporter's HTTP client: hyper over rustls (the compiled-in Mozilla roots plus
/// `tracing.ca_file`), each call spawned on our tokio runtime. The SDK's export thread is
/// not a runtime thread, and hyper's connections need the runtime's reactor and timers.
#[derive(Debug)]
struct ExportClient {
    client: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>>,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    fn new(config: &TracingConfig, runtime: tokio::runtime::Handle) -> Result<ExportClient, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.export_timeout));
        http.set_nodelay(true);
        let tls = crate::upstream::tls_client_config(config.ca_file.as_deref(), "tracing.ca_file")?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(ExportClient { client: HyperClient::new(connector, config.export_timeout, None), runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|error| Box::new(error) as HttpError)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_are_not_span_names() {
        assert_eq!(method_name(&Method::GET), Some("GET"));
        let odd = Method::from_bytes(b"PROPFIND").expect("a method token");
        assert_eq!(method_name(&odd), None);
    }

    #[test]
    fn an_empty_tracestate_is_not_sent() {
        let mut headers = HeaderMap::new();
        let mut setter = HeaderSetter(&mut headers);
        setter.set("tracestate", String::new());
        setter.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        assert!(headers.get("tracestate").is_none());
        assert!(headers.get("traceparent").is_some());
    }

    #[test]
    fn off_means_no_span_and_untouched_headers() {
        // No test in this binary installs tracing: every hook is a no-op.
        assert!(!is_on());
        let mut request = Request::get("http://api.test/v1/x").body(()).expect("a valid request");
        request.headers_mut().insert(TRACEPARENT, HeaderValue::from_static("00-abc"));
        let span = ClientSpan::start(&mut request, Callee::Api("/api/"));
        assert!(span.0 .0.is_none());
        assert_eq!(request.headers().get(TRACEPARENT).map(HeaderValue::as_bytes), Some(&b"00-abc"[..]));
        assert!(RequestSpan::start(&request, false).is_none());
        assert!(Span::internal("x").0.is_none());
    }
}
