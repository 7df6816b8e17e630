//! Every metric tokengate exports, in one place, in the Prometheus/OpenMetrics text
//! format (`prometheus-client`, the Prometheus project's own Rust client).
//!
//! The hot path never allocates for a metric: handles for every route label and status
//! class are created at startup and found by a hash lookup on the route label; label
//! values outside the known set fall into `route="(other)"`.
//!
//! Recording a request, an upstream call or a token call takes no lock: counters and gauges
//! are `prometheus-client`'s atomics, and the three duration histograms are our own
//! `histogram::Histogram` (an `AtomicU64` per bucket and one for the sum; observing is a
//! binary search and two relaxed `fetch_add`s), because `prometheus-client`'s `Histogram`
//! takes a write lock on every observation. Every handle the request path uses is made at
//! start (per route label, status class, token operation and error code) and found by a
//! hash lookup, so no `Family` lock is taken per request.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tokengate_requests_total` | counter | `route`, `status_class` (`2xx`…`5xx`) |
//! | `tokengate_request_duration_seconds` | histogram | `route` |
//! | `tokengate_upstream_request_duration_seconds` | histogram | `route` (to the response head) |
//! | `tokengate_token_calls_total` | counter | `op` (`mint`, `login`, `refresh`, `revoke`), `result` (`ok`, `rejected`, `unavailable`) |
//! | `tokengate_token_call_duration_seconds` | histogram | `op` |
//! | `tokengate_refresh_coalesced_total` | counter | — (requests that waited for another request's refresh) |
//! | `tokengate_sessions` | gauge | `kind` (`guest`, `shopper`) |
//! | `tokengate_rejected_requests_total` | counter | `code` (the contract's error code) |
//! | `tokengate_store_errors_total` | counter | — |
//! | `tokengate_token_leaks_blocked_total` | counter | — |
//! | `tokengate_response_bodies_stalled_total` | counter | — |
//! | `tokengate_backchannel_logouts_total` | counter | `result` (`ended`: sessions ended, `none`: no session matched, `invalid`, `unavailable`) |
//! | `tokengate_session_cache_lookups_total` | counter | `result` (`hit`, `miss`: the Redis store's local cache) |
//! | `tokengate_session_cache_invalidations_total` | counter | — (keys Redis said changed, or this replica wrote) |
//! | `tokengate_open_connections` | gauge | — (storefront listener) |
//! | `tokengate_build_info` | gauge | `version` |

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::store::SessionCounts;

mod histogram;
pub use histogram::claim_shard;

use histogram::Histogram;

/// A call to the token service, by what it was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenOp {
    /// A guest (anonymous) token.
    Mint,
    /// A shopper login (password grant or hosted login).
    Login,
    Refresh,
    Revoke,
}

/// How a token-service call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenOutcome {
    Ok,
    /// The API refused the grant (bad password, dead refresh token).
    Rejected,
    /// The API failed (unreachable, 5xx, timeout, garbage, or every slot busy).
    Unavailable,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const OTHER_ROUTE: &str = "(other)";
const OPS: [(TokenOp, &str); 4] = [
    (TokenOp::Mint, "mint"),
    (TokenOp::Login, "login"),
    (TokenOp::Refresh, "refresh"),
    (TokenOp::Revoke, "revoke"),
];
const OUTCOMES: [(TokenOutcome, &str); 3] = [
    (TokenOutcome::Ok, "ok"),
    (TokenOutcome::Rejected, "rejected"),
    (TokenOutcome::Unavailable, "unavailable"),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How a back-channel logout ended (`tokengate_backchannel_logouts_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackchannelOutcome {
    /// A valid logout token ended at least one session.
    Ended,
    /// A valid logout token matched no session.
    NoSession,
    /// The logout token did not validate (400).
    Invalid,
    /// The provider's keys or metadata, or the store, were unavailable (503).
    Unavailable,
}

impl BackchannelOutcome {
    const ALL: [(BackchannelOutcome, &'static str); 4] = [
        (BackchannelOutcome::Ended, "ended"),
        (BackchannelOutcome::NoSession, "none"),
        (BackchannelOutcome::Invalid, "invalid"),
        (BackchannelOutcome::Unavailable, "unavailable"),
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The Redis store's local session cache counters (`store::redis::cache`), handed to
/// the store at start. Default: counters registered nowhere (tests).
#[derive(Debug, Clone, Default)]
pub struct SessionCacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub invalidations: Counter,
}

/// Pre-made handles for one route label.
#[derive(Debug, Clone)]
struct RouteHandles {
    by_status_class: [Counter; 5],
    duration: Histogram,
    upstream: Histogram,
}

/// A route's metric handles, attached to the route when its configuration is loaded
/// (`App::new`, `App::reload`), so a forwarded call records without a lookup. Not part of
/// the configuration: routes compare equal whatever their handles.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics(Option<RouteHandles>);

impl RouteMetrics {
    /// None attached (a route not yet given its handles, or not a route): the label is
    /// looked up.
    pub const DETACHED: RouteMetrics = RouteMetrics(None);
}

impl PartialEq for RouteMetrics {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// Route label → its handles. Looked up for a request that is not a route's, so hashed with FNV-1a
/// rather than SipHash (~170 instructions a lookup): the labels come from the
/// configuration and the endpoint names, never from a request, so there is no flooding
/// to resist.
type RouteMap = HashMap<String, RouteHandles, BuildHasherDefault<LabelHasher>>;

/// FNV-1a, for [`RouteMap`].
#[derive(Debug)]
struct LabelHasher(u64);

impl Default for LabelHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for LabelHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Swapped whole when a reload adds routes; read lock-free per request.
    routes: ArcSwap<RouteMap>,
    other_route: RouteHandles,
    route_families: RouteFamilies,
    token_calls: HashMap<(TokenOp, TokenOutcome), Counter>,
    token_durations: HashMap<TokenOp, Histogram>,
    refresh_coalesced: Counter,
    sessions_guest: Gauge,
    sessions_shopper: Gauge,
    rejected: Family<CodeLabel, Counter>,
    /// One handle per error code, made at start, so counting a rejection takes no lock.
    rejected_by_code: HashMap<&'static str, Counter>,
    store_errors: Counter,
    leaks_blocked: Counter,
    bodies_stalled: Counter,
    open_connections: Gauge,
    backchannel_logouts: HashMap<BackchannelOutcome, Counter>,
    session_cache: SessionCacheCounters,
}

/// The families route handles are made from (kept to make handles for new routes).
#[derive(Debug, Clone)]
struct RouteFamilies {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabel, Histogram>,
    upstream: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl RouteFamilies {
    fn handles(&self, route: &str) -> RouteHandles {
        RouteHandles {
            by_status_class: STATUS_CLASSES.map(|status_class| {
                self.requests.get_or_create(&RequestLabels { route: route.to_string(), status_class }).clone()
            }),
            duration: self.durations.get_or_create(&RouteLabel { route: route.to_string() }).clone(),
            upstream: self.upstream.get_or_create(&RouteLabel { route: route.to_string() }).clone(),
        }
    }
}

fn seconds_histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 1 ms to about 33 s.
    exponential_buckets(0.001, 2.0, 16)
}

impl Metrics {
    /// Metrics with handles for `route_labels` (the route and endpoint labels requests can
    /// carry); other labels are counted as `(other)`.
    pub fn new(route_labels: &[&str]) -> Self {
        let mut registry = Registry::with_prefix("tokengate");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        let upstream =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        registry.register("requests", "Requests answered, by route and status class", requests.clone());
        registry.register("request_duration_seconds", "Time to answer a request's head", durations.clone());
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending an API call to its response head",
            upstream.clone(),
        );
        let route_families = RouteFamilies { requests, durations, upstream };
        let routes: RouteMap =
            route_labels.iter().map(|label| (label.to_string(), route_families.handles(label))).collect();
        let other_route = route_families.handles(OTHER_ROUTE);

        let token_family = Family::<TokenLabels, Counter>::default();
        let token_duration_family =
            Family::<OpLabel, Histogram>::new_with_constructor(|| Histogram::new(seconds_buckets()));
        registry.register(
            "token_calls",
            "Calls to the token service, by purpose and result",
            token_family.clone(),
        );
        registry.register(
            "token_call_duration_seconds",
            "Time of a token-service call, by purpose",
            token_duration_family.clone(),
        );
        let mut token_calls = HashMap::new();
        let mut token_durations = HashMap::new();
        for (op, op_name) in OPS {
            token_durations.insert(op, token_duration_family.get_or_create(&OpLabel { op: op_name }).clone());
            for (outcome, result) in OUTCOMES {
                let counter = token_family.get_or_create(&TokenLabels { op: op_name, result }).clone();
                token_calls.insert((op, outcome), counter);
            }
        }

        let refresh_coalesced = Counter::default();
        registry.register(
            "refresh_coalesced",
            "Requests that used another request's refresh of their session",
            refresh_coalesced.clone(),
        );
        let sessions = Family::<KindLabel, Gauge>::default();
        registry.register("sessions", "Live sessions, by kind", sessions.clone());
        let sessions_guest = sessions.get_or_create(&KindLabel { kind: "guest" }).clone();
        let sessions_shopper = sessions.get_or_create(&KindLabel { kind: "shopper" }).clone();
        let rejected = Family::<CodeLabel, Counter>::default();
        registry.register("rejected_requests", "Requests answered with an error code", rejected.clone());
        let rejected_by_code = crate::error::Error::CODES
            .iter()
            .map(|code| (*code, rejected.get_or_create(&CodeLabel { code }).clone()))
            .collect();
        let store_errors = Counter::default();
        registry.register("store_errors", "Failed session-store operations", store_errors.clone());
        let leaks_blocked = Counter::default();
        registry.register(
            "token_leaks_blocked",
            "Responses withheld or cut off by the leak guard",
            leaks_blocked.clone(),
        );
        let bodies_stalled = Counter::default();
        registry.register(
            "response_bodies_stalled",
            "Response bodies cut off because the API stopped sending for request_timeout",
            bodies_stalled.clone(),
        );
        let backchannel = Family::<ResultLabel, Counter>::default();
        registry.register(
            "backchannel_logouts",
            "OpenID Connect back-channel logout requests, by result",
            backchannel.clone(),
        );
        let backchannel_logouts = BackchannelOutcome::ALL
            .iter()
            .map(|(outcome, result)| (*outcome, backchannel.get_or_create(&ResultLabel { result }).clone()))
            .collect();
        let lookups = Family::<ResultLabel, Counter>::default();
        registry.register(
            "session_cache_lookups",
            "Session reads answered by the Redis store's local cache (hit) or by Redis (miss)",
            lookups.clone(),
        );
        // One statement each: a handle's read guard must be gone before the next
        // `get_or_create` takes the family's write lock.
        let hits = lookups.get_or_create(&ResultLabel { result: "hit" }).clone();
        let misses = lookups.get_or_create(&ResultLabel { result: "miss" }).clone();
        let session_cache = SessionCacheCounters { hits, misses, invalidations: Counter::default() };
        registry.register(
            "session_cache_invalidations",
            "Keys the Redis store's local cache dropped because Redis or this replica changed them",
            session_cache.invalidations.clone(),
        );
        let open_connections = Gauge::default();
        registry.register("open_connections", "Open storefront connections", open_connections.clone());
        let build = Family::<VersionLabel, Gauge>::default();
        registry.register("build_info", "The running version", build.clone());
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);

        Self {
            registry,
            routes: ArcSwap::from_pointee(routes),
            other_route,
            route_families,
            token_calls,
            token_durations,
            refresh_coalesced,
            sessions_guest,
            sessions_shopper,
            rejected,
            rejected_by_code,
            store_errors,
            leaks_blocked,
            bodies_stalled,
            open_connections,
            backchannel_logouts,
            session_cache,
        }
    }

    /// A back-channel logout request and how it ended.
    pub fn record_backchannel_logout(&self, outcome: BackchannelOutcome) {
        if let Some(counter) = self.backchannel_logouts.get(&outcome) {
            counter.inc();
        }
    }

    /// The counters the Redis store's local session cache counts in.
    pub fn session_cache(&self) -> SessionCacheCounters {
        self.session_cache.clone()
    }

    /// Makes handles for route labels a reload added (off the request path).
    pub fn add_route_labels(&self, labels: &[&str]) {
        let current = self.routes.load();
        if labels.iter().all(|label| current.contains_key(*label)) {
            return;
        }
        let mut next = RouteMap::clone(&current);
        for label in labels {
            next.entry(label.to_string()).or_insert_with(|| self.route_families.handles(label));
        }
        self.routes.store(std::sync::Arc::new(next));
    }

    /// The handles of `label`, to attach to its route.
    pub fn route_metrics(&self, label: &str) -> RouteMetrics {
        RouteMetrics(Some(self.routes.load().get(label).unwrap_or(&self.other_route).clone()))
    }

    /// One finished request: by route label and status class.
    pub fn record_request(
        &self,
        route: &str,
        attached: &RouteMetrics,
        status: StatusCode,
        latency: Duration,
    ) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.with_handles(route, attached, |handles| {
            handles.by_status_class[class].inc();
            handles.duration.observe(latency);
        });
    }

    /// Time from sending an upstream API call to its response head, by route label.
    pub fn record_upstream(&self, route: &str, attached: &RouteMetrics, latency: Duration) {
        self.with_handles(route, attached, |handles| handles.upstream.observe(latency));
    }

    /// Runs `record` on the `attached` handles, else on the label's, looked up.
    fn with_handles(&self, route: &str, attached: &RouteMetrics, record: impl FnOnce(&RouteHandles)) {
        match &attached.0 {
            Some(handles) => record(handles),
            None => record(self.routes.load().get(route).unwrap_or(&self.other_route)),
        }
    }

    /// One call to the token service.
    pub fn record_token_call(&self, op: TokenOp, outcome: TokenOutcome, latency: Duration) {
        if let Some(counter) = self.token_calls.get(&(op, outcome)) {
            counter.inc();
        }
        if let Some(histogram) = self.token_durations.get(&op) {
            histogram.observe(latency);
        }
    }

    /// A request that waited for another request's refresh of its session instead of
    /// calling the token endpoint itself.
    pub fn record_refresh_coalesced(&self) {
        self.refresh_coalesced.inc();
    }

    /// A request refused with a contract error code.
    pub fn record_rejection(&self, code: &'static str) {
        match self.rejected_by_code.get(code) {
            Some(counter) => counter.inc(),
            None => self.rejected.get_or_create(&CodeLabel { code }).inc(),
        };
    }

    /// A failed store operation.
    pub fn record_store_error(&self) {
        self.store_errors.inc();
    }

    /// A leak-guard hit (a token about to reach the browser was blocked).
    pub fn record_leak_blocked(&self) {
        self.leaks_blocked.inc();
    }

    /// A response body the API stopped sending for `request_timeout` (cut off).
    pub fn record_body_stalled(&self) {
        self.bodies_stalled.inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self, sessions: SessionCounts) -> String {
        self.sessions_guest.set(i64::try_from(sessions.guests).unwrap_or(i64::MAX));
        self.sessions_shopper.set(i64::try_from(sessions.shoppers).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels() {
        let metrics = Metrics::new(&["/api/"]);
        metrics.record_request("/api/", &RouteMetrics::DETACHED, StatusCode::OK, Duration::from_millis(3));
        metrics.record_request(
            "/api/",
            &RouteMetrics::DETACHED,
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
        );
        metrics.record_request(
            "/nowhere-known",
            &RouteMetrics::DETACHED,
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        metrics.record_token_call(TokenOp::Refresh, TokenOutcome::Ok, Duration::from_millis(20));
        metrics.record_rejection("session_expired");
        let text = metrics.render(SessionCounts { guests: 2, shoppers: 1 });
        for line in [
            r#"tokengate_requests_total{route="/api/",status_class="2xx"} 1"#,
            r#"tokengate_requests_total{route="/api/",status_class="5xx"} 1"#,
            r#"tokengate_requests_total{route="(other)",status_class="4xx"} 1"#,
            r#"tokengate_token_calls_total{op="refresh",result="ok"} 1"#,
            r#"tokengate_rejected_requests_total{code="session_expired"} 1"#,
            r#"tokengate_sessions{kind="guest"} 2"#,
            r#"tokengate_sessions{kind="shopper"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("tokengate_token_call_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }
}
