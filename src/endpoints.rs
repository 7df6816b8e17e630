//! The storefront-facing `/session*` endpoints: JSON (or form) in, JSON out, plus the
//! hosted login's redirects.
//!
//! They read and change sessions through [`Sessions`], set or clear the cookie through
//! [`crate::cookie`], and drive [`HostedLogin`]; they never build upstream API requests
//! themselves.

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::body::Body;
use crate::config::Fixed;
use crate::cookie::{self, CookieLookup};
use crate::error::Error;
use crate::hosted_login::{self, HostedLogin, CALLBACK_SCRIPT};
use crate::oauth::{OAuthError, TokenSet};
use crate::router::Endpoint;
use crate::secret::Password;
use crate::session::{now_secs, Active, Sessions};
use crate::session_id::SessionId;
use crate::store::SessionKind;

/// Largest login or callback body read.
const MAX_FORM_BODY_BYTES: usize = 16 * 1024;
/// How long a login or callback body may take to arrive (it is at most 16 KiB).
const FORM_BODY_TIMEOUT: Duration = Duration::from_secs(15);

/// What an endpoint produced, with the session kind for the request log.
pub struct Outcome {
    pub response: Response<Body>,
    pub session_kind: Option<SessionKind>,
}

/// What every endpoint may use.
pub struct Context<'a> {
    pub cookie: CookieLookup,
    pub client: IpAddr,
    pub sessions: &'a Sessions,
    pub config: &'a Fixed,
    pub hosted_login: Option<&'a HostedLogin>,
}

/// Runs one session endpoint.
pub async fn handle(
    endpoint: Endpoint,
    request: Request<Incoming>,
    context: Context<'_>,
) -> Result<Outcome, Error> {
    let allowed = match endpoint {
        Endpoint::Session | Endpoint::Authorize => request.method() == Method::GET,
        Endpoint::Callback => request.method() == Method::GET || request.method() == Method::POST,
        Endpoint::Guest | Endpoint::Login | Endpoint::Logout => request.method() == Method::POST,
    };
    if !allowed {
        return Err(Error::MethodNotAllowed);
    }
    let now = now_secs();
    match endpoint {
        Endpoint::Session => session_info(&context, now).await,
        Endpoint::Guest => guest(&context, now).await,
        Endpoint::Login => login(request, &context, now).await,
        Endpoint::Logout => logout(&context).await,
        Endpoint::Authorize => authorize(&request, &context, now).await,
        Endpoint::Callback => callback(request, &context, now).await,
    }
}

/// The `Allow` header for a 405 on `endpoint`.
pub fn allowed_methods(endpoint: Endpoint) -> HeaderValue {
    HeaderValue::from_static(match endpoint {
        Endpoint::Session | Endpoint::Authorize => "GET",
        Endpoint::Callback => "GET, POST",
        Endpoint::Guest | Endpoint::Login | Endpoint::Logout => "POST",
    })
}

/// `GET /session`: reads, never creates.
async fn session_info(context: &Context<'_>, now: u64) -> Result<Outcome, Error> {
    let active = context.sessions.lookup(&context.cookie, now).await?.ok_or(Error::NoSession)?;
    let response = json(StatusCode::OK, info_body(context.sessions, &active));
    Ok(Outcome { response, session_kind: Some(active.record.kind) })
}

/// The cookie's live session, or `None` when there is none or it is dead.
async fn live_session(context: &Context<'_>, now: u64) -> Result<Option<Active>, Error> {
    match context.sessions.lookup(&context.cookie, now).await {
        Ok(active) => Ok(active),
        // A dead cookie is exactly why a browser asks for a new session.
        Err(Error::SessionExpired) => Ok(None),
        Err(other) => Err(other),
    }
}

/// `POST /session/guest`: the live session if there is one, else a new guest.
async fn guest(context: &Context<'_>, now: u64) -> Result<Outcome, Error> {
    if let Some(active) = live_session(context, now).await? {
        let response = json(StatusCode::OK, info_body(context.sessions, &active));
        return Ok(Outcome { response, session_kind: Some(active.record.kind) });
    }
    let (id, active) = context.sessions.mint_guest(now, context.client).await?;
    let mut response = json(StatusCode::OK, info_body(context.sessions, &active));
    set_cookie(&mut response, context.config, &id, context.sessions.cookie_max_age(&active.record, now));
    Ok(Outcome { response, session_kind: Some(SessionKind::Guest) })
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// `POST /session/login`: password grant, guest cart carried over, id rotated.
async fn login(request: Request<Incoming>, context: &Context<'_>, now: u64) -> Result<Outcome, Error> {
    let form = read_login_form(request).await?;
    let password = Password::new(form.password);
    let current = live_session(context, now).await?;
    let (id, record) =
        context.sessions.login(current, &form.username, &password, now, context.client).await?;
    let active = Active { key: id.key(), record, last_seen: now };
    let mut response = json(StatusCode::OK, info_body(context.sessions, &active));
    set_cookie(&mut response, context.config, &id, context.sessions.cookie_max_age(&active.record, now));
    Ok(Outcome { response, session_kind: Some(SessionKind::Shopper) })
}

async fn read_form_body(request: Request<Incoming>) -> Result<(bool, Bytes), Error> {
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let read = Limited::new(request.into_body(), MAX_FORM_BODY_BYTES).collect();
    let body = tokio::time::timeout(FORM_BODY_TIMEOUT, read)
        .await
        .map_err(|_| Error::RequestTimeout)?
        .map_err(|error| {
            if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Error::PayloadTooLarge
            } else {
                Error::BadRequest("The request body could not be read.")
            }
        })?
        .to_bytes();
    Ok((is_form, body))
}

async fn read_login_form(request: Request<Incoming>) -> Result<LoginForm, Error> {
    let (is_form, body) = read_form_body(request).await?;
    let form = if is_form { parse_form(&body) } else { serde_json::from_slice::<LoginForm>(&body).ok() };
    let form = form
        .ok_or(Error::BadRequest("Send {\"username\": \"...\", \"password\": \"...\"} as JSON or a form."))?;
    if form.username.trim().is_empty() || form.password.is_empty() {
        return Err(Error::BadRequest("username and password must not be empty."));
    }
    Ok(form)
}

fn form_field(body: &[u8], field: &str) -> Option<String> {
    form_urlencoded::parse(body).find(|(name, _)| name == field).map(|(_, value)| value.into_owned())
}

fn parse_form(body: &[u8]) -> Option<LoginForm> {
    Some(LoginForm { username: form_field(body, "username")?, password: form_field(body, "password")? })
}

/// `POST /session/logout`: 204 and a clearing cookie, also when there is no session.
async fn logout(context: &Context<'_>) -> Result<Outcome, Error> {
    context.sessions.logout(&context.cookie).await?;
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    response.headers_mut().insert(SET_COOKIE, cookie::clear_session_cookie(&context.config.session));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(Outcome { response, session_kind: None })
}

/// `GET /session/authorize?return_to=/path`: 302 to the API's hosted login, with a
/// single-use state bound to the session (a guest is started when there is none).
async fn authorize(request: &Request<Incoming>, context: &Context<'_>, now: u64) -> Result<Outcome, Error> {
    let hosted = context.hosted_login.ok_or(Error::NotFound)?;
    let query = request.uri().query().unwrap_or("").as_bytes();
    let return_to = form_urlencoded::parse(query).find(|(name, _)| name == "return_to").map(|(_, v)| v);
    let return_to = hosted_login::checked_return_to(return_to.as_deref().unwrap_or("/"))?.to_string();
    let (active, new_id) = match live_session(context, now).await? {
        // Each pending login holds memory for ten minutes: count it like a new session.
        Some(active) => {
            context.sessions.check_rate(context.client)?;
            (active, None)
        }
        None => {
            let (id, active) = context.sessions.mint_guest(now, context.client).await?;
            (active, Some(id))
        }
    };
    let location = hosted.begin(&active, &return_to, now)?;
    let mut response = redirect(StatusCode::FOUND, &location)?;
    if let Some(id) = new_id {
        set_cookie(&mut response, context.config, &id, context.sessions.cookie_max_age(&active.record, now));
    }
    Ok(Outcome { response, session_kind: Some(active.record.kind) })
}

/// `GET /session/callback`: parameters in the query are used at once; otherwise the page
/// that posts the fragment back. `POST /session/callback`: the posted fragment.
async fn callback(request: Request<Incoming>, context: &Context<'_>, now: u64) -> Result<Outcome, Error> {
    let hosted = context.hosted_login.ok_or(Error::NotFound)?;
    let query = request.uri().query().unwrap_or("").to_string();
    let query_state = form_field(query.as_bytes(), "state");
    let carries_result =
        form_urlencoded::parse(query.as_bytes()).any(|(n, _)| n == "access_token" || n == "error");
    let (parameters, status) = if request.method() == Method::POST {
        let (_, body) = read_form_body(request).await?;
        (form_field(&body, "fragment").unwrap_or_default(), StatusCode::SEE_OTHER)
    } else if carries_result {
        (query.clone(), StatusCode::FOUND)
    } else {
        return Ok(Outcome { response: callback_page(hosted), session_kind: None });
    };
    let params = hosted.parse(&parameters, query_state.as_deref())?;
    let current = live_session(context, now).await?;
    let pending = hosted.complete(&params.state, current.as_ref().map(|active| &active.key), now)?;
    let (access_token, expires_in) = match hosted_login::token_of(params) {
        Ok(token) => token,
        Err(code) => {
            // The shopper cancelled or failed at the API: back to the shop, which can read
            // the reason from the fragment. The guest session goes on, but its token
            // travelled in a URL: refresh it, so the exposed one stops working (best effort).
            if let (Some(_), Some(active)) = (&pending.carried_guest, &current) {
                if let Err(error) = context.sessions.refresh(active.key, active.record.generation).await {
                    tracing::warn!(
                        code = error.code(),
                        "could not replace the guest token after a failed login"
                    );
                }
            }
            let location = format!("{}#login_error={code}", pending.return_to);
            return Ok(Outcome { response: redirect(status, &location)?, session_kind: None });
        }
    };
    let expires_in = confirm_shopper_token(context, &access_token, expires_in).await?;
    let tokens = TokenSet { access_token, refresh_token: None, expires_in };
    let (id, record) = context.sessions.become_shopper(current, tokens, now).await?;
    if let Some(guest_token) = pending.carried_guest {
        // The guest token travelled in a URL: revoke it now that the login is complete.
        if let Err(error) = context.sessions.tokens().revoke(&guest_token).await {
            tracing::warn!(%error, "revoking the carried guest token failed");
        }
    }
    let mut response = redirect(status, &pending.return_to)?;
    set_cookie(&mut response, context.config, &id, context.sessions.cookie_max_age(&record, now));
    Ok(Outcome { response, session_kind: Some(SessionKind::Shopper) })
}

/// Asks the API whether a token from the callback is a live, authenticated shopper token
/// (a browser could post anything), and how long it lives.
async fn confirm_shopper_token(
    context: &Context<'_>,
    token: &crate::secret::AccessToken,
    expires_in: Option<u64>,
) -> Result<u64, Error> {
    let details = context.sessions.tokens().session_details(token).await.map_err(|error| match error {
        OAuthError::Rejected { .. } => Error::InvalidCredentials,
        other => Error::TokenServiceUnavailable(other.to_string()),
    })?;
    let authenticated = match &details["authenticated"] {
        serde_json::Value::Bool(value) => *value,
        serde_json::Value::String(text) => text == "true",
        _ => false,
    };
    if !authenticated {
        return Err(Error::InvalidCredentials);
    }
    let left = details["expiresIn"].as_u64().or(expires_in).unwrap_or(3600);
    Ok(left)
}

fn callback_page(hosted: &HostedLogin) -> Response<Body> {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"same-origin\">\
         <title>Signing in…</title></head><body><p>Signing in…</p>\
         <form method=\"post\" id=\"f\"><input type=\"hidden\" name=\"fragment\" id=\"v\"></form>\
         <script>{CALLBACK_SCRIPT}</script></body></html>"
    );
    let mut response = Response::new(Body::full(page));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not "no-referrer": under it browsers send `Origin: null` on the page's own POST,
    // which the Origin check rightly refuses. "same-origin" keeps the callback URL from
    // any other site and lets the POST carry the shop's real origin.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if let Ok(csp) = HeaderValue::from_str(&hosted.callback_csp) {
        headers.insert(CONTENT_SECURITY_POLICY, csp);
    }
    response
}

fn redirect(status: StatusCode, location: &str) -> Result<Response<Body>, Error> {
    let mut location =
        HeaderValue::from_str(location).map_err(|_| Error::BadRequest("Cannot redirect there."))?;
    // The authorize URL may carry the guest token: keep it out of HPACK tables.
    location.set_sensitive(true);
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(response)
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
pub fn set_cookie(response: &mut Response<Body>, config: &Fixed, id: &SessionId, max_age: Duration) {
    response.headers_mut().append(SET_COOKIE, cookie::set_session_cookie(&config.session, id, max_age));
}
