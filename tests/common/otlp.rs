//! A stand-in for an OpenTelemetry collector: an HTTP/1.1 server on a 127.0.0.1 port
//! that takes `POST /v1/traces` (OTLP/HTTP, protobuf), decodes each export with the
//! OpenTelemetry project's own message types (`opentelemetry-proto`) and keeps every
//! span for the test to look at. It answers 200 with an empty export response, as a
//! collector that accepted everything does; anything else is 404.
//!
//! ```ignore
//! let collector = Collector::start().await;
//! let options = Options::default().set("tracing", "otlp_endpoint", collector.endpoint());
//! // ... requests ...
//! let spans = collector.wait_for(Duration::from_secs(20), |spans| spans.len() >= 3).await;
//! ```
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Largest export body read (the proxy's batches are far smaller).
const MAX_EXPORT_BYTES: usize = 16 * 1024 * 1024;

/// One span as the collector received it; ids are lowercase hex, as in `traceparent`.
#[derive(Debug, Clone)]
pub struct RecordedSpan {
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, `SPAN_KIND_INTERNAL`, …
    pub kind: String,
    /// Every attribute, its value as text.
    pub attributes: Vec<(String, String)>,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_OK` or `STATUS_CODE_ERROR`.
    pub status: String,
    pub status_message: String,
}

impl RecordedSpan {
    /// The attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Everything the span says, as text, for a search for secrets.
    pub fn all_text(&self) -> String {
        let mut text = format!("{} {} {} ", self.service_name, self.name, self.status_message);
        for (key, value) in &self.attributes {
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        text
    }
}

/// The running stand-in; stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<RecordedSpan>>>,
    exports: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the collector binds a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let exports = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, Arc::clone(&spans), Arc::clone(&exports)));
        Collector { addr, spans, exports, task }
    }

    /// The base URL for `tracing.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many export requests arrived (any body, decodable or not).
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::Relaxed)
    }

    /// Polls until `ready` holds for the spans received, or panics at `deadline`.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        ready: impl Fn(&[RecordedSpan]) -> bool,
    ) -> Vec<RecordedSpan> {
        let found = super::eventually(deadline, || {
            let spans = self.spans();
            let done = ready(&spans);
            async move { done.then_some(spans) }
        })
        .await;
        match found {
            Some(spans) => spans,
            None => {
                panic!("the collector did not get the expected spans in {deadline:?}: {:#?}", self.spans())
            }
        }
    }
}

async fn serve(listener: TcpListener, spans: Arc<Mutex<Vec<RecordedSpan>>>, exports: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (spans, exports) = (Arc::clone(&spans), Arc::clone(&exports));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (spans, exports) = (Arc::clone(&spans), Arc::clone(&exports));
                async move { Ok::<_, std::convert::Infallible>(answer(request, &spans, &exports).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    spans: &Mutex<Vec<RecordedSpan>>,
    exports: &AtomicU64,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/v1/traces" {
        return status(StatusCode::NOT_FOUND);
    }
    exports.fetch_add(1, Ordering::Relaxed);
    let Ok(body) = Limited::new(request.into_body(), MAX_EXPORT_BYTES).collect().await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let received = flatten(export);
    spans.lock().unwrap_or_else(|e| e.into_inner()).extend(received);
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/x-protobuf"));
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<RecordedSpan> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource_attributes = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
        let service_name = attributes(&resource_attributes)
            .into_iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(RecordedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind::try_from(span.kind)
                        .map(|kind| kind.as_str_name().to_string())
                        .unwrap_or_else(|_| format!("kind {}", span.kind)),
                    name: span.name,
                    attributes: attributes(&span.attributes),
                    status: opentelemetry_proto::tonic::trace::v1::status::StatusCode::try_from(status.code)
                        .map(|code| code.as_str_name().to_string())
                        .unwrap_or_else(|_| format!("code {}", status.code)),
                    status_message: status.message,
                });
            }
        }
    }
    out
}

fn attributes(pairs: &[KeyValue]) -> Vec<(String, String)> {
    pairs.iter().map(|pair| (pair.key.clone(), text_of(pair.value.as_ref()))).collect()
}

fn text_of(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
