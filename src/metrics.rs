//! Every metric tokengate exports, in one place. (Stub: the Prometheus registry lands with
//! issue 4; the call sites are already in place and cost nothing until then.)

use std::time::Duration;

use http::StatusCode;

use crate::store::SessionCounts;

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
    /// The API failed (unreachable, 5xx, timeout, garbage).
    Unavailable,
}

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// One finished request: by route label and status class.
    pub fn record_request(&self, route: &str, status: StatusCode, latency: Duration) {
        let _ = (route, status, latency);
    }

    /// Time from sending an upstream API call to its response head, by route label.
    pub fn record_upstream(&self, route: &str, latency: Duration) {
        let _ = (route, latency);
    }

    /// One call to the token service.
    pub fn record_token_call(&self, op: TokenOp, outcome: TokenOutcome, latency: Duration) {
        let _ = (op, outcome, latency);
    }

    /// A request that waited for another request's refresh of its session instead of
    /// calling the token endpoint itself.
    pub fn record_refresh_coalesced(&self) {}

    /// A request refused with a contract error code.
    pub fn record_rejection(&self, code: &'static str) {
        let _ = code;
    }

    /// A failed store operation.
    pub fn record_store_error(&self) {}

    /// A leak-guard hit (a token about to reach the browser was blocked).
    pub fn record_leak_blocked(&self) {}

    pub fn connection_opened(&self) {}

    pub fn connection_closed(&self) {}

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, sessions: SessionCounts) -> String {
        let _ = sessions;
        String::new()
    }
}
