//! The request walk: the one place a browser's request is taken from start to finish.
//!
//! `App::handle` assigns the request id, classifies the path (`router`), runs the guards
//! (`guard`), reads the cookie (`cookie`) and hands over to the session endpoints
//! (`endpoints`) or to forwarding (`handle_route` here, with `session`, `forward` and
//! `leak_guard`). Every `Err` becomes a response in exactly one place, `respond_error`,
//! which also logs it once at the level its source deserves. Then the request's one log
//! line is written and its metrics recorded.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, SET_COOKIE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::{Fixed, Live, Route};
use crate::cookie;
use crate::endpoints::{self, Context, Outcome};
use crate::error::{Error, Source};
use crate::forward::{self, Forwarder, Origin};
use crate::guard;
use crate::hosted_login::HostedLogin;
use crate::leak_guard::LeakGuard;
use crate::metrics::Metrics;
use crate::ratelimit;
use crate::router::{self, Endpoint, Target};
use crate::session::{now_secs, Active, Resolution, Sessions};
use crate::store::SessionKind;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const DEMO_PAGE: &str = include_str!("../assets/demo.html");

/// Facts about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// The storefront-facing service: shared by every connection.
pub struct App {
    /// The settings a SIGHUP reload swaps in (`reload`); read once per request.
    live: ArcSwap<Live>,
    /// The settings that need a restart.
    fixed: Fixed,
    sessions: Arc<Sessions>,
    forwarder: Forwarder,
    hosted_login: Option<HostedLogin>,
    metrics: Arc<Metrics>,
    request_ids: RequestIds,
    forwarded_proto: &'static str,
}

impl App {
    /// The service over its parts.
    pub fn new(
        fixed: Fixed,
        live: Live,
        sessions: Arc<Sessions>,
        forwarder: Forwarder,
        metrics: Arc<Metrics>,
    ) -> Self {
        let behind_https = fixed.server.public_origin.as_deref().is_some_and(|o| o.starts_with("https://"));
        Self {
            forwarded_proto: if behind_https { "https" } else { "http" },
            hosted_login: HostedLogin::new(&fixed),
            live: ArcSwap::from_pointee(live),
            fixed,
            sessions,
            forwarder,
            metrics,
            request_ids: RequestIds::new(),
        }
    }

    /// Replaces the live settings (a reload; see `Config::reloaded`).
    pub fn reload(&self, live: Live) {
        self.metrics.add_route_labels(&crate::router::all_labels(&live.routes));
        self.live.store(Arc::new(live));
    }

    /// The live settings.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The settings that need a restart, as the process started with them.
    pub fn fixed(&self) -> &Fixed {
        &self.fixed
    }

    /// The hosted-login flow, for the sweeper.
    pub fn hosted_login(&self) -> Option<&HostedLogin> {
        self.hosted_login.as_ref()
    }

    /// Handles one request. Never fails: every error is a response.
    pub async fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let live = self.live.load_full();
        let live = live.as_ref();
        let request_id = self.request_ids.for_request(request.headers());
        let method = request.method().clone();
        let target = router::classify(request.uri().path(), &live.routes, live.demo_page);
        let label = target.label();

        let (mut response, session_kind) = match self.dispatch(live, target, request, conn, &request_id).await
        {
            Ok(outcome) => (outcome.response, outcome.session_kind),
            Err(error) => (self.respond_error(&error, &request_id, label), None),
        };
        response.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        let latency = started.elapsed();
        self.metrics.record_request(label, response.status(), latency);
        tracing::info!(
            request_id = request_id.to_str().unwrap_or("-"),
            method = %method,
            route = label,
            status = response.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            session = session_kind.map_or("none", SessionKind::as_str),
            "request"
        );
        response
    }

    async fn dispatch(
        &self,
        live: &Live,
        target: Target<'_>,
        request: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Outcome, Error> {
        if target.is_protected() {
            // The hosted login's callback page posts a plain form; its state proves it.
            let exempt = matches!(target, Target::Endpoint(Endpoint::Callback));
            guard::check(request.method(), request.headers(), &live.allowed_origins, live.csrf, exempt)?;
        }
        match target {
            Target::Endpoint(endpoint) => {
                let context = Context {
                    cookie: cookie::read_session_cookie(request.headers(), &self.fixed.session.cookie_name),
                    client: self.client_ip(live, conn, &request),
                    sessions: &self.sessions,
                    config: &self.fixed,
                    hosted_login: self.hosted_login.as_ref(),
                };
                match endpoints::handle(endpoint, request, context).await {
                    // The 405 carries an Allow header naming the methods the endpoint takes.
                    Err(Error::MethodNotAllowed) => {
                        Ok(method_not_allowed(endpoints::allowed_methods(endpoint)))
                    }
                    other => other,
                }
            }
            Target::Route(route) => Ok(self.handle_route(live, route, request, conn, request_id).await),
            Target::DemoPage => Ok(Outcome { response: demo_page(), session_kind: None }),
            Target::UnsafePath => Err(Error::BadRequest("The request path is not allowed.")),
            Target::NotFound => Err(Error::NotFound),
        }
    }

    fn client_ip(&self, live: &Live, conn: ConnInfo, request: &Request<Incoming>) -> IpAddr {
        ratelimit::client_ip(conn.peer, request.headers(), live.trusted_proxy_depth)
    }

    /// Forwards a call on a `[[route]]`. Once a guest session is minted for the call, its
    /// cookie goes back even if the call then fails, so the next call does not mint again.
    async fn handle_route(
        &self,
        live: &Live,
        route: &Route,
        request: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
    ) -> Outcome {
        let label = route.label.as_str();
        if let Err(error) = self.check_body_size(live, &request) {
            return Outcome { response: self.respond_error(&error, request_id, label), session_kind: None };
        }
        let now = now_secs();
        let cookie = cookie::read_session_cookie(request.headers(), &self.fixed.session.cookie_name);
        let client = self.client_ip(live, conn, &request);
        let resolution = match self.sessions.resolve(&cookie, route.session, now, client).await {
            Ok(resolution) => resolution,
            Err(error) => {
                return Outcome {
                    response: self.respond_error(&error, request_id, label),
                    session_kind: None,
                }
            }
        };
        let (active, new_cookie) = match resolution {
            Resolution::Existing(active) => (Some(active), None),
            Resolution::NewGuest(active, id) => {
                let max_age = self.sessions.cookie_max_age(&active.record, now);
                (Some(active), Some(cookie::set_session_cookie(&self.fixed.session, &id, max_age)))
            }
            Resolution::Anonymous => (None, None),
        };
        let session_kind = active.as_ref().map(|active| active.record.kind);
        let mut response = match self.forward(live, route, request, conn, request_id, active.as_ref()).await {
            Ok(response) => response,
            Err(error) => self.respond_error(&error, request_id, label),
        };
        if let Some(set_cookie) = new_cookie {
            response.headers_mut().append(SET_COOKIE, set_cookie);
        }
        Outcome { response, session_kind }
    }

    fn check_body_size(&self, live: &Live, request: &Request<Incoming>) -> Result<(), Error> {
        let length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        match length {
            Some(length) if length > live.max_body_bytes => Err(Error::PayloadTooLarge),
            _ => Ok(()),
        }
    }

    /// Refresh ahead, send, and on an upstream 401 to a token that looked valid, refresh
    /// once and replay once (when the body was small enough to keep). The answer passes
    /// the leak guard before it may go to the browser.
    async fn forward(
        &self,
        live: &Live,
        route: &Route,
        request: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
        active: Option<&Active>,
    ) -> Result<Response<Body>, Error> {
        let now = now_secs();
        let record = match active {
            Some(active) => Some(self.sessions.ensure_fresh(active, now).await?),
            None => None,
        };
        let host = request.headers().get(HOST).cloned().or_else(|| {
            request.uri().authority().and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        });
        let origin = Origin {
            forwarded_for: forward::forwarded_for(
                conn.peer.ip(),
                request.headers(),
                live.trusted_proxy_depth,
            ),
            proto: self.proto(conn),
            host: host.as_ref(),
        };
        let prepared = self
            .forwarder
            .prepare(request, route, origin, request_id, live.max_body_bytes, live.leak_guard.enabled)
            .await?;
        let token = record.as_ref().map(|record| &record.access_token);

        let (Some(active), Some(record), true) = (active, record.as_ref(), prepared.is_replayable()) else {
            let response = self.send(route, prepared.into_request(token)?).await?;
            return self.guard_leaks(live, forward::clean_response(response), record.as_deref()).await;
        };
        let first = self.send(route, prepared.to_request(token)?).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return self.guard_leaks(live, forward::clean_response(first), Some(record)).await;
        }
        drop(first);
        tracing::debug!(
            request_id = request_id.to_str().unwrap_or("-"),
            "upstream 401; refreshing once and replaying"
        );
        let fresh = self.sessions.refresh(active.key, record.generation).await?;
        let replay = self.send(route, prepared.into_request(Some(&fresh.access_token))?).await?;
        self.guard_leaks(live, forward::clean_response(replay), Some(&fresh)).await
    }

    async fn send(&self, route: &Route, request: Request<Body>) -> Result<Response<Incoming>, Error> {
        let started = Instant::now();
        let result = self.forwarder.send(request).await;
        self.metrics.record_upstream(&route.label, started.elapsed());
        result
    }

    async fn guard_leaks(
        &self,
        live: &Live,
        response: Response<Body>,
        record: Option<&crate::store::SessionRecord>,
    ) -> Result<Response<Body>, Error> {
        let Some(record) = record else { return Ok(response) };
        let guarded = LeakGuard::new(live.leak_guard).inspect(response, record).await;
        if matches!(guarded, Err(Error::TokenLeakBlocked)) {
            self.metrics.record_leak_blocked();
        }
        guarded
    }

    fn proto(&self, conn: ConnInfo) -> &'static str {
        if conn.tls {
            "https"
        } else {
            self.forwarded_proto
        }
    }

    /// The only place an error becomes a response; logs it once by where it came from.
    fn respond_error(&self, error: &Error, request_id: &HeaderValue, route: &str) -> Response<Body> {
        let request_id = request_id.to_str().unwrap_or("-");
        match error.source_kind() {
            Source::Downstream => tracing::debug!(request_id, route, code = error.code(), "refused"),
            Source::Upstream | Source::Store => {
                tracing::warn!(request_id, route, code = error.code(), %error, "failed")
            }
            Source::Internal => tracing::error!(request_id, route, code = error.code(), %error, "failed"),
        }
        self.metrics.record_rejection(error.code());
        let mut response = error.to_response();
        if error.clears_cookie() {
            response.headers_mut().append(SET_COOKIE, cookie::clear_session_cookie(&self.fixed.session));
        }
        response
    }
}

fn method_not_allowed(allow: HeaderValue) -> Outcome {
    let mut response = Error::MethodNotAllowed.to_response();
    response.headers_mut().insert(ALLOW, allow);
    Outcome { response, session_kind: None }
}

fn demo_page() -> Response<Body> {
    let mut response = Response::new(Body::full(DEMO_PAGE));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Request ids: the caller's `x-request-id` when it is short and plain, else our own
/// (a random per-process prefix and a counter: unique, cheap, and unguessable enough
/// for correlation, which is all they are for).
struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        Self { prefix: rand::random(), counter: AtomicU64::new(0) }
    }

    fn for_request(&self, headers: &http::HeaderMap) -> HeaderValue {
        if let Some(given) = headers.get(X_REQUEST_ID) {
            let plain = given.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
            if plain && (1..=128).contains(&given.len()) {
                return given.clone();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}{:012x}", self.prefix, n))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}
