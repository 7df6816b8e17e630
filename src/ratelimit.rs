//! Who the client is, and how many new sessions it may start.
//!
//! Starting a session costs a call to the Commerce API's token endpoint, so it is the one
//! thing a flood of cookieless requests can amplify. Each client gets a GCRA bucket
//! (`governor`): `new_sessions_burst` at once, refilled at `new_sessions_per_minute`.
//! The defaults (60 at once, 120 a minute) let a few dozen shoppers behind one NAT
//! address start together. A second, global guard caps concurrent token-endpoint calls
//! (`oauth`), so even many clients cannot flood the API.
//!
//! Client identity: the socket's peer, unless `trusted_proxy_depth` says that many proxies
//! in front of tokengate append to `X-Forwarded-For`; then the entry that the outermost
//! trusted proxy saw as its peer. IPv6 clients are keyed by their /64, since one host
//! can use a whole /64.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderMap, HeaderValue};

use crate::config::RateLimitConfig;
use crate::context::ConnInfo;
use crate::error::Error;

/// Per-client limits on starting sessions.
pub struct SessionRateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for SessionRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRateLimit").finish_non_exhaustive()
    }
}

impl SessionRateLimit {
    /// Limits from `[rate_limit]`.
    pub fn new(config: &RateLimitConfig) -> Self {
        let per_minute = NonZeroU32::new(config.new_sessions_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.new_sessions_burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Self { limiter: DefaultKeyedRateLimiter::keyed(quota), clock: DefaultClock::default() }
    }

    /// Takes one new-session allowance for `client`, or says when to retry.
    pub fn check(&self, client: IpAddr) -> Result<(), Error> {
        self.limiter.check_key(&bucket_key(client)).map_err(|not_until| Error::RateLimited {
            retry_after: not_until.wait_time_from(self.clock.now()).max(Duration::from_secs(1)),
        })
    }

    /// Forgets clients whose buckets are full again (called by the sweeper).
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// IPv4 addresses as they are; IPv6 addresses cut to their /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Who sent a request, worked out once from the peer and `X-Forwarded-For`.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    /// The client: the peer, or with `trusted_depth` proxies in front, the address the
    /// outermost trusted proxy saw (the `trusted_depth`-th `X-Forwarded-For` entry from
    /// the right). Entries a client wrote itself are never believed.
    pub ip: IpAddr,
    /// `X-Forwarded-For` for the API: the entries the trusted proxies added, then the
    /// peer. Entries to the left of them were written by the client and are dropped.
    pub forwarded_for: HeaderValue,
}

impl ClientAddress {
    /// The address of a request on `conn` with these headers.
    pub fn of(conn: &ConnInfo, headers: &HeaderMap, trusted_depth: usize) -> Self {
        let peer_ip = conn.peer.ip();
        if trusted_depth == 0 {
            return Self { ip: peer_ip, forwarded_for: conn.peer_header.clone() };
        }
        let entries = forwarded_for_entries(headers);
        let trusted = &entries[entries.len().saturating_sub(trusted_depth)..];
        let ip = entries
            .len()
            .checked_sub(trusted_depth)
            .and_then(|index| entries.get(index))
            .and_then(|entry| entry.parse::<IpAddr>().ok())
            .unwrap_or(peer_ip);
        let mut value = trusted.join(", ");
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push_str(conn.peer_header.to_str().unwrap_or("unknown"));
        let forwarded_for = HeaderValue::from_str(&value).unwrap_or_else(|_| conn.peer_header.clone());
        Self { ip, forwarded_for }
    }
}

/// The entries of every `X-Forwarded-For` header, left to right.
fn forwarded_for_entries(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 5000))
    }

    fn forwarded(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static(value));
        headers
    }

    fn client_ip(peer: SocketAddr, headers: &HeaderMap, depth: usize) -> IpAddr {
        ClientAddress::of(&ConnInfo::new(peer, false), headers, depth).ip
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        assert_eq!(client_ip(peer(), &forwarded("1.2.3.4"), 0), peer().ip());
    }

    #[test]
    fn forwarded_for_trusts_the_chain_only_when_told() {
        let headers = forwarded("6.6.6.6, 198.51.100.1");
        let forwarded_for =
            |depth| ClientAddress::of(&ConnInfo::new(peer(), false), &headers, depth).forwarded_for;
        assert_eq!(forwarded_for(0), "10.0.0.1");
        assert_eq!(forwarded_for(1), "198.51.100.1, 10.0.0.1", "6.6.6.6 was written by the client");
        assert_eq!(forwarded_for(2), "6.6.6.6, 198.51.100.1, 10.0.0.1");
    }

    #[test]
    fn trusted_depth_picks_the_entry_the_outermost_proxy_added() {
        let headers = forwarded("6.6.6.6, 203.0.113.7, 10.1.1.1");
        assert_eq!(client_ip(peer(), &headers, 1).to_string(), "10.1.1.1");
        assert_eq!(client_ip(peer(), &headers, 2).to_string(), "203.0.113.7");
        // Fewer entries than trusted proxies, or garbage: fall back to the peer.
        assert_eq!(client_ip(peer(), &forwarded("1.2.3.4"), 2), peer().ip());
        assert_eq!(client_ip(peer(), &forwarded("not-an-ip"), 1), peer().ip());
    }

    #[test]
    fn a_burst_passes_then_the_client_waits_and_others_do_not() {
        let limit = SessionRateLimit::new(&RateLimitConfig {
            new_sessions_per_minute: 60,
            new_sessions_burst: 3,
            token_concurrency: 4,
        });
        let client: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..3 {
            assert!(limit.check(client).is_ok());
        }
        assert!(
            matches!(limit.check(client), Err(Error::RateLimited { retry_after }) if retry_after >= Duration::from_secs(1))
        );
        assert!(limit.check("192.0.2.2".parse().unwrap_or(client)).is_ok());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(bucket_key(a), bucket_key(b));
    }
}
