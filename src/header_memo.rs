//! `HeaderMemo`: the header lines of the last heads read on one HTTP/1.1 connection, by
//! place, so the next head's lines that are the same come out as the typed name and value
//! already made, instead of being classified and checked byte by byte again.
//!
//! Why: a keep-alive connection carries heads that look alike — a browser sends the same
//! `Host`, `User-Agent` and `Accept` in the same order on every call, and an API answers
//! one endpoint with the same `Server`, `Content-Type` and `Cache-Control`. Making a
//! `HeaderName` (lower-casing and matching it against the standard names) and checking a
//! `HeaderValue` cost about 200 instructions a line; comparing the line's bytes with the
//! memo's costs a tenth of that (`bench/callgrind.sh`). This is what HPACK does on the wire.
//!
//! Bounds: at most [`LINES`] places, and a budget of [`UPDATES`] changes per connection
//! (a connection whose heads keep changing stops learning, and every line is then made as
//! before). A value that changes more than [`VALUE_CHANGES`] times at its place (`Date`,
//! `Content-Length`, request ids) is no longer kept. Values of headers that carry
//! credentials (`Cookie`, `Authorization`, `Proxy-Authorization`, `Set-Cookie`) are never
//! kept: they live only as long as their request or answer, as before.
//!
//! A head whose every header line names, at its place, the header the memo has there is
//! read by the memo alone ([`HeaderMemo::replay`]): a line that is byte for byte the one
//! remembered (its end included) costs one comparison, and another only has its value
//! read (`head_scan`). Any other head is parsed by `httparse`, and the memo learns from it.
//!
//! The server's side also remembers the last request target ([`HeaderMemo::target`]): a
//! connection that calls the same path again gets the `Uri` already checked (checking one
//! costs ~300 instructions, comparing its bytes a tenth). Only a target without a query
//! and of at most [`TARGET_BYTES`] is kept (a query may carry a one-time code), a copy of
//! its bytes (never a slice of a read buffer), at most [`TARGET_UPDATES`] times a
//! connection.

use std::ops::Range;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{InvalidUri, Uri};

use crate::head_scan;

/// Most header lines remembered, from the first.
pub const LINES: usize = 16;
/// Changes a connection's memo takes (a line learnt or replaced, a value learnt).
pub const UPDATES: u16 = 64;
/// Times a line's value is learnt again before the memo gives up on it.
pub const VALUE_CHANGES: u8 = 2;
/// Longest request target remembered.
pub const TARGET_BYTES: usize = 256;
/// Request targets a connection's memo learns.
pub const TARGET_UPDATES: u8 = 16;

/// Which part of a header line is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    Name,
    Value,
}

/// One header line of a head: its name and value, slices of the head, as `httparse` or
/// [`HeaderMemo::replay`] hands them over.
#[derive(Debug, Clone, Copy)]
pub struct HeadLine<'b> {
    pub name: &'b [u8],
    pub value: &'b [u8],
    /// Found by `replay` to be byte for byte the memo's line at its place, value kept.
    known: bool,
}

impl<'b> HeadLine<'b> {
    /// A line `httparse` read.
    pub fn parsed(name: &'b [u8], value: &'b [u8]) -> Self {
        Self { name, value, known: false }
    }
}

/// The header lines [`HeaderMemo::replay`] read, in order, on the stack (none made
/// before it is written: a head has one or two dozen, and this is every request's path).
pub type Replayed<'b> = smallvec::SmallVec<[HeadLine<'b>; LINES]>;

/// One connection's memo (see the module's words).
#[derive(Default)]
pub struct HeaderMemo {
    lines: Vec<Line>,
    updates: u16,
    /// The last request target kept, its bytes and its `Uri` (one allocation).
    target: Option<(Bytes, Uri)>,
    target_updates: u8,
}

struct Line {
    /// The line as it came on the wire — name, colon, spaces, value, spaces, its end
    /// (`\r\n` or `\n`) — when its value is kept, else the name alone; compared byte for
    /// byte (one comparison a line).
    raw: Bytes,
    name_len: usize,
    name: HeaderName,
    /// The value last seen here, a slice of `raw` (never of a read buffer), at `value_at`.
    value: Option<HeaderValue>,
    value_at: usize,
    value_changes: u8,
    /// The reader's verdict on this name, when it said it goes by the name alone
    /// ([`HeaderMemo::line_if`]'s `by_name`).
    wanted: Option<bool>,
}

impl std::fmt::Debug for HeaderMemo {
    // Names only: a value may be anything a browser or the API sent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lines.iter().map(|line| line.name.as_str())).finish()
    }
}

impl HeaderMemo {
    /// The request target `raw` (a slice of `buf`, the frozen head) as a `Uri`: the one
    /// remembered when its bytes are the same, else checked (and remembered, if it may be).
    pub fn target(&mut self, raw: &[u8], buf: &Bytes) -> Result<Uri, InvalidUri> {
        if let Some((_, uri)) = self.target.as_ref().filter(|(bytes, _)| **bytes == *raw) {
            return Ok(uri.clone());
        }
        let keep = self.target_updates < TARGET_UPDATES
            && raw.len() <= TARGET_BYTES
            && memchr::memchr(b'?', raw).is_none();
        if !keep {
            return Uri::from_maybe_shared(buf.slice_ref(raw));
        }
        let bytes = Bytes::copy_from_slice(raw);
        let uri = Uri::from_maybe_shared(bytes.clone())?;
        self.target = Some((bytes, uri.clone()));
        self.target_updates += 1;
        Ok(uri)
    }

    /// The `place`th header line of a head, typed: `raw_name` and `raw_value` are slices
    /// of `buf`, the frozen head, and a value made fresh is a slice of it too (no copy).
    pub fn line(
        &mut self,
        place: usize,
        line: HeadLine<'_>,
        buf: &Bytes,
    ) -> Result<(HeaderName, HeaderValue), BadLine> {
        let line = self.line_if(place, line, buf, |_| true, true)?;
        // ok: every line is wanted here, so `line_if` never answers `None`.
        line.ok_or(BadLine::Name)
    }

    /// The header lines of `head` from `at` (where its first header line starts) to the
    /// empty line that ends it, when every line names, at its place, the header the memo
    /// has there (same bytes, then a colon): a line that is byte for byte the memo's is
    /// taken as it is, another has its value read (`head_scan::header_value`). `None`
    /// for any other head — a line at a place the memo does not know or with another
    /// name, a value `head_scan` does not read, a head not whole — which `httparse` then
    /// reads as before. Nothing here changes the memo: the caller hands each line to
    /// [`HeaderMemo::line_if`], which does. Returns the head's length (its empty last
    /// line included), the lines in `lines`.
    pub fn replay<'b>(&self, head: &'b [u8], mut at: usize, lines: &mut Replayed<'b>) -> Option<usize> {
        for line in &self.lines {
            let rest = head.get(at..)?;
            if let Some(length) = empty_line(rest) {
                return Some(at + length);
            }
            if let Some(value) = line.value.as_ref().filter(|_| rest.starts_with(&line.raw)) {
                let value = rest.get(line.value_at..line.value_at + value.len())?;
                lines.push(HeadLine { name: &rest[..line.name_len], value, known: true });
                at += line.raw.len();
                continue;
            }
            let name = line.raw.get(..line.name_len)?;
            if !rest.starts_with(name) || rest.get(name.len()) != Some(&b':') {
                return None;
            }
            let (value, next) = head_scan::header_value(head, at + name.len() + 1)?;
            lines.push(HeadLine { name: &rest[..name.len()], value: &head[value], known: false });
            at = next;
        }
        Some(at + empty_line(head.get(at..)?)?)
    }

    /// [`HeaderMemo::line`] for a reader that drops some headers: `None` when `wanted`
    /// says no to the line's name, and then its value is neither checked nor made (an
    /// answer's `Set-Cookie`, say, which never reaches the browser). `by_name`: `wanted`
    /// answers by the name alone (no `Connection` header named others), so its answer is
    /// remembered with the line and not asked again for the same name.
    pub fn line_if(
        &mut self,
        place: usize,
        head_line: HeadLine<'_>,
        buf: &Bytes,
        wanted: impl FnOnce(&HeaderName) -> bool,
        by_name: bool,
    ) -> Result<Option<(HeaderName, HeaderValue)>, BadLine> {
        let HeadLine { name: raw_name, value: raw_value, known } = head_line;
        if let Some(line) = self.lines.get_mut(place).filter(|_| known) {
            if let Some(value) = &line.value {
                let keep = verdict(&mut line.wanted, &line.name, wanted, by_name);
                return Ok(keep.then(|| (line.name.clone(), value.clone())));
            }
        }
        let whole = whole_line(buf, raw_name, raw_value);
        let can_update = self.updates < UPDATES;
        if let Some(line) = self.lines.get_mut(place) {
            if let Some(value) =
                line.value.as_ref().filter(|_| whole.as_ref().is_some_and(|(whole, _)| *line.raw == **whole))
            {
                let keep = verdict(&mut line.wanted, &line.name, wanted, by_name);
                return Ok(keep.then(|| (line.name.clone(), value.clone())));
            }
            if line.raw.get(..line.name_len) == Some(raw_name) {
                if !verdict(&mut line.wanted, &line.name, wanted, by_name) {
                    return Ok(None);
                }
                let value = fresh_value(buf, raw_value)?;
                if can_update && line.value.is_some() && line.value_changes < VALUE_CHANGES {
                    if let Some((raw, kept, at)) =
                        whole.and_then(|(whole, at)| kept_line(whole, raw_name, at))
                    {
                        (line.raw, line.value, line.value_at) = (raw, Some(kept), at.start);
                        line.value_changes += 1;
                        self.updates += 1;
                        return Ok(Some((line.name.clone(), value)));
                    }
                }
                // A value that keeps changing (or cannot be kept) is made fresh from now on.
                line.value = None;
                line.raw.truncate(line.name_len);
                return Ok(Some((line.name.clone(), value)));
            }
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|_| BadLine::Name)?;
        let wanted = wanted(&name);
        let value = if wanted { Some(fresh_value(buf, raw_value)?) } else { None };
        if can_update && place <= self.lines.len() && place < LINES {
            // A dropped line is learnt too (the next one is told at one comparison, and
            // its head can be replayed), its value only if it is no credential.
            let whole = whole.filter(|_| keeps_value(&name));
            self.learn(place, &name, raw_name, whole, by_name.then_some(wanted));
        }
        Ok(value.map(|value| (name, value)))
    }

    fn learn(
        &mut self,
        place: usize,
        name: &HeaderName,
        raw_name: &[u8],
        whole: Option<(&[u8], Range<usize>)>,
        wanted: Option<bool>,
    ) {
        let (raw, value, value_at) = match whole.and_then(|(whole, at)| kept_line(whole, raw_name, at)) {
            Some((raw, value, at)) => (raw, Some(value), at.start),
            None => (Bytes::copy_from_slice(raw_name), None, 0),
        };
        let line = Line {
            raw,
            name_len: raw_name.len(),
            name: name.clone(),
            value,
            value_at,
            value_changes: 0,
            wanted,
        };
        match self.lines.get_mut(place) {
            Some(slot) => *slot = line,
            None => self.lines.push(line),
        }
        self.updates += 1;
    }
}

/// The reader's verdict on a remembered line's `name`: the one remembered with it when the
/// reader goes `by_name`, else asked (and then remembered, if it may be).
fn verdict(
    remembered: &mut Option<bool>,
    name: &HeaderName,
    wanted: impl FnOnce(&HeaderName) -> bool,
    by_name: bool,
) -> bool {
    match *remembered {
        Some(keep) if by_name => keep,
        _ => {
            let keep = wanted(name);
            *remembered = by_name.then_some(keep);
            keep
        }
    }
}

/// The length of the empty line that ends a head, when `rest` starts with one.
fn empty_line(rest: &[u8]) -> Option<usize> {
    match rest {
        [b'\r', b'\n', ..] => Some(2),
        [b'\n', ..] => Some(1),
        _ => None,
    }
}

/// Where `part` lies in `buf`, when it is a slice of it (as `httparse` hands lines over).
fn span_in(buf: &Bytes, part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let span = start..start.checked_add(part.len())?;
    (span.end <= buf.len()).then_some(span)
}

/// The whole line from the name's first byte to its end (`\r\n` or `\n`, after the
/// spaces that follow the value), when name and value are slices of `buf` in that order;
/// and where the value lies in it.
fn whole_line<'b>(buf: &'b Bytes, raw_name: &[u8], raw_value: &[u8]) -> Option<(&'b [u8], Range<usize>)> {
    let (name, value) = (span_in(buf, raw_name)?, span_in(buf, raw_value)?);
    if name.end > value.start {
        return None;
    }
    let after = buf.get(value.end..)?;
    let spaces = after.iter().position(|&b| b != b' ' && b != b'\t')?;
    let end = value.end
        + spaces
        + match after.get(spaces..)? {
            [b'\n', ..] => 1,
            [b'\r', b'\n', ..] => 2,
            _ => return None,
        };
    Some((&buf[name.start..end], value.start - name.start..value.end - name.start))
}

/// The line copied into its own buffer, its value (at `at`) as a slice of that copy.
fn kept_line(whole: &[u8], raw_name: &[u8], at: Range<usize>) -> Option<(Bytes, HeaderValue, Range<usize>)> {
    let raw = Bytes::copy_from_slice(whole);
    let value = HeaderValue::from_maybe_shared(raw.slice(at.clone())).ok()?;
    (raw.get(..raw_name.len()) == Some(raw_name)).then_some((raw, value, at))
}

/// A value made from its bytes in the head: checked, and sharing the head's buffer
/// (copied only if the bytes are not the head's, which `httparse` never does).
fn fresh_value(buf: &Bytes, raw_value: &[u8]) -> Result<HeaderValue, BadLine> {
    let value = match span_in(buf, raw_value) {
        Some(span) => HeaderValue::from_maybe_shared(buf.slice(span)),
        None => HeaderValue::from_bytes(raw_value),
    };
    value.map_err(|_| BadLine::Value)
}

/// Whether a header's value may outlive its message in the memo: not one that carries
/// credentials.
fn keeps_value(name: &HeaderName) -> bool {
    !(name == header::COOKIE
        || name == header::AUTHORIZATION
        || name == header::PROXY_AUTHORIZATION
        || name == header::SET_COOKIE)
}

/// Heads for tests that read the same bytes through one connection's memo and through a
/// memo of their own: a start line and header lines drawn from the pools given, most
/// heads in a run sharing one shape (so the memo replays them), with lines changed, cut
/// short, ended by `\n` alone or broken between them.
#[cfg(test)]
pub(crate) fn alike_heads(
    starts: &'static [&'static str],
    pool: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = Vec<Vec<u8>>> {
    use proptest::prelude::*;
    let base = prop::collection::vec(0..pool.len(), 0..8);
    let edit = (0..starts.len(), any::<prop::sample::Index>(), 0..pool.len(), 0u8..8, 0u8..6);
    (base, prop::collection::vec(edit, 1..8)).prop_map(move |(base, edits)| {
        edits
            .into_iter()
            .map(|(start, at, line, end, tail)| {
                let mut lines: Vec<usize> = base.clone();
                if !lines.is_empty() && end < 3 {
                    let at = at.index(lines.len());
                    lines[at] = line;
                }
                let newline: &[u8] = if end == 7 { b"\n" } else { b"\r\n" };
                let mut head = starts[start].as_bytes().to_vec();
                for line in lines {
                    head.extend_from_slice(pool[line].as_bytes());
                    head.extend_from_slice(newline);
                }
                head.extend_from_slice(newline);
                match tail {
                    0 => {
                        head.pop();
                    }
                    1 => head.extend_from_slice(b"body"),
                    _ => {}
                }
                head
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line `name: value` read from a head of its own, as `httparse` hands it over.
    fn line(memo: &mut HeaderMemo, place: usize, name: &str, value: &str) -> (HeaderName, HeaderValue) {
        let buf = Bytes::from(format!("{name}: {value}\r\n"));
        memo.line(place, parsed(&buf, name.len(), value.len()), &buf).expect("a valid line")
    }

    /// The line of `buf` (`name: value\r\n`) whose name and value have these lengths.
    fn parsed(buf: &[u8], name: usize, value: usize) -> HeadLine<'_> {
        HeadLine::parsed(&buf[..name], &buf[name + 2..name + 2 + value])
    }

    fn kept(memo: &HeaderMemo, place: usize) -> Option<&[u8]> {
        memo.lines.get(place).and_then(|line| line.value.as_ref()).map(HeaderValue::as_bytes)
    }

    #[test]
    fn a_line_comes_out_the_same_whether_remembered_or_not() {
        let mut memo = HeaderMemo::default();
        for _ in 0..3 {
            let (name, value) = line(&mut memo, 0, "Content-Type", "application/json");
            assert_eq!(name, header::CONTENT_TYPE);
            assert_eq!(value, "application/json");
            let (name, value) = line(&mut memo, 1, "X-Custom", "a b");
            assert_eq!(name.as_str(), "x-custom");
            assert_eq!(value, "a b");
        }
        assert_eq!(memo.lines.len(), 2);
        assert_eq!(kept(&memo, 0), Some(&b"application/json"[..]));
    }

    #[test]
    fn a_changed_name_or_value_is_never_answered_from_the_memo() {
        let mut memo = HeaderMemo::default();
        line(&mut memo, 0, "Accept", "text/html");
        assert_eq!(line(&mut memo, 0, "Accept", "application/json").1, "application/json");
        assert_eq!(line(&mut memo, 0, "accept", "application/json").0, header::ACCEPT);
        let (name, value) = line(&mut memo, 0, "Referer", "https://shop.example/");
        assert_eq!((name, value.to_str().ok()), (header::REFERER, Some("https://shop.example/")));
    }

    #[test]
    fn credentials_are_never_kept() {
        let mut memo = HeaderMemo::default();
        for (place, name) in
            ["Cookie", "Authorization", "Proxy-Authorization", "Set-Cookie"].iter().enumerate()
        {
            line(&mut memo, place, name, "secret");
            line(&mut memo, place, name, "secret");
            assert_eq!(kept(&memo, place), None, "{name}");
        }
    }

    #[test]
    fn a_value_that_keeps_changing_is_let_go() {
        let mut memo = HeaderMemo::default();
        for second in 0..10 {
            let date = format!("Fri, 04 Dec 2026 15:00:{second:02} GMT");
            assert_eq!(line(&mut memo, 0, "Date", &date).1, date.as_str());
        }
        assert_eq!(kept(&memo, 0), None);
        assert_eq!(memo.lines[0].value_changes, VALUE_CHANGES);
    }

    #[test]
    fn the_memo_is_bounded_in_places_and_in_changes() {
        let mut memo = HeaderMemo::default();
        for place in 0..LINES + 4 {
            line(&mut memo, place, &format!("x-h{place}"), "v");
        }
        assert_eq!(memo.lines.len(), LINES);
        for round in 0..UPDATES {
            line(&mut memo, 0, &format!("x-round{round}"), "v");
        }
        assert_eq!(memo.updates, UPDATES);
        let (name, _) = line(&mut memo, 0, "x-late", "v");
        assert_eq!(name.as_str(), "x-late");
        assert!(!memo.lines[0].raw.starts_with(b"x-late"));
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        let mut memo = HeaderMemo::default();
        let buf = Bytes::from_static(b"bad name: okx-ok: ok\x7f");
        let at = |name: std::ops::Range<usize>, value: std::ops::Range<usize>| {
            HeadLine::parsed(&buf[name], &buf[value])
        };
        assert_eq!(memo.line(0, at(0..8, 10..12), &buf).err(), Some(BadLine::Name));
        assert_eq!(memo.line(0, at(12..16, 18..21), &buf).err(), Some(BadLine::Value));
        // Remembered first, the same name with a bad value is still refused.
        memo.line(1, at(12..16, 18..20), &buf).expect("valid");
        assert_eq!(memo.line(1, at(12..16, 18..21), &buf).err(), Some(BadLine::Value));
        // A name and value that are not slices of the head are still made right.
        let (name, value) = memo.line(2, HeadLine::parsed(b"x-apart", b"v"), &buf).expect("valid");
        assert_eq!((name.as_str(), value.as_bytes()), ("x-apart", &b"v"[..]));
    }

    #[test]
    fn a_line_not_wanted_is_not_made_but_its_name_is_learnt() {
        let mut memo = HeaderMemo::default();
        let not_cookies = |name: &HeaderName| *name != header::SET_COOKIE;
        for round in 0..3 {
            let buf = Bytes::from(format!("Set-Cookie: id={round}\x7f\r\n"));
            // Its value (bad here) is never looked at: the line is dropped whole.
            let line = memo.line_if(0, parsed(&buf, 10, 6), &buf, not_cookies, true);
            assert_eq!(line, Ok(None), "round {round}");
        }
        assert_eq!(memo.lines[0].name, header::SET_COOKIE);
        assert!(memo.lines[0].value.is_none(), "a credential's value is never kept");
        let buf = Bytes::from_static(b"Server: nginx\r\n");
        let line = memo.line_if(0, parsed(&buf, 6, 5), &buf, not_cookies, true);
        assert_eq!(line, Ok(Some((header::SERVER, HeaderValue::from_static("nginx")))));
        // A dropped line that carries no credential is kept whole, for the next head.
        let buf = Bytes::from_static(b"Connection: keep-alive\r\n");
        let hop = |name: &HeaderName| *name != header::CONNECTION;
        assert_eq!(memo.line_if(1, parsed(&buf, 10, 10), &buf, hop, true), Ok(None));
        assert_eq!(kept(&memo, 1), Some(&b"keep-alive"[..]));
    }

    #[test]
    fn a_verdict_by_name_is_asked_once_and_any_other_every_time() {
        let mut memo = HeaderMemo::default();
        let buf = Bytes::from_static(b"X-Custom: 1\r\n");
        let head_line = parsed(&buf, 8, 1);
        let asked = std::cell::Cell::new(0);
        let counted = |_: &HeaderName| {
            asked.set(asked.get() + 1);
            true
        };
        for _ in 0..3 {
            assert!(matches!(memo.line_if(0, head_line, &buf, counted, true), Ok(Some(_))));
        }
        assert_eq!(asked.get(), 1, "asked when learnt, remembered after");
        // Not by name (a `Connection` named it): asked, obeyed, and nothing remembered.
        assert_eq!(memo.line_if(0, head_line, &buf, |_| false, false), Ok(None));
        assert!(matches!(memo.line_if(0, head_line, &buf, counted, true), Ok(Some(_))));
        assert_eq!(asked.get(), 2, "asked again after a verdict that was not by name");
    }

    #[test]
    fn the_same_target_is_answered_from_the_memo() {
        let mut memo = HeaderMemo::default();
        let first = Bytes::from_static(b"/v1/shoppers/me");
        let uri = memo.target(&first, &first).expect("valid");
        let again = Bytes::copy_from_slice(b"/v1/shoppers/me");
        let same = memo.target(&again, &again).expect("valid");
        assert_eq!(same, uri);
        // The memo's own copy, not a slice of either head.
        assert_eq!(same.path().as_ptr(), uri.path().as_ptr());
        assert_ne!(same.path().as_ptr(), again.as_ptr());
        assert_ne!(same.path().as_ptr(), first.as_ptr());
        let other = Bytes::from_static(b"/v1/carts/me");
        assert_eq!(memo.target(&other, &other).expect("valid").path(), "/v1/carts/me");
    }

    #[test]
    fn a_target_with_a_query_or_not_valid_is_never_kept() {
        let mut memo = HeaderMemo::default();
        let plain = Bytes::from_static(b"/v1/carts/me");
        memo.target(&plain, &plain).expect("valid");
        let coded = Bytes::from_static(b"/session/callback?code=one-time&state=s");
        let uri = memo.target(&coded, &coded).expect("valid");
        assert_eq!(uri.query(), Some("code=one-time&state=s"));
        assert_eq!(uri.path().as_ptr(), coded.as_ptr(), "a slice of the head, not a copy");
        let bad = Bytes::from_static(b"/a\x7fb");
        assert!(memo.target(&bad, &bad).is_err());
        let kept = memo.target.as_ref().map(|(bytes, _)| bytes.clone());
        assert_eq!(kept.as_deref(), Some(&b"/v1/carts/me"[..]), "the last plain target stays");
    }

    #[test]
    fn the_targets_learnt_are_bounded_in_number_and_length() {
        let mut memo = HeaderMemo::default();
        for n in 0..usize::from(TARGET_UPDATES) + 3 {
            let target = Bytes::from(format!("/v1/items/{n}"));
            memo.target(&target, &target).expect("valid");
        }
        assert_eq!(memo.target_updates, TARGET_UPDATES);
        let last = memo.target.as_ref().map(|(bytes, _)| bytes.clone());
        assert_eq!(last.as_deref(), Some(format!("/v1/items/{}", TARGET_UPDATES - 1).as_bytes()));
        let mut fresh = HeaderMemo::default();
        let long = Bytes::from(format!("/{}", "a".repeat(TARGET_BYTES)));
        fresh.target(&long, &long).expect("valid");
        assert!(fresh.target.is_none());
    }

    #[test]
    fn a_head_alike_the_last_is_replayed_and_its_lines_are_the_same() {
        let mut memo = HeaderMemo::default();
        let first = Bytes::from_static(
            b"Server: nginx\r\nDate: Fri, 04 Dec 2026 15:00:00 GMT\r\nSet-Cookie: a=1\r\n\r\n",
        );
        assert!(memo.replay(&first, 0, &mut Replayed::new()).is_none(), "nothing learnt yet");
        for (place, (start, name, value)) in [(0, 6, 5), (15, 4, 29), (52, 10, 3)].into_iter().enumerate() {
            memo.line(place, parsed(&first[start..], name, value), &first).expect("valid");
        }
        let next = Bytes::from_static(
            b"Server: nginx\r\nDate: Fri, 04 Dec 2026 15:00:01 GMT\r\nSet-Cookie:  b=2 \r\n\r\nbody",
        );
        let mut replayed = Replayed::new();
        assert_eq!(memo.replay(&next, 0, &mut replayed), Some(next.len() - 4), "alike");
        let lines: Vec<_> = replayed.iter().map(|line| (line.name, line.value, line.known)).collect();
        assert_eq!(
            lines,
            [
                (&b"Server"[..], &b"nginx"[..], true),
                (b"Date", b"Fri, 04 Dec 2026 15:00:01 GMT", false),
                (b"Set-Cookie", b"b=2", false),
            ]
        );
        for (place, line) in replayed.into_iter().enumerate() {
            let (name, value) = memo.line(place, line, &next).expect("valid");
            assert_eq!(name.as_str().as_bytes(), line.name.to_ascii_lowercase());
            assert_eq!(value.as_bytes(), line.value);
        }
    }

    #[test]
    fn a_head_not_alike_is_left_to_httparse() {
        let mut memo = HeaderMemo::default();
        let learnt = Bytes::from_static(b"Server: nginx\r\nX-A: 1\r\n");
        memo.line(0, parsed(&learnt, 6, 5), &learnt).expect("valid");
        memo.line(1, parsed(&learnt[15..], 3, 1), &learnt).expect("valid");
        for head in [
            &b"server: nginx\r\nX-A: 1\r\n\r\n"[..],
            b"Server: nginx\r\nX-B: 1\r\n\r\n",
            b"Server: nginx\r\nX-A: 1\r\nX-C: 1\r\n\r\n",
            b"Server: nginx\r\nX-A: 1\x7f\r\n\r\n",
            b"Server: nginx\r\nX-A: 1\r\n  folded\r\n\r\n",
            b"Server: nginx\r\nX-A : 1\r\n\r\n",
            b"Server: nginx\r\nX-A: 1\r\n",
            b"Server: nginx\r\nX-A: 1\r\n\r",
            b"Server: nginx\r\nX-A: 1",
        ] {
            assert!(
                memo.replay(head, 0, &mut Replayed::new()).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let replay = |head: &[u8]| memo.replay(head, 0, &mut Replayed::new());
        assert_eq!(replay(b"Server: nginx\nX-A:2\n\n"), Some(21), "ends and values may differ");
        assert_eq!(replay(b"Server: nginx\r\n\r\n"), Some(17), "fewer lines");
    }
}
