//! The request walk: the one place a browser's request is taken from start to finish.
//!
//! `App::handle` builds the request's [`RequestContext`] and takes it through one pass
//! of named steps:
//!
//! 1. **classify** — `router` names the target (an endpoint, a `[[route]]`, the demo
//!    page, an unsafe path, nothing);
//! 2. **guard** — with `server.cors`, a preflight is answered here (`cors`); `guard`
//!    checks the Origin allowlist and the CSRF proof;
//! 3. **endpoint** — a `/session*` endpoint runs one whole session operation
//!    (`endpoints`), or, for a route:
//! 4. **prepare** — `forward` rewrites the request and applies the body limit;
//! 5. **session** — `session` resolves the cookie's session (or mints a guest) and
//!    makes its tokens fresh;
//! 6. **forward** — `forward` sends it with the Bearer; on a 401 to a token that
//!    looked valid, one refresh and one replay;
//! 7. **respond** — the answer is cleaned and passes the `leak_guard`; any error
//!    becomes a response here and nowhere else (logged once at the level its source
//!    deserves, counted by code), the session cookie set by this request is attached
//!    whether the call succeeded or failed, the CORS grant is added (with `server.cors`),
//!    and the request's one log line and metrics are written.

use std::sync::Arc;

use crate::body::Inbound;
use arc_swap::ArcSwap;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::body::{Body, Reporter};
use crate::codec;
use crate::config::{Fixed, Live, Route, SessionPolicy};
use crate::cookie;
use crate::cors;
use crate::endpoints;
use crate::error::{Error, Source};
use crate::forward::{self, Forwarder, Limits, Prepared};
use crate::guard;
use crate::leak_guard::{LeakGuard, SessionNeedles};
use crate::metrics::Metrics;
use crate::poll_time;
use crate::protocol;
use crate::router::{self, Endpoint, Target};
use crate::scan::NeedleCache;
use crate::server::Answer;
use crate::session::{Active, Resolution, Sessions};
use crate::store::{SessionKind, SessionRecord};
use crate::trace::RequestSpan;
use crate::unauthorized;

pub use crate::context::ConnInfo;
use crate::context::{RequestContext, RequestIds};

/// `live` with each route's metric handles attached (made once per configuration, so a
/// request records without looking its label up).
fn with_route_metrics(metrics: &Metrics, mut live: Live) -> Live {
    for route in &mut live.routes {
        route.metrics = metrics.route_metrics(&route.label);
    }
    live
}

const DEMO_PAGE: &str = include_str!("../assets/demo.html");

/// The storefront-facing service: shared by every connection.
pub struct App {
    /// The settings a SIGHUP may change, swapped whole by a reload (`reload`) and read
    /// only through this handle, once per request.
    live: ArcSwap<Live>,
    /// The settings that need a restart.
    fixed: Fixed,
    sessions: Arc<Sessions>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    request_ids: RequestIds,
    /// The leak guard's searchers, built once per session token generation.
    needles: NeedleCache,
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
        Self {
            live: ArcSwap::from_pointee(with_route_metrics(&metrics, live)),
            fixed,
            sessions,
            forwarder,
            metrics,
            request_ids: RequestIds::default(),
            needles: NeedleCache::default(),
        }
    }

    /// Replaces the live settings (a reload; see `Config::reloaded`).
    pub fn reload(&self, live: Live) {
        self.metrics.add_route_labels(&crate::router::all_labels(&live.routes));
        self.live.store(Arc::new(with_route_metrics(&self.metrics, live)));
    }

    /// The live settings.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The settings that need a restart.
    pub fn fixed(&self) -> &Fixed {
        &self.fixed
    }

    /// Handles one request. Never fails: every error is a response, and every response
    /// goes with the request's id (the server sends it as `X-Request-Id`).
    pub async fn handle(&self, request: Box<Request<Inbound>>, conn: &ConnInfo) -> Answer {
        let live = self.live.load_full();
        let request_id = self.request_ids.for_request(request.headers());
        let started = poll_time::now().into_std();
        let now = self.sessions.clock().now_at(started);
        let mut ctx = RequestContext::new((&self.fixed, &live), &request, conn, request_id, (now, started));
        // Tracing off (the default): no span, nothing else to do.
        let Some(span) = RequestSpan::start(&request, ctx.conn.tls) else {
            let result = self.walk(&mut ctx, request).await;
            let response = self.respond(&mut ctx, result);
            return Answer { response, request_id: Some(ctx.request_id) };
        };
        // Boxed: held inline, a second walk future would double every request's future.
        let result = Box::pin(span.scope(self.walk(&mut ctx, request))).await;
        let response = self.respond(&mut ctx, result);
        span.finish(&ctx, response.status());
        Answer { response, request_id: Some(ctx.request_id) }
    }

    /// Steps 1 to 6: classify, guard, then the endpoint or the route's steps.
    async fn walk(
        &self,
        ctx: &mut RequestContext<'_>,
        request: Box<Request<Inbound>>,
    ) -> Result<Response<Body>, Error> {
        let live = ctx.live;
        let target = router::classify(request.uri().path(), &live.routes, live.demo_page);
        ctx.route = target.label();
        if let Target::Route(route) = &target {
            ctx.route_metrics = &route.metrics;
        }
        let server_to_server =
            matches!(target, Target::Endpoint(Endpoint::External | Endpoint::BackchannelLogout));
        if live.cors.is_some() && !server_to_server && cors::is_preflight(request.method(), request.headers())
        {
            // Answered here, before any session, CSRF proof or rate limit: a preflight
            // carries no cookie and must never mint a guest or reach the API.
            return match ctx.cors_origin {
                Some(_) => Ok(cors::preflight_response()),
                None => Err(Error::OriginRejected),
            };
        }
        if matches!(target, Target::Endpoint(Endpoint::External)) {
            // Server to server: the secret proves the caller, not CSRF rules; browsers are
            // refused before the secret is looked at. Off (404) without `[client_hosted]`.
            if ctx.fixed.client_hosted.is_none() {
                return Err(Error::NotFound);
            }
            guard::refuse_browsers(request.headers())?;
        } else if matches!(target, Target::Endpoint(Endpoint::BackchannelLogout)) {
            // Server to server too: the provider's signed logout token proves the caller.
            // Off (404) without `flavor = "oauth2"`.
            if !self.sessions.is_code_flow() {
                return Err(Error::NotFound);
            }
            guard::refuse_browser_context(request.headers())?;
        } else if target.is_protected() {
            // The hosted login's callback page posts a plain form; its state proves it.
            let exempt = matches!(target, Target::Endpoint(Endpoint::Callback));
            let granted = ctx.cors_origin.is_some();
            guard::check(
                request.method(),
                request.headers(),
                &live.allowed_origins,
                live.csrf,
                exempt,
                granted,
            )?;
        }
        match target {
            // Boxed: the session endpoints' futures (token calls, sign-ins) are far larger
            // than the forwarding path's, and every request's future would carry them.
            Target::Endpoint(endpoint) => {
                Box::pin(endpoints::handle(endpoint, *request, ctx, &self.sessions)).await
            }
            Target::Route(route) => self.proxy(ctx, route, request).await,
            Target::DemoPage => Ok(demo_page()),
            Target::UnsafePath => Err(Error::BadRequest("The request path is not allowed.")),
            Target::NotFound => Err(Error::NotFound),
        }
    }

    /// Steps 4 to 6 for a `[[route]]`; the answer has passed the leak guard.
    async fn proxy(
        &self,
        ctx: &mut RequestContext<'_>,
        route: &Route,
        request: Box<Request<Inbound>>,
    ) -> Result<Response<Body>, Error> {
        // Any other method would reach the API with the shopper's Bearer, unless the
        // route names it.
        let method = request.method();
        if !protocol::is_standard_method(method) && !route.extra_methods.contains(method) {
            return Err(Error::MethodNotAllowed { allow: protocol::STANDARD_METHODS });
        }
        let live = ctx.live;
        let limits = Limits {
            max_body_bytes: live.max_body_bytes,
            replayable: route.session != SessionPolicy::None,
            decodable_encodings: live.leak_guard.enabled,
        };
        let browser_coding = codec::preferred_by(request.headers());
        let prepared = self.forwarder.prepare(request, route, ctx, limits).await?;
        let active = self.session(ctx, route).await?;
        let record = match &active {
            Some(active) => Some(self.sessions.ensure_fresh(active, ctx.now).await?),
            None => None,
        };
        let (response, record) = self.forward(ctx, prepared, active.as_ref(), record).await?;
        let reporter = || Reporter { metrics: Arc::clone(&self.metrics), request_id: ctx.request_id.clone() };
        let guard = LeakGuard::new(live.leak_guard, ctx.fixed.upstream.request_timeout);
        let needles = match (&active, &record) {
            (Some(active), Some(record)) if guard.is_enabled() => {
                SessionNeedles::new(&self.needles, &active.key, record, ctx.now)
            }
            _ => None,
        };
        guard.inspect(response, needles, browser_coding, reporter).await
    }

    /// Step 5: the route's session policy applied to the cookie; a guest minted for
    /// this call gets its cookie whatever happens next.
    async fn session(&self, ctx: &mut RequestContext<'_>, route: &Route) -> Result<Option<Active>, Error> {
        let resolution = self.sessions.resolve(&ctx.cookie, route.session, ctx.now, ctx.client_ip()).await?;
        let active = match resolution {
            Resolution::Existing(active) => Some(active),
            Resolution::NewGuest(active, id) => {
                let max_age = self.sessions.cookie_max_age(&active.record, ctx.now);
                ctx.set_cookie = Some(cookie::set_session_cookie(&ctx.fixed.session, &id, max_age));
                Some(active)
            }
            Resolution::Anonymous => None,
        };
        ctx.session_kind = active.as_ref().map(|active| active.record.kind);
        Ok(active)
    }

    /// Step 6: send; on an upstream 401 about the token (`unauthorized`) to a token that
    /// looked valid, refresh once and replay once (when the body was kept); any other 401
    /// goes back as it came. Returns the cleaned answer and the tokens it was sent with,
    /// for the leak guard.
    async fn forward(
        &self,
        ctx: &mut RequestContext<'_>,
        prepared: Box<Prepared>,
        active: Option<&Active>,
        record: Option<Arc<SessionRecord>>,
    ) -> Result<(Response<Body>, Option<Arc<SessionRecord>>), Error> {
        let token = record.as_ref().map(|record| &record.access_token);
        let (Some(active), Some(sent_with), true) = (active, record.as_ref(), prepared.is_replayable())
        else {
            let watch = prepared.watch();
            let response =
                self.forwarder.send(prepared.into_request(&self.forwarder)?, token, &watch, ctx).await?;
            return Ok((response, record));
        };
        let first = self.forwarder.send_prepared(&prepared, token, ctx).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            prepared.recycle();
            return Ok((first, record));
        }
        // The rare path (a refresh and a replay) is boxed, off the common future's size.
        Box::pin(self.after_unauthorized(ctx, prepared, first, active, sent_with)).await
    }

    /// Step 6 after an upstream 401: refresh and replay when the 401 is about the token.
    async fn after_unauthorized(
        &self,
        ctx: &mut RequestContext<'_>,
        prepared: Box<Prepared>,
        first: Response<Body>,
        active: &Active,
        sent_with: &Arc<SessionRecord>,
    ) -> Result<(Response<Body>, Option<Arc<SessionRecord>>), Error> {
        let record = Some(Arc::clone(sent_with));
        let watch = prepared.watch();
        let (first, about_token) = self.read_unauthorized(ctx, first).await?;
        if !about_token {
            tracing::debug!(request_id = ctx.request_id_str(), "upstream 401 not about the token; passed on");
            return Ok((first, record));
        }
        drop(first);
        tracing::debug!(request_id = ctx.request_id_str(), "upstream 401; refreshing once and replaying");
        let fresh = self.sessions.refresh(active.key, sent_with.generation).await?;
        let replay = self
            .forwarder
            .send(prepared.into_request(&self.forwarder)?, Some(&fresh.access_token), &watch, ctx)
            .await?;
        Ok((replay, Some(fresh)))
    }

    /// Reads the start of a 401's body (at most `unauthorized::MAX_READ_BYTES`, within
    /// the request deadline) to tell whether it is about the token; returns the response
    /// rebuilt from what was read and the rest of the stream.
    async fn read_unauthorized(
        &self,
        ctx: &RequestContext<'_>,
        response: Response<Body>,
    ) -> Result<(Response<Body>, bool), Error> {
        let (parts, incoming) = response.into_parts();
        let limit = unauthorized::MAX_READ_BYTES as u64;
        let read =
            tokio::time::timeout(ctx.fixed.upstream.request_timeout, forward::read_up_to(incoming, limit))
                .await
                .map_err(|_| Error::UpstreamTimeout)?
                .map_err(|error| Error::UpstreamUnavailable(format!("reading a 401: {error}")))?;
        let about_token = unauthorized::is_about_the_token(&parts.headers, read.bytes());
        Ok((Response::from_parts(parts, read.into_body()), about_token))
    }

    /// Step 7: the only place an error becomes a response; then the cookie, the log line
    /// and the metrics (the request id goes with the response: [`Answer`]).
    fn respond(&self, ctx: &mut RequestContext<'_>, result: Result<Response<Body>, Error>) -> Response<Body> {
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                ctx.error_code = Some(error.code());
                self.error_response(ctx, &error)
            }
        };
        let headers = response.headers_mut();
        if let Some(set_cookie) = ctx.set_cookie.take() {
            headers.append(SET_COOKIE, set_cookie);
        }
        // Every answer leaves here, errors included, so the CORS grant is added here only.
        if ctx.live.cors.is_some() {
            cors::decorate(headers, ctx.cors_origin.take());
        }
        let latency = poll_time::now().into_std().saturating_duration_since(ctx.started);
        self.metrics.record_request(ctx.route, ctx.route_metrics, response.status(), latency);
        if ctx.live.log_access {
            log_access(ctx, response.status(), latency);
        }
        response
    }

    /// Logs `error` once, by where it came from, counts it, and renders it.
    fn error_response(&self, ctx: &RequestContext<'_>, error: &Error) -> Response<Body> {
        let (request_id, route, code) = (ctx.request_id_str(), ctx.route, error.code());
        match (error, error.source_kind()) {
            (Error::TokenLeakBlocked { place }, _) => {
                tracing::warn!(
                    target: "tokengate::security",
                    event = "token_leak_blocked",
                    request_id,
                    route,
                    place,
                    "an upstream response carried the session's token; replaced with 502"
                );
                self.metrics.record_leak_blocked();
            }
            (_, Source::Downstream) => tracing::debug!(request_id, route, code, "refused"),
            (_, Source::Upstream | Source::Store) => {
                tracing::warn!(request_id, route, code, %error, "failed")
            }
            (_, Source::Internal) => tracing::error!(request_id, route, code, %error, "failed"),
        }
        self.metrics.record_rejection(code);
        let mut response = error.to_response();
        if error.clears_cookie() {
            response.headers_mut().append(SET_COOKIE, cookie::clear_session_cookie(&ctx.fixed.session));
        }
        response
    }
}

/// The access log line of one request (`log.access = true`).
fn log_access(ctx: &RequestContext<'_>, status: StatusCode, latency: std::time::Duration) {
    tracing::info!(
        request_id = ctx.request_id_str(),
        method = %ctx.method,
        route = ctx.route,
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        upstream_ms = ctx.upstream.as_secs_f64() * 1000.0,
        session = ctx.session_kind.map_or("none", SessionKind::as_str),
        "request"
    );
}

fn demo_page() -> Response<Body> {
    let mut response = Response::new(Body::full(DEMO_PAGE));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
