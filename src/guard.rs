//! Request guards that run before any session is read: the Origin allowlist and proof
//! that an unsafe request comes from the storefront.
//!
//! Rules, in order, for `/session/*` and routes:
//! 0. A request a browser marks `Sec-Fetch-Site: cross-site` (Fetch Metadata) is refused
//!    with 403 `origin_rejected`, whatever its method: no other site may make a shopper's
//!    browser call the API, not even with an `<img>` or a plain link that mints a guest.
//!    The hosted login's callback is exempt: it arrives by a redirect from the API's site.
//!    With `server.cors` on, so is a request whose `Origin` is allowed: the operator named
//!    that site, and rule 1 has already checked it (a storefront on another site; the
//!    README explains why a same-site one is better).
//! 1. A request that carries `Origin` must name an origin in `allowed_origins`
//!    (default: `public_origin`), else 403 `origin_rejected`. `Origin: null` is refused.
//! 2. `POST`, `PUT`, `PATCH` and `DELETE` must prove where they come from:
//!    - `csrf = "header"` (default): the header `X-CSRF: 1`, else 403 `csrf_required`. A
//!      cross-site form cannot set a custom header, and a cross-origin `fetch` that sets
//!      one needs a CORS preflight, which tokengate grants only to allowed origins and
//!      only with `server.cors` on (`cors`).
//!    - `csrf = "origin"`: `Origin`, or when absent `Referer`, must be an allowed origin;
//!      a request with neither is refused with 403 `csrf_required`. For server-rendered
//!      storefronts whose forms cannot set headers.
//! 3. `POST /session/callback` is exempt from rule 2's header: the hosted login's
//!    callback page posts a plain form. Its single-use `state`, bound to the session,
//!    is what proves it (rule 1 still applies).
//!
//! 4. `POST /session/external` is for the storefront's server only: rules 0 to 2 do not
//!    apply (its secret proves the caller), but anything that looks like a browser
//!    (`Origin`, `Sec-Fetch-Site`, `Sec-Fetch-Mode` or a `Cookie` header) is refused with
//!    403 `browser_forbidden` before the secret is even looked at
//!    ([`refuse_browsers`]), so no page can make a browser choose an external reference id.
//!
//! Deployment caveat: without `server.cors` these rules assume the storefront and
//! tokengate share an origin (tokengate serves the API under the shop's own host). They
//! never read sessions.

use http::{HeaderMap, HeaderName, Method};

use crate::config::CsrfMode;
use crate::error::Error;

// Looked up as names, not `&str`: a string key is parsed and lowercased on every lookup
// (~390 instructions a request for `sec-fetch-site` alone).
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
static SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
static X_CSRF: HeaderName = HeaderName::from_static("x-csrf");

/// Checks rules 0 to 2 (`exempt_from_csrf` skips rules 0 and 2; `cors_granted`, an
/// allowed `Origin` with `server.cors` on, skips rule 0).
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    allowed_origins: &[String],
    mode: CsrfMode,
    exempt_from_csrf: bool,
    cors_granted: bool,
) -> Result<(), Error> {
    let cross_site = headers.get(&SEC_FETCH_SITE).is_some_and(|site| site.as_bytes() == b"cross-site");
    if cross_site && !exempt_from_csrf && !cors_granted {
        return Err(Error::OriginRejected);
    }
    let origin = headers.get(http::header::ORIGIN);
    if let Some(origin) = origin {
        if !origin.to_str().is_ok_and(|origin| is_allowed(origin, allowed_origins)) {
            return Err(Error::OriginRejected);
        }
    }
    if !is_unsafe(method) || exempt_from_csrf {
        return Ok(());
    }
    let proven = match mode {
        CsrfMode::Header => headers.get(&X_CSRF).is_some_and(|value| value.as_bytes() == b"1"),
        CsrfMode::Origin => origin.is_some() || referer_is_allowed(headers, allowed_origins)?,
    };
    if proven {
        Ok(())
    } else {
        Err(Error::CsrfRequired)
    }
}

/// Rule 4: refuses a request that carries what browsers send and servers do not.
pub fn refuse_browsers(headers: &HeaderMap) -> Result<(), Error> {
    let browser_headers = [http::header::ORIGIN, http::header::COOKIE];
    let looks_like_a_browser = browser_headers.iter().any(|name| headers.contains_key(name))
        || headers.contains_key(&SEC_FETCH_SITE)
        || headers.contains_key(&SEC_FETCH_MODE);
    if looks_like_a_browser {
        Err(Error::BrowserForbidden)
    } else {
        Ok(())
    }
}

/// The same for the OpenID provider's back-channel logout: a server-side `fetch` (Node's
/// undici, as `oidc-provider` uses) sends `Sec-Fetch-Mode: cors` by the Fetch standard, so
/// only what a browser adds and a server does not is refused: `Origin` or `Cookie` on
/// the request, or `Sec-Fetch-Site`, which every current browser sends on every request.
pub fn refuse_browser_context(headers: &HeaderMap) -> Result<(), Error> {
    let browser_headers = [http::header::ORIGIN, http::header::COOKIE];
    if browser_headers.iter().any(|name| headers.contains_key(name)) || headers.contains_key(&SEC_FETCH_SITE)
    {
        Err(Error::BrowserForbidden)
    } else {
        Ok(())
    }
}

fn is_allowed(origin: &str, allowed_origins: &[String]) -> bool {
    allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
}

/// Whether `Referer` names an allowed origin. A present but foreign `Referer` is an
/// `origin_rejected`, like a foreign `Origin`.
fn referer_is_allowed(headers: &HeaderMap, allowed_origins: &[String]) -> Result<bool, Error> {
    let Some(referer) = headers.get(http::header::REFERER) else { return Ok(false) };
    let referer = referer.to_str().map_err(|_| Error::OriginRejected)?;
    let origin = origin_of(referer).ok_or(Error::OriginRejected)?;
    if is_allowed(&origin, allowed_origins) {
        Ok(true)
    } else {
        Err(Error::OriginRejected)
    }
}

/// The origin of an absolute http(s) URL, serialized as browsers send `Origin` (the
/// config's allowed origins are normalized the same way).
fn origin_of(referer: &str) -> Option<String> {
    let url = url::Url::parse(referer).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
}

fn is_unsafe(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn allowed() -> Vec<String> {
        vec!["https://shop.example.com".to_string()]
    }

    fn header_mode(method: Method, pairs: &[(&'static str, &'static str)]) -> Result<(), Error> {
        check(&method, &headers(pairs), &allowed(), CsrfMode::Header, false, false)
    }

    fn origin_mode(method: Method, pairs: &[(&'static str, &'static str)]) -> Result<(), Error> {
        check(&method, &headers(pairs), &allowed(), CsrfMode::Origin, false, false)
    }

    #[test]
    fn header_mode_needs_x_csrf_on_unsafe_methods() {
        assert!(matches!(header_mode(Method::POST, &[]), Err(Error::CsrfRequired)));
        assert!(matches!(header_mode(Method::DELETE, &[("x-csrf", "yes")]), Err(Error::CsrfRequired)));
        assert!(header_mode(Method::POST, &[("x-csrf", "1")]).is_ok());
        assert!(header_mode(Method::GET, &[]).is_ok());
        assert!(check(&Method::POST, &HeaderMap::new(), &allowed(), CsrfMode::Header, true, false).is_ok());
    }

    #[test]
    fn a_foreign_origin_is_rejected_whatever_the_method_or_mode() {
        for mode in [CsrfMode::Header, CsrfMode::Origin] {
            for (origin, method) in [("https://evil.example", Method::GET), ("null", Method::POST)] {
                let map = headers(&[("origin", origin), ("x-csrf", "1")]);
                assert!(matches!(
                    check(&method, &map, &allowed(), mode, false, false),
                    Err(Error::OriginRejected)
                ));
            }
        }
        assert!(header_mode(Method::POST, &[("origin", "https://shop.example.com"), ("x-csrf", "1")]).is_ok());
    }

    #[test]
    fn cross_site_fetches_are_refused_by_fetch_metadata() {
        for method in [Method::GET, Method::POST] {
            let map = headers(&[("sec-fetch-site", "cross-site"), ("x-csrf", "1")]);
            assert!(matches!(
                check(&method, &map, &allowed(), CsrfMode::Header, false, false),
                Err(Error::OriginRejected)
            ));
        }
        for site in ["same-origin", "none", "same-site"] {
            assert!(header_mode(Method::GET, &[("sec-fetch-site", site)]).is_ok(), "{site}");
        }
        // The callback arrives by a cross-site redirect from the API's login page.
        let redirected = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(check(&Method::GET, &redirected, &allowed(), CsrfMode::Header, true, false).is_ok());
    }

    #[test]
    fn a_cors_grant_lets_an_allowed_site_through_but_still_needs_the_csrf_proof() {
        let site = ("sec-fetch-site", "cross-site");
        let origin = ("origin", "https://shop.example.com");
        let granted =
            |method: Method, map: HeaderMap| check(&method, &map, &allowed(), CsrfMode::Header, false, true);
        assert!(granted(Method::GET, headers(&[site, origin])).is_ok());
        assert!(granted(Method::POST, headers(&[site, origin, ("x-csrf", "1")])).is_ok());
        assert!(matches!(granted(Method::POST, headers(&[site, origin])), Err(Error::CsrfRequired)));
    }

    #[test]
    fn server_to_server_calls_refuse_anything_like_a_browser() {
        assert!(refuse_browsers(&headers(&[("authorization", "Bearer s")])).is_ok());
        for browser in [
            ("origin", "https://shop.example.com"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("cookie", "a=b"),
        ] {
            assert!(
                matches!(refuse_browsers(&headers(&[browser])), Err(Error::BrowserForbidden)),
                "{browser:?}"
            );
        }
    }

    #[test]
    fn origin_mode_accepts_origin_or_referer_and_refuses_neither() {
        assert!(origin_mode(Method::POST, &[("origin", "https://shop.example.com")]).is_ok());
        assert!(origin_mode(Method::POST, &[("referer", "https://shop.example.com/cart?x=1")]).is_ok());
        assert!(matches!(origin_mode(Method::POST, &[]), Err(Error::CsrfRequired)));
        assert!(matches!(origin_mode(Method::POST, &[("x-csrf", "1")]), Err(Error::CsrfRequired)));
        assert!(matches!(
            origin_mode(Method::POST, &[("referer", "https://shop.example.com.evil.test/")]),
            Err(Error::OriginRejected)
        ));
        for foreign in
            ["https://shop.example.com@evil.test/", "https://evil.test/?https://shop.example.com", "/cart"]
        {
            assert!(
                matches!(origin_mode(Method::POST, &[("referer", foreign)]), Err(Error::OriginRejected)),
                "{foreign}"
            );
        }
        assert!(origin_mode(Method::POST, &[("referer", "https://user@shop.example.com:443/cart")]).is_ok());
        assert!(origin_mode(Method::GET, &[]).is_ok());
    }
}
