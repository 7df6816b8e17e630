//! Call counters behind `/__mock/stats`: how many token, refresh, access-token,
//! authorize and resource calls the mock served since start or the last reset.
//!
//! Lock-free atomics, so counting never contends with the state lock. A reset is not
//! atomic across counters; tests reset between phases, not during traffic. The last W3C
//! `traceparent` seen on each surface (OAuth, resources) sits behind its own small lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use http::HeaderMap;

use serde_json::{json, Value};

/// One counter of `/__mock/stats`.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Password grant without a username.
    Anonymous,
    /// Password grant with a username.
    Login,
    /// Refresh-token grant.
    Refresh,
    /// Client-credentials grant.
    ClientCredentials,
    /// Token-endpoint calls that did not answer 200 (dropped connections included).
    TokenFailed,
    /// Every POST to the token endpoint.
    TokenTotal,
    /// GET on access-tokens.
    AccessTokenGet,
    /// DELETE on access-tokens.
    AccessTokenDelete,
    /// GET on the hosted login page.
    Authorize,
    /// Hosted login form posts.
    AuthorizeLogin,
    /// Every `/v1/*` request.
    ResourceCalls,
    /// `/v1/*` requests rejected for a missing, invalid or expired token.
    Resource401,
    /// `/v1/*` answered by the `resource_401: invalid_client` fault.
    Resource401InvalidClient,
    /// `/v1/*` answered by the `resource_401: site_mismatch` fault.
    Resource401SiteMismatch,
    /// `/v1/*` answered by the `resource_401: bearer_invalid_token` fault.
    Resource401BearerInvalidToken,
    /// `/v1/*` requests whose token came from the `Authorization: bearer` header.
    CredentialBearer,
    /// `/v1/*` requests whose token came from the `?token=` query parameter.
    CredentialQuery,
    /// `/v1/*` requests that carried a `token` query parameter at all (used or not).
    QueryTokenSeen,
    /// `/oauth20/*` and `/v1/*` requests that carried a `traceparent` header.
    TraceparentSeen,
}

/// Derived from the last variant so adding a counter cannot index out of bounds.
const COUNTER_COUNT: usize = Counter::TraceparentSeen as usize + 1;

/// Where a request arrived, for the last `traceparent` of each.
#[derive(Clone, Copy, Debug)]
pub enum Surface {
    /// `/oauth20/*`.
    OAuth,
    /// `/v1/*`.
    Resource,
}

/// All counters.
#[derive(Default)]
pub struct Stats {
    values: [AtomicU64; COUNTER_COUNT],
    /// The last `traceparent` seen on `/oauth20/*` and on `/v1/*` (at most 128 bytes each).
    last_traceparent: Mutex<[Option<String>; 2]>,
}

impl Stats {
    /// Adds one.
    pub fn bump(&self, counter: Counter) {
        self.values[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// Zeroes every counter (and forgets the trace headers seen).
    pub fn reset(&self) {
        for value in &self.values {
            value.store(0, Ordering::Relaxed);
        }
        *self.last_traceparent.lock().unwrap_or_else(PoisonError::into_inner) = [None, None];
    }

    /// Notes a request's `traceparent`, if it has one (W3C trace context, for tests of a
    /// tracing proxy: which trace and parent span the call came from).
    pub fn note_traceparent(&self, surface: Surface, headers: &HeaderMap) {
        let Some(value) = headers.get("traceparent") else { return };
        self.bump(Counter::TraceparentSeen);
        let text: String = String::from_utf8_lossy(value.as_bytes()).chars().take(128).collect();
        self.last_traceparent.lock().unwrap_or_else(PoisonError::into_inner)[surface as usize] = Some(text);
    }

    /// The `/__mock/stats` body; `live_sessions` comes from the state, not a counter.
    pub fn to_json(&self, live_sessions: usize) -> Value {
        let [last_oauth, last_resource] =
            self.last_traceparent.lock().unwrap_or_else(PoisonError::into_inner).clone();
        json!({
            "token_calls": {
                "anonymous": self.get(Counter::Anonymous),
                "login": self.get(Counter::Login),
                "refresh": self.get(Counter::Refresh),
                "client_credentials": self.get(Counter::ClientCredentials),
                "failed": self.get(Counter::TokenFailed),
                "total": self.get(Counter::TokenTotal),
            },
            "access_token_get": self.get(Counter::AccessTokenGet),
            "access_token_delete": self.get(Counter::AccessTokenDelete),
            "authorize": self.get(Counter::Authorize),
            "authorize_login": self.get(Counter::AuthorizeLogin),
            "resource_calls": self.get(Counter::ResourceCalls),
            "resource_401": self.get(Counter::Resource401),
            "resource_401_kinds": {
                "invalid_token": self.get(Counter::Resource401),
                "invalid_client": self.get(Counter::Resource401InvalidClient),
                "site_mismatch": self.get(Counter::Resource401SiteMismatch),
                "bearer_invalid_token": self.get(Counter::Resource401BearerInvalidToken),
            },
            "resource_credential": {
                "bearer": self.get(Counter::CredentialBearer),
                "query_token": self.get(Counter::CredentialQuery),
            },
            "query_token_seen": self.get(Counter::QueryTokenSeen),
            "traceparent": {
                "seen": self.get(Counter::TraceparentSeen),
                "last_oauth": last_oauth,
                "last_resource": last_resource,
            },
            "live_sessions": live_sessions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_bump_report_and_reset() {
        let stats = Stats::default();
        stats.bump(Counter::Refresh);
        stats.bump(Counter::Resource401);
        stats.bump(Counter::Resource401);
        let body = stats.to_json(3);
        assert_eq!(body["token_calls"]["refresh"], 1);
        assert_eq!(body["resource_401"], 2);
        assert_eq!(body["live_sessions"], 3);
        stats.reset();
        assert_eq!(stats.get(Counter::Resource401), 0);
    }

    #[test]
    fn the_last_traceparent_of_each_surface_is_kept_until_a_reset() {
        let stats = Stats::default();
        let mut headers = HeaderMap::new();
        stats.note_traceparent(Surface::Resource, &headers);
        assert_eq!(stats.to_json(0)["traceparent"]["seen"], 0);
        headers.insert("traceparent", http::HeaderValue::from_static("00-aa-bb-01"));
        stats.note_traceparent(Surface::OAuth, &headers);
        let body = stats.to_json(0);
        assert_eq!(body["traceparent"]["seen"], 1);
        assert_eq!(body["traceparent"]["last_oauth"], "00-aa-bb-01");
        assert!(body["traceparent"]["last_resource"].is_null());
        stats.reset();
        assert!(stats.to_json(0)["traceparent"]["last_oauth"].is_null());
    }
}
