//! Fault injection settings: what `/__mock/faults` reads and replaces, and what the
//! token, access-token and resource handlers consult on every call.
//!
//! Handlers take a `snapshot()` (a clone) at the start of a request, so a fault change
//! never holds a lock across `.await` and a request sees one consistent setting. A
//! token-endpoint call held by `token_hold` takes its snapshot when the hold is lifted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Upper bound for injected latencies: long enough for any timeout test, short enough
/// that a typo cannot wedge a test run for hours.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// Shape of token-endpoint error bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorShape {
    /// `{"error":..,"error_description":..}` (RFC 6749, what DR sends).
    #[default]
    Flat,
    /// `{"errors":{"error":[{"code":..,"description":..}]}}` (seen from older gateways).
    Nested,
}

/// A resource 401 that is not about the caller's token (the `resource_401` fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource401 {
    /// Body code `invalid_client`, "Request Contains Invalid Client ID".
    InvalidClient,
    /// `WWW-Authenticate: Bearer error="invalid_request"`, body code `invalid_request`,
    /// "Request Site ID does not match Token Site ID".
    SiteMismatch,
    /// `WWW-Authenticate: Bearer error="invalid_token"` and an empty body: about the
    /// token, but with nothing to read but the header.
    BearerInvalidToken,
}

impl Resource401 {
    /// The name used in the fault settings and the stats.
    pub fn name(self) -> &'static str {
        match self {
            Resource401::InvalidClient => "invalid_client",
            Resource401::SiteMismatch => "site_mismatch",
            Resource401::BearerInvalidToken => "bearer_invalid_token",
        }
    }
}

/// Every fault the mock can inject. Missing JSON fields take their default (off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every token-endpoint call answers this status.
    pub token_status: Option<u16>,
    /// Delay before the token endpoint answers.
    pub token_latency_ms: u64,
    /// Token-endpoint calls are counted, then wait until this is switched off (by a PUT
    /// or DELETE of the faults; at most `MAX_LATENCY_MS`). A test holds a refresh in
    /// flight this way for as long as it needs, without guessing a latency.
    pub token_hold: bool,
    /// 200 token bodies report this `expires_in` instead of `--access-ttl`; the token's
    /// real lifetime at the mock is unchanged. A token can look expired to the client
    /// while the API still takes it.
    pub expires_in: Option<u64>,
    /// The token endpoint drops the connection without answering.
    pub token_close: bool,
    /// Refresh grants answer 400 `invalid_grant`; the refresh token stays valid.
    pub reject_refresh: bool,
    /// `/v1/*` answers this status.
    pub resource_status: Option<u16>,
    /// `/v1/*` answers this 401 before looking at the token.
    pub resource_401: Option<Resource401>,
    /// Only this many calls get the `resource_401` answer (counted from when the faults
    /// were set); unset: every call.
    pub resource_401_count: Option<u64>,
    /// Delay before any `/v1/*` answer.
    pub resource_latency_ms: u64,
    /// GET/DELETE access-tokens answer this status.
    pub access_token_status: Option<u16>,
    /// Shape of token-endpoint error bodies.
    pub error_shape: ErrorShape,
    /// 200 token bodies are wrapped as `{"token":{...}}`.
    pub wrap_token: bool,
    /// `expires_in` is sent as a string.
    pub expires_in_string: bool,
    /// `/v1/*` successes leak the caller's token (for the proxy's leak-guard test).
    pub echo_token: bool,
    /// Refresh returns a new refresh token (true) or the same one again (false).
    pub rotate_refresh: bool,
    /// Every `/v1/*` answer carries a CORS grant of its own (`Access-Control-Allow-Origin:
    /// *`, `-Allow-Credentials: true`, `-Expose-Headers`), which a proxy must never pass on.
    pub resource_cors: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            token_status: None,
            token_latency_ms: 0,
            token_hold: false,
            expires_in: None,
            token_close: false,
            reject_refresh: false,
            resource_status: None,
            resource_401: None,
            resource_401_count: None,
            resource_latency_ms: 0,
            access_token_status: None,
            error_shape: ErrorShape::Flat,
            wrap_token: false,
            expires_in_string: false,
            echo_token: false,
            rotate_refresh: true,
            resource_cors: false,
        }
    }
}

impl Faults {
    /// Rejects settings the mock could not honour: statuses outside 200..=599 (hyper
    /// cannot send 1xx as a final answer) and latencies above `MAX_LATENCY_MS`.
    pub fn validate(&self) -> Result<(), String> {
        let statuses = [
            ("token_status", self.token_status),
            ("resource_status", self.resource_status),
            ("access_token_status", self.access_token_status),
        ];
        for (name, status) in statuses {
            if let Some(code) = status.filter(|code| !(200..=599).contains(code)) {
                return Err(format!("{name} must be between 200 and 599, got {code}"));
            }
        }
        let latencies =
            [("token_latency_ms", self.token_latency_ms), ("resource_latency_ms", self.resource_latency_ms)];
        for (name, latency) in latencies {
            if latency > MAX_LATENCY_MS {
                return Err(format!("{name} must be at most {MAX_LATENCY_MS}"));
            }
        }
        Ok(())
    }
}

/// Sleeps for an injected latency (no-op at 0). Runs before the handler touches any
/// state, so no lock is held while it waits.
pub async fn delay(latency_ms: u64) {
    if latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
    }
}

/// The live fault settings, shared by all connections. A watch channel, so a call held
/// by `token_hold` wakes when the settings change instead of polling them.
pub struct FaultSwitch {
    current: watch::Sender<Faults>,
    /// How many more calls get the `resource_401` answer.
    resource_401_left: AtomicU64,
}

impl Default for FaultSwitch {
    fn default() -> Self {
        FaultSwitch { current: watch::Sender::new(Faults::default()), resource_401_left: AtomicU64::new(0) }
    }
}

impl FaultSwitch {
    /// A copy of the current settings.
    pub fn snapshot(&self) -> Faults {
        self.current.borrow().clone()
    }

    /// Replaces all settings at once (and releases held calls if `token_hold` is off).
    pub fn replace(&self, faults: Faults) {
        let left = match faults.resource_401 {
            Some(_) => faults.resource_401_count.unwrap_or(u64::MAX),
            None => 0,
        };
        self.resource_401_left.store(left, Ordering::SeqCst);
        self.current.send_replace(faults);
    }

    /// The injected resource 401 this call gets, if any; uses up one of
    /// `resource_401_count`.
    pub fn take_resource_401(&self, faults: &Faults) -> Option<Resource401> {
        let kind = faults.resource_401?;
        let taken = self
            .resource_401_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        taken.then_some(kind)
    }

    /// Waits while `token_hold` is on (at most `MAX_LATENCY_MS`), then returns the
    /// settings of that moment.
    pub async fn after_token_hold(&self) -> Faults {
        let mut changes = self.current.subscribe();
        let released = changes.wait_for(|faults| !faults.token_hold);
        if let Ok(Ok(faults)) = tokio::time::timeout(Duration::from_millis(MAX_LATENCY_MS), released).await {
            return faults.clone();
        }
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_defaults_and_rotation_stays_on() {
        let faults: Faults = serde_json::from_str(r#"{"token_status":503}"#).expect("valid");
        assert_eq!(faults.token_status, Some(503));
        assert!(faults.rotate_refresh);
        assert_eq!(faults.error_shape, ErrorShape::Flat);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Faults>(r#"{"token_stauts":503}"#).is_err());
    }

    #[tokio::test]
    async fn a_held_token_call_waits_for_the_hold_to_be_lifted_and_sees_the_new_settings() {
        let switch = std::sync::Arc::new(FaultSwitch::default());
        assert_eq!(switch.after_token_hold().await, Faults::default(), "no hold: no wait");
        switch.replace(Faults { token_hold: true, ..Faults::default() });
        let held = tokio::spawn({
            let switch = std::sync::Arc::clone(&switch);
            async move { switch.after_token_hold().await }
        });
        // Another change that keeps the hold on does not release it.
        switch.replace(Faults { token_hold: true, token_latency_ms: 1, ..Faults::default() });
        let released = Faults { expires_in: Some(0), ..Faults::default() };
        switch.replace(released.clone());
        assert_eq!(held.await.expect("the held call ends"), released);
    }

    #[test]
    fn a_counted_resource_401_runs_out() {
        let switch = FaultSwitch::default();
        let faults: Faults =
            serde_json::from_str(r#"{"resource_401":"site_mismatch","resource_401_count":2}"#)
                .expect("valid");
        switch.replace(faults.clone());
        let taken: Vec<_> = (0..3).map(|_| switch.take_resource_401(&faults)).collect();
        assert_eq!(taken, [Some(Resource401::SiteMismatch), Some(Resource401::SiteMismatch), None]);
        switch.replace(Faults::default());
        assert_eq!(switch.take_resource_401(&Faults::default()), None);
    }

    #[test]
    fn informational_statuses_are_rejected() {
        let faults = Faults { resource_status: Some(101), ..Faults::default() };
        assert!(faults.validate().is_err());
        assert!(Faults::default().validate().is_ok());
    }
}
