//! The leak guard: the last line of defence if the API ever echoes a session's token.
//!
//! Every forwarded response is checked before and while it goes to the browser:
//! * its header names and values are searched for the session's access and refresh
//!   tokens (a hit replaces the response with 502 `token_leak_blocked`); the reason phrase
//!   and trailers never reach the browser at all (`upstream::h1`, `forward`, `body`);
//! * its body, whatever its type or size, is searched as it streams, in every form a page
//!   could decode (`scan`: a header value or a short answer by the tails and grams the
//!   tokens were made with, anything else with needles built once per session token
//!   generation and kept in a bounded [`NeedleCache`], their SIMD searchers only once a
//!   long stretch needs them): the first frame before the head goes out (a hit there is a
//!   clean 502), every later frame before it goes out (a hit there cuts the response off:
//!   the connection or stream is reset, never completed);
//! * a body is searched decoded (gzip, deflate, br, zstd: `codec`); one tokengate cannot
//!   decode (`compress`, a made-up coding, codings stacked) is refused with 502, never
//!   passed unscanned;
//! * a body that stops flowing for `upstream.request_timeout` is cut off and counted,
//!   scanned or not.
//!
//! Each hit is logged once as a security event (target `tokengate::security`) without the
//! token, and counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY};
use http::{HeaderMap, HeaderValue, Response};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::body::{Body, Cut, Reporter, Stage, Watched};
use crate::codec::{self, Coding, Decoder, Encoded, Encoder};
use crate::config::LeakGuardConfig;
use crate::error::Error;
use crate::scan::{NeedleCache, Needles, Scanner, TokenTails};
use crate::secret::RefreshToken;
use crate::session_id::SessionKey;
use crate::store::SessionRecord;

/// Scans responses for the tokens of the session they answer.
#[derive(Debug, Clone, Copy)]
pub struct LeakGuard {
    config: LeakGuardConfig,
    /// How long a response body may stall (`upstream.request_timeout`).
    deadline: Duration,
}

impl LeakGuard {
    /// A guard configured by `[leak_guard]`, cutting off bodies that stall for `deadline`.
    pub fn new(config: LeakGuardConfig, deadline: Duration) -> Self {
        Self { config, deadline }
    }

    /// Whether the guard is on (forwarding then asks only for encodings it decodes).
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// Passes `response` on, watched, decoded for the search and encoded as `browser`
    /// (the browser's preferred coding) asks; fails with `TokenLeakBlocked` if its head or
    /// first frame carries one of the session's tokens (`needles`: [`SessionNeedles`]).
    /// Without a session there is nothing to search for; with the guard off the API's
    /// bytes pass as they are (the stall deadline applies either way). `reporter` is
    /// called only for a body still to be watched (a body already whole needs none: no
    /// reference counts taken for it).
    pub async fn inspect(
        &self,
        response: Response<Body>,
        mut needles: Option<SessionNeedles<'_>>,
        browser: Option<Coding>,
        reporter: impl FnOnce() -> Reporter,
    ) -> Result<Response<Body>, Error> {
        if !self.config.enabled {
            return Ok(response.map(|body| self.watched(None, body, Stage::default(), reporter)));
        }
        // (A body already whole needs no stall timer: `watched` hands it on as it is.)
        if needles.as_mut().is_some_and(|needles| headers_leak(response.headers(), needles)) {
            return Err(blocked("header"));
        }
        let (mut parts, mut body) = response.into_parts();
        if body.is_end_stream() {
            return Ok(Response::from_parts(parts, self.watched(None, body, Stage::default(), reporter)));
        }
        let plan = plan(&mut parts.headers, browser)?;
        if let (Body::Full(Some(whole)), None) = (&body, plan.from) {
            // Read whole with its head (most JSON answers) and plain as the API sent it:
            // one search of its bytes, with no scanner (nor, sent as it came, any stage or
            // copy), whatever the browser's coding.
            if needles.take().is_some_and(|mut needles| needles.found_in(whole)) {
                return Err(blocked("body"));
            }
            if plan.is_identity() {
                return Ok(Response::from_parts(parts, body));
            }
        }
        let mut stage = plan.stage();
        stage.scanner = needles.and_then(SessionNeedles::into_needles).map(Scanner::new);
        // A body read whole with its head (most JSON answers) cannot stall: no timer then.
        let (first, whole) = match &mut body {
            Body::Full(whole) => (whole.take(), true),
            _ => (
                tokio::time::timeout(self.deadline, first_data(&mut body))
                    .await
                    .map_err(|_| Error::UpstreamTimeout)??,
                false,
            ),
        };
        let cut = |cut| match cut {
            Cut::Leak => blocked("body"),
            Cut::Corrupt => corrupt(),
        };
        let first = match first {
            Some(first) if whole => Some(stage.process_last(&first).map_err(cut)?),
            Some(first) => Some(stage.process(&first).map_err(cut)?),
            None => None,
        };
        if body.is_end_stream() {
            // The whole body was the first frame (a small answer read with its head):
            // finish the stage here and hand the bytes on, with nothing left to watch.
            let tail = stage.finish().map_err(cut)?;
            let whole = match first {
                Some(first) if tail.is_empty() => first,
                Some(first) => [first, tail].concat().into(),
                None => tail,
            };
            let body = if whole.is_empty() { Body::Empty } else { Body::full(whole) };
            return Ok(Response::from_parts(parts, body));
        }
        Ok(Response::from_parts(parts, self.watched(first, body, stage, reporter)))
    }

    /// `body` watched as it flows, unless it is already whole (nothing can stall).
    fn watched(
        &self,
        first: Option<Bytes>,
        body: Body,
        stage: Stage,
        reporter: impl FnOnce() -> Reporter,
    ) -> Body {
        if first.is_none() && matches!(body, Body::Empty | Body::Full(_)) {
            return body;
        }
        Body::Watched(Box::new(Watched::new(first, body, stage, self.deadline, reporter())))
    }
}

/// How a body goes from the API's encoding to the browser's (see [`plan`]): small, so the
/// common answer that needs neither builds no [`Stage`].
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The API's coding, decoded for the search.
    from: Option<Coding>,
    /// The browser's coding, encoded for it.
    to: Option<Coding>,
    /// The API's bytes go out as they came (the browser takes their coding).
    passthrough: bool,
}

impl Plan {
    /// Whether the API's bytes are both what is searched and what goes out: neither
    /// decoded nor encoded (a passthrough is searched decoded).
    fn is_identity(self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    fn stage(self) -> Stage {
        Stage {
            decoder: self.from.map(Decoder::new),
            scanner: None,
            encoder: self.to.map(Encoder::new),
            passthrough: self.passthrough,
        }
    }
}

/// How a body goes from the API's encoding to the browser's, with the headers to match:
/// the API's bytes as they are when the browser takes their encoding; decoded (and, for a
/// textual body, encoded as the browser prefers) otherwise. An encoding tokengate cannot
/// decode is refused: it would pass unsearched.
fn plan(headers: &mut HeaderMap, browser: Option<Coding>) -> Result<Plan, Error> {
    let from = match codec::encoding_of(headers) {
        Encoded::Unreadable => {
            return Err(Error::UpstreamUnavailable(
                "the API answered in a content encoding the leak guard cannot decode".into(),
            ))
        }
        Encoded::Identity => None,
        Encoded::Readable(coding) => Some(coding),
    };
    if from.is_some() && from == browser {
        return Ok(Plan { from, to: None, passthrough: true });
    }
    let to = browser.filter(|_| is_compressible(headers, from.is_none()));
    let plan = Plan { from, to, passthrough: false };
    if plan.is_identity() {
        return Ok(plan);
    }
    headers.remove(CONTENT_LENGTH);
    headers.remove(CONTENT_ENCODING);
    weaken_etag(headers);
    if let Some(to) = to {
        headers.insert(CONTENT_ENCODING, to.header_value());
    }
    headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    Ok(plan)
}

/// Textual, and (when `length_is_plain`: the declared length is not a compressed one) not
/// declared tiny: worth the browser's decoding.
fn is_compressible(headers: &HeaderMap, length_is_plain: bool) -> bool {
    let textual = headers.get(CONTENT_TYPE).and_then(|t| t.to_str().ok()).is_some_and(|content_type| {
        let content_type = content_type.to_ascii_lowercase();
        content_type.starts_with("text/")
            || content_type.contains("json")
            || content_type.contains("xml")
            || content_type.contains("javascript")
    });
    let tiny = length_is_plain
        && headers
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length < 256);
    textual && !tiny
}

/// A strong validator no longer fits bytes tokengate re-encoded.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(ETAG) else { return };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(weak) = HeaderValue::from_bytes(&weak) {
        headers.insert(ETAG, weak);
    }
}

fn corrupt() -> Error {
    Error::UpstreamUnavailable("the API's response body is not valid in its content encoding".into())
}

/// The hit, as an error: logged (as a security event) and counted where every error
/// becomes a response, once.
fn blocked(place: &'static str) -> Error {
    Error::TokenLeakBlocked { place }
}

/// A session's tokens for one response. A header, or an answer read whole with its head, is
/// searched as the record keeps the tokens ([`TokenTails`]: their tails and the grams made
/// with them, nothing built) wherever that search is the whole answer; otherwise (a long or
/// streamed body, an escape, a long base64 run) with the tokens' [`Needles`], built once
/// per token generation and kept in the [`NeedleCache`], fetched at the first stretch that
/// needs them.
pub struct SessionNeedles<'a> {
    tails: TokenTails<'a>,
    cache: &'a NeedleCache,
    key: &'a SessionKey,
    record: &'a SessionRecord,
    /// Unix seconds (the cache's clock).
    now: u64,
    /// The needles, once fetched.
    needles: Option<Arc<Needles>>,
}

impl std::fmt::Debug for SessionNeedles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionNeedles").field("fetched", &self.needles.is_some()).finish_non_exhaustive()
    }
}

impl<'a> SessionNeedles<'a> {
    /// The tokens of session `key`, as `record` holds them (`now`: Unix seconds); `None`
    /// when no token is long enough to search for.
    pub fn new(
        cache: &'a NeedleCache,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> Option<Self> {
        let refresh = record.refresh_token.as_ref().map(RefreshToken::for_search);
        let tails = TokenTails::new(record.access_token.for_search(), refresh)?;
        Some(Self { tails, cache, key, record, now, needles: None })
    }

    /// Whether `haystack` holds a token in any form.
    fn found_in(&mut self, haystack: &[u8]) -> bool {
        match self.tails.found_in(haystack) {
            Some(found) => found,
            None => self.fetch().is_some_and(|needles| needles.found_in(haystack)),
        }
    }

    /// The needles, from the cache or built now.
    fn fetch(&mut self) -> Option<&Arc<Needles>> {
        if self.needles.is_none() {
            let record = self.record;
            let refresh = record.refresh_token.as_ref().map(|token| token.expose().as_bytes());
            let secrets = std::iter::once(record.access_token.expose().as_bytes()).chain(refresh);
            self.needles = self.cache.get(self.key, record.generation, secrets, self.now);
        }
        self.needles.as_ref()
    }

    /// The needles, for a body searched as it streams.
    fn into_needles(mut self) -> Option<Arc<Needles>> {
        self.fetch();
        self.needles
    }
}

/// Names too: a page reads them through `headers.keys()`. Names arrive lowercased and
/// are searched without case.
fn headers_leak(headers: &HeaderMap, needles: &mut SessionNeedles<'_>) -> bool {
    headers.iter().any(|(name, value)| {
        needles.tails.found_in_ignoring_case(name.as_str().as_bytes()) || needles.found_in(value.as_bytes())
    })
}

/// The first data frame of `body` (trailers before it are skipped), or `None` at its end.
async fn first_data(body: &mut Body) -> Result<Option<Bytes>, Error> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Error::UpstreamUnavailable("the response body broke off".into()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::secret::AccessToken;
    use crate::store::SessionKind;

    fn record() -> SessionRecord {
        SessionRecord {
            kind: SessionKind::Guest,
            access_token: AccessToken::new("access-0123456789abcdef"),
            refresh_token: Some(RefreshToken::new("refresh-0123456789abcdef")),
            access_expires_at: 0,
            created_at: 0,
            absolute_expires_at: 0,
            generation: 0,
            identity: None,
        }
    }

    fn guard(enabled: bool) -> LeakGuard {
        LeakGuard::new(LeakGuardConfig { enabled, max_body_bytes: 1024 }, Duration::from_secs(5))
    }

    fn reporter() -> Reporter {
        Reporter {
            metrics: Arc::new(Metrics::default()),
            request_id: crate::context::RequestId::Given(http::HeaderValue::from_static("test")),
        }
    }

    fn response(content_type: &'static str, body: &'static str) -> Response<Body> {
        let mut response = Response::new(Body::full(body));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        response
    }

    fn json(body: String) -> Response<Body> {
        let mut response = Response::new(Body::full(body));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    async fn inspect(guard: LeakGuard, response: Response<Body>) -> Result<Bytes, Error> {
        let (cache, key, record) = (NeedleCache::default(), SessionKey([7; 32]), record());
        let needles = SessionNeedles::new(&cache, &key, &record, 0);
        let passed = guard.inspect(response, needles, None, reporter).await?;
        passed.into_body().collect().await.map(|c| c.to_bytes()).map_err(|_| Error::Internal("cut off"))
    }

    fn is_blocked(result: &Result<Bytes, Error>) -> bool {
        matches!(result, Err(Error::TokenLeakBlocked { .. }))
    }

    #[tokio::test]
    async fn a_token_in_a_body_of_any_type_is_blocked() {
        for (content_type, body) in [
            ("application/json", r#"{"echo":"access-0123456789abcdef"}"#),
            ("text/plain", "refresh-0123456789abcdef"),
            ("application/octet-stream", "access-0123456789abcdef"),
            ("application/pdf", "%PDF access-0123456789abcdef"),
            ("application/json", r#"{"echo":"\u0061ccess-0123456789abcdef"}"#),
        ] {
            assert!(
                is_blocked(&inspect(guard(true), response(content_type, body)).await),
                "{content_type}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_in_a_header_name_or_value_is_blocked_whatever_the_body() {
        let mut leaked = response("image/png", "binary");
        leaked.headers_mut().insert("x-debug", http::HeaderValue::from_static("t=access-0123456789abcdef"));
        assert!(is_blocked(&inspect(guard(true), leaked).await));
        let mut named = response("application/json", "{}");
        named.headers_mut().insert(
            http::HeaderName::from_static("x-access-0123456789abcdef"),
            http::HeaderValue::from_static("1"),
        );
        assert!(is_blocked(&inspect(guard(true), named).await));
    }

    #[tokio::test]
    async fn an_encoding_the_guard_cannot_read_is_refused() {
        for encoding in ["none", "compress", "gzip, br"] {
            let mut encoded = response("application/json", "not really compressed");
            encoded.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
            let result = inspect(guard(true), encoded).await;
            assert!(matches!(result, Err(Error::UpstreamUnavailable(_))), "{encoding}");
        }
        let mut garbage = response("application/json", "not really gzip");
        garbage.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(matches!(inspect(guard(true), garbage).await, Err(Error::UpstreamUnavailable(_))));
    }

    fn gzipped(content_type: &'static str, text: &str) -> Response<Body> {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = encoder.write_all(text.as_bytes());
        let mut response = Response::new(Body::full(encoder.finish().unwrap_or_default()));
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    }

    #[tokio::test]
    async fn a_compressed_body_is_searched_decoded() {
        let leaked = gzipped("application/json", r#"{"echo":"access-0123456789abcdef"}"#);
        assert!(is_blocked(&inspect(guard(true), leaked).await), "gzip hides nothing");
        let clean = inspect(guard(true), gzipped("application/json", r#"{"ok":true}"#)).await;
        assert_eq!(
            clean.ok().as_deref(),
            Some(br#"{"ok":true}"#.as_slice()),
            "decoded for a browser without gzip"
        );
    }

    #[tokio::test]
    async fn a_compressed_body_the_browser_takes_as_it_is_is_still_searched_decoded() {
        let (cache, key, record) = (NeedleCache::default(), SessionKey([7; 32]), record());
        let needles = || SessionNeedles::new(&cache, &key, &record, 0);
        // Long and repetitive, so that gzip codes it (a short text it may store as it is).
        let text = format!(r#"{{"pad":"{}","echo":"access-0123456789abcdef"}}"#, "ab".repeat(200));
        let leaked = gzipped("application/json", &text);
        let Body::Full(Some(compressed)) = leaked.body() else { panic!("a whole body") };
        assert!(!compressed.windows(8).any(|w| w == b"access-0"), "the token is coded, not stored");
        let passed = guard(true).inspect(leaked, needles(), Some(Coding::Gzip), reporter).await;
        assert!(
            matches!(passed, Err(Error::TokenLeakBlocked { .. })),
            "read whole, passed through: searched"
        );
        let clean = gzipped("application/json", r#"{"ok":true}"#);
        let sent = match clean.body() {
            Body::Full(bytes) => bytes.clone(),
            _ => None,
        };
        let passed = guard(true).inspect(clean, needles(), Some(Coding::Gzip), reporter).await;
        let body = match passed {
            Ok(passed) => passed.into_body().collect().await.map(|c| c.to_bytes()).ok(),
            Err(_) => None,
        };
        assert_eq!(body, sent, "the API's gzip bytes as they came");
    }

    #[tokio::test]
    async fn clean_responses_pass_intact_and_the_guard_can_be_off() {
        let clean = inspect(guard(true), response("application/json", r#"{"ok":true}"#)).await;
        assert_eq!(clean.ok().as_deref(), Some(br#"{"ok":true}"#.as_slice()));
        let off = inspect(guard(false), response("application/json", "access-0123456789abcdef")).await;
        assert!(off.is_ok(), "the guard is off");
    }

    #[tokio::test]
    async fn a_plain_answer_encoded_for_the_browser_is_searched_before_it_is_encoded() {
        use std::io::Read as _;
        let (cache, key, record) = (NeedleCache::default(), SessionKey([7; 32]), record());
        let needles = || SessionNeedles::new(&cache, &key, &record, 0);
        // Long enough to be worth gzip; the token raw, JSON-escaped, and in a long answer
        // (the last two searched by the cached needles, the first by the tails).
        let padded = |echo: &str, pad: usize| format!(r#"{{"pad":"{}","echo":"{echo}"}}"#, "ab ".repeat(pad));
        for (text, leaks) in [
            (padded("access-0123456789abcdef", 100), true),
            (padded(r"access-0123456789abcdef", 100), true),
            (padded("refresh-0123456789abcdef", 1000), true),
            (padded("nothing to see", 100), false),
        ] {
            let passed =
                guard(true).inspect(json(text.clone()), needles(), Some(Coding::Gzip), reporter).await;
            match passed {
                Err(Error::TokenLeakBlocked { .. }) => assert!(leaks, "{text}"),
                Ok(passed) => {
                    assert!(!leaks, "{text}");
                    assert_eq!(
                        passed.headers().get(CONTENT_ENCODING).map(HeaderValue::as_bytes),
                        Some(&b"gzip"[..])
                    );
                    let body = passed.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let mut plain = String::new();
                    let _ = flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut plain);
                    assert_eq!(plain, text, "encoded for the browser, intact");
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
}
