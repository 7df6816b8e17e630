//! Fuzzes the hosted login's callback parameter parser,
//! `tokengate::callback::parse_callback_query`.
//!
//! Input: the query string, fragment or form body as UTF-8 (invalid bytes replaced).
//! Beyond "never panics" it checks that
//! - `TooLarge` is answered exactly for inputs over `MAX_CALLBACK_BYTES`;
//! - what is accepted has the promised shape (token, state and code characters and sizes);
//! - the `Debug` of a parsed callback does not depend on the access token at all;
//! - a parsed callback, encoded again as a form, parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::callback::{
    parse_callback_query, CallbackError, CallbackOutcome, CallbackParams, MAX_CALLBACK_BYTES,
};
use tokengate::secret::AccessToken;

fn is_token_like(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=:".contains(&b))
}

/// Writes a callback back as `a=b&c=d`, escaping only what form decoding would change
/// (`+`), so that it is never longer than the input it was parsed from.
fn encode(params: &CallbackParams) -> String {
    let escape = |value: &str| value.replace('+', "%2B");
    let mut pairs = Vec::new();
    match &params.outcome {
        CallbackOutcome::Token { access_token, expires_in } => {
            pairs.push(format!("access_token={}", escape(access_token.expose())));
            if let Some(seconds) = expires_in {
                pairs.push(format!("expires_in={seconds}"));
            }
        }
        CallbackOutcome::Error { code } => pairs.push(format!("error={}", escape(code))),
    }
    pairs.push(format!("state={}", escape(&params.state)));
    pairs.join("&")
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let result = parse_callback_query(&input);
    assert_eq!(
        result.as_ref().err() == Some(&CallbackError::TooLarge),
        input.len() > MAX_CALLBACK_BYTES,
        "TooLarge at {} bytes",
        input.len()
    );
    let Ok(params) = result else { return };
    assert!(is_token_like(&params.state, 256), "accepted state {:?}", params.state);
    match &params.outcome {
        CallbackOutcome::Token { access_token, expires_in } => {
            assert!(is_token_like(access_token.expose(), 4096), "accepted a malformed token");
            let shown = format!("{params:?}");
            let stand_in = CallbackParams {
                outcome: CallbackOutcome::Token {
                    access_token: AccessToken::new("x"),
                    expires_in: *expires_in,
                },
                state: params.state.clone(),
            };
            let skeleton = format!("{stand_in:?}");
            assert!(shown == skeleton, "Debug depends on the token: {shown}");
            if !skeleton.contains(access_token.expose()) {
                assert!(!shown.contains(access_token.expose()), "Debug shows the token");
            }
        }
        CallbackOutcome::Error { code } => assert!(is_token_like(code, 64), "accepted error code {code:?}"),
    }
    let again = encode(&params);
    match parse_callback_query(&again) {
        Ok(reparsed) => assert!(reparsed == params, "re-encoded callback parses differently: {again}"),
        Err(error) => panic!("re-encoded callback refused ({error}): {again}"),
    }
});
