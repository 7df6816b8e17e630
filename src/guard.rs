//! Request guards that run before any session is read: the Origin allowlist and the
//! `X-CSRF` header on unsafe methods.
//!
//! Rules, in order:
//! 1. A request that carries `Origin` must name an origin in `allowed_origins`
//!    (default: `public_origin`), else 403 `origin_rejected`. `Origin: null` is refused.
//! 2. `POST`, `PUT`, `PATCH` and `DELETE` to `/session/*` or a route must carry
//!    `X-CSRF: 1`, else 403 `csrf_required`. A cross-site form cannot set a custom
//!    header, and a cross-site `fetch` that sets one needs a CORS preflight tokengate
//!    never grants.
//!
//! Deployment caveat: these rules assume the storefront and tokengate share an origin
//! (tokengate serves the API under the shop's own host). They never read sessions.

use http::{HeaderMap, Method};

use crate::error::Error;

/// Checks rules 1 and 2 for a request to a protected target.
pub fn check(method: &Method, headers: &HeaderMap, allowed_origins: &[String]) -> Result<(), Error> {
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)));
        if !allowed {
            return Err(Error::OriginRejected);
        }
    }
    if is_unsafe(method) && headers.get("x-csrf").is_none_or(|value| value.as_bytes() != b"1") {
        return Err(Error::CsrfRequired);
    }
    Ok(())
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

    const ALLOWED: &[&str] = &["https://shop.example.com"];

    fn allowed() -> Vec<String> {
        ALLOWED.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unsafe_methods_need_the_csrf_header() {
        assert!(matches!(check(&Method::POST, &headers(&[]), &allowed()), Err(Error::CsrfRequired)));
        assert!(matches!(
            check(&Method::DELETE, &headers(&[("x-csrf", "yes")]), &allowed()),
            Err(Error::CsrfRequired)
        ));
        assert!(check(&Method::POST, &headers(&[("x-csrf", "1")]), &allowed()).is_ok());
        assert!(check(&Method::GET, &headers(&[]), &allowed()).is_ok());
    }

    #[test]
    fn a_foreign_origin_is_rejected_whatever_the_method() {
        let foreign = headers(&[("origin", "https://evil.example"), ("x-csrf", "1")]);
        assert!(matches!(check(&Method::POST, &foreign, &allowed()), Err(Error::OriginRejected)));
        assert!(matches!(check(&Method::GET, &foreign, &allowed()), Err(Error::OriginRejected)));
        let null = headers(&[("origin", "null"), ("x-csrf", "1")]);
        assert!(matches!(check(&Method::POST, &null, &allowed()), Err(Error::OriginRejected)));
        let own = headers(&[("origin", "https://shop.example.com"), ("x-csrf", "1")]);
        assert!(check(&Method::POST, &own, &allowed()).is_ok());
    }
}
