//! Fuzzes the `Cookie` header parser: `tokengate::cookie::read_session_cookie` and, under
//! it, `SessionId::parse` and the connection's `KeyMemo`.
//!
//! Input: byte 0 picks the cookie name, bytes 1 and 2 pick where a valid id is inserted,
//! the rest is one `Cookie` header per `\n`-separated line (controls, which a `HeaderValue`
//! cannot hold, are moved up into letters). Beyond "never panics" it checks that
//! - a `Present` id has the exact issued shape, parses back, and came from the input;
//! - a valid id inserted among the other cookies (all of ours taken out) is found.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::cookie::{read_session_cookie, CookieLookup};
use tokengate::session_id::{KeyMemo, SessionId};

const NAMES: [&str; 4] = ["__Host-tokengate", "tokengate", "__Secure-sid", "a"];
/// 32 bytes 0x00..0x1f in unpadded base64url.
const INSERTED_ID: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn is_canonical_id(value: &[u8]) -> bool {
    value.len() == 43
        && value.iter().all(|b| BASE64URL.contains(b))
        && BASE64URL.iter().position(|c| Some(c) == value.last()).is_some_and(|i| i % 4 == 0)
}

/// Moves the bytes a `HeaderValue` cannot hold (controls other than tab) up into letters.
fn clean(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .map(|&b| match b {
            0x7f => b'~',
            b'\t' => b,
            0..0x20 => b | 0x40,
            _ => b,
        })
        .collect()
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    match HeaderValue::from_bytes(bytes) {
        Ok(value) => value,
        Err(error) => panic!("cleaned header value refused: {error}"),
    }
}

/// A cookie pair's name as the parser sees it: split at the first `=`, trimmed.
fn pair_name(pair: &[u8]) -> Option<&[u8]> {
    let pair = pair.trim_ascii();
    let at = pair.iter().position(|&b| b == b'=')?;
    Some(pair[..at].trim_ascii())
}

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = match data {
        [a, b, c, rest @ ..] => ((*a, *b, *c), rest),
        _ => ((0, 0, 0), data),
    };
    let name = NAMES[usize::from(selector.0) % NAMES.len()];
    let lines: Vec<Vec<u8>> = rest.split(|&b| b == b'\n').take(8).map(clean).collect();

    // One memo for both reads, as on one connection: the second read of an id the first
    // found is answered by the memo, and must still be the inserted one.
    let memo = KeyMemo::default();

    // 1. The input as it is.
    let mut headers = HeaderMap::new();
    for line in &lines {
        headers.append(COOKIE, header_value(line));
    }
    if let CookieLookup::Present(id) = read_session_cookie(&headers, name, &memo) {
        let text = id.expose();
        assert!(is_canonical_id(text.as_bytes()), "Present with a non-canonical id {text:?}");
        assert_eq!(URL_SAFE_NO_PAD.decode(text).map(|b| b.len()).ok(), Some(32));
        assert!(SessionId::parse(text).as_ref() == Some(&id), "the id does not parse back");
        let from_input =
            headers.get_all(COOKIE).iter().any(|v| v.as_bytes().windows(43).any(|w| w == text.as_bytes()));
        assert!(from_input, "an id that is not in the input");
    }

    // 2. Every cookie of our name taken out, one valid id put in.
    let mut edited: Vec<Vec<Vec<u8>>> = lines
        .iter()
        .map(|line| {
            line.split(|&b| b == b';')
                .filter(|pair| pair_name(pair) != Some(name.as_bytes()))
                .map(<[u8]>::to_vec)
                .collect()
        })
        .collect();
    if edited.is_empty() {
        edited.push(Vec::new());
    }
    let at_header = usize::from(selector.1) % edited.len();
    let pairs = &mut edited[at_header];
    let at_pair = usize::from(selector.2) % (pairs.len() + 1);
    pairs.insert(at_pair, format!(" {name}={INSERTED_ID}").into_bytes());
    let mut headers = HeaderMap::new();
    for pairs in &edited {
        headers.append(COOKIE, header_value(&pairs.join(&b';')));
    }
    match read_session_cookie(&headers, name, &memo) {
        CookieLookup::Present(id) if id.expose() == INSERTED_ID => {}
        other => panic!(
            "inserted id not found: {other:?} in {:?}",
            headers.get_all(COOKIE).iter().collect::<Vec<_>>()
        ),
    }
});
