//! Sealing what the Redis store writes: AES-256-GCM with the entry's own store key as
//! associated data, so a sealed value opens only under the key it was written for (a
//! record copied onto another session's key does not open).
//!
//! Layout: `version (1) | nonce (12) | ciphertext | tag (16)`. The first configured key
//! seals; every key is tried to open (rotation: deploy `NEW,OLD`, later `NEW`). The
//! plaintext lives only in wiped buffers.
//!
//! Record plaintext: `kind (1) | access_expires_at | created_at | absolute_expires_at |
//! generation` (u64 big-endian each) `| access token (u32 length + bytes) | refresh token
//! (u8 present + u32 length + bytes)`. A pending login: `SHA-256 of its state (32) |
//! expires_at | return_to (u32 + bytes) | carried guest token (u8 present + u32 + bytes)`,
//! sealed with `pending:` + its session's key as associated data, so it never opens as
//! that session's record (nor the other way round).
//!
//! Optional trailing sections (absent in what the Digital River flavor and earlier builds
//! write, so those values still open): a record's OpenID identity, `u8 1 | sub (u32 +
//! bytes) | sid | name | email` (each `u8 present + u32 + bytes`); a pending login's code
//! flow secrets, `u8 1 | PKCE verifier (u32 + bytes) | nonce (u32 + bytes)`.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{AeadInPlace, Aes256Gcm, KeyInit};
use rand::TryRngCore;
use zeroize::Zeroizing;

use crate::secret::{AccessToken, EncryptionKey, RefreshToken};
use crate::session_id::SessionKey;
use std::sync::Arc;

use crate::oidc::pkce::{Nonce, PkceVerifier};
use crate::store::{CodeFlowSecrets, Identity, PendingLogin, SessionKind, SessionRecord};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a sealed value did not open (no detail that could help an attacker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("no configured key opens it (wrong key, or written for another entry)")]
    NoKey,
    #[error("it is not a value this version wrote")]
    Malformed,
    #[error("no randomness for a nonce")]
    Random,
}

/// Seals `plaintext` with `keys[0]`, bound to `aad`.
fn seal(plaintext: Zeroizing<Vec<u8>>, keys: &[EncryptionKey], aad: &[u8]) -> Result<Vec<u8>, Unsealed> {
    let key = keys.first().ok_or(Unsealed::NoKey)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut nonce).map_err(|_| Unsealed::Random)?;
    let mut body = plaintext;
    let tag = cipher(key)
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), aad, &mut body)
        .map_err(|_| Unsealed::Malformed)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + body.len() + TAG_LEN);
    sealed.push(VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&body);
    sealed.extend_from_slice(&tag);
    Ok(sealed)
}

/// Opens a value sealed by [`seal`] with any of `keys`.
fn open(sealed: &[u8], keys: &[EncryptionKey], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unsealed> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
        return Err(Unsealed::Malformed);
    }
    let (nonce, rest) = sealed[1..].split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    for key in keys {
        let mut plaintext = Zeroizing::new(body.to_vec());
        let opened = cipher(key).decrypt_in_place_detached(
            GenericArray::from_slice(nonce),
            aad,
            &mut plaintext,
            GenericArray::from_slice(tag),
        );
        if opened.is_ok() {
            return Ok(plaintext);
        }
    }
    Err(Unsealed::NoKey)
}

fn cipher(key: &EncryptionKey) -> Aes256Gcm {
    Aes256Gcm::new(GenericArray::from_slice(key.expose()))
}

/// A session record, sealed for `key`.
pub fn seal_record(
    record: &SessionRecord,
    key: &SessionKey,
    keys: &[EncryptionKey],
) -> Result<Vec<u8>, Unsealed> {
    let access = record.access_token.expose().as_bytes();
    let refresh = record.refresh_token.as_ref().map(|t| t.expose().as_bytes());
    let mut out = Zeroizing::new(Vec::with_capacity(64 + access.len() + refresh.map_or(0, <[u8]>::len)));
    out.push(match record.kind {
        SessionKind::Guest => 0,
        SessionKind::Shopper => 1,
    });
    for number in [record.access_expires_at, record.created_at, record.absolute_expires_at, record.generation]
    {
        out.extend_from_slice(&number.to_be_bytes());
    }
    put_bytes(&mut out, access);
    put_optional(&mut out, refresh);
    if let Some(identity) = &record.identity {
        out.push(1);
        put_bytes(&mut out, identity.sub.as_bytes());
        for part in [&identity.sid, &identity.name, &identity.email] {
            put_optional(&mut out, part.as_deref().map(str::as_bytes));
        }
    }
    seal(out, keys, &key.0)
}

/// The record sealed for `key`.
pub fn open_record(
    sealed: &[u8],
    key: &SessionKey,
    keys: &[EncryptionKey],
) -> Result<SessionRecord, Unsealed> {
    let plaintext = open(sealed, keys, &key.0)?;
    let mut reader = Reader(&plaintext);
    let kind = match reader.byte()? {
        0 => SessionKind::Guest,
        1 => SessionKind::Shopper,
        _ => return Err(Unsealed::Malformed),
    };
    let (access_expires_at, created_at) = (reader.u64()?, reader.u64()?);
    let (absolute_expires_at, generation) = (reader.u64()?, reader.u64()?);
    let access_token = AccessToken::new(reader.text()?);
    let refresh_token = reader.optional_text()?.map(RefreshToken::new);
    let identity = if reader.has_section()? {
        let sub = reader.text()?;
        let (sid, name, email) = (reader.optional_text()?, reader.optional_text()?, reader.optional_text()?);
        Some(Arc::new(Identity { sub, sid, name, email }))
    } else {
        None
    };
    Ok(SessionRecord {
        kind,
        access_token,
        refresh_token,
        access_expires_at,
        created_at,
        absolute_expires_at,
        generation,
        identity,
    })
}

/// The associated data of a session's pending login.
fn pending_aad(session: &SessionKey) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..8].copy_from_slice(b"pending:");
    aad[8..].copy_from_slice(&session.0);
    aad
}

/// A pending hosted login, sealed for the session that started it.
pub fn seal_pending(
    pending: &PendingLogin,
    session: &SessionKey,
    keys: &[EncryptionKey],
) -> Result<Vec<u8>, Unsealed> {
    let mut out = Zeroizing::new(Vec::with_capacity(128 + pending.return_to.len()));
    out.extend_from_slice(&pending.state);
    out.extend_from_slice(&pending.expires_at.to_be_bytes());
    put_bytes(&mut out, pending.return_to.as_bytes());
    put_optional(&mut out, pending.carried_guest.as_ref().map(|t| t.expose().as_bytes()));
    if let Some(secrets) = &pending.code_flow {
        out.push(1);
        put_bytes(&mut out, secrets.verifier.expose().as_bytes());
        put_bytes(&mut out, secrets.nonce.expose().as_bytes());
    }
    seal(out, keys, &pending_aad(session))
}

/// The pending login sealed for `session`.
pub fn open_pending(
    sealed: &[u8],
    session: &SessionKey,
    keys: &[EncryptionKey],
) -> Result<PendingLogin, Unsealed> {
    let plaintext = open(sealed, keys, &pending_aad(session))?;
    let mut reader = Reader(&plaintext);
    let state = reader.array()?;
    let expires_at = reader.u64()?;
    let return_to = reader.text()?;
    let carried_guest = reader.optional_text()?.map(AccessToken::new);
    let code_flow = if reader.has_section()? {
        let verifier = PkceVerifier::new(reader.text()?);
        Some(CodeFlowSecrets { verifier, nonce: Nonce::new(reader.text()?) })
    } else {
        None
    };
    Ok(PendingLogin { state, return_to, carried_guest, expires_at, code_flow })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
        None => out.push(0),
    }
}

/// Reads the plaintext layouts above; any shortfall is `Malformed`.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Unsealed> {
        if self.0.len() < n {
            return Err(Unsealed::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Unsealed> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Unsealed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Unsealed> {
        self.take(N)?.try_into().map_err(|_| Unsealed::Malformed)
    }

    fn text(&mut self) -> Result<String, Unsealed> {
        let length = u32::from_be_bytes(self.array()?) as usize;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Unsealed::Malformed)
    }

    /// Whether an optional trailing section follows: nothing left is "no" (a value
    /// written without it), `1` is "yes", anything else is `Malformed`.
    fn has_section(&mut self) -> Result<bool, Unsealed> {
        if self.0.is_empty() {
            return Ok(false);
        }
        match self.byte()? {
            1 => Ok(true),
            _ => Err(Unsealed::Malformed),
        }
    }

    fn optional_text(&mut self) -> Result<Option<String>, Unsealed> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.text().map(Some),
            _ => Err(Unsealed::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> Vec<EncryptionKey> {
        vec![EncryptionKey::new([n; 32])]
    }

    fn record() -> SessionRecord {
        SessionRecord {
            kind: SessionKind::Shopper,
            access_token: AccessToken::new("access-token-0123456789"),
            refresh_token: Some(RefreshToken::new("refresh-token-0123456789")),
            access_expires_at: 10,
            created_at: 20,
            absolute_expires_at: 30,
            generation: 4,
            identity: None,
        }
    }

    #[test]
    fn a_record_opens_under_its_own_key_only() {
        let key = SessionKey([7; 32]);
        let sealed = seal_record(&record(), &key, &keys(1)).expect("seals");
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("access-token") && !text.contains("refresh-token"), "sealed, not encoded");
        let opened = open_record(&sealed, &key, &keys(1)).expect("opens");
        assert_eq!(opened.access_token.expose(), "access-token-0123456789");
        assert_eq!(opened.refresh_token.as_ref().map(RefreshToken::expose), Some("refresh-token-0123456789"));
        assert_eq!(
            (opened.generation, opened.absolute_expires_at, opened.kind),
            (4, 30, SessionKind::Shopper)
        );
        assert_eq!(
            open_record(&sealed, &SessionKey([8; 32]), &keys(1)).err(),
            Some(Unsealed::NoKey),
            "moved"
        );
        assert_eq!(open_record(&sealed, &key, &keys(2)).err(), Some(Unsealed::NoKey), "wrong key");
        let rotated = vec![EncryptionKey::new([2; 32]), EncryptionKey::new([1; 32])];
        assert!(open_record(&sealed, &key, &rotated).is_ok(), "an old key still opens");
        let mut flipped = sealed.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        assert!(open_record(&flipped, &key, &keys(1)).is_err());
        assert_eq!(open_record(b"", &key, &keys(1)).err(), Some(Unsealed::Malformed));
    }

    #[test]
    fn a_pending_login_round_trips_sealed() {
        let pending = PendingLogin {
            state: [3; 32],
            return_to: "/cart".into(),
            carried_guest: Some(AccessToken::new("guest-token-0123456789")),
            expires_at: 99,
            code_flow: None,
        };
        let session = SessionKey([5; 32]);
        let sealed = seal_pending(&pending, &session, &keys(1)).expect("seals");
        assert!(!String::from_utf8_lossy(&sealed).contains("guest-token"));
        let opened = open_pending(&sealed, &session, &keys(1)).expect("opens");
        assert_eq!(opened.return_to, "/cart");
        assert_eq!(opened.state, [3; 32]);
        assert_eq!(opened.carried_guest.as_ref().map(AccessToken::expose), Some("guest-token-0123456789"));
        assert!(open_pending(&sealed, &SessionKey([6; 32]), &keys(1)).is_err());
        assert!(open_record(&sealed, &session, &keys(1)).is_err(), "never opens as the session's record");
        assert!(opened.code_flow.is_none(), "a pending login of the implicit flow has no code-flow section");
    }

    #[test]
    fn the_oauth2_sections_round_trip_and_values_without_them_still_open() {
        let identity = Identity {
            sub: "alice".into(),
            sid: Some("sid-1".into()),
            name: None,
            email: Some("alice@example.test".into()),
        };
        let with = SessionRecord { identity: Some(Arc::new(identity.clone())), ..record() };
        let key = SessionKey([7; 32]);
        let opened = open_record(&seal_record(&with, &key, &keys(1)).expect("seals"), &key, &keys(1));
        assert_eq!(opened.expect("opens").identity.as_deref(), Some(&identity));
        let without = open_record(&seal_record(&record(), &key, &keys(1)).expect("seals"), &key, &keys(1));
        assert!(without.expect("opens").identity.is_none());
        let secrets = CodeFlowSecrets {
            verifier: PkceVerifier::new("verifier-0123456789-0123456789-0123456789-xyz"),
            nonce: Nonce::new("nonce-0123456789"),
        };
        let pending = PendingLogin {
            state: [3; 32],
            return_to: "/".into(),
            carried_guest: None,
            expires_at: 99,
            code_flow: Some(secrets.clone()),
        };
        let sealed = seal_pending(&pending, &key, &keys(1)).expect("seals");
        assert!(!String::from_utf8_lossy(&sealed).contains("verifier-0123"));
        assert_eq!(open_pending(&sealed, &key, &keys(1)).expect("opens").code_flow, Some(secrets));
    }
}
