//! The snapshot's sealed format, version 1:
//!
//! ```text
//! magic "TGSESS\r\n" (8) | version u16 big-endian (2) | nonce (12) | ciphertext | GCM tag (16)
//! ```
//!
//! The 10-byte header (magic and version) is the AEAD's associated data, so it cannot be
//! changed without the tag failing. The nonce is 96 random bits from the operating
//! system for every write (a key would need about 2^32 writes before a repeat became a
//! concern: 136 years at one write a second). The plaintext is JSON built from a private
//! mirror of [`SessionRecord`] (the secret types have no `Serialize`, and this module is
//! the store codec that calls their `expose()`); it exists only in buffers that are wiped
//! after sealing or parsing. There is no key hint: every configured key is tried in
//! order, and the caller seals with the first.

use std::io::{self, Write};
use std::sync::Arc;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{AeadInPlace, Aes256Gcm, KeyInit};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::secret::{AccessToken, EncryptionKey, RefreshToken};
use crate::store::{from_hex, to_hex, Identity, SessionKey, SessionKind, SessionRecord};

const MAGIC: &[u8; 8] = b"TGSESS\r\n";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 10;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// One session as exported: its key, its record, when it was last used.
pub(super) type Entry = (SessionKey, Arc<SessionRecord>, u64);

/// Why a snapshot could not be read. Never holds a secret or file content.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unreadable {
    #[error("cannot read it: {0}")]
    Io(io::Error),
    #[error("it is not a tokengate session snapshot (unknown leading bytes)")]
    NotASnapshot,
    #[error("it is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("it has format version {0}; this build reads version {VERSION}")]
    Version(u16),
    #[error(
        "none of the {0} key(s) in store.encryption_key_env opens it: the key is wrong, or the file was damaged or altered"
    )]
    NoKeyOpens(usize),
    #[error("it opened, but its content is invalid ({0})")]
    Invalid(String),
}

/// Why a snapshot could not be sealed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SealError {
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("cannot serialize the sessions: {0}")]
    Serialize(String),
    #[error("encryption failed")]
    Encrypt,
}

/// The plaintext, as written.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    written_at: u64,
    sessions: Vec<SessionOut<'a>>,
}

#[derive(Serialize)]
struct SessionOut<'a> {
    key: String,
    kind: KindRepr,
    access_token: &'a str,
    refresh_token: Option<&'a str>,
    access_expires_at: u64,
    created_at: u64,
    absolute_expires_at: u64,
    generation: u64,
    last_seen: u64,
    /// The OpenID identity (`flavor = "oauth2"`); absent in files of the other flavor
    /// and of earlier builds.
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityRepr>,
}

/// A session's [`Identity`], as written and read.
#[derive(Serialize, Deserialize)]
struct IdentityRepr {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
}

/// The plaintext, as read. (No `Debug`: nothing here is for logs.)
#[derive(Deserialize)]
struct SnapshotIn {
    written_at: u64,
    sessions: Vec<SessionIn>,
}

#[derive(Deserialize)]
struct SessionIn {
    key: String,
    kind: KindRepr,
    access_token: SecretField,
    refresh_token: Option<SecretField>,
    access_expires_at: u64,
    created_at: u64,
    absolute_expires_at: u64,
    generation: u64,
    last_seen: u64,
    #[serde(default)]
    identity: Option<IdentityRepr>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KindRepr {
    Guest,
    Shopper,
}

/// A token read from the plaintext: redacted `Debug`, wiped on drop unless taken (taking
/// moves the `String` out without copying it).
#[derive(Deserialize)]
#[serde(transparent)]
struct SecretField(String);

impl SecretField {
    fn take(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

impl Drop for SecretField {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SecretField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An `io::Write` into a buffer that wipes every allocation it leaves behind.
struct WipingWriter(Zeroizing<Vec<u8>>);

impl Write for WipingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.0.capacity() - self.0.len() < data.len() {
            let wanted = (self.0.len() + data.len()).max(self.0.capacity() * 2);
            let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
            bigger.extend_from_slice(&self.0);
            // The old buffer is wiped as it drops.
            self.0 = bigger;
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn cipher(key: &EncryptionKey) -> Aes256Gcm {
    Aes256Gcm::new(GenericArray::from_slice(key.expose()))
}

/// The sealed file for `entries`, written at `now`.
pub(super) fn seal(entries: &[Entry], key: &EncryptionKey, now: u64) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut nonce).map_err(|error| SealError::Random(error.to_string()))?;
    let plaintext = SnapshotOut {
        written_at: now,
        sessions: entries
            .iter()
            .map(|(key, record, last_seen)| SessionOut {
                key: to_hex(&key.0),
                kind: match record.kind {
                    SessionKind::Guest => KindRepr::Guest,
                    SessionKind::Shopper => KindRepr::Shopper,
                },
                access_token: record.access_token.expose(),
                refresh_token: record.refresh_token.as_ref().map(RefreshToken::expose),
                access_expires_at: record.access_expires_at,
                created_at: record.created_at,
                absolute_expires_at: record.absolute_expires_at,
                generation: record.generation,
                last_seen: *last_seen,
                identity: record.identity.as_deref().map(|identity| IdentityRepr {
                    sub: identity.sub.clone(),
                    sid: identity.sid.clone(),
                    name: identity.name.clone(),
                    email: identity.email.clone(),
                }),
            })
            .collect(),
    };
    let estimate = entries
        .iter()
        .map(|(_, r, _)| {
            320 + r.access_token.expose().len() + r.refresh_token.as_ref().map_or(0, |t| t.expose().len())
        })
        .sum::<usize>();
    // Header, nonce and plaintext in one buffer: the plaintext is encrypted where it lies.
    let mut out =
        WipingWriter(Zeroizing::new(Vec::with_capacity(HEADER_LEN + NONCE_LEN + estimate + 64 + TAG_LEN)));
    out.0.extend_from_slice(MAGIC);
    out.0.extend_from_slice(&VERSION.to_be_bytes());
    out.0.extend_from_slice(&nonce);
    serde_json::to_writer(&mut out, &plaintext).map_err(|error| SealError::Serialize(describe(&error)))?;
    let mut sealed = std::mem::take(&mut out.0);
    let (header, rest) = sealed.split_at_mut(HEADER_LEN);
    let (nonce, body) = rest.split_at_mut(NONCE_LEN);
    let tag = cipher(key)
        .encrypt_in_place_detached(GenericArray::from_slice(nonce), header, body)
        .map_err(|_| SealError::Encrypt)?;
    // From here on the buffer holds only ciphertext.
    sealed.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *sealed))
}

/// What [`open`] found.
#[derive(Debug)]
pub(super) struct Opened {
    /// Live sessions, most recently used first.
    pub sessions: Vec<Entry>,
    /// Sessions left out because their absolute end had passed.
    pub expired: usize,
    /// Which configured key opened the file (0 = the sealing key).
    pub key_index: usize,
    pub written_at: u64,
}

/// Authenticates and decrypts a snapshot with the first key that opens it.
pub(super) fn open(
    mut bytes: Zeroizing<Vec<u8>>,
    keys: &[EncryptionKey],
    now: u64,
) -> Result<Opened, Unreadable> {
    if !bytes.starts_with(&MAGIC[..bytes.len().min(MAGIC.len())]) {
        return Err(Unreadable::NotASnapshot);
    }
    if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(Unreadable::Truncated(bytes.len()));
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(Unreadable::Version(version));
    }
    let (header, rest) = bytes.split_at_mut(HEADER_LEN);
    let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    // A failed attempt leaves the ciphertext untouched (the tag is checked first).
    let key_index = keys
        .iter()
        .position(|key| {
            cipher(key)
                .decrypt_in_place_detached(
                    GenericArray::from_slice(nonce),
                    header,
                    body,
                    GenericArray::from_slice(tag),
                )
                .is_ok()
        })
        .ok_or(Unreadable::NoKeyOpens(keys.len()))?;
    let parsed: Result<SnapshotIn, _> = serde_json::from_slice(body);
    body.zeroize();
    let parsed = parsed.map_err(|error| Unreadable::Invalid(describe(&error)))?;
    let mut sessions = Vec::with_capacity(parsed.sessions.len());
    let mut expired = 0;
    for mut session in parsed.sessions {
        if session.absolute_expires_at <= now {
            expired += 1;
            continue;
        }
        let key = from_hex(&session.key)
            .ok_or_else(|| Unreadable::Invalid("a session key is not 64 hex digits".into()))?;
        let record = SessionRecord {
            kind: match session.kind {
                KindRepr::Guest => SessionKind::Guest,
                KindRepr::Shopper => SessionKind::Shopper,
            },
            access_token: AccessToken::new(session.access_token.take()),
            refresh_token: session.refresh_token.as_mut().map(|token| RefreshToken::new(token.take())),
            access_expires_at: session.access_expires_at,
            created_at: session.created_at,
            absolute_expires_at: session.absolute_expires_at,
            generation: session.generation,
            identity: session.identity.take().map(|identity| {
                Arc::new(Identity {
                    sub: identity.sub,
                    sid: identity.sid,
                    name: identity.name,
                    email: identity.email,
                })
            }),
        };
        sessions.push((SessionKey(key), Arc::new(record), session.last_seen));
    }
    sessions.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    Ok(Opened { sessions, expired, key_index, written_at: parsed.written_at })
}

/// A serde_json error without its message, which may quote the data.
fn describe(error: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", error.classify(), error.line(), error.column())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const ACCESS: &str = "access-0123456789abcdef-secret";
    const REFRESH: &str = "refresh-0123456789abcdef-secret";

    pub(in crate::store::snapshot) fn key(n: u8) -> EncryptionKey {
        EncryptionKey::new([n; 32])
    }

    pub(in crate::store::snapshot) fn entry(n: u8, absolute_expires_at: u64, last_seen: u64) -> Entry {
        let record = SessionRecord {
            kind: if n % 2 == 0 { SessionKind::Shopper } else { SessionKind::Guest },
            access_token: AccessToken::new(format!("{ACCESS}-{n}")),
            refresh_token: (n % 2 == 0).then(|| RefreshToken::new(format!("{REFRESH}-{n}"))),
            access_expires_at: 500 + u64::from(n),
            created_at: 10,
            absolute_expires_at,
            generation: u64::from(n) * 3,
            identity: None,
        };
        (SessionKey([n; 32]), Arc::new(record), last_seen)
    }

    fn sealed(entries: &[Entry], with: &EncryptionKey) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(seal(entries, with, 100).unwrap_or_else(|e| panic!("{e}")))
    }

    fn opened(bytes: Zeroizing<Vec<u8>>, keys: &[EncryptionKey]) -> Opened {
        open(bytes, keys, 100).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(in crate::store::snapshot) fn same(a: &Entry, b: &Entry) -> bool {
        let (x, y) = (&a.1, &b.1);
        a.0 == b.0
            && a.2 == b.2
            && x.kind == y.kind
            && x.access_token == y.access_token
            && x.refresh_token == y.refresh_token
            && (x.access_expires_at, x.created_at, x.absolute_expires_at, x.generation)
                == (y.access_expires_at, y.created_at, y.absolute_expires_at, y.generation)
    }

    #[test]
    fn a_sealed_snapshot_opens_to_the_same_sessions() {
        let entries = vec![entry(1, 1000, 40), entry(2, 1000, 50)];
        let bytes = sealed(&entries, &key(7));
        assert_eq!(&bytes[..8], MAGIC);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(ACCESS) && !text.contains(REFRESH), "tokens in clear");
        let opened = opened(bytes, &[key(7)]);
        assert_eq!((opened.key_index, opened.expired, opened.written_at), (0, 0, 100));
        // Most recently used first.
        assert!(same(&opened.sessions[0], &entries[1]) && same(&opened.sessions[1], &entries[0]));
    }

    #[test]
    fn two_writes_of_the_same_sessions_use_different_nonces() {
        let entries = vec![entry(1, 1000, 40)];
        assert_ne!(*sealed(&entries, &key(7)), *sealed(&entries, &key(7)));
    }

    #[test]
    fn a_wrong_key_does_not_open_it() {
        let bytes = sealed(&[entry(1, 1000, 40)], &key(7));
        let error = open(bytes, &[key(8), key(9)], 100).map(|_| ()).err();
        assert!(matches!(error, Some(Unreadable::NoKeyOpens(2))), "{error:?}");
    }

    #[test]
    fn a_rotated_key_list_opens_a_file_sealed_with_the_old_key() {
        let bytes = sealed(&[entry(1, 1000, 40)], &key(7));
        let opened = opened(bytes, &[key(8), key(7)]);
        assert_eq!(opened.key_index, 1);
        assert_eq!(opened.sessions.len(), 1);
        // And the next write seals with the new first key only.
        let resealed = sealed(&opened.sessions, &key(8));
        assert!(open(resealed.clone(), &[key(7)], 100).is_err());
        assert_eq!(self::opened(resealed, &[key(8)]).sessions.len(), 1);
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let bytes = sealed(&[entry(1, 1000, 40)], &key(7));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let error = open(damaged, &[key(7)], 100).map(|_| ()).err();
            assert!(error.is_some(), "a flip at byte {at} went unnoticed");
        }
        let mut short = bytes.clone();
        short.truncate(bytes.len() - 1);
        assert!(matches!(open(short, &[key(7)], 100), Err(Unreadable::NoKeyOpens(1))));
        let mut tiny = bytes;
        tiny.truncate(20);
        assert!(matches!(open(tiny, &[key(7)], 100), Err(Unreadable::Truncated(20))));
    }

    #[test]
    fn an_unknown_version_or_another_file_is_named_as_such() {
        let mut bytes = sealed(&[entry(1, 1000, 40)], &key(7));
        bytes[9] = 2;
        let error = open(bytes, &[key(7)], 100).map(|_| ()).err();
        assert!(matches!(error, Some(Unreadable::Version(2))), "{error:?}");
        let text = Zeroizing::new(b"{\"sessions\": []}".repeat(4));
        assert!(matches!(open(text, &[key(7)], 100), Err(Unreadable::NotASnapshot)));
    }

    #[test]
    fn sessions_past_their_absolute_end_are_dropped_at_load() {
        let bytes = sealed(&[entry(1, 100, 40), entry(2, 99, 40), entry(3, 101, 40)], &key(7));
        let opened = opened(bytes, &[key(7)]);
        assert_eq!(opened.expired, 2);
        assert_eq!(opened.sessions.len(), 1);
        assert_eq!(opened.sessions[0].0, SessionKey([3; 32]));
    }

    #[test]
    fn debug_output_holds_no_token() {
        let bytes = sealed(&[entry(1, 1000, 40), entry(2, 1000, 40)], &key(7));
        // serde_json's own message would quote the offending value.
        let error = serde_json::from_str::<u64>(&format!("\"{ACCESS}\"")).err();
        let reason = Unreadable::Invalid(error.map(|e| describe(&e)).unwrap_or_default());
        let shown = [
            format!("{:?}", opened(bytes, &[key(7)])),
            format!("{:?}", SecretField(ACCESS.into())),
            format!("{:?}", key(7)),
            format!("{reason:?} {reason}"),
        ];
        for text in shown {
            assert!(!text.contains(ACCESS) && !text.contains(REFRESH), "{text}");
            assert!(!text.contains("[7, 7, 7"), "{text}");
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_non_hex() {
        let bytes: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7).unwrap_or(0));
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        assert_eq!(from_hex(&"+f".repeat(32)), None);
        assert_eq!(from_hex("abc"), None);
    }
}
