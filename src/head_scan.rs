//! The fast reading of an HTTP/1.1 head's lines, for heads shaped like the connection's
//! last ones (`HeaderMemo::replay`): the start line and each header line's value, read by
//! a strict subset of `httparse`'s rules, eight bytes at a time where it can.
//!
//! Why: `httparse` takes each header name byte by byte (about 150 instructions a line,
//! `bench/callgrind.sh`); a connection's heads name the same headers at the same places,
//! so a name can be matched with the memo's bytes in one comparison, and only values need
//! reading. What is read here is never read more loosely than `httparse` would: every
//! function answers `None` for anything outside its subset (leading empty lines, a lone
//! `\r`, a control byte, obs-text in a status line's version...), and the caller then hands
//! the whole head to `httparse`, which accepts or refuses it as before. The tests hold
//! each function to `httparse`'s answer on the same bytes.

use std::ops::Range;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A request line read by [`request_line`]: where its parts lie in the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub http10: bool,
    /// Where the first header line starts.
    pub end: usize,
}

/// A status line read by [`status_line`] (its reason phrase is read and not kept: the
/// browser gets the standard one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLine {
    pub code: u16,
    pub http10: bool,
    /// Where the first header line starts.
    pub end: usize,
}

/// The request line at the front of `head`: a method of token bytes, one space, a target
/// of visible ASCII and obs-text that is UTF-8, one space, `HTTP/1.0` or `HTTP/1.1`, and
/// `\r\n` or `\n`.
pub fn request_line(head: &[u8]) -> Option<RequestLine> {
    let method_len = head.iter().position(|&b| !is_token(b))?;
    if method_len == 0 || head[method_len] != b' ' {
        return None;
    }
    let target_start = method_len + 1;
    let rest = head.get(target_start..)?;
    let target_len = first_below(rest, b'!');
    if target_len == 0 || rest.get(target_len) != Some(&b' ') {
        return None;
    }
    let target = &rest[..target_len];
    if !target.is_ascii() && std::str::from_utf8(target).is_err() {
        return None;
    }
    let version_start = target_start + target_len + 1;
    let http10 = version(head.get(version_start..)?)?;
    let end = version_start + 8 + line_end(head.get(version_start + 8..)?)?;
    Some(RequestLine { method: 0..method_len, target: target_start..target_start + target_len, http10, end })
}

/// The status line at the front of `head`: `HTTP/1.0` or `HTTP/1.1`, one space, three
/// digits, then `\r\n`, `\n`, or one space and a reason phrase of value bytes.
pub fn status_line(head: &[u8]) -> Option<StatusLine> {
    let http10 = version(head)?;
    let code = match head.get(8..12)? {
        [b' ', h @ b'0'..=b'9', t @ b'0'..=b'9', o @ b'0'..=b'9'] => {
            u16::from(h - b'0') * 100 + u16::from(t - b'0') * 10 + u16::from(o - b'0')
        }
        _ => return None,
    };
    let end = match head.get(12..)? {
        [b' ', ..] => 13 + value_line(head, 13)?.1,
        rest => 12 + line_end(rest)?,
    };
    Some(StatusLine { code, http10, end })
}

/// A header line's value, read from just after its colon: where the value lies (spaces
/// and tabs at either end are not part of it) and where the next line starts. `None`
/// for a byte that is not a tab, a space, visible ASCII or obs-text, for a `\r` not
/// followed by `\n`, and for a line that is not whole yet.
pub fn header_value(head: &[u8], from: usize) -> Option<(Range<usize>, usize)> {
    let (content, next) = value_line(head, from)?;
    let line = head.get(from..from + content)?;
    let start = line.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(line.len());
    let end = line.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |last| last + 1);
    Some((from + start..from + end, from + next))
}

/// The bytes of a line from `from` that are all value bytes (tab, space, visible ASCII,
/// obs-text) up to its end (`\r\n` or `\n`): their count, and the count with the end.
fn value_line(head: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = head.get(from..)?;
    let mut at = 0;
    loop {
        at += first_below(rest.get(at..)?, b' ');
        match rest.get(at..)? {
            [b'\t', ..] => at += 1,
            [b'\n', ..] => return Some((at, at + 1)),
            [b'\r', b'\n', ..] => return Some((at, at + 2)),
            _ => return None,
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1` (eight bytes) at the front of `bytes`: whether it is 1.0.
fn version(bytes: &[u8]) -> Option<bool> {
    match bytes.get(..8)? {
        b"HTTP/1.1" => Some(false),
        b"HTTP/1.0" => Some(true),
        _ => None,
    }
}

/// The length of the line end (`\r\n` or `\n`) at the front of `bytes`.
fn line_end(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [b'\n', ..] => Some(1),
        [b'\r', b'\n', ..] => Some(2),
        _ => None,
    }
}

/// The index of the first byte of `bytes` below `floor` (at most `!`) or DEL, else
/// `bytes.len()`: eight bytes a step, the last few one by one. In a word, the lowest
/// byte marked is the first such byte: a borrow only ever marks bytes above one that is.
fn first_below(bytes: &[u8], floor: u8) -> usize {
    let floors = ONES * u64::from(floor);
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    for (n, word) in words.enumerate() {
        // Always eight bytes (`chunks_exact`); a zero word would only send the caller to
        // `httparse`.
        let x = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let below = x.wrapping_sub(floors) & !x & HIGHS;
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGHS;
        let marked = below | del;
        if marked != 0 {
            return n * 8 + (marked.trailing_zeros() / 8) as usize;
        }
    }
    let at = bytes.len() - tail.len();
    at + tail.iter().position(|&b| b < floor || b == 0x7f).unwrap_or(tail.len())
}

/// RFC 9110 `tchar`, as `httparse` takes a method or a header name: one load (the
/// method's end, a space, is always looked up).
fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from an alphabet heavy in what the rules turn on.
    fn wire_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            8 => prop::sample::select(b"aZ09/?=;,.-_~%".to_vec()),
            3 => Just(b' '),
            1 => Just(b'\t'),
            1 => Just(b'\r'),
            1 => Just(b'\n'),
            1 => Just(b':'),
            1 => prop::sample::select(vec![0u8, 0x01, 0x1f, 0x7f, 0x80, 0xc3, 0xa9, 0xff]),
        ];
        prop::collection::vec(byte, 0..max)
    }

    /// `httparse`'s reading of one header line `X:` + `content` (cut at its first `\n`):
    /// the value, or `None` when it refuses the line or the line is not whole.
    fn httparse_value(content: &[u8]) -> Option<Vec<u8>> {
        let cut = content.iter().position(|&b| b == b'\n')?;
        let mut head = b"X:".to_vec();
        head.extend_from_slice(&content[..=cut]);
        head.extend_from_slice(b"\r\n");
        let mut headers = [httparse::EMPTY_HEADER; 1];
        match httparse::parse_headers(&head, &mut headers) {
            Ok(httparse::Status::Complete((_, [header]))) => Some(header.value.to_vec()),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn a_value_is_read_exactly_as_httparse_reads_it(content in wire_bytes(40)) {
            let mut head = b"X:".to_vec();
            head.extend_from_slice(&content);
            let ours = header_value(&head, 2);
            let theirs = httparse_value(&content);
            prop_assert_eq!(ours.as_ref().map(|(value, _)| head[value.clone()].to_vec()), theirs);
            if let Some((_, next)) = ours {
                let cut = content.iter().position(|&b| b == b'\n').map(|cut| cut + 3);
                prop_assert_eq!(Some(next), cut);
            }
        }

        #[test]
        fn a_request_line_read_here_is_read_alike_by_httparse(
            method in prop_oneof![Just(b"GET".to_vec()), Just(b"PATCH".to_vec()), wire_bytes(6)],
            target in prop_oneof![Just(b"/v1/shoppers/me?x=1".to_vec()), wire_bytes(24)],
            version in prop_oneof![Just(b"HTTP/1.1".to_vec()), Just(b"HTTP/1.0".to_vec()), wire_bytes(9)],
            end in prop_oneof![Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), wire_bytes(3)],
        ) {
            let head = [method, b" ".to_vec(), target, b" ".to_vec(), version, end, b"\r\n".to_vec()].concat();
            if let Some(line) = request_line(&head) {
                // The line read here, then an empty line: httparse reads the same line.
                let head = [&head[..line.end], b"\r\n"].concat();
                let mut headers = [httparse::EMPTY_HEADER; 0];
                let mut request = httparse::Request::new(&mut headers);
                let parsed = request.parse(&head);
                prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "{:?}", parsed);
                prop_assert_eq!(request.method.map(str::as_bytes), Some(&head[line.method.clone()]));
                prop_assert_eq!(request.path.map(str::as_bytes), Some(&head[line.target.clone()]));
                prop_assert_eq!(request.version, Some(u8::from(!line.http10)));
                prop_assert_eq!(parsed, Ok(httparse::Status::Complete(line.end + 2)));
            }
        }

        #[test]
        fn a_status_line_read_here_is_read_alike_by_httparse(
            version in prop_oneof![Just(b"HTTP/1.1".to_vec()), Just(b"HTTP/1.0".to_vec()), wire_bytes(9)],
            code in prop_oneof![Just(b" 200".to_vec()), Just(b" 401".to_vec()), wire_bytes(5)],
            reason in prop_oneof![Just(b" OK".to_vec()), Just(Vec::new()), wire_bytes(12)],
            end in prop_oneof![Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), wire_bytes(3)],
        ) {
            let head = [version, code, reason, end, b"\r\n".to_vec()].concat();
            if let Some(line) = status_line(&head) {
                let head = [&head[..line.end], b"\r\n"].concat();
                let mut headers = [httparse::EMPTY_HEADER; 0];
                let mut response = httparse::Response::new(&mut headers);
                let parsed = response.parse(&head);
                prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "{:?}", parsed);
                prop_assert_eq!(response.code, Some(line.code));
                prop_assert_eq!(response.version, Some(u8::from(!line.http10)));
                prop_assert_eq!(parsed, Ok(httparse::Status::Complete(line.end + 2)));
            }
        }
    }

    #[test]
    fn the_token_table_is_rfc_9110_tchar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token(b), tchar, "{b:#04x}");
        }
    }

    #[test]
    fn the_usual_lines_are_read_here() {
        let line = request_line(b"GET /v1/shoppers/me HTTP/1.1\r\nHost: x\r\n").expect("read");
        assert_eq!((line.method, line.target, line.http10, line.end), (0..3, 4..19, false, 30));
        let status = status_line(b"HTTP/1.1 200 OK\r\n").expect("read");
        assert_eq!((status.code, status.http10, status.end), (200, false, 17));
        assert_eq!(status_line(b"HTTP/1.0 204\n").map(|s| (s.code, s.http10, s.end)), Some((204, true, 13)));
        let head = b"Date:  Fri, 04 Dec 2026 23:59:53 GMT \t\r\nX: y";
        assert_eq!(header_value(head, 5), Some((7..36, 40)));
    }

    #[test]
    fn what_httparse_would_refuse_or_read_otherwise_is_left_to_it() {
        for head in [
            &b"\r\nGET / HTTP/1.1\r\n"[..],
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET /\x7f HTTP/1.1\r\n",
            b"GET /\xff HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1\r",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(request_line(head), None, "{head:?}");
        }
        for head in [&b"HTTP/1.1 20 OK\r\n"[..], b"HTTP/1.1 200 O\x01K\r\n", b"HTTP/1.1 200OK\r\n"] {
            assert_eq!(status_line(head), None, "{head:?}");
        }
        for line in [&b"X: a\rb\r\n"[..], b"X: a\x00\r\n", b"X: a\x7f\r\n", b"X: abc"] {
            assert_eq!(header_value(line, 2), None, "{line:?}");
        }
    }
}
