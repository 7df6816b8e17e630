//! Call counters behind `/__mock/stats`: how many token, refresh, access-token,
//! authorize and resource calls the mock served since start or the last reset.
//!
//! Lock-free atomics, so counting never contends with the state lock. A reset is not
//! atomic across counters; tests reset between phases, not during traffic.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// Derived from the last variant so adding a counter cannot index out of bounds.
const COUNTER_COUNT: usize = Counter::QueryTokenSeen as usize + 1;

/// All counters.
#[derive(Default)]
pub struct Stats {
    values: [AtomicU64; COUNTER_COUNT],
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

    /// Zeroes every counter.
    pub fn reset(&self) {
        for value in &self.values {
            value.store(0, Ordering::Relaxed);
        }
    }

    /// The `/__mock/stats` body; `live_sessions` comes from the state, not a counter.
    pub fn to_json(&self, live_sessions: usize) -> Value {
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
}
