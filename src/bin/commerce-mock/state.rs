//! The mock's world: shopper users, shopper sessions (Digital River's GC sessions),
//! token pairs with their lifetimes, and the carts those sessions use (via `carts.rs`).
//!
//! `Store` is plain synchronous data behind one `std::sync::Mutex` in `App`; handlers lock
//! it briefly and never across `.await`. Tokens never appear in logs or `Debug` output.
//!
//! Model: each mint creates a *pair* (access token plus, except for the implicit grant, a
//! refresh token) that belongs to one session. Revocation removes the pair, so a revoked
//! token is simply unknown; expiry keeps the pair so the mock can answer "Session expired".

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;

use crate::carts::{Cart, CartError, Carts};
use crate::respond::{constant_time_eq, random_hex};

/// A shopper account the password grant and hosted login accept.
pub struct User {
    /// Login name (an email address in the defaults).
    pub name: String,
    /// Plain password; the password grant expects it base64-encoded on the wire.
    pub password: String,
}

/// How a submitted password is encoded.
#[derive(Clone, Copy)]
pub enum PasswordEncoding {
    /// Standard padded base64 of the UTF-8 password, as DR's clients send to `/oauth20/token`.
    Base64,
    /// As typed, for the hosted login form.
    Plain,
}

/// Tokens minted for one pair. Deliberately not `Debug`: it holds secrets.
pub struct TokenPair {
    /// 160 lowercase hex characters.
    pub access_token: String,
    /// The access token's lifetime as minted, in whole seconds: what `expires_in` says.
    pub expires_in: u64,
    /// 176 lowercase hex characters; `None` for the implicit grant.
    pub refresh_token: Option<String>,
}

/// Which grant a session is being created or transitioned for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    /// Access and refresh token (password, client credentials, refresh grants).
    WithRefresh,
    /// Access token only (implicit grant via the hosted login).
    AccessOnly,
}

/// The limited token given at login was not a live anonymous access token.
#[derive(Debug, PartialEq, Eq)]
pub struct LimitedTokenInvalid;

/// Session details as `/oauth20/access-tokens` and `/v1/*` need them (no token text).
#[derive(Clone, Debug)]
pub struct SessionView {
    /// DR session id.
    pub session_id: u64,
    /// DR user id (set for anonymous sessions too, as DR does).
    pub user_id: u64,
    /// The shopper's login name (`erid:<id>` for a client-hosted shopper), `None` for a guest.
    pub user: Option<String>,
    /// A client-hosted shopper's `dr_external_reference_id`.
    pub external_reference_id: Option<String>,
    /// The session's cart, once one exists.
    pub cart_id: Option<u64>,
    /// When the session was created.
    pub created_on: SystemTime,
    /// When a token of the session was last used.
    pub last_accessed: SystemTime,
    /// 32 hex characters, fixed per session.
    pub session_tag: String,
    /// Time left on the access token used for this lookup.
    pub expires_in: Duration,
}

/// Result of looking up an access token.
pub enum AccessLookup {
    /// The token is live.
    Live(SessionView),
    /// The token exists but its TTL lapsed (or `/__mock/expire` was called).
    Expired,
    /// Never issued, revoked, rotated away, or its session transitioned.
    Unknown,
}

struct Session {
    user_id: u64,
    user: Option<String>,
    external_reference_id: Option<String>,
    cart_id: Option<u64>,
    created_on: SystemTime,
    last_accessed: SystemTime,
    session_tag: String,
    /// First 64 hex characters shared by every token of the session (DR's token layout).
    token_prefix: String,
}

struct Pair {
    session_id: u64,
    access_token: String,
    access_expires: Instant,
    refresh_token: Option<String>,
    refresh_expires: Instant,
}

/// Who a session belongs to once signed in: a configured user (by name) or a
/// client-hosted shopper (by external reference id).
struct Account {
    /// The user name, or `erid:<id>`: owns the shopper's cart across sessions.
    key: String,
    user_id: u64,
    external_reference_id: Option<String>,
}

/// All mutable mock state. Lock it, call one method, drop the lock.
pub struct Store {
    access_ttl: Duration,
    /// `--access-expires-at`: access tokens minted before this instant expire at it.
    access_deadline: Option<SystemTime>,
    refresh_ttl: Duration,
    users: Vec<User>,
    sessions: HashMap<u64, Session>,
    pairs: HashMap<u64, Pair>,
    by_access: HashMap<String, u64>,
    by_refresh: HashMap<String, u64>,
    carts: Carts,
    /// External reference id → user id of the client-hosted shoppers seen so far.
    external_shoppers: HashMap<String, u64>,
    // Every token ever issued, for `/__mock/tokens`; it grows by design (test tool).
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
    next_session_id: u64,
    next_pair_id: u64,
    next_anonymous_user_id: u64,
}

/// User ids of configured shoppers start here; anonymous sessions get ids from
/// `ANONYMOUS_USER_ID_BASE` upwards (DR gives guests a user id too).
const SHOPPER_USER_ID_BASE: u64 = 495_174_262_412;
const ANONYMOUS_USER_ID_BASE: u64 = 600_000_000_000;
const EXTERNAL_USER_ID_BASE: u64 = 700_000_000_000;

impl Store {
    /// An empty world with the given shoppers and token lifetimes.
    pub fn new(users: Vec<User>, access_ttl: Duration, refresh_ttl: Duration) -> Store {
        Store {
            access_ttl,
            access_deadline: None,
            refresh_ttl,
            users,
            sessions: HashMap::new(),
            pairs: HashMap::new(),
            by_access: HashMap::new(),
            by_refresh: HashMap::new(),
            carts: Carts::default(),
            external_shoppers: HashMap::new(),
            issued_access: Vec::new(),
            issued_refresh: Vec::new(),
            next_session_id: 63_293_199_710,
            next_pair_id: 1,
            next_anonymous_user_id: ANONYMOUS_USER_ID_BASE,
        }
    }

    /// Makes every access token a sign-in mints before `deadline` expire at that instant (a
    /// refresh storm on demand). Sign-ins at or after it, and every refresh, get the usual
    /// lifetime: a client that refreshes a little early (it rounds the expiry down to the
    /// second its request started) gets a token of the usual lifetime, as from the API,
    /// rather than one that dies at the deadline again and costs a second refresh.
    pub fn set_access_deadline(&mut self, deadline: Option<SystemTime>) {
        self.access_deadline = deadline;
    }

    /// The lifetime of an access token a sign-in mints now: `access_ttl`, or the time left
    /// until the deadline (at least one second) while it is ahead.
    fn sign_in_lifetime(&self) -> Duration {
        let left = self.access_deadline.and_then(|at| at.duration_since(SystemTime::now()).ok());
        match left {
            Some(left) if !left.is_zero() => left.max(Duration::from_secs(1)),
            _ => self.access_ttl,
        }
    }

    /// Checks a shopper's credentials. A plain password fails under `Base64` encoding
    /// because the mock compares against the encoding of the stored password.
    pub fn verify_password(&self, name: &str, submitted: &str, encoding: PasswordEncoding) -> bool {
        let Some(user) = self.users.iter().find(|user| user.name == name) else {
            return false;
        };
        match encoding {
            PasswordEncoding::Base64 => {
                let expected = base64::engine::general_purpose::STANDARD.encode(&user.password);
                constant_time_eq(expected.as_bytes(), submitted.as_bytes())
            }
            PasswordEncoding::Plain => constant_time_eq(user.password.as_bytes(), submitted.as_bytes()),
        }
    }

    /// A new guest session with a token pair (anonymous password grant, client
    /// credentials without an external reference id).
    pub fn mint_anonymous(&mut self) -> TokenPair {
        let session_id = self.new_session(None);
        self.mint_pair(session_id, Issue::WithRefresh, self.sign_in_lifetime())
    }

    /// Logs a configured shopper in (credentials already verified); see `sign_in`.
    pub fn login(
        &mut self,
        name: &str,
        limited_token: Option<&str>,
        issue: Issue,
    ) -> Result<TokenPair, LimitedTokenInvalid> {
        let account =
            Account { key: name.to_owned(), user_id: self.user_id_of(name), external_reference_id: None };
        self.sign_in(&account, limited_token, issue)
    }

    /// Signs in the client-hosted shopper with this external reference id (the
    /// `client_credentials` grant with `dr_external_reference_id`). The same id is always
    /// the same shopper; unlike the real API, the shopper is created on first use instead
    /// of needing `POST /v1/shoppers` first.
    pub fn login_external(
        &mut self,
        external_reference_id: &str,
        limited_token: Option<&str>,
    ) -> Result<TokenPair, LimitedTokenInvalid> {
        let next = EXTERNAL_USER_ID_BASE + self.external_shoppers.len() as u64;
        let user_id = *self.external_shoppers.entry(external_reference_id.to_owned()).or_insert(next);
        let account = Account {
            // Configured user names never contain ':', so this key cannot collide.
            key: format!("erid:{external_reference_id}"),
            user_id,
            external_reference_id: Some(external_reference_id.to_owned()),
        };
        self.sign_in(&account, limited_token, Issue::WithRefresh)
    }

    /// With a limited token, that guest session transitions: it keeps its id, gains the
    /// shopper, its cart carries over, and its old tokens die. Without one, a fresh
    /// session picks up the shopper's saved cart.
    fn sign_in(
        &mut self,
        account: &Account,
        limited_token: Option<&str>,
        issue: Issue,
    ) -> Result<TokenPair, LimitedTokenInvalid> {
        let session_id = match limited_token {
            Some(token) => self.transition_guest(token, account)?,
            None => {
                let session_id = self.new_session(Some(account));
                let cart_id = self.carts.user_cart(&account.key);
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.cart_id = cart_id;
                }
                session_id
            }
        };
        Ok(self.mint_pair(session_id, issue, self.sign_in_lifetime()))
    }

    /// Exchanges a live refresh token for a new pair of the same session. With `rotate`
    /// the old pair dies at once; without it the same refresh token is handed back and
    /// stays valid, and only the old access token dies.
    pub fn refresh(&mut self, refresh_token: &str, rotate: bool) -> Option<TokenPair> {
        let now = Instant::now();
        let pair_id = *self.by_refresh.get(refresh_token)?;
        let pair = self.pairs.get(&pair_id)?;
        if now >= pair.refresh_expires {
            return None;
        }
        let session_id = pair.session_id;
        if rotate {
            // Mint before removing: removing the session's last pair forgets the session.
            let fresh = self.mint_pair(session_id, Issue::WithRefresh, self.access_ttl);
            self.remove_pair(pair_id);
            return Some(fresh);
        }
        Some(self.replace_access_token(pair_id, session_id, now))
    }

    /// Looks an access token up and records the access on its session.
    pub fn lookup_access(&mut self, access_token: &str) -> AccessLookup {
        let now = Instant::now();
        let Some(pair) = self.by_access.get(access_token).and_then(|pair_id| self.pairs.get(pair_id)) else {
            return AccessLookup::Unknown;
        };
        if now >= pair.access_expires {
            return AccessLookup::Expired;
        }
        let expires_in = pair.access_expires.saturating_duration_since(now);
        let session_id = pair.session_id;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return AccessLookup::Unknown;
        };
        session.last_accessed = SystemTime::now();
        AccessLookup::Live(view(session_id, session, expires_in))
    }

    /// Revokes the pair an access token belongs to (live or expired). True if it existed.
    pub fn revoke_pair_of(&mut self, access_token: &str) -> bool {
        match self.by_access.get(access_token).copied() {
            Some(pair_id) => {
                self.remove_pair(pair_id);
                true
            }
            None => false,
        }
    }

    /// Revokes every pair; returns how many still had a live token.
    pub fn revoke_all(&mut self) -> usize {
        let now = Instant::now();
        let live = self.pairs.values().filter(|pair| pair_is_live(pair, now)).count();
        let pair_ids: Vec<u64> = self.pairs.keys().copied().collect();
        for pair_id in pair_ids {
            self.remove_pair(pair_id);
        }
        live
    }

    /// Marks every live access token expired now; refresh tokens are untouched.
    pub fn expire_all_access(&mut self) -> usize {
        let now = Instant::now();
        let mut expired = 0;
        for pair in self.pairs.values_mut() {
            if now < pair.access_expires {
                pair.access_expires = now;
                expired += 1;
            }
        }
        expired
    }

    /// Marks one access token expired now; true if it was live.
    pub fn expire_access(&mut self, access_token: &str) -> bool {
        let now = Instant::now();
        let pair = self.by_access.get(access_token).and_then(|pair_id| self.pairs.get_mut(pair_id));
        match pair {
            Some(pair) if now < pair.access_expires => {
                pair.access_expires = now;
                true
            }
            _ => false,
        }
    }

    /// Sessions that still have at least one live access or refresh token.
    pub fn live_sessions(&self) -> usize {
        let now = Instant::now();
        let mut live: Vec<u64> =
            self.pairs.values().filter(|pair| pair_is_live(pair, now)).map(|pair| pair.session_id).collect();
        live.sort_unstable();
        live.dedup();
        live.len()
    }

    /// Every access and refresh token issued since start, oldest first.
    pub fn issued_tokens(&self) -> (Vec<String>, Vec<String>) {
        (self.issued_access.clone(), self.issued_refresh.clone())
    }

    /// The session's cart, created on first access as DR does.
    pub fn active_cart(&mut self, session_id: u64) -> Option<Cart> {
        let cart_id = self.ensure_cart(session_id)?;
        self.carts.get(cart_id)
    }

    /// Adds a product to the session's cart and returns the updated cart.
    pub fn add_to_cart(
        &mut self,
        session_id: u64,
        product_id: u64,
        quantity: u64,
    ) -> Result<Cart, CartError> {
        let cart_id = self.ensure_cart(session_id).ok_or(CartError::NoSuchCart)?;
        self.carts.add(cart_id, product_id, quantity)?;
        self.carts.get(cart_id).ok_or(CartError::NoSuchCart)
    }

    /// `(cart id, owner, total items)` for every cart.
    pub fn cart_summary(&self) -> Vec<(u64, Option<String>, u64)> {
        self.carts.summary()
    }

    fn ensure_cart(&mut self, session_id: u64) -> Option<u64> {
        let session = self.sessions.get(&session_id)?;
        if let Some(cart_id) = session.cart_id.filter(|id| self.carts.get(*id).is_some()) {
            return Some(cart_id);
        }
        let user = session.user.clone();
        let cart_id = match user.as_deref().and_then(|name| self.carts.user_cart(name)) {
            Some(existing) => existing,
            None => self.carts.create(user.as_deref()),
        };
        if let Some(session) = self.sessions.get_mut(&session_id) {
            session.cart_id = Some(cart_id);
        }
        Some(cart_id)
    }

    /// Validates the limited token, kills the guest's tokens and hands the session (and
    /// its cart) to the user.
    fn transition_guest(
        &mut self,
        limited_token: &str,
        account: &Account,
    ) -> Result<u64, LimitedTokenInvalid> {
        let now = Instant::now();
        let pair = self
            .by_access
            .get(limited_token)
            .and_then(|pair_id| self.pairs.get(pair_id))
            .filter(|pair| now < pair.access_expires)
            .ok_or(LimitedTokenInvalid)?;
        let session_id = pair.session_id;
        if !matches!(self.sessions.get(&session_id), Some(session) if session.user.is_none()) {
            return Err(LimitedTokenInvalid);
        }
        // Take the session out while its pairs go, or `remove_pair` would forget it.
        let mut session = self.sessions.remove(&session_id).ok_or(LimitedTokenInvalid)?;
        self.remove_pairs_of_session(session_id);
        session.cart_id = self.carts.carry_over(session.cart_id, &account.key);
        session.user = Some(account.key.clone());
        session.user_id = account.user_id;
        session.external_reference_id.clone_from(&account.external_reference_id);
        self.sessions.insert(session_id, session);
        Ok(session_id)
    }

    fn new_session(&mut self, account: Option<&Account>) -> u64 {
        let session_id = self.next_session_id;
        self.next_session_id += 1;
        let user_id = match account {
            Some(account) => account.user_id,
            None => {
                self.next_anonymous_user_id += 1;
                self.next_anonymous_user_id
            }
        };
        let now = SystemTime::now();
        let session = Session {
            user_id,
            user: account.map(|account| account.key.clone()),
            external_reference_id: account.and_then(|account| account.external_reference_id.clone()),
            cart_id: None,
            created_on: now,
            last_accessed: now,
            session_tag: random_hex(16),
            token_prefix: random_hex(32),
        };
        self.sessions.insert(session_id, session);
        session_id
    }

    /// A stable id per configured user, so `/v1/shoppers/me` is the same across logins.
    fn user_id_of(&self, name: &str) -> u64 {
        let index = self.users.iter().position(|user| user.name == name);
        SHOPPER_USER_ID_BASE + index.map_or(0, |index| index as u64)
    }

    fn mint_pair(&mut self, session_id: u64, issue: Issue, access_ttl: Duration) -> TokenPair {
        let now = Instant::now();
        let prefix = self
            .sessions
            .get(&session_id)
            .map_or_else(|| random_hex(32), |session| session.token_prefix.clone());
        let access_token = self.unused_token(&prefix, 48);
        let refresh_token = (issue == Issue::WithRefresh).then(|| self.unused_token(&prefix, 56));
        let pair_id = self.next_pair_id;
        self.next_pair_id += 1;
        self.by_access.insert(access_token.clone(), pair_id);
        self.issued_access.push(access_token.clone());
        if let Some(refresh_token) = &refresh_token {
            self.by_refresh.insert(refresh_token.clone(), pair_id);
            self.issued_refresh.push(refresh_token.clone());
        }
        let pair = Pair {
            session_id,
            access_token: access_token.clone(),
            access_expires: later(now, access_ttl),
            refresh_token: refresh_token.clone(),
            refresh_expires: later(now, self.refresh_ttl),
        };
        self.pairs.insert(pair_id, pair);
        TokenPair { access_token, expires_in: whole_seconds(access_ttl), refresh_token }
    }

    /// Non-rotating refresh: new access token in the same pair, same refresh token.
    fn replace_access_token(&mut self, pair_id: u64, session_id: u64, now: Instant) -> TokenPair {
        let prefix = self
            .sessions
            .get(&session_id)
            .map_or_else(|| random_hex(32), |session| session.token_prefix.clone());
        let access_token = self.unused_token(&prefix, 48);
        let access_ttl = self.access_ttl;
        let access_expires = later(now, access_ttl);
        let Some(pair) = self.pairs.get_mut(&pair_id) else {
            return self.mint_pair(session_id, Issue::WithRefresh, access_ttl);
        };
        let old = std::mem::replace(&mut pair.access_token, access_token.clone());
        pair.access_expires = access_expires;
        let refresh_token = pair.refresh_token.clone();
        self.by_access.remove(&old);
        self.by_access.insert(access_token.clone(), pair_id);
        self.issued_access.push(access_token.clone());
        TokenPair { access_token, expires_in: whole_seconds(access_ttl), refresh_token }
    }

    /// The session prefix plus `random_bytes` of fresh randomness, retried on the
    /// (astronomically unlikely) chance it is already in use.
    fn unused_token(&self, prefix: &str, random_bytes: usize) -> String {
        loop {
            let token = format!("{prefix}{}", random_hex(random_bytes));
            if !self.by_access.contains_key(&token) && !self.by_refresh.contains_key(&token) {
                return token;
            }
        }
    }

    fn remove_pairs_of_session(&mut self, session_id: u64) {
        let pair_ids: Vec<u64> = self
            .pairs
            .iter()
            .filter(|(_, pair)| pair.session_id == session_id)
            .map(|(pair_id, _)| *pair_id)
            .collect();
        for pair_id in pair_ids {
            self.remove_pair(pair_id);
        }
    }

    /// Removes a pair; a session left without pairs is forgotten too.
    fn remove_pair(&mut self, pair_id: u64) {
        let Some(pair) = self.pairs.remove(&pair_id) else {
            return;
        };
        self.by_access.remove(&pair.access_token);
        if let Some(refresh_token) = &pair.refresh_token {
            self.by_refresh.remove(refresh_token);
        }
        let orphaned = !self.pairs.values().any(|other| other.session_id == pair.session_id);
        if orphaned {
            self.sessions.remove(&pair.session_id);
        }
    }
}

fn view(session_id: u64, session: &Session, expires_in: Duration) -> SessionView {
    SessionView {
        session_id,
        user_id: session.user_id,
        user: session.user.clone(),
        external_reference_id: session.external_reference_id.clone(),
        cart_id: session.cart_id,
        created_on: session.created_on,
        last_accessed: session.last_accessed,
        session_tag: session.session_tag.clone(),
        expires_in,
    }
}

fn pair_is_live(pair: &Pair, now: Instant) -> bool {
    now < pair.access_expires || (pair.refresh_token.is_some() && now < pair.refresh_expires)
}

/// `now + ttl`; TTLs are bounded at startup, so the fallback (already expired) is only
/// a guard against `Instant` overflow, never a panic.
fn later(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl).unwrap_or(now)
}

/// A lifetime as `expires_in` says it: rounded up, so a client that adds it to the current
/// whole second lands on the deadline, not a second before it.
fn whole_seconds(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
