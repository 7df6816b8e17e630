//! Which handler a request path belongs to. Pure: no I/O, no allocation.
//!
//! `/session*` goes to the session endpoints, a `[[route]]` prefix (longest wins) to
//! forwarding, `/oauth20/*` is never served. Paths that could climb out of a route once
//! the API normalizes them (`..`, `.`, encoded dots or slashes, backslashes) are refused
//! here, so `/api/../oauth20/token` can never reach the token endpoint.

use crate::config::Route;

/// The session endpoints of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /session`
    Session,
    /// `POST /session/guest`
    Guest,
    /// `POST /session/login`
    Login,
    /// `POST /session/logout`
    Logout,
    /// `GET /session/authorize`
    Authorize,
    /// `GET` or `POST /session/callback`
    Callback,
    /// `POST /session/external`: the storefront's server signs a shopper in.
    External,
    /// `POST /session/backchannel-logout`: the OpenID provider's logout token
    /// (`flavor = "oauth2"`).
    BackchannelLogout,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Endpoint(Endpoint),
    Route(&'a Route),
    /// The built-in demo storefront page (only with `server.demo_page`).
    DemoPage,
    /// A path that tries to escape its route.
    UnsafePath,
    NotFound,
}

impl<'a> Target<'a> {
    /// A short label for logs and metrics; never the raw path.
    pub fn label(&self) -> &'a str {
        match self {
            Target::Endpoint(Endpoint::Session) => "/session",
            Target::Endpoint(Endpoint::Guest) => "/session/guest",
            Target::Endpoint(Endpoint::Login) => "/session/login",
            Target::Endpoint(Endpoint::Logout) => "/session/logout",
            Target::Endpoint(Endpoint::Authorize) => "/session/authorize",
            Target::Endpoint(Endpoint::Callback) => "/session/callback",
            Target::Endpoint(Endpoint::External) => "/session/external",
            Target::Endpoint(Endpoint::BackchannelLogout) => "/session/backchannel-logout",
            Target::Route(route) => &route.label,
            Target::DemoPage => "/",
            Target::UnsafePath => "(unsafe path)",
            Target::NotFound => "(not found)",
        }
    }

    /// Whether CSRF and Origin checks apply (state-changing surfaces of the contract).
    pub fn is_protected(&self) -> bool {
        matches!(self, Target::Endpoint(_) | Target::Route(_))
    }
}

/// Every label [`Target::label`] can return for `routes`, for pre-made metric handles.
pub fn all_labels(routes: &[Route]) -> Vec<&str> {
    let mut labels = vec![
        "/session",
        "/session/guest",
        "/session/login",
        "/session/logout",
        "/session/authorize",
        "/session/callback",
        "/session/external",
        "/session/backchannel-logout",
        "/",
        "(unsafe path)",
        "(not found)",
    ];
    labels.extend(routes.iter().map(|route| route.label.as_str()));
    labels
}

/// Classifies `path` (without the query string). `routes` are sorted longest first.
pub fn classify<'a>(path: &str, routes: &'a [Route], demo_page: bool) -> Target<'a> {
    match path {
        "/session" => return Target::Endpoint(Endpoint::Session),
        "/session/guest" => return Target::Endpoint(Endpoint::Guest),
        "/session/login" => return Target::Endpoint(Endpoint::Login),
        "/session/logout" => return Target::Endpoint(Endpoint::Logout),
        "/session/authorize" => return Target::Endpoint(Endpoint::Authorize),
        "/session/callback" => return Target::Endpoint(Endpoint::Callback),
        "/session/external" => return Target::Endpoint(Endpoint::External),
        "/session/backchannel-logout" => return Target::Endpoint(Endpoint::BackchannelLogout),
        "/" | "/index.html" if demo_page => return Target::DemoPage,
        _ => {}
    }
    if path.starts_with("/session/") || path == "/oauth20" || path.starts_with("/oauth20/") {
        return Target::NotFound;
    }
    if !is_safe_path(path) {
        return Target::UnsafePath;
    }
    routes
        .iter()
        .find(|route| path.starts_with(route.prefix.as_str()))
        .map_or(Target::NotFound, Target::Route)
}

/// No dot segments (also not `..;x`, which some servers read as `..`), no encoded or
/// double-encoded dots, slashes or backslashes, no backslashes. `memchr` finds the
/// backslashes, the escapes (each `%` looked at) and whether there is a dot at all; only
/// a path with a dot is split into segments: every forwarded call's path is checked
/// (issue 11: six caseless window scans and a string split cost ~1,000 instructions per
/// request).
fn is_safe_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    if memchr::memchr(b'\\', bytes).is_some() {
        return false;
    }
    let encoded_separator = memchr::memchr_iter(b'%', bytes).any(|at| {
        // `%2e` or, double-encoded, `%252e` (and the same for `2f` and `5c`), any case.
        let after = &bytes[at + 1..];
        let hex = after.strip_prefix(b"25").unwrap_or(after);
        hex.get(..2)
            .is_some_and(|hex| [b"2e", b"2f", b"5c"].iter().any(|escape| hex.eq_ignore_ascii_case(*escape)))
    });
    // A dot segment needs a dot, which most API paths do not have.
    !encoded_separator
        && (memchr::memchr(b'.', bytes).is_none()
            || !bytes.split(|byte| *byte == b'/').any(|segment| {
                let name = segment.split(|byte| *byte == b';').next().unwrap_or(segment);
                name == b"." || name == b".."
            }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionPolicy;

    fn routes() -> Vec<Route> {
        let route = |prefix: &str, session| Route {
            prefix: prefix.into(),
            upstream_prefix: "/v1/".into(),
            session,
            extra_methods: Vec::new(),
            label: prefix.into(),
            metrics: Default::default(),
        };
        // Sorted longest first, as the config loader leaves them.
        vec![route("/api/public/", SessionPolicy::None), route("/api/", SessionPolicy::Required)]
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = routes();
        assert!(
            matches!(classify("/api/public/x", &routes, false), Target::Route(r) if r.prefix == "/api/public/")
        );
        assert!(
            matches!(classify("/api/shoppers/me", &routes, false), Target::Route(r) if r.prefix == "/api/")
        );
        assert!(matches!(classify("/other", &routes, false), Target::NotFound));
    }

    #[test]
    fn session_endpoints_and_oauth_paths() {
        let routes = routes();
        assert!(matches!(classify("/session", &routes, false), Target::Endpoint(Endpoint::Session)));
        assert!(matches!(classify("/session/login", &routes, false), Target::Endpoint(Endpoint::Login)));
        assert!(matches!(classify("/session/nope", &routes, false), Target::NotFound));
        assert!(matches!(classify("/oauth20/token", &routes, false), Target::NotFound));
        assert!(matches!(classify("/", &routes, false), Target::NotFound));
        assert!(matches!(classify("/", &routes, true), Target::DemoPage));
    }

    #[test]
    fn paths_that_climb_out_are_refused() {
        let routes = routes();
        for path in [
            "/api/../oauth20/token",
            "/api/./x",
            "/api/%2e%2e/oauth20/token",
            "/api/%2E./x",
            "/api/a%2Fb",
            "/api/a\\b",
            "/api/..;/oauth20/token",
            "/api/.;x/y",
            "/api/%252e%252e/oauth20/token",
        ] {
            assert!(matches!(classify(path, &routes, false), Target::UnsafePath), "{path}");
        }
        assert!(matches!(classify("/api/a.b/..c", &routes, false), Target::Route(_)));
    }

    /// The check as it was first written (window scans and string splits), the
    /// reference for the one-pass version.
    fn is_safe_path_reference(path: &str) -> bool {
        if path.contains('\\') {
            return false;
        }
        let lower_has = |needle: &str| {
            path.as_bytes().windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
        };
        if ["%2e", "%2f", "%5c", "%252e", "%252f", "%255c"].iter().any(|needle| lower_has(needle)) {
            return false;
        }
        !path.split('/').any(|segment| {
            let name = segment.split(';').next().unwrap_or(segment);
            name == "." || name == ".."
        })
    }

    #[test]
    fn the_one_pass_check_agrees_with_the_reference_on_every_short_path() {
        const ALPHABET: &[u8] = b"%25eEfFcC/.;\\a";
        let mut path = Vec::new();
        for len in 0..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                path.clear();
                for _ in 0..len {
                    path.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let text = std::str::from_utf8(&path).unwrap_or("");
                assert_eq!(is_safe_path(text), is_safe_path_reference(text), "{text}");
            }
        }
    }
}
