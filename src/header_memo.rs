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

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};

/// Most header lines remembered, from the first.
pub const LINES: usize = 16;
/// Changes a connection's memo takes (a line learnt or replaced, a value learnt).
pub const UPDATES: u16 = 64;
/// Times a line's value is learnt again before the memo gives up on it.
pub const VALUE_CHANGES: u8 = 2;

/// Which part of a header line is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    Name,
    Value,
}

/// One connection's memo (see the module's words).
#[derive(Default)]
pub struct HeaderMemo {
    lines: Vec<Line>,
    updates: u16,
}

struct Line {
    /// The line as it came on the wire — name, colon, spaces, value — when its value is
    /// kept, else the name alone; compared byte for byte (one comparison a line).
    raw: Bytes,
    name_len: usize,
    name: HeaderName,
    /// The value last seen here, a slice of `raw` (never of a read buffer).
    value: Option<HeaderValue>,
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
    /// The `place`th header line of a head, typed: `raw_name` and `raw_value` are slices
    /// of `buf`, the frozen head, and a value made fresh is a slice of it too (no copy).
    pub fn line(
        &mut self,
        place: usize,
        raw_name: &[u8],
        raw_value: &[u8],
        buf: &Bytes,
    ) -> Result<(HeaderName, HeaderValue), BadLine> {
        let line = self.line_if(place, raw_name, raw_value, buf, |_| true, true)?;
        // ok: every line is wanted here, so `line_if` never answers `None`.
        line.ok_or(BadLine::Name)
    }

    /// [`HeaderMemo::line`] for a reader that drops some headers: `None` when `wanted`
    /// says no to the line's name, and then its value is neither checked nor made (an
    /// answer's `Set-Cookie`, say, which never reaches the browser). `by_name`: `wanted`
    /// answers by the name alone (no `Connection` header named others), so its answer is
    /// remembered with the line and not asked again for the same name.
    pub fn line_if(
        &mut self,
        place: usize,
        raw_name: &[u8],
        raw_value: &[u8],
        buf: &Bytes,
        wanted: impl FnOnce(&HeaderName) -> bool,
        by_name: bool,
    ) -> Result<Option<(HeaderName, HeaderValue)>, BadLine> {
        let whole = whole_line(buf, raw_name, raw_value);
        let can_update = self.updates < UPDATES;
        if let Some(line) = self.lines.get_mut(place) {
            if let Some(value) =
                line.value.as_ref().filter(|_| whole.is_some_and(|whole| *line.raw == *whole))
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
                    if let Some((raw, kept)) = whole.and_then(|whole| kept_line(whole, raw_name, raw_value)) {
                        (line.raw, line.value) = (raw, Some(kept));
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
            // A dropped line's name is learnt (the next one is told at one comparison),
            // never its value.
            let whole = whole.filter(|_| wanted && keeps_value(&name));
            self.learn(place, &name, raw_name, whole, raw_value, by_name.then_some(wanted));
        }
        Ok(value.map(|value| (name, value)))
    }

    fn learn(
        &mut self,
        place: usize,
        name: &HeaderName,
        raw_name: &[u8],
        whole: Option<&[u8]>,
        raw_value: &[u8],
        wanted: Option<bool>,
    ) {
        let (raw, value) = match whole.and_then(|whole| kept_line(whole, raw_name, raw_value)) {
            Some((raw, value)) => (raw, Some(value)),
            None => (Bytes::copy_from_slice(raw_name), None),
        };
        let line =
            Line { raw, name_len: raw_name.len(), name: name.clone(), value, value_changes: 0, wanted };
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

/// Where `part` lies in `buf`, when it is a slice of it (as `httparse` hands lines over).
fn span_in(buf: &Bytes, part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let span = start..start.checked_add(part.len())?;
    (span.end <= buf.len()).then_some(span)
}

/// The whole line from the name's first byte to the value's last, when both are slices
/// of `buf` in that order.
fn whole_line<'b>(buf: &'b Bytes, raw_name: &[u8], raw_value: &[u8]) -> Option<&'b [u8]> {
    let (name, value) = (span_in(buf, raw_name)?, span_in(buf, raw_value)?);
    (name.end <= value.start).then(|| &buf[name.start..value.end])
}

/// The line copied into its own buffer, and its value as a slice of that copy.
fn kept_line(whole: &[u8], raw_name: &[u8], raw_value: &[u8]) -> Option<(Bytes, HeaderValue)> {
    let raw = Bytes::copy_from_slice(whole);
    let value = raw.slice(whole.len() - raw_value.len()..);
    let value = HeaderValue::from_maybe_shared(value).ok()?;
    (raw.get(..raw_name.len()) == Some(raw_name)).then_some((raw, value))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The line `name: value` read from a head of its own, as `httparse` hands it over.
    fn line(memo: &mut HeaderMemo, place: usize, name: &str, value: &str) -> (HeaderName, HeaderValue) {
        let buf = Bytes::from(format!("{name}: {value}"));
        let (raw_name, raw_value) = (&buf[..name.len()], &buf[name.len() + 2..]);
        memo.line(place, raw_name, raw_value, &buf).expect("a valid line")
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
        assert_eq!(memo.line(0, &buf[..8], &buf[10..12], &buf).err(), Some(BadLine::Name));
        assert_eq!(memo.line(0, &buf[12..16], &buf[18..], &buf).err(), Some(BadLine::Value));
        // Remembered first, the same name with a bad value is still refused.
        memo.line(1, &buf[12..16], &buf[18..20], &buf).expect("valid");
        assert_eq!(memo.line(1, &buf[12..16], &buf[18..], &buf).err(), Some(BadLine::Value));
        // A name and value that are not slices of the head are still made right.
        let (name, value) = memo.line(2, b"x-apart", b"v", &buf).expect("valid");
        assert_eq!((name.as_str(), value.as_bytes()), ("x-apart", &b"v"[..]));
    }

    #[test]
    fn a_line_not_wanted_is_not_made_but_its_name_is_learnt() {
        let mut memo = HeaderMemo::default();
        let not_cookies = |name: &HeaderName| *name != header::SET_COOKIE;
        for round in 0..3 {
            let buf = Bytes::from(format!("Set-Cookie: id={round}\x7f"));
            // Its value (bad here) is never looked at: the line is dropped whole.
            let line = memo.line_if(0, &buf[..10], &buf[12..], &buf, not_cookies, true);
            assert_eq!(line, Ok(None), "round {round}");
        }
        assert_eq!(memo.lines[0].name, header::SET_COOKIE);
        assert!(memo.lines[0].value.is_none(), "a dropped line's value is never kept");
        let buf = Bytes::from_static(b"Server: nginx");
        let line = memo.line_if(0, &buf[..6], &buf[8..], &buf, not_cookies, true);
        assert_eq!(line, Ok(Some((header::SERVER, HeaderValue::from_static("nginx")))));
    }

    #[test]
    fn a_verdict_by_name_is_asked_once_and_any_other_every_time() {
        let mut memo = HeaderMemo::default();
        let buf = Bytes::from_static(b"X-Custom: 1");
        let (name, value) = (&buf[..8], &buf[10..]);
        let asked = std::cell::Cell::new(0);
        let counted = |_: &HeaderName| {
            asked.set(asked.get() + 1);
            true
        };
        for _ in 0..3 {
            assert!(matches!(memo.line_if(0, name, value, &buf, counted, true), Ok(Some(_))));
        }
        assert_eq!(asked.get(), 1, "asked when learnt, remembered after");
        // Not by name (a `Connection` named it): asked, obeyed, and nothing remembered.
        assert_eq!(memo.line_if(0, name, value, &buf, |_| false, false), Ok(None));
        assert!(matches!(memo.line_if(0, name, value, &buf, counted, true), Ok(Some(_))));
        assert_eq!(asked.get(), 2, "asked again after a verdict that was not by name");
    }
}
