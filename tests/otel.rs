//! OpenTelemetry traces (`[tracing]`), against the collector stand-in of
//! `tests/common/otlp.rs`: one trace per request with its route and session kind and
//! never a secret, the store lookup, the refresh and the upstream calls as its children,
//! the `traceparent` the API and the token endpoint receive naming those spans, the
//! requests that waited for another's refresh marked so, a browser's `traceparent`
//! ignored unless trusted, spans flushed at drain, and nothing at
//! all (no export, no header) with tracing off.

mod common;

use std::time::Duration;

use common::otlp::{Collector, RecordedSpan};
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A browser's own trace context, as a storefront's tracing would send it.
const BROWSER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const BROWSER_SPAN_ID: &str = "00f067aa0ba902b7";
const BROWSER_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The harness's options with traces sent to `collector` every 100 ms.
fn traced(collector: &Collector) -> Options {
    Options::default()
        .set("tracing", "otlp_endpoint", collector.endpoint())
        .set("tracing", "service_name", "tokengate-test")
        .set("tracing", "batch_delay", "100ms")
}

/// `traceparent` → (trace id, parent span id, flags).
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "not a W3C traceparent: {traceparent:?}");
    assert_eq!(fields[0], "00", "version: {traceparent:?}");
    (fields[1].to_string(), fields[2].to_string(), fields[3].to_string())
}

/// The header the API's echo saw, if any.
fn echoed(reply: &Reply, name: &str) -> Option<String> {
    echoed_headers(reply).get(name).and_then(Value::as_str).map(str::to_string)
}

fn in_trace<'s>(spans: &'s [RecordedSpan], trace_id: &str) -> Vec<&'s RecordedSpan> {
    spans.iter().filter(|span| span.trace_id == trace_id).collect()
}

fn find<'s>(trace: &[&'s RecordedSpan], what: impl Fn(&RecordedSpan) -> bool) -> Option<&'s RecordedSpan> {
    trace.iter().copied().find(|span| what(span))
}

fn is_server(span: &RecordedSpan) -> bool {
    span.kind == "SPAN_KIND_SERVER"
}

fn is_api_call(span: &RecordedSpan) -> bool {
    span.kind == "SPAN_KIND_CLIENT" && span.attribute("tokengate.route").is_some()
}

fn is_token_call(span: &RecordedSpan) -> bool {
    span.kind == "SPAN_KIND_CLIENT" && span.attribute("url.path") == Some("/oauth20/token")
}

/// Every secret of the session: the tokens the mock issued, the cookie value, the
/// password and the client secret.
fn secrets(env: &Env, browser: &Browser) -> Vec<String> {
    let mut secrets = env.issued_tokens();
    assert!(!secrets.is_empty(), "the mock issued tokens");
    secrets.extend(browser.cookie());
    secrets.push(PASSWORD.to_string());
    secrets.push(CLIENT_SECRET.to_string());
    secrets
}

#[tokio::test]
async fn a_forwarded_call_is_one_trace_with_its_route_and_session_kind_and_no_secret() {
    let collector = Collector::start().await;
    let env = Env::with(traced(&collector)).await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    let reply = browser.get("/api/debug/echo?x=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let sent = echoed(&reply, "traceparent").expect("the API received a traceparent");
    let (trace_id, parent_id, flags) = parts(&sent);
    assert_eq!(flags, "01", "a sampled trace");
    assert!(echoed(&reply, "tracestate").is_none(), "no empty tracestate is sent");
    let spans = collector
        .wait_for(WAIT, |spans| {
            let trace = in_trace(spans, &trace_id);
            find(&trace, is_server).is_some() && find(&trace, is_api_call).is_some()
        })
        .await;
    let trace = in_trace(&spans, &trace_id);
    let server = find(&trace, is_server).expect("the request's span");
    assert_eq!(server.name, "GET /api/");
    assert_eq!(server.service_name, "tokengate-test");
    assert!(server.parent_span_id.is_empty(), "each request starts a trace: {server:?}");
    assert_eq!(server.attribute("http.request.method"), Some("GET"));
    assert_eq!(server.attribute("http.route"), Some("/api/"));
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));
    assert_eq!(server.attribute("tokengate.session.kind"), Some("shopper"));
    assert!(server.attribute("tokengate.request_id").is_some_and(|id| !id.is_empty()));
    assert_ne!(server.status, "STATUS_CODE_ERROR");

    let lookup = find(&trace, |span| span.name == "session.lookup").expect("the store lookup's span");
    assert_eq!(lookup.parent_span_id, server.span_id);
    assert_eq!(lookup.attribute("tokengate.session.found"), Some("true"));

    let call = find(&trace, is_api_call).expect("the upstream call's span");
    assert_eq!(call.parent_span_id, server.span_id);
    assert_eq!(call.span_id, parent_id, "the API's traceparent names the upstream call's span");
    assert_eq!(call.name, "GET");
    assert_eq!(call.attribute("tokengate.route"), Some("/api/"));
    assert_eq!(call.attribute("server.address"), Some("127.0.0.1"));
    assert_eq!(call.attribute("server.port"), Some(env.mock.addr.port().to_string().as_str()));
    assert_eq!(call.attribute("http.response.status_code"), Some("200"));
    assert_eq!(env.stats().await["traceparent"]["last_resource"], sent.as_str());

    // The login's trace too: its token-endpoint call is a child of its request.
    let login = spans
        .iter()
        .find(|span| is_server(span) && span.name == "POST /session/login")
        .expect("the login's span");
    let login_trace = in_trace(&spans, &login.trace_id);
    let minted = find(&login_trace, is_token_call).expect("the login's token call");
    assert_eq!(minted.parent_span_id, login.span_id);

    // Nothing any span says holds a token, the cookie, the password, the client secret,
    // the query or the path below the route.
    let secrets = secrets(&env, &browser);
    for span in collector.spans() {
        let text = span.all_text();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in span {}: {text}", span.name);
        }
        assert!(!text.contains("x=1") && !text.contains("debug/echo"), "the path or query in {text}");
    }
}

#[tokio::test]
async fn a_refresh_is_a_child_of_its_request_and_its_token_call_carries_the_trace() {
    let collector = Collector::start().await;
    let env = Env::with(traced(&collector)).await;
    let browser = env.browser();
    // The login's token is reported as expiring at once: the next call refreshes first.
    env.set_faults(json!({"expires_in": 0})).await;
    assert_eq!(browser.login().await.status, StatusCode::OK);
    env.clear_faults().await;
    let reply = browser.get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(env.refresh_calls().await, 1);

    let stats = env.stats().await;
    let sent = stats["traceparent"]["last_oauth"].as_str().expect("the token endpoint got a traceparent");
    let (trace_id, parent_id, _) = parts(sent);
    let spans = collector
        .wait_for(WAIT, |spans| {
            let trace = in_trace(spans, &trace_id);
            find(&trace, is_server).is_some() && find(&trace, is_token_call).is_some()
        })
        .await;
    let trace = in_trace(&spans, &trace_id);
    let server = find(&trace, is_server).expect("the request's span");
    assert_eq!(server.name, "GET /api/");
    let refresh = find(&trace, |span| span.name == "session.refresh").expect("the refresh's span");
    assert_eq!(refresh.parent_span_id, server.span_id);
    assert_eq!(refresh.attribute("tokengate.refresh.coalesced"), Some("false"), "this request refreshed");
    let waited = find(&trace, |span| span.name == "session.refresh.lock_wait").expect("the lock wait's span");
    assert_eq!(waited.parent_span_id, refresh.span_id);
    let token_call = find(&trace, is_token_call).expect("the token endpoint call's span");
    assert_eq!(token_call.parent_span_id, refresh.span_id, "the refresh task carries the trace");
    assert_eq!(token_call.span_id, parent_id, "the token endpoint's traceparent names the call's span");
    assert_eq!(token_call.name, "POST");
    assert_eq!(token_call.attribute("http.response.status_code"), Some("200"));
    let call = find(&trace, is_api_call).expect("the upstream call's span, after the refresh");
    assert_eq!(call.parent_span_id, server.span_id);

    let secrets = secrets(&env, &browser);
    for span in collector.spans() {
        let text = span.all_text();
        assert!(secrets.iter().all(|secret| !text.contains(secret.as_str())), "a secret in {text}");
    }
}

#[tokio::test]
async fn requests_that_wait_for_another_requests_refresh_say_so() {
    let collector = Collector::start().await;
    let env = Env::with(traced(&collector).set("upstream", "request_timeout", "60s")).await;
    let browser = env.browser();
    env.set_faults(json!({"expires_in": 0})).await;
    assert_eq!(browser.login().await.status, StatusCode::OK);
    // The refresh is held at the token endpoint until every call has read the stale
    // session (its lookup span has ended), so each of them asks for a refresh.
    env.set_faults(json!({"token_hold": true})).await;
    let lookups = |spans: &[RecordedSpan]| spans.iter().filter(|span| span.name == "session.lookup").count();
    let before = lookups(&collector.spans());
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let browser = browser.clone();
            async move { browser.get("/api/shoppers/me").await }
        })
        .collect();
    let calls = tokio::spawn(join_all(calls));
    collector.wait_for(WAIT, |spans| lookups(spans) >= before + 5).await;
    env.clear_faults().await;
    for reply in calls.await.expect("the calls finish") {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(env.refresh_calls().await, 1);

    let spans = collector
        .wait_for(WAIT, |spans| {
            spans.iter().filter(|span| is_server(span) && span.name == "GET /api/").count() == 5
        })
        .await;
    let refreshes: Vec<&RecordedSpan> = spans.iter().filter(|span| span.name == "session.refresh").collect();
    assert_eq!(refreshes.len(), 5, "each call asked for a refresh: {refreshes:#?}");
    let children = |parent: &RecordedSpan, name: &str| {
        spans.iter().filter(|span| span.parent_span_id == parent.span_id && span.name == name).count()
    };
    let (refreshed, waited): (Vec<&RecordedSpan>, Vec<&RecordedSpan>) = refreshes
        .iter()
        .copied()
        .partition(|span| span.attribute("tokengate.refresh.coalesced") == Some("false"));
    assert_eq!(refreshed.len(), 1, "one call refreshed: {refreshes:#?}");
    assert!(spans.iter().any(|span| is_token_call(span) && span.parent_span_id == refreshed[0].span_id));
    assert_eq!(waited.len(), 4, "four used its tokens: {refreshes:#?}");
    for span in &waited {
        assert_eq!(span.attribute("tokengate.refresh.coalesced"), Some("true"));
        assert_eq!(children(span, "session.refresh.lock_wait"), 1, "the wait for the lock is its own span");
        assert!(!spans.iter().any(|call| is_token_call(call) && call.parent_span_id == span.span_id));
    }
}

#[tokio::test]
async fn a_browsers_traceparent_is_not_trusted_by_default() {
    let collector = Collector::start().await;
    let env = Env::with(traced(&collector)).await;
    let headers = [("traceparent", BROWSER_TRACEPARENT), ("tracestate", "storefront=abc")];
    let reply = env.browser().send(Method::GET, "/api/debug/echo", &headers, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let sent = echoed(&reply, "traceparent").expect("the API received a traceparent");
    let (trace_id, parent_id, _) = parts(&sent);
    assert_ne!(trace_id, BROWSER_TRACE_ID, "the browser chose no trace of ours");
    assert!(echoed(&reply, "tracestate").is_none(), "the browser's tracestate is dropped with its trace");
    let spans =
        collector.wait_for(WAIT, |spans| find(&in_trace(spans, &trace_id), is_server).is_some()).await;
    let trace = in_trace(&spans, &trace_id);
    let server = find(&trace, is_server).expect("the request's span");
    assert!(server.parent_span_id.is_empty(), "a trace of its own: {server:?}");
    assert_eq!(server.attribute("tokengate.session.kind"), Some("guest"), "a lazy guest was minted");
    let call = find(&trace, is_api_call).expect("the upstream call's span");
    assert_eq!(call.span_id, parent_id);
    assert!(spans.iter().all(|span| span.trace_id != BROWSER_TRACE_ID));
}

#[tokio::test]
async fn trust_traceparent_continues_the_browsers_trace() {
    let collector = Collector::start().await;
    let env = Env::with(traced(&collector).set("tracing", "trust_traceparent", true)).await;
    let headers = [("traceparent", BROWSER_TRACEPARENT), ("tracestate", "storefront=abc")];
    let reply = env.browser().send(Method::GET, "/api/public/echo", &headers, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "no token on a session-less route: {}", reply.text());

    let spans = collector
        .wait_for(WAIT, |spans| {
            let trace = in_trace(spans, BROWSER_TRACE_ID);
            find(&trace, is_server).is_some() && find(&trace, is_api_call).is_some()
        })
        .await;
    let trace = in_trace(&spans, BROWSER_TRACE_ID);
    let server = find(&trace, is_server).expect("the request's span, in the browser's trace");
    assert_eq!(server.parent_span_id, BROWSER_SPAN_ID);
    assert_eq!(server.name, "GET /api/public/");
    assert_eq!(server.attribute("tokengate.session.kind"), Some("none"));
    let call = find(&trace, is_api_call).expect("the upstream call's span");
    assert_eq!(call.parent_span_id, server.span_id);
    let stats = env.stats().await;
    let sent = stats["traceparent"]["last_resource"].as_str().expect("the API received a traceparent");
    assert_eq!(parts(sent), (BROWSER_TRACE_ID.to_string(), call.span_id.clone(), "01".to_string()));
}

#[tokio::test]
async fn the_last_requests_spans_are_flushed_when_the_proxy_stops() {
    let collector = Collector::start().await;
    // No batch would go out for an hour: only the drain sends it.
    let mut env = Env::with(traced(&collector).set("tracing", "batch_delay", "1h")).await;
    let reply = env.browser().get("/api/shoppers/me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let status = env.proxy.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "exit 0 after SIGTERM: {status:?}");
    let spans = collector.spans();
    assert!(
        spans.iter().any(|span| is_server(span) && span.name == "GET /api/"),
        "the request's span was sent before the process ended: {spans:#?}"
    );
}

#[tokio::test]
async fn unsampled_requests_send_no_spans_but_still_propagate_the_trace() {
    let collector = Collector::start().await;
    let mut env = Env::with(traced(&collector).set("tracing", "sample_ratio", 0)).await;
    let reply = env.browser().get("/api/debug/echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let sent = echoed(&reply, "traceparent").expect("a traceparent even when not sampled");
    let (trace_id, _, flags) = parts(&sent);
    assert_eq!(flags, "00", "not sampled: the API is told so");
    assert_ne!(trace_id, "0".repeat(32));
    let status = env.proxy.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "exit 0 after SIGTERM: {status:?}");
    assert!(collector.spans().is_empty(), "nothing sampled, nothing sent: {:#?}", collector.spans());
}

#[tokio::test]
async fn tracing_off_sends_nothing_and_adds_no_traceparent() {
    let collector = Collector::start().await;
    // A [tracing] section with an empty endpoint is off, like no section at all.
    let options = Options::default()
        .set("tracing", "otlp_endpoint", "")
        .set("tracing", "service_name", "tokengate-test")
        .set("tracing", "batch_delay", "100ms");
    let mut env = Env::with(options).await;
    let browser = env.browser();
    assert_eq!(browser.login().await.status, StatusCode::OK);
    let reply = browser.get("/api/debug/echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(echoed(&reply, "traceparent").is_none(), "no traceparent of ours");
    assert_eq!(env.stats().await["traceparent"]["seen"], 0, "neither the API nor the token endpoint got one");

    // Not a participant: a browser's trace headers pass as any header does.
    let headers = [("traceparent", BROWSER_TRACEPARENT), ("tracestate", "storefront=abc")];
    let reply = browser.send(Method::GET, "/api/debug/echo", &headers, None).await;
    assert_eq!(echoed(&reply, "traceparent").as_deref(), Some(BROWSER_TRACEPARENT));
    assert_eq!(echoed(&reply, "tracestate").as_deref(), Some("storefront=abc"));

    // Once the process is gone, whatever it would have sent has arrived.
    let status = env.proxy.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "exit 0 after SIGTERM: {status:?}");
    assert_eq!(collector.exports(), 0, "tracing off sends nothing");
}
