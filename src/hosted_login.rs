//! The API's hosted login (implicit flow): `GET /session/authorize` and
//! `/session/callback`.
//!
//! This module holds the flow's fixed parts (the authorize URL, the callback page and its
//! CSP, parameter parsing, `return_to` checks); the session core drives it and keeps the
//! pending logins in the store (`Sessions::begin_hosted_login`,
//! `Sessions::complete_hosted_login`), so any replica can finish a login another began.
//!
//! 1. `authorize` makes a single-use `state` (256 random bits), keeps a pending login
//!    under the browser's session (a guest is started if there is none; a new login
//!    replaces the session's earlier one) and redirects to the API's authorize page with
//!    `response_type=token`, `state` as its own parameter, `redirect_uri` exactly
//!    `public_origin` + `/session/callback` (the API accepts only a redirect URI
//!    registered for the client, so it is the same for every login), and, with
//!    `authorize_carry_guest`, the guest token as `dr_limited_token` so the cart carries
//!    over. That URL is the one place a token is shown to the browser, by Digital River's
//!    design.
//! 2. The API redirects to `/session/callback#access_token=…` (with `state` where it
//!    echoes it). The fragment never reaches a server, so `callback` answers with a tiny
//!    no-store page whose script posts the fragment back and wipes it from the address bar.
//! 3. The posted callback is checked: the cookie's live session has a pending login
//!    (unexpired; taken, so used once), and a `state` the API echoed equals the pending
//!    one. The session becomes a shopper session under a new id, the carried guest token
//!    is revoked, and the browser is sent on to `return_to` (a same-origin path).
//!
//! Pending logins live in the store for ten minutes; they are swept with the sessions.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::callback::{parse_callback_query, CallbackOutcome, CallbackParams};
use crate::config::Fixed;
use crate::error::Error;
use crate::secret::AccessToken;
use crate::store::{SessionKind, SessionRecord, StateKey};

/// How long a browser may take on the API's login page.
pub const STATE_LIFETIME_SECS: u64 = 600;

/// The script of the callback page: post the fragment, wipe it from the address bar.
pub const CALLBACK_SCRIPT: &str = "var f=document.getElementById('f'),h=location.hash.slice(1);\
history.replaceState(null,'',location.pathname+location.search);\
document.getElementById('v').value=h;f.submit();";

/// A started login: the state to keep, and where to send the browser.
#[derive(Debug)]
pub struct Authorize {
    /// SHA-256 of the state sent to the API, for the pending login.
    pub state: StateKey,
    /// The API's authorize URL (may carry the guest token: never log it).
    pub url: String,
    /// The guest token put into the URL, to revoke once the login completes.
    pub carried_guest: Option<AccessToken>,
}

/// The hosted login's fixed parts, built once from the config.
#[derive(Debug)]
pub struct HostedLogin {
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
            authorize_url: format!("{}://{}{}{}", base.scheme, base.authority, base.path, config.oauth.authorize_path),
            client_id: config.oauth.client_id.clone(),
            callback_url: format!("{origin}/session/callback"),
            carry_guest: config.oauth.authorize_carry_guest,
            callback_csp: format!(
                "default-src 'none'; script-src 'sha256-{script_hash}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
            ),
        })
    }

    /// The `redirect_uri`: exactly `public_origin` + `/session/callback`.
    pub fn callback_url(&self) -> &str {
        &self.callback_url
    }

    /// A new state and the API authorize URL for a session holding `record`.
    pub fn authorize(&self, record: &SessionRecord) -> Result<Authorize, Error> {
        let mut random = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut random)
            .map_err(|_| Error::Internal("no randomness for a state"))?;
        let state = URL_SAFE_NO_PAD.encode(random);
        let carried_guest =
            (self.carry_guest && record.kind == SessionKind::Guest).then(|| record.access_token.clone());
        let mut url = query_builder(&self.authorize_url);
        url.append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.callback_url)
            .append_pair("response_type", "token")
            .append_pair("state", &state);
        if let Some(token) = &carried_guest {
            url.append_pair("dr_limited_token", token.expose());
        }
        Ok(Authorize { state: state_key(&state), url: url.finish(), carried_guest })
    }

    /// Parses a callback (a query string or the posted fragment, with the `state` from the
    /// callback URL's query when the fragment has none; there may be none at all).
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

/// The SHA-256 of a state (the store never holds the state itself).
pub fn state_key(state: &str) -> StateKey {
    Sha256::digest(state.as_bytes()).into()
}

/// Whether a callback's `state` is the one of `pending` (a hash of it), compared in
/// constant time. A callback without a state matches: the API is not documented to echo
/// it, and the pending login was found through the session cookie.
pub fn state_matches(echoed: Option<&str>, pending: &StateKey) -> bool {
    echoed.is_none_or(|state| crate::secret::constant_time_eq(&state_key(state), pending))
}

/// A `return_to` that [`checked_return_to`] accepted and normalised; only it makes one,
/// so whoever holds one need not check again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo(String);

impl ReturnTo {
    /// The normalised path, query and fragment.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A same-origin path, normalised: dot segments resolved (also percent-encoded ones,
/// as a browser resolves them), then checked to start with exactly one `/`, no
/// backslash, no control characters or spaces. So `//evil.example`, `/\evil.example`
/// and `/..//evil.example` (which a browser would resolve to `//evil.example`) are
/// refused. Returns the normalised path with its query and fragment.
pub fn checked_return_to(return_to: &str) -> Result<ReturnTo, Error> {
    let refused = || Error::BadRequest("return_to must be a path on this site, like /cart.");
    if return_to.is_empty() {
        return Ok(ReturnTo("/".to_string()));
    }
    let bytes = return_to.as_bytes();
    if bytes[0] != b'/'
        || return_to.len() > 2048
        || bytes.iter().any(|b| b.is_ascii_control() || *b == b'\\' || *b == b' ')
    {
        return Err(refused());
    }
    let base =
        url::Url::parse("http://tokengate.invalid/").map_err(|_| Error::Internal("return_to base URL"))?;
    let joined = base.join(return_to).map_err(|_| refused())?;
    if joined.host_str() != Some("tokengate.invalid") || !joined.username().is_empty() {
        return Err(refused());
    }
    let path = joined.path();
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(refused());
    }
    let mut normalised = path.to_string();
    if let Some(query) = joined.query() {
        normalised.push('?');
        normalised.push_str(query);
    }
    if let Some(fragment) = joined.fragment() {
        normalised.push('#');
        normalised.push_str(fragment);
    }
    Ok(ReturnTo(normalised))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_state_must_match_and_a_missing_one_is_left_to_the_session() {
        let pending = state_key("s1");
        assert!(state_matches(Some("s1"), &pending));
        assert!(!state_matches(Some("s2"), &pending));
        assert!(state_matches(None, &pending));
    }

    #[test]
    fn return_to_must_stay_on_this_site() {
        for good in ["/", "/cart", "/a/b?c=d#e", ""] {
            assert!(checked_return_to(good).is_ok(), "{good}");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "cart",
            "/a\nb",
            "/a\\b",
            "/..//evil.example",
            "/%2e%2e//evil.example",
            "/./..//evil.example/x",
        ] {
            assert!(checked_return_to(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn return_to_is_normalised_before_use() {
        assert_eq!(
            checked_return_to("/a/../cart?x=1#top").ok().as_ref().map(ReturnTo::as_str),
            Some("/cart?x=1#top")
        );
        assert_eq!(
            checked_return_to("/shop/./items").ok().as_ref().map(ReturnTo::as_str),
            Some("/shop/items")
        );
        assert_eq!(checked_return_to("/..").ok().as_ref().map(ReturnTo::as_str), Some("/"));
    }
}
