//! Unit tests for `state.rs`: token layout, rotation, password encoding, cart carry-over,
//! revocation and expiry. Kept in their own file so `state.rs` stays short.

use std::time::Duration;

use base64::Engine as _;

use super::*;

const DAY: Duration = Duration::from_secs(86_397);
const YEAR: Duration = Duration::from_secs(31_536_000);
const WIDGET: u64 = 5104501700;

fn store() -> Store {
    store_with_ttl(DAY)
}

fn store_with_ttl(access_ttl: Duration) -> Store {
    let users = vec![User { name: "jdoe@example.com".to_owned(), password: "p4ssw0rd!".to_owned() }];
    Store::new(users, access_ttl, YEAR)
}

fn live(store: &mut Store, token: &str) -> SessionView {
    match store.lookup_access(token) {
        AccessLookup::Live(view) => view,
        AccessLookup::Expired => panic!("token unexpectedly expired"),
        AccessLookup::Unknown => panic!("token unexpectedly unknown"),
    }
}

fn is_unknown(store: &mut Store, token: &str) -> bool {
    matches!(store.lookup_access(token), AccessLookup::Unknown)
}

fn refresh_of(pair: &TokenPair) -> &str {
    pair.refresh_token.as_deref().expect("pair has a refresh token")
}

#[test]
fn tokens_are_lowercase_hex_of_dr_lengths_with_shared_prefix() {
    let mut store = store();
    let pair = store.mint_anonymous();
    let refresh = refresh_of(&pair);
    assert_eq!(pair.access_token.len(), 160);
    assert_eq!(refresh.len(), 176);
    assert_eq!(pair.access_token[..64], refresh[..64]);
    let is_hex = |text: &str| text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(is_hex(&pair.access_token) && is_hex(refresh));
    assert_ne!(pair.access_token[64..], refresh[64..160]);
}

#[test]
fn refresh_rotation_kills_old_refresh_and_access_token() {
    let mut store = store();
    let first = store.mint_anonymous();
    let session_id = live(&mut store, &first.access_token).session_id;
    let second = store.refresh(refresh_of(&first), true).expect("refresh works");
    assert_ne!(second.access_token, first.access_token);
    assert_ne!(refresh_of(&second), refresh_of(&first));
    assert!(is_unknown(&mut store, &first.access_token));
    assert!(store.refresh(refresh_of(&first), true).is_none());
    assert_eq!(live(&mut store, &second.access_token).session_id, session_id);
}

#[test]
fn refresh_without_rotation_returns_same_refresh_token() {
    let mut store = store();
    let first = store.mint_anonymous();
    let second = store.refresh(refresh_of(&first), false).expect("refresh works");
    assert_eq!(refresh_of(&second), refresh_of(&first));
    assert!(is_unknown(&mut store, &first.access_token));
    let third = store.refresh(refresh_of(&first), false).expect("still valid");
    live(&mut store, &third.access_token);
}

#[test]
fn base64_password_check_rejects_plain_password() {
    let store = store();
    let encoded = base64::engine::general_purpose::STANDARD.encode("p4ssw0rd!");
    assert!(store.verify_password("jdoe@example.com", &encoded, PasswordEncoding::Base64));
    assert!(!store.verify_password("jdoe@example.com", "p4ssw0rd!", PasswordEncoding::Base64));
    assert!(!store.verify_password("nobody", &encoded, PasswordEncoding::Base64));
    assert!(store.verify_password("jdoe@example.com", "p4ssw0rd!", PasswordEncoding::Plain));
}

#[test]
fn login_with_limited_token_carries_cart_and_kills_guest_tokens() {
    let mut store = store();
    let guest = store.mint_anonymous();
    let guest_session = live(&mut store, &guest.access_token).session_id;
    let cart = store.add_to_cart(guest_session, WIDGET, 2).expect("added");
    let shopper = store
        .login("jdoe@example.com", Some(&guest.access_token), Issue::WithRefresh)
        .expect("limited token is valid");
    let view = live(&mut store, &shopper.access_token);
    assert_eq!(view.cart_id, Some(cart.id));
    assert_eq!(view.user.as_deref(), Some("jdoe@example.com"));
    assert!(is_unknown(&mut store, &guest.access_token));
    assert!(store.refresh(refresh_of(&guest), true).is_none());
    let carried = store.active_cart(view.session_id).expect("cart");
    assert_eq!(carried.total_items(), 2);
}

#[test]
fn user_cart_persists_across_logins_and_merges_guest_lines() {
    let mut store = store();
    let first = store.login("jdoe@example.com", None, Issue::WithRefresh).expect("login");
    let first_session = live(&mut store, &first.access_token).session_id;
    let owned = store.add_to_cart(first_session, WIDGET, 1).expect("added");
    let guest = store.mint_anonymous();
    let guest_session = live(&mut store, &guest.access_token).session_id;
    store.add_to_cart(guest_session, WIDGET, 3).expect("added");
    let second =
        store.login("jdoe@example.com", Some(&guest.access_token), Issue::AccessOnly).expect("login");
    assert!(second.refresh_token.is_none(), "implicit grant has no refresh token");
    let view = live(&mut store, &second.access_token);
    assert_eq!(view.cart_id, Some(owned.id));
    assert_eq!(store.active_cart(view.session_id).expect("cart").total_items(), 4);
}

#[test]
fn limited_token_must_be_live_and_anonymous() {
    let mut store = store();
    let shopper = store.login("jdoe@example.com", None, Issue::WithRefresh).expect("login");
    let as_limited = store.login("jdoe@example.com", Some(&shopper.access_token), Issue::WithRefresh);
    assert_eq!(as_limited.err(), Some(LimitedTokenInvalid));
    let bogus = store.login("jdoe@example.com", Some("feed"), Issue::WithRefresh);
    assert_eq!(bogus.err(), Some(LimitedTokenInvalid));
}

#[test]
fn revocation_kills_the_whole_pair() {
    let mut store = store();
    let pair = store.mint_anonymous();
    assert!(store.revoke_pair_of(&pair.access_token));
    assert!(is_unknown(&mut store, &pair.access_token));
    assert!(store.refresh(refresh_of(&pair), true).is_none());
    assert!(!store.revoke_pair_of(&pair.access_token));
    assert_eq!(store.live_sessions(), 0);
}

#[test]
fn revoke_all_counts_live_pairs() {
    let mut store = store();
    let first = store.mint_anonymous();
    store.mint_anonymous();
    assert_eq!(store.live_sessions(), 2);
    assert_eq!(store.revoke_all(), 2);
    assert!(is_unknown(&mut store, &first.access_token));
    assert_eq!(store.live_sessions(), 0);
}

#[test]
fn expire_marks_access_tokens_only() {
    let mut store = store();
    let pair = store.mint_anonymous();
    assert_eq!(store.expire_all_access(), 1);
    assert!(matches!(store.lookup_access(&pair.access_token), AccessLookup::Expired));
    assert_eq!(store.live_sessions(), 1, "the refresh token keeps the session alive");
    let fresh = store.refresh(refresh_of(&pair), true).expect("refresh token still valid");
    live(&mut store, &fresh.access_token);
    assert_eq!(store.expire_all_access(), 1);
    assert_eq!(store.expire_all_access(), 0, "already expired ones are not counted");
}

#[test]
fn zero_ttl_tokens_are_born_expired() {
    let mut store = store_with_ttl(Duration::ZERO);
    let pair = store.mint_anonymous();
    assert!(matches!(store.lookup_access(&pair.access_token), AccessLookup::Expired));
}

#[test]
fn issued_tokens_are_all_recorded() {
    let mut store = store();
    let first = store.mint_anonymous();
    let second = store.refresh(refresh_of(&first), true).expect("refresh");
    let (access, refresh) = store.issued_tokens();
    assert_eq!(access, vec![first.access_token.clone(), second.access_token.clone()]);
    assert_eq!(refresh.len(), 2);
}

#[test]
fn an_external_reference_id_is_one_authenticated_shopper_created_on_first_use() {
    let mut store = store();
    let guest = store.mint_anonymous();
    let guest_session = live(&mut store, &guest.access_token).session_id;
    let first = store.login_external("shop-1", Some(&guest.access_token)).expect("login");
    let view = live(&mut store, &first.access_token);
    assert_eq!(view.session_id, guest_session, "the guest session transitioned");
    assert_eq!(view.external_reference_id.as_deref(), Some("shop-1"));
    assert_eq!(view.user.as_deref(), Some("erid:shop-1"));
    assert!(is_unknown(&mut store, &guest.access_token));
    let again = store.login_external("shop-1", None).expect("login");
    assert_eq!(live(&mut store, &again.access_token).user_id, view.user_id);
    let other = store.login_external("shop-2", None).expect("login");
    assert_ne!(live(&mut store, &other.access_token).user_id, view.user_id);
    let shopper_as_limited = store.login_external("shop-3", Some(&again.access_token));
    assert!(shopper_as_limited.is_err(), "only a guest token can be carried over");
}

#[test]
fn sign_ins_before_the_access_deadline_expire_at_it_and_refreshes_and_later_ones_live_the_ttl() {
    let mut store = store();
    let deadline = SystemTime::now() + Duration::from_secs(100);
    store.set_access_deadline(Some(deadline));
    let first = store.mint_anonymous();
    // Rounded up: the whole second a client adds it to is the deadline's.
    assert!((99..=100).contains(&first.expires_in), "{}", first.expires_in);
    assert!(live(&mut store, &first.access_token).expires_in <= Duration::from_secs(100));
    let shopper = store.login("jdoe@example.com", None, Issue::WithRefresh).expect("no limited token");
    assert!((99..=100).contains(&shopper.expires_in), "every sign-in gets the deadline");

    let rotated = store.refresh(refresh_of(&first), true).expect("refresh works");
    assert_eq!(
        rotated.expires_in,
        DAY.as_secs(),
        "a refresh, even before the deadline, gets the usual lifetime"
    );
    assert!(live(&mut store, &rotated.access_token).expires_in > Duration::from_secs(100));
    let kept = store.refresh(refresh_of(&rotated), false).expect("refresh works");
    assert_eq!(kept.expires_in, DAY.as_secs());

    store.set_access_deadline(Some(SystemTime::now() - Duration::from_secs(1)));
    assert_eq!(store.mint_anonymous().expires_in, DAY.as_secs(), "past the deadline: the usual lifetime");
    store.set_access_deadline(None);
    assert_eq!(store.mint_anonymous().expires_in, DAY.as_secs(), "off by default");
}

#[test]
fn a_token_minted_within_the_last_second_before_the_deadline_still_lives_one_second() {
    let mut store = store();
    store.set_access_deadline(Some(SystemTime::now() + Duration::from_millis(300)));
    let pair = store.mint_anonymous();
    assert_eq!(pair.expires_in, 1);
    assert!(matches!(store.lookup_access(&pair.access_token), AccessLookup::Live(_)));
}
