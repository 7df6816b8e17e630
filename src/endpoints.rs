//! The storefront-facing `/session*` endpoints: JSON (or form) in, JSON out.
//!
//! They read and change sessions through [`Sessions`] and set or clear the cookie
//! through [`crate::cookie`]; they never build upstream API requests themselves.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::body::Body;
use crate::config::Config;
use crate::cookie::{self, CookieLookup};
use crate::error::Error;
use crate::router::Endpoint;
use crate::secret::Password;
use crate::session::{now_secs, Active, Sessions};
use crate::session_id::SessionId;
use crate::store::SessionKind;

/// Largest login body read: a username and a password, with room to spare.
const MAX_LOGIN_BODY_BYTES: usize = 16 * 1024;

/// What an endpoint produced, with the session kind for the request log.
pub struct Outcome {
    pub response: Response<Body>,
    pub session_kind: Option<SessionKind>,
}

/// Runs one session endpoint.
pub async fn handle(
    endpoint: Endpoint,
    request: Request<Incoming>,
    cookie: CookieLookup,
    sessions: &Sessions,
    config: &Config,
) -> Result<Outcome, Error> {
    let expected = if endpoint == Endpoint::Session { Method::GET } else { Method::POST };
    if request.method() != expected {
        return Err(Error::MethodNotAllowed);
    }
    let now = now_secs();
    match endpoint {
        Endpoint::Session => session_info(&cookie, sessions, now).await,
        Endpoint::Guest => guest(&cookie, sessions, config, now).await,
        Endpoint::Login => login(request, &cookie, sessions, config, now).await,
        Endpoint::Logout => logout(&cookie, sessions, config).await,
    }
}

/// The `Allow` header for a 405 on `endpoint`.
pub fn allowed_methods(endpoint: Endpoint) -> HeaderValue {
    HeaderValue::from_static(if endpoint == Endpoint::Session { "GET" } else { "POST" })
}

/// `GET /session`: reads, never creates.
async fn session_info(cookie: &CookieLookup, sessions: &Sessions, now: u64) -> Result<Outcome, Error> {
    let active = sessions.lookup(cookie, now).await?.ok_or(Error::NoSession)?;
    Ok(Outcome {
        response: json(StatusCode::OK, info_body(sessions, &active)),
        session_kind: Some(active.record.kind),
    })
}

/// `POST /session/guest`: the live session if there is one, else a new guest.
async fn guest(
    cookie: &CookieLookup,
    sessions: &Sessions,
    config: &Config,
    now: u64,
) -> Result<Outcome, Error> {
    match sessions.lookup(cookie, now).await {
        Ok(Some(active)) => {
            let response = json(StatusCode::OK, info_body(sessions, &active));
            return Ok(Outcome { response, session_kind: Some(active.record.kind) });
        }
        // A dead cookie is exactly why a browser asks for a new guest session.
        Ok(None) | Err(Error::SessionExpired) => {}
        Err(other) => return Err(other),
    }
    let (id, active) = sessions.mint_guest(now).await?;
    let mut response = json(StatusCode::OK, info_body(sessions, &active));
    set_cookie(&mut response, config, &id, sessions.cookie_max_age(&active.record, now));
    Ok(Outcome { response, session_kind: Some(SessionKind::Guest) })
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// `POST /session/login`: password grant, guest cart carried over, id rotated.
async fn login(
    request: Request<Incoming>,
    cookie: &CookieLookup,
    sessions: &Sessions,
    config: &Config,
    now: u64,
) -> Result<Outcome, Error> {
    let form = read_login_form(request).await?;
    let password = Password::new(form.password);
    let current = match sessions.lookup(cookie, now).await {
        Ok(current) => current,
        // Logging in is the way out of a dead session: go on without one.
        Err(Error::SessionExpired) => None,
        Err(other) => return Err(other),
    };
    let (id, record) = sessions.login(current, &form.username, &password, now).await?;
    let active = Active { key: id.key(), record, last_seen: now };
    let mut response = json(StatusCode::OK, info_body(sessions, &active));
    set_cookie(&mut response, config, &id, sessions.cookie_max_age(&active.record, now));
    Ok(Outcome { response, session_kind: Some(SessionKind::Shopper) })
}

async fn read_login_form(request: Request<Incoming>) -> Result<LoginForm, Error> {
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let body = Limited::new(request.into_body(), MAX_LOGIN_BODY_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Error::PayloadTooLarge
            } else {
                Error::BadRequest("The request body could not be read.")
            }
        })?
        .to_bytes();
    let form = if is_form { parse_form(&body) } else { serde_json::from_slice::<LoginForm>(&body).ok() };
    let form = form
        .ok_or(Error::BadRequest("Send {\"username\": \"...\", \"password\": \"...\"} as JSON or a form."))?;
    if form.username.trim().is_empty() || form.password.is_empty() {
        return Err(Error::BadRequest("username and password must not be empty."));
    }
    Ok(form)
}

fn parse_form(body: &[u8]) -> Option<LoginForm> {
    let mut username = None;
    let mut password = None;
    for (name, value) in form_urlencoded::parse(body) {
        match name.as_ref() {
            "username" => username = Some(value.into_owned()),
            "password" => password = Some(value.into_owned()),
            _ => {}
        }
    }
    Some(LoginForm { username: username?, password: password? })
}

/// `POST /session/logout`: 204 and a clearing cookie, also when there is no session.
async fn logout(cookie: &CookieLookup, sessions: &Sessions, config: &Config) -> Result<Outcome, Error> {
    sessions.logout(cookie).await?;
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    response.headers_mut().insert(SET_COOKIE, cookie::clear_session_cookie(&config.session));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(Outcome { response, session_kind: None })
}

fn info_body(sessions: &Sessions, active: &Active) -> serde_json::Value {
    let times = sessions.times(active);
    serde_json::json!({
        "authenticated": active.record.kind == SessionKind::Shopper,
        "kind": active.record.kind.as_str(),
        "access_expires_at": rfc3339(times.access_expires_at),
        "session_expires_at": rfc3339(times.session_expires_at),
    })
}

/// Unix seconds as an RFC 3339 UTC timestamp.
pub fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Adds the session cookie to a response.
pub fn set_cookie(response: &mut Response<Body>, config: &Config, id: &SessionId, max_age: Duration) {
    response.headers_mut().append(SET_COOKIE, cookie::set_session_cookie(&config.session, id, max_age));
}
