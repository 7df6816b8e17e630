//! Parsing the hosted login's callback parameters (`/session/callback`).
//!
//! Digital River returns the shopper's token in the redirect's fragment
//! (`#access_token=…&token_type=bearer&expires_in=…&state=…`) or an error
//! (`#error=…&error_description=…`). The same parameters may arrive in a query string
//! or a form posted by the callback page. Parsing is strict: repeated parameters, an
//! oversized input, a token or a state with characters no token has are refused,
//! because this input comes straight from the browser. `state` may be absent: the API
//! is not documented to echo it, and the pending login is found through the session
//! cookie (`Sessions::complete_hosted_login`); when it is present it must match.

use crate::secret::AccessToken;

/// Longest callback input accepted.
pub const MAX_CALLBACK_BYTES: usize = 8 * 1024;

/// What the callback says.
#[derive(Debug, PartialEq, Eq)]
pub struct CallbackParams {
    pub outcome: CallbackOutcome,
    /// The single-use value tokengate put into the authorize request, when the API
    /// echoed it.
    pub state: Option<String>,
}

/// A token, or the API's error code.
#[derive(Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    Token { access_token: AccessToken, expires_in: Option<u64> },
    Error { code: String },
}

/// Why a callback input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("callback input too large")]
    TooLarge,
    #[error("a callback parameter is repeated")]
    Repeated,
    #[error("the callback's state is malformed")]
    MalformedState,
    #[error("the callback has neither a token nor an error")]
    MissingToken,
    #[error("a callback parameter is malformed")]
    Malformed,
}

/// Parses `a=b&c=d` callback parameters (a query string, a fragment or a form body,
/// without the leading `?` or `#`).
pub fn parse_callback_query(input: &str) -> Result<CallbackParams, CallbackError> {
    let [access_token, expires_in, state, error] =
        strict_parameters(input, ["access_token", "expires_in", "state", "error"])?;
    check_state(state.as_deref())?;
    let outcome = match (access_token, error) {
        (Some(token), None) => {
            if !is_token_like(&token, 4096) {
                return Err(CallbackError::Malformed);
            }
            let expires_in = match expires_in {
                Some(text) => Some(text.trim().parse::<u64>().map_err(|_| CallbackError::Malformed)?),
                None => None,
            };
            CallbackOutcome::Token { access_token: AccessToken::new(token), expires_in }
        }
        (None, Some(code)) if is_token_like(&code, 64) => CallbackOutcome::Error { code },
        (None, Some(_)) | (Some(_), Some(_)) => return Err(CallbackError::Malformed),
        (None, None) => return Err(CallbackError::MissingToken),
    };
    Ok(CallbackParams { outcome, state })
}

/// What the provider's redirect to `/session/callback` says in the code flow
/// (`flavor = "oauth2"`): a code or an error, the state, and `iss` when the provider sends
/// it (RFC 9207).
#[derive(Debug, PartialEq, Eq)]
pub struct CodeCallback {
    pub outcome: CodeOutcome,
    pub state: Option<String>,
    pub iss: Option<String>,
}

/// An authorization code (a secret until redeemed), or the provider's error code.
#[derive(Debug, PartialEq, Eq)]
pub enum CodeOutcome {
    Code(crate::tokens::oauth2::AuthorizationCode),
    Error { code: String },
}

/// Parses the code flow's callback query, as strictly as [`parse_callback_query`].
pub fn parse_code_callback(input: &str) -> Result<CodeCallback, CallbackError> {
    let [code, state, iss, error] = strict_parameters(input, ["code", "state", "iss", "error"])?;
    check_state(state.as_deref())?;
    if iss.as_ref().is_some_and(|iss: &String| iss.len() > 2048 || iss.chars().any(char::is_control)) {
        return Err(CallbackError::Malformed);
    }
    let outcome = match (code, error) {
        (Some(code), None) if is_token_like(&code, 4096) => {
            CodeOutcome::Code(crate::tokens::oauth2::AuthorizationCode::new(code))
        }
        (None, Some(code)) if is_token_like(&code, 64) => CodeOutcome::Error { code },
        (None, None) => return Err(CallbackError::MissingToken),
        _ => return Err(CallbackError::Malformed),
    };
    Ok(CodeCallback { outcome, state, iss })
}

/// The values of the parameters `names` in `input` (`a=b&c=d`), others ignored: refused
/// when the input is oversized or one of them is repeated.
fn strict_parameters<const N: usize>(
    input: &str,
    names: [&str; N],
) -> Result<[Option<String>; N], CallbackError> {
    if input.len() > MAX_CALLBACK_BYTES {
        return Err(CallbackError::TooLarge);
    }
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for (name, value) in form_urlencoded::parse(input.as_bytes()) {
        let Some(at) = names.iter().position(|wanted| *wanted == name) else { continue };
        if values[at].replace(value.into_owned()).is_some() {
            return Err(CallbackError::Repeated);
        }
    }
    Ok(values)
}

/// A `state`, where there is one, looks like one we made.
fn check_state(state: Option<&str>) -> Result<(), CallbackError> {
    match state {
        Some(state) if !is_token_like(state, 256) => Err(CallbackError::MalformedState),
        _ => Ok(()),
    }
}

/// Non-empty, at most `max` characters of the kinds tokens, states and codes use.
fn is_token_like(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_code_callback_strictly() {
        let parsed =
            parse_code_callback("code=abc-123&state=s1&iss=http%3A%2F%2F127.0.0.1%3A9").expect("parses");
        assert_eq!(
            (parsed.state.as_deref(), parsed.iss.as_deref()),
            (Some("s1"), Some("http://127.0.0.1:9"))
        );
        assert!(matches!(parsed.outcome, CodeOutcome::Code(ref code) if code.expose() == "abc-123"));
        let denied = parse_code_callback("error=access_denied&state=s1").expect("parses");
        assert_eq!(denied.outcome, CodeOutcome::Error { code: "access_denied".into() });
        assert_eq!(parse_code_callback("code=a&code=b"), Err(CallbackError::Repeated));
        assert_eq!(parse_code_callback("state=s1"), Err(CallbackError::MissingToken));
        assert_eq!(parse_code_callback("code=a&error=x"), Err(CallbackError::Malformed));
        assert_eq!(parse_code_callback("code=a%20b"), Err(CallbackError::Malformed));
        assert_eq!(parse_code_callback("code=a&state=%3Cx%3E"), Err(CallbackError::MalformedState));
    }

    #[test]
    fn reads_a_token_callback() {
        let parsed = parse_callback_query("access_token=ab12&token_type=bearer&expires_in=86397&state=s1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.state.as_deref(), Some("s1"));
        assert_eq!(
            parsed.outcome,
            CallbackOutcome::Token { access_token: AccessToken::new("ab12"), expires_in: Some(86397) }
        );
    }

    #[test]
    fn reads_an_error_callback() {
        let parsed = parse_callback_query("error=access_denied&error_description=no&state=s1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.outcome, CallbackOutcome::Error { code: "access_denied".into() });
    }

    #[test]
    fn a_callback_without_state_is_read_the_state_left_to_the_session() {
        let parsed =
            parse_callback_query("access_token=ab12&expires_in=60").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.state, None);
        assert!(matches!(parsed.outcome, CallbackOutcome::Token { .. }));
    }

    #[test]
    fn refuses_what_a_browser_should_never_send() {
        let cases = [
            ("access_token=a&access_token=b&state=s", CallbackError::Repeated),
            ("access_token=a&state=s&state=t", CallbackError::Repeated),
            ("access_token=a&state=", CallbackError::MalformedState),
            ("access_token=a&state=a%0Ab", CallbackError::MalformedState),
            ("state=s", CallbackError::MissingToken),
            ("access_token=a%0Ab&state=s", CallbackError::Malformed),
            ("access_token=a&expires_in=soon&state=s", CallbackError::Malformed),
            ("access_token=a&error=x&state=s", CallbackError::Malformed),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_callback_query(input).err(), Some(expected), "{input}");
        }
        assert_eq!(
            parse_callback_query(&"a".repeat(MAX_CALLBACK_BYTES + 1)).err(),
            Some(CallbackError::TooLarge)
        );
    }
}
