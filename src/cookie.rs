//! The session cookie: the only module that reads `Cookie` or writes `Set-Cookie`.
//!
//! It never sees tokens or the store. Reading is strict: a value of any other shape
//! than the ids tokengate issues is `Malformed`, which the session layer answers with
//! 401 `session_expired` and a clearing cookie.

use std::time::Duration;

use http::header::{HeaderMap, COOKIE};
use http::HeaderValue;

use crate::config::{SameSite, SessionConfig};
use crate::session_id::{KeyMemo, SessionId};

/// What the browser's `Cookie` headers say about our session cookie.
#[derive(Debug)]
pub enum CookieLookup {
    /// No cookie of our name.
    Absent,
    /// A well-formed id (not yet known to be live).
    Present(SessionId),
    /// A cookie of our name whose value tokengate can never have issued.
    Malformed,
}

/// Finds our cookie among all `Cookie` headers (HTTP/2 may send several). Works on bytes,
/// so another cookie's non-ASCII value cannot hide ours.
/// The id comes from `memo` when it is the one last seen on the connection (no parse and
/// no digest again).
pub fn read_session_cookie(headers: &HeaderMap, cookie_name: &str, memo: &KeyMemo) -> CookieLookup {
    for header in headers.get_all(COOKIE) {
        // `memchr` for the separators: a cookie header is read on every request.
        let mut rest = header.as_bytes();
        while !rest.is_empty() {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let pair = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or_default();
            let Some(equals) = memchr::memchr(b'=', pair) else { continue };
            let (name, value) = (pair[..equals].trim_ascii(), pair[equals + 1..].trim_ascii());
            if name != cookie_name.as_bytes() {
                continue;
            }
            let value = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
            return match memo.id_of(value) {
                Some(id) => CookieLookup::Present(id),
                None => CookieLookup::Malformed,
            };
        }
    }
    CookieLookup::Absent
}

/// `Set-Cookie` for a session: HttpOnly, Path=/, SameSite and Secure from config, no
/// Domain (a `__Host-` cookie must have none), Max-Age = the session's remaining life.
pub fn set_session_cookie(config: &SessionConfig, id: &SessionId, max_age: Duration) -> HeaderValue {
    let mut value = String::with_capacity(128);
    value.push_str(&config.cookie_name);
    value.push('=');
    value.push_str(id.expose());
    push_attributes(&mut value, config, max_age.as_secs());
    to_header_value(value)
}

/// `Set-Cookie` that makes the browser forget the session cookie.
pub fn clear_session_cookie(config: &SessionConfig) -> HeaderValue {
    let mut value = String::with_capacity(96);
    value.push_str(&config.cookie_name);
    value.push('=');
    push_attributes(&mut value, config, 0);
    to_header_value(value)
}

/// The session cookie's attributes besides its value and `Max-Age`, as `GET /session`
/// describes them to a page (which cannot read an HttpOnly cookie): the same source the
/// `Set-Cookie` writer uses, so the description cannot drift from what is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieAttributes<'a> {
    pub name: &'a str,
    pub path: &'static str,
    pub http_only: bool,
    pub same_site: &'static str,
    pub secure: bool,
}

/// The attributes every session cookie is written with under `config`.
pub fn attributes(config: &SessionConfig) -> CookieAttributes<'_> {
    CookieAttributes {
        name: &config.cookie_name,
        path: "/",
        http_only: true,
        same_site: match config.same_site {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        },
        secure: config.cookie_secure,
    }
}

fn push_attributes(value: &mut String, config: &SessionConfig, max_age_secs: u64) {
    let attributes = attributes(config);
    value.push_str("; Path=");
    value.push_str(attributes.path);
    if attributes.http_only {
        value.push_str("; HttpOnly");
    }
    value.push_str("; Max-Age=");
    value.push_str(&max_age_secs.to_string());
    value.push_str("; SameSite=");
    value.push_str(attributes.same_site);
    if attributes.secure {
        value.push_str("; Secure");
    }
}

fn to_header_value(value: String) -> HeaderValue {
    // The name is validated at startup and the id is base64url, so this cannot fail;
    // an empty cookie is the safe answer if it ever did.
    let mut header = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""));
    header.set_sensitive(true);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuestMode;

    fn config() -> SessionConfig {
        SessionConfig {
            cookie_name: "__Host-tokengate".into(),
            cookie_secure: true,
            same_site: SameSite::Lax,
            idle_timeout: Duration::from_secs(60),
            absolute_timeout: Duration::from_secs(3600),
            max_sessions: 10,
            guest: GuestMode::Lazy,
            sweep_interval: Duration::from_secs(60),
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(COOKIE, HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")));
        }
        map
    }

    #[test]
    fn finds_the_cookie_among_others_and_across_headers() {
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let other = format!("__Host-tokengate={}", id.expose());
        let map = headers(&["a=1; b=2", &format!("c=3; {other}")]);
        assert!(
            matches!(read_session_cookie(&map, "__Host-tokengate", &KeyMemo::default()), CookieLookup::Present(found) if found == id)
        );
    }

    #[test]
    fn a_non_ascii_cookie_beside_ours_does_not_hide_it() {
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut map = HeaderMap::new();
        let raw = format!("pref=caf\u{e9}; __Host-tokengate={}", id.expose());
        map.append(COOKIE, HeaderValue::from_bytes(raw.as_bytes()).unwrap_or_else(|e| panic!("{e}")));
        assert!(
            matches!(read_session_cookie(&map, "__Host-tokengate", &KeyMemo::default()), CookieLookup::Present(found) if found == id)
        );
    }

    #[test]
    fn absent_and_malformed_are_told_apart() {
        assert!(matches!(
            read_session_cookie(&headers(&["x=1"]), "__Host-tokengate", &KeyMemo::default()),
            CookieLookup::Absent
        ));
        assert!(matches!(
            read_session_cookie(&HeaderMap::new(), "__Host-tokengate", &KeyMemo::default()),
            CookieLookup::Absent
        ));
        assert!(matches!(
            read_session_cookie(
                &headers(&["__Host-tokengate=forged"]),
                "__Host-tokengate",
                &KeyMemo::default()
            ),
            CookieLookup::Malformed
        ));
    }

    #[test]
    fn set_cookie_has_every_attribute() {
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let header = set_session_cookie(&config(), &id, Duration::from_secs(3600));
        let text = header.to_str().unwrap_or_default();
        for part in ["__Host-tokengate=", "Path=/", "HttpOnly", "Secure", "SameSite=Lax", "Max-Age=3600"] {
            assert!(text.contains(part), "{part} missing");
        }
        assert!(!text.contains("Domain"));
        assert!(header.is_sensitive());
    }

    #[test]
    fn the_described_attributes_are_the_ones_sent() {
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        for (same_site, secure) in [(SameSite::Lax, true), (SameSite::Strict, false), (SameSite::None, true)]
        {
            let config = SessionConfig { same_site, cookie_secure: secure, ..config() };
            let described = attributes(&config);
            let sent = set_session_cookie(&config, &id, Duration::from_secs(60));
            let text = sent.to_str().unwrap_or_default();
            assert_eq!(described.name, "__Host-tokengate");
            assert!(text.starts_with(&format!("{}=", described.name)), "{same_site:?}");
            assert!(text.contains(&format!("; Path={};", described.path)), "{same_site:?}");
            assert!(described.http_only && text.contains("; HttpOnly"), "{same_site:?}");
            assert!(text.contains(&format!("; SameSite={}", described.same_site)), "{same_site:?}");
            assert_eq!(described.secure, text.contains("; Secure"), "{same_site:?}");
        }
    }

    #[test]
    fn clearing_cookie_expires_at_once() {
        let text = clear_session_cookie(&config()).to_str().unwrap_or_default().to_string();
        assert!(text.starts_with("__Host-tokengate=;"));
        assert!(text.contains("Max-Age=0"));
    }
}
