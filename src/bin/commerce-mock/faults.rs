//! Fault injection settings: what `/__mock/faults` reads and replaces, and what the
//! token, access-token and resource handlers consult on every call.
//!
//! Handlers take a `snapshot()` (a clone) at the start of a request, so a fault change
//! never holds a lock across `.await` and a request sees one consistent setting.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

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

/// Every fault the mock can inject. Missing JSON fields take their default (off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every token-endpoint call answers this status.
    pub token_status: Option<u16>,
    /// Delay before the token endpoint answers.
    pub token_latency_ms: u64,
    /// The token endpoint drops the connection without answering.
    pub token_close: bool,
    /// Refresh grants answer 400 `invalid_grant`; the refresh token stays valid.
    pub reject_refresh: bool,
    /// `/v1/*` answers this status.
    pub resource_status: Option<u16>,
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
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            token_status: None,
            token_latency_ms: 0,
            token_close: false,
            reject_refresh: false,
            resource_status: None,
            resource_latency_ms: 0,
            access_token_status: None,
            error_shape: ErrorShape::Flat,
            wrap_token: false,
            expires_in_string: false,
            echo_token: false,
            rotate_refresh: true,
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

/// The live fault settings, shared by all connections.
#[derive(Default)]
pub struct FaultSwitch {
    current: Mutex<Faults>,
}

impl FaultSwitch {
    /// A copy of the current settings.
    pub fn snapshot(&self) -> Faults {
        self.lock().clone()
    }

    /// Replaces all settings at once.
    pub fn replace(&self, faults: Faults) {
        *self.lock() = faults;
    }

    /// A poisoned lock only means another request panicked mid-update of plain data;
    /// the settings are still usable, so recover instead of failing every request.
    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
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

    #[test]
    fn informational_statuses_are_rejected() {
        let faults = Faults { resource_status: Some(101), ..Faults::default() };
        assert!(faults.validate().is_err());
        assert!(Faults::default().validate().is_ok());
    }
}
