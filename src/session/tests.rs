//! The session core against a fake token service, in tokio's paused time: every timing
//! here is exact, nothing sleeps for real.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::config::RateLimitConfig;
use crate::secret::{AccessToken, Password, RefreshToken};
use crate::store::MemoryStore;
use crate::tokens::TokenDetails;

const START: u64 = 1_700_000_000;
const ACCESS_TTL: u64 = 300;
const REFRESH_AHEAD: u64 = 60;
const IDLE: u64 = 100;
const ABSOLUTE: u64 = 1000;

/// What the fake's refresh answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshAnswer {
    Fresh,
    DeadGrant,
    ServerError,
    Timeout,
    InvalidClient,
}

/// A token service that counts calls, rotates refresh tokens and refuses a refresh
/// token that was rotated away (as a real one does).
struct FakeTokens {
    issued: AtomicUsize,
    refresh_calls: AtomicUsize,
    answer: Mutex<RefreshAnswer>,
    /// The one refresh token the fake still accepts per session chain.
    live_refresh: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
    delay: Duration,
    /// Login grants come back without a refresh token (like the hosted login).
    login_without_refresh: bool,
    refresh_started: Notify,
    /// The `limited` token of each external login that succeeded.
    external_calls: Mutex<Vec<Option<String>>>,
}

impl FakeTokens {
    fn new(delay: Duration) -> Self {
        Self {
            issued: AtomicUsize::new(0),
            refresh_calls: AtomicUsize::new(0),
            answer: Mutex::new(RefreshAnswer::Fresh),
            live_refresh: Mutex::new(Vec::new()),
            revoked: Mutex::new(Vec::new()),
            delay,
            login_without_refresh: false,
            refresh_started: Notify::new(),
            external_calls: Mutex::new(Vec::new()),
        }
    }

    fn issue(&self, with_refresh: bool) -> TokenSet {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let refresh = with_refresh.then(|| format!("refresh-{n}"));
        if let Some(refresh) = &refresh {
            self.live_refresh.lock().expect("not poisoned").push(refresh.clone());
        }
        TokenSet {
            access_token: AccessToken::new(format!("access-{n}")),
            refresh_token: refresh.map(RefreshToken::new),
            expires_in: ACCESS_TTL,
        }
    }

    fn answer(&self, answer: RefreshAnswer) {
        *self.answer.lock().expect("not poisoned") = answer;
    }

    fn refreshes(&self) -> usize {
        self.refresh_calls.load(Ordering::SeqCst)
    }

    fn revoked(&self) -> Vec<String> {
        self.revoked.lock().expect("not poisoned").clone()
    }
}

impl TokenService for FakeTokens {
    async fn mint_guest(&self) -> Result<TokenSet, TokenError> {
        Ok(self.issue(true))
    }

    async fn login(
        &self,
        _username: &str,
        password: &Password,
        _limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        tokio::time::sleep(self.delay).await;
        if password.expose() != "right" {
            return Err(TokenError::Rejected { status: 401, code: "invalid_grant".into() });
        }
        Ok(self.issue(!self.login_without_refresh))
    }

    async fn login_external(
        &self,
        external_reference_id: &str,
        limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        if external_reference_id == "unknown" {
            return Err(TokenError::Rejected { status: 400, code: "invalid_grant".into() });
        }
        if limited.is_some_and(|token| self.revoked().iter().any(|revoked| revoked == token.expose())) {
            return Err(TokenError::Rejected { status: 400, code: "dr_limited_token_invalid".into() });
        }
        self.external_calls.lock().expect("not poisoned").push(limited.map(|t| t.expose().to_string()));
        Ok(self.issue(true))
    }

    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenSet, TokenError> {
        self.refresh_calls.fetch_add(1, Ordering::SeqCst);
        self.refresh_started.notify_one();
        tokio::time::sleep(self.delay).await;
        let answer = *self.answer.lock().expect("not poisoned");
        match answer {
            RefreshAnswer::Fresh => {}
            RefreshAnswer::DeadGrant => {
                return Err(TokenError::Rejected { status: 400, code: "invalid_grant".into() })
            }
            RefreshAnswer::ServerError => return Err(TokenError::Unavailable("answered 503".into())),
            RefreshAnswer::Timeout => return Err(TokenError::Timeout),
            RefreshAnswer::InvalidClient => {
                return Err(TokenError::Rejected { status: 401, code: "invalid_client".into() })
            }
        }
        let presented = refresh_token.expose().to_string();
        let mut live = self.live_refresh.lock().expect("not poisoned");
        let Some(position) = live.iter().position(|token| *token == presented) else {
            return Err(TokenError::Rejected { status: 400, code: "invalid_grant".into() });
        };
        // Rotation: the presented refresh token dies, a new one is issued.
        live.remove(position);
        drop(live);
        Ok(self.issue(true))
    }

    async fn revoke(&self, access_token: &AccessToken) -> Result<(), TokenError> {
        self.revoked.lock().expect("not poisoned").push(access_token.expose().to_string());
        Ok(())
    }

    async fn details(&self, _access_token: &AccessToken) -> Result<TokenDetails, TokenError> {
        Ok(TokenDetails { authenticated: true, expires_in: Some(ACCESS_TTL) })
    }
}

struct Harness {
    sessions: Arc<Sessions<FakeTokens>>,
    tokens: Arc<FakeTokens>,
    store: Arc<Store>,
}

fn harness(tokens: FakeTokens) -> Harness {
    harness_with(tokens, None)
}

/// The hosted login as a storefront at `https://shop.example` would configure it.
fn hosted_login() -> HostedLogin {
    let text = "[server]\npublic_origin = \"https://shop.example\"\n[oauth]\nclient_id = \"key\"\n\
                [[route]]\nprefix = \"/api/\"\n";
    let env = |name: &str| (name == "TOKENGATE_CLIENT_SECRET").then(|| "secret".to_string());
    let config = crate::config::Config::from_toml(text, &env).expect("a valid config");
    HostedLogin::new(&config.fixed).expect("a public origin makes a hosted login")
}

fn harness_with(tokens: FakeTokens, hosted_login: Option<HostedLogin>) -> Harness {
    let tokens = Arc::new(tokens);
    let store = Arc::new(Store::Memory(MemoryStore::new(1000)));
    let sessions = Arc::new(Sessions::new(Parts {
        settings: Settings {
            idle_secs: IDLE,
            absolute_secs: ABSOLUTE,
            refresh_ahead_secs: REFRESH_AHEAD,
            refresh_wait: Duration::from_secs(30),
            guest: GuestMode::Lazy,
            touch_every_secs: 1,
            lock_lease: Duration::from_secs(10),
        },
        store: Arc::clone(&store),
        tokens: Arc::clone(&tokens),
        rate_limit: SessionRateLimit::new(&RateLimitConfig {
            new_sessions_per_minute: 10_000,
            new_sessions_burst: 10_000,
            token_concurrency: 8,
        }),
        hosted_login,
        clock: Clock::tokio_at(START),
        metrics: Arc::new(Metrics::new(&[])),
    }));
    Harness { sessions, tokens, store }
}

fn client() -> IpAddr {
    IpAddr::from([192, 0, 2, 1])
}

impl Harness {
    fn now(&self) -> u64 {
        self.sessions.clock().now()
    }

    /// A new guest session and the cookie that names it.
    async fn guest(&self) -> (Active, CookieLookup) {
        let (active, id) = self
            .sessions
            .guest(&CookieLookup::Absent, self.now(), client())
            .await
            .expect("a guest is minted");
        (active, CookieLookup::Present(id.expect("a new guest has an id")))
    }

    async fn stored(&self, key: &SessionKey) -> Option<Arc<SessionRecord>> {
        self.store.get(key).await.expect("the memory store answers").map(|stored| stored.record)
    }

    async fn login(&self, cookie: &CookieLookup) -> Result<(SessionId, Active), Error> {
        self.sessions.login(cookie, "jdoe", &Password::new("right".to_string()), self.now(), client()).await
    }

    /// Waits (in paused time, bounded) until `done` holds: background revocations run in
    /// tasks of their own.
    async fn eventually(&self, done: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..3000 {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_waiters_cause_one_refresh_and_all_get_its_tokens() {
    let h = harness(FakeTokens::new(Duration::from_secs(1)));
    let (active, _) = h.guest().await;
    tokio::time::advance(Duration::from_secs(ACCESS_TTL - REFRESH_AHEAD + 1)).await;
    let now = h.now();
    let waiters = (0..50).map(|_| {
        let sessions = Arc::clone(&h.sessions);
        let active = active.clone();
        tokio::spawn(async move { sessions.ensure_fresh(&active, now).await })
    });
    let mut generations = Vec::new();
    for waiter in waiters.collect::<Vec<_>>() {
        let record = waiter.await.expect("no panic").expect("every waiter gets tokens");
        generations.push(record.generation);
    }
    assert_eq!(h.tokens.refreshes(), 1);
    assert!(generations.iter().all(|generation| *generation == 1), "{generations:?}");
    assert_eq!(h.stored(&active.key).await.expect("kept").generation, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_mid_refresh_loses_no_rotated_refresh_token() {
    let h = harness(FakeTokens::new(Duration::from_secs(5)));
    let (active, _) = h.guest().await;
    let refresh = {
        let sessions = Arc::clone(&h.sessions);
        let key = active.key;
        tokio::spawn(async move { sessions.refresh(key, 0).await })
    };
    // The call has reached the API (which rotates the refresh token when it answers)...
    h.tokens.refresh_started.notified().await;
    // ...and the browser goes away.
    refresh.abort();
    assert!(refresh.await.is_err_and(|error| error.is_cancelled()));
    let rotated = h.eventually(|h| h.tokens.issued.load(Ordering::SeqCst) == 2).await;
    assert!(rotated, "the refresh call finished without its requester");
    let landed = async {
        for _ in 0..3000 {
            if h.stored(&active.key).await.is_some_and(|record| record.generation == 1) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(landed.await, "the rotated tokens were stored");
    // The stored refresh token is the live one: the next refresh works.
    let next = h.sessions.refresh(active.key, 1).await.expect("the rotated refresh token works");
    assert_eq!(next.generation, 2);
    assert_eq!(h.tokens.refreshes(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_a_dead_grant_ends_the_session() {
    for answer in [RefreshAnswer::ServerError, RefreshAnswer::Timeout, RefreshAnswer::InvalidClient] {
        let h = harness(FakeTokens::new(Duration::ZERO));
        let (active, _) = h.guest().await;
        h.tokens.answer(answer);
        let outcome = h.sessions.refresh(active.key, 0).await;
        assert!(matches!(outcome, Err(Error::TokenServiceUnavailable(_))), "{answer:?}: {outcome:?}");
        let kept = h.stored(&active.key).await.expect("the session is kept");
        assert_eq!(kept.generation, 0, "{answer:?}: its tokens are untouched");
        // Still inside its lifetime, the current token serves while the API is down.
        tokio::time::advance(Duration::from_secs(ACCESS_TTL - REFRESH_AHEAD + 1)).await;
        let served = h.sessions.ensure_fresh(&active, h.now()).await.expect("the old token still works");
        assert_eq!(served.access_token.expose(), active.record.access_token.expose());
    }
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (active, _) = h.guest().await;
    h.tokens.answer(RefreshAnswer::DeadGrant);
    assert!(matches!(h.sessions.refresh(active.key, 0).await, Err(Error::SessionExpired)));
    assert!(h.stored(&active.key).await.is_none(), "a dead grant deletes the session");
}

#[tokio::test(start_paused = true)]
async fn a_dead_grant_after_someone_else_rotated_uses_their_tokens() {
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (active, _) = h.guest().await;
    // Another writer (a replica, a stale holder) already refreshed: generation 1 is stored.
    let newer = h.sessions.refresh(active.key, 0).await.expect("refreshes");
    // This caller still holds generation 0's record and presents its dead refresh token.
    let call = refresh::tests_support::call(&h.sessions, active.key, Arc::clone(&active.record));
    let outcome = call.await.expect("the newer tokens are used, not a logout");
    assert_eq!(outcome.generation, newer.generation);
    assert!(h.stored(&active.key).await.is_some());
}

#[tokio::test(start_paused = true)]
async fn idle_expiry_is_exact_at_its_boundary() {
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (active, cookie) = h.guest().await;
    tokio::time::advance(Duration::from_secs(IDLE - 1)).await;
    assert!(h.sessions.lookup(&cookie, h.now()).await.expect("live").is_some(), "one second before idle");
    tokio::time::advance(Duration::from_secs(IDLE)).await;
    assert!(matches!(h.sessions.lookup(&cookie, h.now()).await, Err(Error::SessionExpired)), "at idle");
    assert!(h.stored(&active.key).await.is_none(), "an expired session is deleted");
}

#[tokio::test(start_paused = true)]
async fn absolute_expiry_is_exact_at_its_boundary_however_busy_the_session() {
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (_, cookie) = h.guest().await;
    let mut elapsed = 0;
    while elapsed + 50 < ABSOLUTE {
        tokio::time::advance(Duration::from_secs(50)).await;
        elapsed += 50;
        assert!(h.sessions.lookup(&cookie, h.now()).await.expect("live").is_some(), "at {elapsed}s");
    }
    tokio::time::advance(Duration::from_secs(ABSOLUTE - 1 - elapsed)).await;
    assert!(h.sessions.lookup(&cookie, h.now()).await.expect("live").is_some(), "one second before the end");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(h.sessions.lookup(&cookie, h.now()).await, Err(Error::SessionExpired)));
}

#[tokio::test(start_paused = true)]
async fn a_session_without_a_refresh_token_lives_until_its_token_really_expires() {
    let mut tokens = FakeTokens::new(Duration::ZERO);
    tokens.login_without_refresh = true;
    let h = harness(tokens);
    let (id, _) = h.login(&CookieLookup::Absent).await.expect("logs in");
    let cookie = CookieLookup::Present(id);
    // Inside refresh_ahead, before expiry: served as it is, nothing to refresh with.
    // (Used every 50 s, so it never goes idle.)
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(50)).await;
        h.sessions.lookup(&cookie, h.now()).await.expect("live").expect("found");
    }
    tokio::time::advance(Duration::from_secs(ACCESS_TTL - 1 - 250)).await;
    let active = h.sessions.lookup(&cookie, h.now()).await.expect("live").expect("found");
    let served = h.sessions.ensure_fresh(&active, h.now()).await.expect("still good for a second");
    assert!(served.refresh_token.is_none());
    assert_eq!(h.tokens.refreshes(), 0);
    // At expiry it is over.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(h.sessions.ensure_fresh(&active, h.now()).await, Err(Error::SessionExpired)));
    assert!(h.stored(&active.key).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn two_logins_on_one_guest_cookie_leave_one_session_and_revoke_the_loser() {
    let h = harness(FakeTokens::new(Duration::from_secs(1)));
    let (guest, cookie) = h.guest().await;
    let (first, second) = tokio::join!(h.login(&cookie), h.login(&cookie));
    let (winner, loser) = match (first, second) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("exactly one login must win: {other:?}"),
    };
    assert!(matches!(loser, Error::SessionExpired), "{loser:?}");
    assert!(h.stored(&guest.key).await.is_none());
    assert!(h.stored(&winner.1.key).await.is_some());
    assert_eq!(h.store.counts(), crate::store::SessionCounts { guests: 0, shoppers: 1 });
    // The loser's tokens (access-1 or access-2, whichever is not the winner's) are revoked.
    let winner_token = winner.1.record.access_token.expose().to_string();
    let loser_token = if winner_token == "access-1" { "access-2" } else { "access-1" };
    assert!(h.eventually(|h| h.tokens.revoked().iter().any(|t| t == loser_token)).await);
    assert!(!h.tokens.revoked().contains(&winner_token));
}

#[tokio::test(start_paused = true)]
async fn a_logout_during_a_login_wins_and_the_login_leaves_nothing_alive() {
    let h = harness(FakeTokens::new(Duration::from_secs(1)));
    let (guest, cookie) = h.guest().await;
    let (login, logout) = tokio::join!(h.login(&cookie), async {
        // Lands while the login waits for the token endpoint.
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.sessions.logout(&cookie, h.now()).await
    });
    logout.expect("logout answers");
    assert!(matches!(login, Err(Error::SessionExpired)), "{login:?}");
    assert_eq!(h.store.counts(), crate::store::SessionCounts::default());
    let guest_token = guest.record.access_token.expose().to_string();
    assert!(h.eventually(|h| h.tokens.revoked().len() == 2).await, "{:?}", h.tokens.revoked());
    assert!(h.tokens.revoked().contains(&guest_token));
    assert!(h.tokens.revoked().iter().any(|t| t == "access-1"), "the login's new token is revoked");
}

#[tokio::test(start_paused = true)]
async fn a_logout_with_the_old_cookie_just_after_a_login_ends_the_new_session_too() {
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (_, cookie) = h.guest().await;
    let (_, shopper) = h.login(&cookie).await.expect("logs in");
    h.sessions.logout(&cookie, h.now()).await.expect("logout answers");
    assert!(h.stored(&shopper.key).await.is_none(), "no session survives the race");
    assert!(h.tokens.revoked().contains(&shopper.record.access_token.expose().to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_lands_after_a_logout_revokes_what_it_got() {
    let h = harness(FakeTokens::new(Duration::from_secs(2)));
    let (active, cookie) = h.guest().await;
    let refresh = {
        let sessions = Arc::clone(&h.sessions);
        tokio::spawn(async move { sessions.refresh(active.key, 0).await })
    };
    h.tokens.refresh_started.notified().await;
    h.sessions.logout(&cookie, h.now()).await.expect("logout answers");
    let outcome = refresh.await.expect("no panic");
    assert!(matches!(outcome, Err(Error::SessionExpired)), "{outcome:?}");
    assert!(h.eventually(|h| h.tokens.revoked().iter().any(|t| t == "access-1")).await);
    assert!(h.stored(&active.key).await.is_none(), "the logout is not undone");
}

#[tokio::test(start_paused = true)]
async fn a_hosted_login_completes_once_and_its_session_lives_until_the_token_expires() {
    let h = harness_with(FakeTokens::new(Duration::ZERO), Some(hosted_login()));
    let (_, cookie) = h.guest().await;
    let (active, new_id) =
        h.sessions.session_for_hosted_login(&cookie, h.now(), client()).await.expect("the guest is used");
    assert!(new_id.is_none(), "the live guest session is bound, not a new one");
    let return_to = crate::hosted_login::checked_return_to("/a/../cart").expect("a path on this site");
    let url = h.sessions.begin_hosted_login(&active, return_to, h.now()).await.expect("starts");
    let state = url::Url::parse(&url)
        .expect("an absolute URL")
        .query_pairs()
        .find(|(name, _)| name == "state")
        .map(|(_, value)| value.into_owned())
        .expect("a state");
    let callback = |state: &str| crate::callback::CallbackParams {
        outcome: crate::callback::CallbackOutcome::Token {
            access_token: AccessToken::new("hosted-shopper-token"),
            expires_in: Some(ACCESS_TTL),
        },
        state: Some(state.to_string()),
    };
    let end = h.sessions.complete_hosted_login(&cookie, callback(&state), h.now()).await.expect("completes");
    let HostedEnd::SignedIn { id, active, return_to } = end else { panic!("signed in: {end:?}") };
    assert_eq!(return_to, "/cart", "normalised before it was kept");
    assert!(active.record.refresh_token.is_none());
    assert!(h.stored(&active.key).await.is_some());
    assert!(
        h.eventually(|h| h.tokens.revoked().iter().any(|t| t == "access-0")).await,
        "carried guest revoked"
    );
    // The state was used: a second callback with it is refused.
    let cookie = CookieLookup::Present(id);
    let again = h.sessions.complete_hosted_login(&cookie, callback(&state), h.now()).await;
    assert!(matches!(again, Err(Error::InvalidState)), "{again:?}");

    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(50)).await;
        h.sessions.lookup(&cookie, h.now()).await.expect("live").expect("found");
    }
    // Inside refresh_ahead and with nothing to refresh with, the token still serves.
    tokio::time::advance(Duration::from_secs(ACCESS_TTL - 1 - 250)).await;
    let active = h.sessions.lookup(&cookie, h.now()).await.expect("live").expect("found");
    assert!(h.sessions.ensure_fresh(&active, h.now()).await.is_ok(), "one second before expiry");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(h.sessions.ensure_fresh(&active, h.now()).await, Err(Error::SessionExpired)));
    assert_eq!(h.tokens.refreshes(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hosted_login_is_found_by_the_session_and_a_wrong_echoed_state_ends_it() {
    let h = harness_with(FakeTokens::new(Duration::ZERO), Some(hosted_login()));
    let (_, cookie) = h.guest().await;
    let (active, _) = h.sessions.session_for_hosted_login(&cookie, h.now(), client()).await.expect("guest");
    let start = |h: &Harness, active: &Active| {
        let sessions = Arc::clone(&h.sessions);
        let (active, now) = (active.clone(), h.now());
        async move {
            let return_to = crate::hosted_login::checked_return_to("/").expect("a path");
            sessions.begin_hosted_login(&active, return_to, now).await.expect("starts")
        }
    };
    let callback = |state: Option<&str>| crate::callback::CallbackParams {
        outcome: crate::callback::CallbackOutcome::Token {
            access_token: AccessToken::new("hosted-shopper-token"),
            expires_in: Some(ACCESS_TTL),
        },
        state: state.map(str::to_string),
    };
    let url = start(&h, &active).await;
    assert!(url.contains("redirect_uri=https%3A%2F%2Fshop.example%2Fsession%2Fcallback&"), "{url}");
    let wrong = h.sessions.complete_hosted_login(&cookie, callback(Some("not-the-state")), h.now()).await;
    assert!(matches!(wrong, Err(Error::InvalidState)), "{wrong:?}");
    let after = h.sessions.complete_hosted_login(&cookie, callback(None), h.now()).await;
    assert!(matches!(after, Err(Error::InvalidState)), "a wrong state ended the pending login: {after:?}");

    // A second authorize replaces the first; without an echoed state the session alone binds it.
    start(&h, &active).await;
    start(&h, &active).await;
    let end = h.sessions.complete_hosted_login(&cookie, callback(None), h.now()).await.expect("completes");
    assert!(matches!(end, HostedEnd::SignedIn { .. }), "{end:?}");
    let other = h.sessions.complete_hosted_login(&CookieLookup::Absent, callback(None), h.now()).await;
    assert!(matches!(other, Err(Error::InvalidState)), "no cookie, no pending login: {other:?}");
}

#[tokio::test(start_paused = true)]
async fn an_external_login_carries_the_guest_over_and_rotates_the_id() {
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (guest, cookie) = h.guest().await;
    let (id, active) =
        h.sessions.login_external(&cookie, "customer-42", h.now(), client()).await.expect("signs in");
    assert_eq!(active.record.kind, SessionKind::Shopper);
    assert_ne!(id.key(), guest.key, "a new id");
    assert!(h.stored(&guest.key).await.is_none(), "the old id is dead at once");
    let carried = h.tokens.external_calls.lock().expect("not poisoned").clone();
    assert_eq!(carried, vec![Some("access-0".to_string())], "the guest token is the limited token");

    // No session named: a fresh shopper session, nothing carried.
    let (_, fresh) = h
        .sessions
        .login_external(&CookieLookup::Absent, "customer-43", h.now(), client())
        .await
        .expect("signs in");
    assert_eq!(fresh.record.kind, SessionKind::Shopper);
    assert_eq!(h.tokens.external_calls.lock().expect("not poisoned").last(), Some(&None));

    // An expired guest token: retried without it.
    let (guest, cookie) = h.guest().await;
    h.tokens.revoke(&guest.record.access_token).await.expect("revoked");
    h.sessions.login_external(&cookie, "customer-44", h.now(), client()).await.expect("retried without");
    assert_eq!(h.tokens.external_calls.lock().expect("not poisoned").last(), Some(&None));

    let refused = h.sessions.login_external(&CookieLookup::Absent, "unknown", h.now(), client()).await;
    assert!(matches!(refused, Err(Error::InvalidCredentials)), "{refused:?}");
}

#[tokio::test(start_paused = true)]
async fn the_refresh_count_reported_is_the_sessions_own() {
    let h = harness(FakeTokens::new(Duration::ZERO));
    let (active, cookie) = h.guest().await;
    assert_eq!(h.sessions.times(&active).refreshes, 0);
    for expected in 1..=2 {
        let record = h.sessions.refresh(active.key, expected - 1).await.expect("refreshes");
        let now = Active { key: active.key, record, last_seen: h.now() };
        assert_eq!(h.sessions.times(&now).refreshes, expected);
    }
    // A coalesced waiter (it saw an older generation) does not count a refresh of its own.
    let record = h.sessions.refresh(active.key, 0).await.expect("the stored tokens");
    assert_eq!(h.sessions.times(&Active { key: active.key, record, last_seen: h.now() }).refreshes, 2);
    assert_eq!(h.tokens.refreshes(), 2);
    // A login begins a new session, with its own count.
    let (_, shopper) = h.login(&cookie).await.expect("logs in");
    assert_eq!(h.sessions.times(&shopper).refreshes, 0);
}
