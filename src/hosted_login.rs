//! The API's hosted login (implicit flow): `GET /session/authorize` and
//! `/session/callback`.
//!
//! 1. `authorize` binds a single-use `state` (256 random bits) to the browser's session
//!    (a guest is started if there is none) and redirects to the API's authorize page with
//!    `response_type=token`, the state both as `state` and inside `redirect_uri` (the API
//!    is not documented to echo `state`), and, with `authorize_carry_guest`, the guest
//!    token as `dr_limited_token` so the cart carries over. That URL is the one place a
//!    token is shown to the browser, by Digital River's design.
//! 2. The API redirects to `/session/callback?state=…#access_token=…`. The fragment never
//!    reaches a server, so `callback` answers with a tiny no-store page whose script posts
//!    the fragment back and wipes it from the address bar at once.
//! 3. The posted callback is checked (state known, unexpired, bound to this session, used
//!    once), the session becomes a shopper session under a new id, the carried guest token
//!    is revoked, and the browser is sent on to `return_to` (a same-origin path).
//!
//! Pending states live in memory for ten minutes; they are swept with the sessions.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use dashmap::DashMap;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::callback::{parse_callback_query, CallbackOutcome, CallbackParams};
use crate::config::Fixed;
use crate::error::Error;
use crate::secret::AccessToken;
use crate::session::Active;
use crate::session_id::SessionKey;
use crate::store::SessionKind;

/// How long a browser may take on the API's login page.
const STATE_LIFETIME_SECS: u64 = 600;
/// Pending logins kept at most; beyond this new ones are refused until the sweep.
const MAX_PENDING: usize = 100_000;

/// The script of the callback page: post the fragment, wipe it from the address bar.
pub const CALLBACK_SCRIPT: &str = "var f=document.getElementById('f'),h=location.hash.slice(1);\
history.replaceState(null,'',location.pathname+location.search);\
document.getElementById('v').value=h;f.submit();";

/// A login that went to the API's page and has not come back yet.
#[derive(Debug, Clone)]
pub struct Pending {
    pub session_key: SessionKey,
    pub return_to: String,
    /// The guest token put into the authorize URL, to revoke once the login completes.
    pub carried_guest: Option<AccessToken>,
    expires_at: u64,
}

/// The hosted-login state machine.
#[derive(Debug)]
pub struct HostedLogin {
    pending: DashMap<[u8; 32], Pending>,
    authorize_url: String,
    client_id: String,
    callback_url: String,
    carry_guest: bool,
    /// `Content-Security-Policy` of the callback page: only its own script may run.
    pub callback_csp: String,
}

impl HostedLogin {
    /// The flow for `config`, or `None` without a `public_origin` to build the
    /// `redirect_uri` from.
    pub fn new(config: &Fixed) -> Option<Self> {
        let origin = config.server.public_origin.as_ref()?;
        let base = &config.upstream.base;
        let script_hash = STANDARD.encode(Sha256::digest(CALLBACK_SCRIPT.as_bytes()));
        Some(Self {
            pending: DashMap::new(),
            authorize_url: format!("{}://{}{}{}", base.scheme, base.authority, base.path, config.oauth.authorize_path),
            client_id: config.oauth.client_id.clone(),
            callback_url: format!("{origin}/session/callback"),
            carry_guest: config.oauth.authorize_carry_guest,
            callback_csp: format!(
                "default-src 'none'; script-src 'sha256-{script_hash}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
            ),
        })
    }

    /// Starts a login for `active`'s browser; returns the API authorize URL.
    pub fn begin(&self, active: &Active, return_to: &str, now: u64) -> Result<String, Error> {
        let return_to = checked_return_to(return_to)?;
        if self.pending.len() >= MAX_PENDING {
            return Err(Error::RateLimited { retry_after: Duration::from_secs(30) });
        }
        let mut random = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut random)
            .map_err(|_| Error::Internal("no randomness for a state"))?;
        let state = URL_SAFE_NO_PAD.encode(random);
        let carried_guest = (self.carry_guest && active.record.kind == SessionKind::Guest)
            .then(|| active.record.access_token.clone());

        let mut redirect_uri = query_builder(&self.callback_url);
        redirect_uri.append_pair("state", &state);
        let mut url = query_builder(&self.authorize_url);
        url.append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri.finish())
            .append_pair("response_type", "token")
            .append_pair("state", &state);
        if let Some(token) = &carried_guest {
            url.append_pair("dr_limited_token", token.expose());
        }
        let pending = Pending {
            session_key: active.key,
            return_to: return_to.to_string(),
            carried_guest,
            expires_at: now + STATE_LIFETIME_SECS,
        };
        self.pending.insert(state_key(&state), pending);
        Ok(url.finish())
    }

    /// Parses a callback (a query string or the posted fragment, with the `state` from the
    /// callback URL's query when the fragment has none).
    pub fn parse(&self, parameters: &str, query_state: Option<&str>) -> Result<CallbackParams, Error> {
        let has_state = form_urlencoded::parse(parameters.as_bytes()).any(|(name, _)| name == "state");
        let combined = match query_state {
            Some(state) if !has_state => {
                let mut text = parameters.to_string();
                let mut tail = form_urlencoded::Serializer::new(String::new());
                tail.append_pair("state", state);
                if !text.is_empty() {
                    text.push('&');
                }
                text.push_str(&tail.finish());
                text
            }
            _ => parameters.to_string(),
        };
        parse_callback_query(&combined).map_err(|_| Error::InvalidState)
    }

    /// Consumes the state: it must be known, unexpired and bound to `session`. Any use,
    /// even a failed one, ends it.
    pub fn complete(&self, state: &str, session: Option<&SessionKey>, now: u64) -> Result<Pending, Error> {
        let (_, pending) = self.pending.remove(&state_key(state)).ok_or(Error::InvalidState)?;
        if pending.expires_at <= now || session != Some(&pending.session_key) {
            return Err(Error::InvalidState);
        }
        Ok(pending)
    }

    /// Forgets expired pending logins.
    pub fn sweep(&self, now: u64) {
        self.pending.retain(|_, pending| pending.expires_at > now);
    }
}

/// The outcome's token, or the API's error code as `invalid_credentials`.
pub fn token_of(params: CallbackParams) -> Result<(AccessToken, Option<u64>), String> {
    match params.outcome {
        CallbackOutcome::Token { access_token, expires_in } => Ok((access_token, expires_in)),
        CallbackOutcome::Error { code } => Err(code),
    }
}

/// A serializer that appends a query to `base` (`base?a=b&c=d`).
fn query_builder(base: &str) -> form_urlencoded::Serializer<'static, String> {
    let start = base.len() + 1;
    form_urlencoded::Serializer::for_suffix(format!("{base}?"), start)
}

fn state_key(state: &str) -> [u8; 32] {
    Sha256::digest(state.as_bytes()).into()
}

/// A same-origin path: starts with one `/`, no scheme or authority, no backslash or
/// control characters (so `//evil.example` and `/\evil.example` are refused).
pub fn checked_return_to(return_to: &str) -> Result<&str, Error> {
    let refused = Error::BadRequest("return_to must be a path on this site, like /cart.");
    if return_to.is_empty() {
        return Ok("/");
    }
    let bytes = return_to.as_bytes();
    if bytes[0] != b'/'
        || bytes.get(1).is_some_and(|b| *b == b'/' || *b == b'\\')
        || return_to.len() > 2048
        || bytes.iter().any(|b| b.is_ascii_control() || *b == b'\\' || *b == b' ')
    {
        return Err(refused);
    }
    Ok(return_to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_must_stay_on_this_site() {
        for good in ["/", "/cart", "/a/b?c=d#e", ""] {
            assert!(checked_return_to(good).is_ok(), "{good}");
        }
        for bad in ["//evil.example", "/\\evil.example", "https://evil.example", "cart", "/a\nb", "/a\\b"] {
            assert!(checked_return_to(bad).is_err(), "{bad}");
        }
    }
}
