//! HTTP message rules, in one place: which headers never cross tokengate (either way),
//! which methods are forwarded, and what a body declares about its length.
//!
//! * **Hop-by-hop headers** (RFC 9110 §7.6.1) describe one connection, not the message:
//!   the fixed list [`HOP_BY_HOP`] plus every header named in `Connection`. One function,
//!   [`strip`], removes them from requests and responses alike.
//! * **Request headers the API must not see**: the browser's credentials (`Cookie`,
//!   `Authorization`), our CSRF proof, the `Host` (the API gets its own), and every header
//!   by which a client could claim an address or rewrite the call (`X-Forwarded-*`,
//!   `Forwarded`, `X-Real-IP`, `True-Client-IP`, `X-Original-URL`,
//!   `X-HTTP-Method-Override`, …), also spelled with underscores (`X_Forwarded_For`),
//!   which some servers fold into the dashed name. tokengate then writes its own
//!   `X-Forwarded-For`/`-Proto`/`-Host`.
//! * **Response headers the browser must not see**: every upstream `Set-Cookie` and
//!   `Set-Cookie2` (the browser's only cookie is ours), `Clear-Site-Data` (an upstream
//!   must not clear the storefront's cookies and storage), and every `Access-Control-*`
//!   (an upstream could grant `*` or another origin; the only CORS grant is tokengate's,
//!   see `cors`).
//! * **Methods**: GET, HEAD, OPTIONS, POST, PUT, PATCH and DELETE; anything else (TRACE,
//!   PROPFIND, …) only where a route allows it, since it would carry the Bearer.
//! * **Length**: a body's declared length is hyper's size hint (from `Content-Length`,
//!   for HTTP/1.1 and HTTP/2 alike), read once; no header is parsed again.

use http::header::{self, HeaderMap, HeaderName};
use http::Method;

/// Headers that are hop-by-hop by definition.
pub static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Which way a message goes through tokengate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Browser → API.
    Request,
    /// API → browser.
    Response,
}

/// Removes hop-by-hop headers and those `direction` withholds, in place.
///
/// One pass over the names, each classified by a `match` the compiler turns into a
/// length switch and one comparison (no list walked per header); the headers to drop
/// are then removed by name. Every forwarded request drops at least `Host` and
/// `Cookie`, so this runs on every call (issue 11: it was a list scan per header).
pub fn strip(headers: &mut HeaderMap, direction: Direction) {
    let filter = Filter::of(headers, direction);
    let doomed: Vec<HeaderName> =
        headers.keys().filter(|name| filter.drops(name.as_str())).cloned().collect();
    for name in &doomed {
        headers.remove(name);
    }
}

/// The headers one message loses going one way: those [`strip`] removes, for a head
/// still being read (the upstream client drops them as it parses an answer, so an
/// answer's headers are never removed one by one afterwards).
#[derive(Debug)]
pub struct Filter<'a> {
    direction: Direction,
    /// The header names the message's `Connection` lists, besides the usual
    /// `keep-alive` and `close` (usually none: nothing is allocated then).
    named: Vec<&'a str>,
}

impl<'a> Filter<'a> {
    /// The filter of a message going `direction` whose `Connection` headers have these
    /// values.
    pub fn new(direction: Direction, connection: impl IntoIterator<Item = &'a [u8]>) -> Self {
        // On bytes, without `str` splitting: the usual `keep-alive` alone costs a few
        // dozen instructions this way (it was ~600 with `split`/`trim`/`collect`).
        let mut named = Vec::new();
        for value in connection {
            for token in list_tokens(value) {
                if !token.eq_ignore_ascii_case(b"keep-alive") && !token.eq_ignore_ascii_case(b"close") {
                    if let Ok(token) = std::str::from_utf8(token) {
                        named.push(token);
                    }
                }
            }
        }
        Self { direction, named }
    }

    /// The filter of the message with these headers going `direction`.
    pub fn of(headers: &'a HeaderMap, direction: Direction) -> Self {
        Self::new(direction, headers.get_all(header::CONNECTION).iter().map(|value| value.as_bytes()))
    }

    /// Whether [`Filter::drops`] goes by the name alone: the message's `Connection` named
    /// no other header (the usual case), so a verdict holds for that name on the next
    /// message too (`HeaderMemo::line_if` remembers it).
    pub fn by_name(&self) -> bool {
        self.named.is_empty()
    }

    /// Whether the header `name` (lower case, as `HeaderName` holds it) is dropped.
    pub fn drops(&self, name: &str) -> bool {
        dropped(name, self.direction) || self.named.iter().any(|token| token.eq_ignore_ascii_case(name))
    }
}

/// Whether a header line's name (as on the wire, any case) is `Connection`: two word
/// comparisons, not ten byte ones (every line of every answer is asked, twice). Setting
/// bit 5 lower-cases a letter and can make no other byte one of these letters.
pub fn is_connection(name: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    match name {
        [a, b, c, d, e, f, g, h, i, j] => {
            u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]) | LOWER == u64::from_le_bytes(*b"connecti")
                && (*i | 0x20, *j | 0x20) == (b'o', b'n')
        }
        _ => false,
    }
}

/// The tokens of a comma-separated header value (`Connection`, `Transfer-Encoding`),
/// trimmed, empty ones skipped.
pub fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| !token.is_empty())
}

/// Whether the header `name` (lower case, as `HeaderName` holds it) never crosses
/// tokengate going `direction`: [`may_be_dropped`] first, which clears most names in a
/// few instructions (every header of a request is asked as its head is written; the
/// string matches below cost ~90 instructions a name, a browser sends fifteen).
fn dropped(name: &str, direction: Direction) -> bool {
    may_be_dropped(name.as_bytes()) && dropped_by_name(name, direction)
}

/// Every name [`dropped_by_name`] matches whole, in either direction (a test keeps this
/// list and the matches the same).
const DROPPED_NAMES: [&str; 29] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "authorization",
    "cookie",
    "host",
    "forwarded",
    "x-csrf",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "set-cookie",
    "set-cookie2",
    "clear-site-data",
];

/// A key of a name's length and its first and last bytes (`_` taken as `-`, as a request's
/// names are folded), into 256 bits; the factors keep the usual headers of browsers and of
/// the API off the dropped names' bits.
const fn name_key(len: usize, first: u8, last: u8) -> usize {
    (len.wrapping_mul(3).wrapping_add(dash(first) as usize * 7).wrapping_add(dash(last) as usize)) % 256
}

const fn dash(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b
    }
}

/// The bits of [`DROPPED_NAMES`]' keys.
const DROPPED_KEYS: [u64; 4] = {
    let mut bits = [0u64; 4];
    let mut i = 0;
    while i < DROPPED_NAMES.len() {
        let name = DROPPED_NAMES[i].as_bytes();
        let key = name_key(name.len(), name[0], name[name.len() - 1]);
        bits[key / 64] |= 1 << (key % 64);
        i += 1;
    }
    bits
};

/// False only for a name [`dropped_by_name`] keeps, whatever the direction: its key is
/// not a dropped name's, and it cannot start `x-forwarded-` or `access-control-`.
fn may_be_dropped(name: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (name.first(), name.last()) else { return false };
    let key = name_key(name.len(), first, last);
    DROPPED_KEYS[key / 64] & (1 << (key % 64)) != 0
        || (first == b'x' && name.len() >= 12 && dash(name[1]) == b'-' && name[2] == b'f')
        || (first == b'a' && name.len() >= 15 && name[4] == b's')
}

/// [`dropped`] by the names themselves.
fn dropped_by_name(name: &str, direction: Direction) -> bool {
    is_hop_by_hop(name)
        || match direction {
            Direction::Response => withheld_response(name),
            Direction::Request if name.contains('_') => withheld_request(&name.replace('_', "-")),
            Direction::Request => withheld_request(name),
        }
}

/// [`HOP_BY_HOP`] as a `match` (a test keeps the two the same).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Request headers that never reach the API besides hop-by-hop ones (see the module
/// documentation); `name` has `_` folded to `-` already.
fn withheld_request(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "cookie"
            | "host"
            | "forwarded"
            | "x-csrf"
            | "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-cluster-client-ip"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-uri"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    ) || name.starts_with("x-forwarded-")
}

/// Response headers the browser never sees besides hop-by-hop ones.
fn withheld_response(name: &str) -> bool {
    matches!(name, "set-cookie" | "set-cookie2" | "clear-site-data") || name.starts_with("access-control-")
}

/// The methods every route forwards, as an `Allow` header names them.
pub const STANDARD_METHODS: &str = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE";

/// Whether `method` is one of the methods every route forwards ([`STANDARD_METHODS`]).
pub fn is_standard_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::OPTIONS
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
    )
}

/// The body's declared length, if it declares one (hyper reads `Content-Length` into
/// the size hint; an HTTP/2 body without one, or a chunked body, has none).
pub fn declared_length(body: &impl http_body::Body) -> Option<u64> {
    if body.is_end_stream() {
        return Some(0);
    }
    body.size_hint().exact()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_quick_check_clears_no_name_that_is_dropped() {
        // The list and the matches name the same headers.
        for name in DROPPED_NAMES {
            let folded = name.replace('-', "_");
            assert!(may_be_dropped(name.as_bytes()), "{name}");
            assert!(may_be_dropped(folded.as_bytes()), "{folded}");
            assert!(
                dropped_by_name(name, Direction::Request) || dropped_by_name(name, Direction::Response),
                "{name} is listed but not matched"
            );
        }
        for name in ["x-forwarded-for", "x_forwarded_host", "x-forwarded-anything"] {
            assert!(dropped(name, Direction::Request), "{name}");
        }
        assert!(dropped("access-control-allow-origin", Direction::Response));
        // The usual headers are cleared by the quick check alone.
        for name in [
            "accept",
            "accept-encoding",
            "accept-language",
            "user-agent",
            "referer",
            "origin",
            "sec-ch-ua",
            "sec-ch-ua-mobile",
            "sec-ch-ua-platform",
            "sec-fetch-site",
            "sec-fetch-mode",
            "sec-fetch-dest",
            "content-type",
            "content-length",
            "cache-control",
            "if-none-match",
            "traceparent",
            "x-request-id",
            "server",
            "date",
            "etag",
            "vary",
            "content-encoding",
            "www-authenticate",
        ] {
            assert!(!may_be_dropped(name.as_bytes()), "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_name_the_quick_check_clears_is_kept_both_ways(name in "[a-z0-9_-]{1,24}") {
            if !may_be_dropped(name.as_bytes()) {
                proptest::prop_assert!(!dropped_by_name(&name, Direction::Request), "{}", name);
                proptest::prop_assert!(!dropped_by_name(&name, Direction::Response), "{}", name);
            }
        }

        #[test]
        fn a_dropped_prefix_always_passes_the_quick_check(rest in "[a-z0-9_-]{0,12}", folded: bool) {
            for prefix in ["x-forwarded-", "access-control-"] {
                let prefix = if folded { prefix.replace('-', "_") } else { prefix.to_owned() };
                let name = format!("{prefix}{rest}");
                proptest::prop_assert!(may_be_dropped(name.as_bytes()), "{}", name);
            }
        }
    }

    #[test]
    fn connection_is_told_in_any_case_and_nothing_else_is() {
        for name in ["Connection", "connection", "CONNECTION", "cOnNeCtIoN"] {
            assert!(is_connection(name.as_bytes()), "{name}");
        }
        for name in
            ["Set-Cookie", "connectio", "connections", "Connectiom", "Connection\x00", "\x03onnection"]
        {
            assert!(!is_connection(name.as_bytes()), "{name}");
        }
        // Against the plain comparison, over every byte at every place.
        for at in 0..10 {
            for byte in 0..=255u8 {
                let mut name = *b"connection";
                name[at] = byte;
                assert_eq!(is_connection(&name), name.eq_ignore_ascii_case(b"connection"), "{name:?}");
            }
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_go_both_ways_with_those_connection_names() {
        for direction in [Direction::Request, Direction::Response] {
            let mut map = headers(&[
                ("connection", "keep-alive, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("proxy-connection", "keep-alive"),
                ("accept", "application/json"),
            ]);
            strip(&mut map, direction);
            let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["accept"], "{direction:?}");
        }
    }

    #[test]
    fn credentials_and_client_claims_never_reach_the_api() {
        let mut map = headers(&[
            ("authorization", "Bearer stolen"),
            ("cookie", "tg=abc"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("x-client-ip", "1.2.3.4"),
            ("cf-connecting-ip", "1.2.3.4"),
            ("x-original-url", "/oauth20/token"),
            ("x-rewrite-url", "/oauth20/token"),
            ("x-http-method-override", "DELETE"),
            ("x_http_method_override", "DELETE"),
            ("x-csrf", "1"),
            ("content-type", "application/json"),
        ]);
        strip(&mut map, Direction::Request);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn upstream_cookies_never_reach_the_browser_but_other_headers_do() {
        let mut map =
            headers(&[("set-cookie", "upstream=1"), ("x-forwarded-for", "kept"), ("etag", "\"1\"")]);
        map.insert("set-cookie2", HeaderValue::from_static("legacy=1"));
        map.insert("clear-site-data", HeaderValue::from_static("\"cookies\", \"storage\""));
        strip(&mut map, Direction::Response);
        assert!(!map.contains_key("set-cookie"));
        assert!(!map.contains_key("set-cookie2"));
        assert!(!map.contains_key("clear-site-data"), "an upstream cannot wipe the storefront's cookies");
        assert!(map.contains_key("etag"));
        assert!(map.contains_key("x-forwarded-for"), "responses keep what only requests withhold");
    }

    #[test]
    fn the_apis_cors_headers_never_reach_the_browser() {
        let mut map = headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-dr-requestid"),
            ("vary", "Accept"),
        ]);
        strip(&mut map, Direction::Response);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["vary"]);
    }

    #[test]
    fn a_filter_drops_what_strip_removes() {
        let connection: [&[u8]; 2] = [b"Keep-Alive, X-Hop", b"close,, x-other"];
        let filter = Filter::new(Direction::Response, connection);
        for name in
            ["x-hop", "x-other", "connection", "transfer-encoding", "set-cookie", "access-control-max-age"]
        {
            assert!(filter.drops(name), "{name}");
        }
        for name in ["content-type", "etag", "x-forwarded-for", "cookie"] {
            assert!(!filter.drops(name), "{name}");
        }
        let plain = Filter::new(Direction::Request, [b"keep-alive".as_slice()]);
        assert!(plain.named.is_empty(), "the usual tokens are not remembered");
        assert!(plain.drops("cookie") && plain.drops("x_forwarded_host") && !plain.drops("accept"));
    }

    #[test]
    fn the_hop_by_hop_match_is_the_published_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str()), "{name}");
        }
        let matched = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"];
        let more = ["upgrade", "proxy-authenticate", "proxy-authorization"];
        for name in matched.iter().chain(&more) {
            assert!(HOP_BY_HOP.iter().any(|listed| listed == name), "{name} is matched but not listed");
        }
        assert!(!is_hop_by_hop("accept") && !is_hop_by_hop("tee"));
    }

    #[test]
    fn the_allow_list_names_exactly_the_standard_methods() {
        for name in STANDARD_METHODS.split(", ") {
            assert!(is_standard_method(&name.parse().unwrap_or(Method::TRACE)), "{name}");
        }
        assert_eq!(STANDARD_METHODS.split(", ").count(), 7);
    }

    #[test]
    fn only_the_usual_methods_are_standard() {
        for method in ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(is_standard_method(&method.parse().unwrap_or(Method::TRACE)), "{method}");
        }
        for method in ["TRACE", "CONNECT", "PROPFIND", "MKCOL"] {
            assert!(!is_standard_method(&method.parse().unwrap_or(Method::GET)), "{method}");
        }
    }
}
