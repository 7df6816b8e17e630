//! PKCE (RFC 7636, S256 only), the OpenID Connect `nonce`, and the `state`.
//!
//! Every value comes from the operating system's CSPRNG (as `hosted_login` and
//! `session_id` do): 32 random bytes, base64url without padding, 43 characters. The code
//! verifier and the nonce are secrets for as long as the login is pending (whoever holds
//! the verifier can redeem a stolen code; whoever knows the nonce can replay an ID token
//! into this login), so they live in redacting types. The challenge and the state are
//! sent through the browser and are not secret.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::secret::SecretString;

/// The operating system's random source failed (the caller answers 500; nothing to retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system gave no randomness")]
pub struct RandomUnavailable;

/// 32 random bytes from the OS, base64url without padding (43 characters).
fn random_token() -> Result<String, RandomUnavailable> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|_| RandomUnavailable)?;
    let text = URL_SAFE_NO_PAD.encode(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(text)
}

/// The S256 code challenge of `verifier`: `BASE64URL(SHA256(ASCII(verifier)))`.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `value` is a well-formed code verifier: 43–128 characters of
/// `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"` (RFC 7636 §4.1).
pub fn is_valid_verifier(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

macro_rules! login_secret {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a value (one read back from the store).
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::new(value.into()))
            }

            /// A fresh value from the OS CSPRNG.
            pub fn generate() -> Result<Self, RandomUnavailable> {
                random_token().map(Self::new)
            }

            /// The secret itself. Every caller is a place where a secret leaves its box.
            pub fn expose(&self) -> &str {
                self.0.expose()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

login_secret!(
    /// The PKCE code verifier: kept with the pending login, sent only to the token
    /// endpoint with the code. `==` is constant-time.
    PkceVerifier
);
login_secret!(
    /// The OpenID Connect `nonce`: sent in the authorize URL, kept with the pending login,
    /// compared (in constant time) with the ID token's `nonce` claim.
    Nonce
);

impl PkceVerifier {
    /// The S256 challenge that goes into the authorize URL.
    pub fn challenge(&self) -> String {
        s256_challenge(self.expose())
    }
}

/// A fresh `state` (256 random bits, base64url): not secret, single use.
pub fn generate_state() -> Result<String, RandomUnavailable> {
    random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        // The verifier is the base64url of Appendix B's 32 octets [116, 24, 223, …, 121].
        let verifier = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(verifier.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn generated_values_are_well_formed_and_distinct() {
        let a = PkceVerifier::generate().unwrap();
        let b = PkceVerifier::generate().unwrap();
        assert!(is_valid_verifier(a.expose()), "{}", a.expose().len());
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a, b);
        assert_ne!(Nonce::generate().unwrap(), Nonce::generate().unwrap());
        let state = generate_state().unwrap();
        assert_eq!(state.len(), 43);
        assert!(is_valid_verifier(&state));
    }

    #[test]
    fn verifier_rules() {
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(is_valid_verifier(&"a".repeat(128)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn debug_is_redacted() {
        let verifier = PkceVerifier::new("verifier-value-xyz");
        let nonce = Nonce::new("nonce-value-xyz");
        for shown in [format!("{verifier:?}"), format!("{nonce:?}")] {
            assert!(shown.contains("redacted") && !shown.contains("value-xyz"), "{shown}");
        }
    }
}
