//! The storefront-facing `/session*` endpoints: JSON (or form) in, JSON out, plus the
//! hosted login's redirects and the storefront server's `POST /session/external`.
//!
//! Each one parses its input, runs one whole operation of the session core
//! ([`Sessions`]) and renders the answer; the cookie it sets goes through the request
//! context. They never reach the store or the token service, nor build upstream API
//! requests.

use std::time::{Duration, UNIX_EPOCH};

use crate::body::Inbound;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::body::Body;
use crate::context::RequestContext;
use crate::cookie::{self, CookieLookup};
use crate::error::Error;
use crate::hosted_login::{self, HostedLogin, CALLBACK_SCRIPT};
use crate::router::Endpoint;
use crate::secret::{constant_time_eq, Password, StorefrontSecret};
use crate::session::{Active, HostedEnd, Sessions};
use crate::session_id::SessionId;
use crate::store::SessionKind;

/// Largest login or callback body read.
const MAX_FORM_BODY_BYTES: usize = 16 * 1024;
/// Largest back-channel logout body read (a logout token is a JWT of a few KiB).
const MAX_LOGOUT_BODY_BYTES: usize = 64 * 1024;
/// Why `/session/login` and `/session/guest` refuse with `flavor = "oauth2"`.
const CODE_FLOW_ONLY: &str =
    "This shop signs shoppers in at its OpenID provider: send the browser to GET /session/authorize.";
/// How long a login or callback body may take to arrive (it is at most 16 KiB).
const FORM_BODY_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one session endpoint. A session it starts or moves is recorded in
/// `ctx.set_cookie`, so the cookie goes out whatever happens next.
pub async fn handle(
    endpoint: Endpoint,
    request: Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    let allowed = match endpoint {
        Endpoint::Session | Endpoint::Authorize => request.method() == Method::GET,
        Endpoint::Callback => request.method() == Method::GET || request.method() == Method::POST,
        Endpoint::Guest
        | Endpoint::Login
        | Endpoint::Logout
        | Endpoint::External
        | Endpoint::BackchannelLogout => request.method() == Method::POST,
    };
    if !allowed {
        return Err(Error::MethodNotAllowed { allow: allowed_methods(endpoint) });
    }
    match endpoint {
        Endpoint::Session => session_info(ctx, sessions).await,
        Endpoint::Guest => guest(ctx, sessions).await,
        Endpoint::Login => login(request, ctx, sessions).await,
        Endpoint::Logout => logout(ctx, sessions).await,
        Endpoint::Authorize => authorize(&request, ctx, sessions).await,
        Endpoint::Callback => callback(request, ctx, sessions).await,
        Endpoint::External => external(request, ctx, sessions).await,
        Endpoint::BackchannelLogout => backchannel_logout(request, ctx, sessions).await,
    }
}

/// The methods `endpoint` takes (the `Allow` header of its 405).
fn allowed_methods(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Session | Endpoint::Authorize => "GET",
        Endpoint::Callback => "GET, POST",
        Endpoint::Guest
        | Endpoint::Login
        | Endpoint::Logout
        | Endpoint::External
        | Endpoint::BackchannelLogout => "POST",
    }
}

/// `GET /session`: reads, never creates.
async fn session_info(ctx: &mut RequestContext<'_>, sessions: &Sessions) -> Result<Response<Body>, Error> {
    let active = sessions.lookup(&ctx.cookie, ctx.now).await?.ok_or(Error::NoSession)?;
    ctx.session_kind = Some(active.record.kind);
    Ok(json(StatusCode::OK, info_body(ctx, sessions, &active)))
}

/// `POST /session/guest`: the live session if there is one, else a new guest.
async fn guest(ctx: &mut RequestContext<'_>, sessions: &Sessions) -> Result<Response<Body>, Error> {
    if sessions.is_code_flow() {
        return Err(Error::UnsupportedFlow(CODE_FLOW_ONLY));
    }
    let (active, new_id) = sessions.guest(&ctx.cookie, ctx.now, ctx.client_ip()).await?;
    remember_cookie(ctx, sessions, &active, new_id.as_ref());
    Ok(json(StatusCode::OK, info_body(ctx, sessions, &active)))
}

/// Records the session kind and, for a session under a new id, its cookie.
fn remember_cookie(
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
    active: &Active,
    id: Option<&SessionId>,
) {
    ctx.session_kind = Some(active.record.kind);
    if let Some(id) = id {
        let max_age = sessions.cookie_max_age(&active.record, ctx.now);
        ctx.set_cookie = Some(cookie::set_session_cookie(&ctx.fixed.session, id, max_age));
    }
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// `POST /session/login`: password grant, guest cart carried over, id rotated.
async fn login(
    request: Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    if sessions.is_code_flow() {
        return Err(Error::UnsupportedFlow(CODE_FLOW_ONLY));
    }
    let form = read_login_form(request).await?;
    let password = Password::new(form.password);
    let (id, active) =
        sessions.login(&ctx.cookie, &form.username, &password, ctx.now, ctx.client_ip()).await?;
    remember_cookie(ctx, sessions, &active, Some(&id));
    Ok(json(StatusCode::OK, info_body(ctx, sessions, &active)))
}

async fn read_form_body(request: Request<Inbound>) -> Result<(bool, Bytes), Error> {
    read_body(request, MAX_FORM_BODY_BYTES).await
}

async fn read_body(request: Request<Inbound>, limit: usize) -> Result<(bool, Bytes), Error> {
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let read = Limited::new(request.into_body(), limit).collect();
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

async fn read_login_form(request: Request<Inbound>) -> Result<LoginForm, Error> {
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

#[derive(Deserialize)]
struct ExternalSignIn {
    /// The browser's session cookie value, to carry its guest cart over.
    session: Option<String>,
    external_reference_id: String,
}

/// Longest `external_reference_id` accepted.
const MAX_EXTERNAL_REFERENCE_ID_BYTES: usize = 256;

/// `POST /session/external`: the storefront's server, having signed the shopper in with
/// its own identity system, names the shopper (`external_reference_id`) and the browser's
/// session; the session becomes a shopper session under a new id, whose `Set-Cookie` the
/// storefront passes on (it is in the header and in the body's `set_cookie`). Browsers
/// were refused before this runs (`guard::refuse_browsers`).
async fn external(
    request: Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    let config = ctx.fixed.client_hosted.as_ref().ok_or(Error::NotFound)?;
    check_storefront_secret(request.headers(), &config.secret)?;
    let (_, body) = read_form_body(request).await?;
    let input = serde_json::from_slice::<ExternalSignIn>(&body).map_err(|_| {
        Error::BadRequest("Send {\"session\": \"...\", \"external_reference_id\": \"...\"} as JSON.")
    })?;
    let id = input.external_reference_id.as_str();
    if id.trim().is_empty() || id.len() > MAX_EXTERNAL_REFERENCE_ID_BYTES || id.chars().any(char::is_control)
    {
        return Err(Error::BadRequest("external_reference_id must be 1 to 256 bytes of printable text."));
    }
    // A session that is absent, malformed or unknown: a fresh shopper session.
    let session = input
        .session
        .as_deref()
        .and_then(SessionId::parse)
        .map_or(CookieLookup::Absent, CookieLookup::Present);
    let (new_id, active) = sessions.login_external(&session, id, ctx.now, ctx.client_ip()).await?;
    remember_cookie(ctx, sessions, &active, Some(&new_id));
    let mut body = info_body(ctx, sessions, &active);
    let set_cookie = ctx.set_cookie.as_ref().and_then(|value| value.to_str().ok()).unwrap_or_default();
    body["set_cookie"] = serde_json::Value::from(set_cookie);
    Ok(json(StatusCode::OK, body))
}

/// `Authorization: Bearer <secret>`, compared as SHA-256 digests in constant time (so
/// neither the content nor the length of the secret shows in the timing).
fn check_storefront_secret(headers: &http::HeaderMap, secret: &StorefrontSecret) -> Result<(), Error> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, presented)| presented.trim())
        .ok_or(Error::Unauthorized)?;
    let digest = |text: &str| Sha256::digest(text.as_bytes());
    if constant_time_eq(&digest(presented), &digest(secret.expose())) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

/// `POST /session/logout`: 204 and a clearing cookie, also when there is no session.
async fn logout(ctx: &mut RequestContext<'_>, sessions: &Sessions) -> Result<Response<Body>, Error> {
    sessions.logout(&ctx.cookie, ctx.now).await?;
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    ctx.set_cookie = Some(cookie::clear_session_cookie(&ctx.fixed.session));
    Ok(response)
}

/// `GET /session/authorize?return_to=/path`: 302 to the API's hosted login, with a
/// single-use state bound to the session (a guest is started when there is none).
async fn authorize(
    request: &Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    let query = request.uri().query().unwrap_or("").as_bytes();
    let return_to = form_urlencoded::parse(query).find(|(name, _)| name == "return_to").map(|(_, v)| v);
    // Refused before a guest token is minted for nothing.
    let return_to = hosted_login::checked_return_to(return_to.as_deref().unwrap_or("/"))?;
    if sessions.is_code_flow() {
        let start = sessions.begin_code_login(&ctx.cookie, return_to, ctx.now, ctx.client_ip()).await?;
        if let Some(id) = &start.binding {
            // Binds the pending login to this browser; it never becomes a session.
            let max_age = Duration::from_secs(hosted_login::STATE_LIFETIME_SECS);
            ctx.set_cookie = Some(cookie::set_session_cookie(&ctx.fixed.session, id, max_age));
        }
        return redirect(StatusCode::FOUND, &start.url);
    }
    let (active, new_id) = sessions.session_for_hosted_login(&ctx.cookie, ctx.now, ctx.client_ip()).await?;
    remember_cookie(ctx, sessions, &active, new_id.as_ref());
    let location = sessions.begin_hosted_login(&active, return_to, ctx.now).await?;
    redirect(StatusCode::FOUND, &location)
}

/// `GET /session/callback`: parameters in the query are used at once; otherwise the page
/// that posts the fragment back. `POST /session/callback`: the posted fragment.
async fn callback(
    request: Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    if sessions.is_code_flow() {
        return code_callback(&request, ctx, sessions).await;
    }
    let hosted = sessions.hosted_login().ok_or(Error::NotFound)?;
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
        return Ok(callback_page(hosted));
    };
    let params = hosted.parse(&parameters, query_state.as_deref())?;
    match sessions.complete_hosted_login(&ctx.cookie, params, ctx.now).await? {
        HostedEnd::SignedIn { id, active, return_to } => {
            remember_cookie(ctx, sessions, &active, Some(&id));
            redirect(status, &return_to)
        }
        // The shopper cancelled or failed at the API: back to the shop, which can read
        // the reason from the fragment.
        HostedEnd::Failed { return_to, code } => redirect(status, &format!("{return_to}#login_error={code}")),
    }
}

/// `GET /session/callback?code=…&state=…&iss=…` (or `?error=…`) in the code flow: the
/// parameters come in the query; nothing is posted.
async fn code_callback(
    request: &Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    if request.method() != Method::GET {
        return Err(Error::MethodNotAllowed { allow: "GET" });
    }
    let query = request.uri().query().unwrap_or("");
    let callback = crate::callback::parse_code_callback(query).map_err(|_| Error::InvalidState)?;
    match sessions.complete_code_login(&ctx.cookie, callback, ctx.now).await? {
        HostedEnd::SignedIn { id, active, return_to } => {
            remember_cookie(ctx, sessions, &active, Some(&id));
            redirect(StatusCode::FOUND, &return_to)
        }
        HostedEnd::Failed { return_to, code } => {
            redirect(StatusCode::FOUND, &format!("{return_to}#login_error={code}"))
        }
    }
}

/// `POST /session/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0): the
/// provider's `logout_token` ends the sessions of its `sid` or `sub` on every replica.
/// 200 `no-store` when valid (also when no session matched); an invalid token is 400
/// `{"error":"invalid_request"}` as §2.8 says; unavailable keys or store are 503. Browsers
/// were refused before this runs.
async fn backchannel_logout(
    request: Request<Inbound>,
    ctx: &mut RequestContext<'_>,
    sessions: &Sessions,
) -> Result<Response<Body>, Error> {
    use crate::metrics::BackchannelOutcome;
    let (_, body) = read_body(request, MAX_LOGOUT_BODY_BYTES).await?;
    let Some(token) = form_field(&body, "logout_token").filter(|token| !token.is_empty()) else {
        sessions.metrics().record_backchannel_logout(BackchannelOutcome::Invalid);
        return Ok(logout_token_refused());
    };
    let subject = match sessions.validate_logout_token(&token).await {
        Ok(subject) => subject,
        Err(crate::tokens::oauth2::OAuth2Error::Token(error)) => {
            sessions.metrics().record_backchannel_logout(BackchannelOutcome::Unavailable);
            return Err(Error::TokenServiceUnavailable(error.to_string()));
        }
        Err(error) => {
            tracing::info!(%error, "back-channel logout token refused");
            sessions.metrics().record_backchannel_logout(BackchannelOutcome::Invalid);
            return Ok(logout_token_refused());
        }
    };
    let ended = sessions.backchannel_logout(&subject, ctx.now).await.inspect_err(|_| {
        sessions.metrics().record_backchannel_logout(BackchannelOutcome::Unavailable);
    })?;
    let outcome = if ended > 0 { BackchannelOutcome::Ended } else { BackchannelOutcome::NoSession };
    sessions.metrics().record_backchannel_logout(outcome);
    tracing::info!(ended, "back-channel logout");
    let mut response = Response::new(Body::Empty);
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Back-Channel Logout 1.0 §2.8: 400 with an OAuth-style error body (the provider reads
/// this, not a browser, so it is the spec's shape, not the contract's).
fn logout_token_refused() -> Response<Body> {
    let mut response = json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "invalid_request"}));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
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

/// The session info every session endpoint answers: kind, times, the refresh count and
/// the cookie's attributes (never its value, never a token).
fn info_body(ctx: &RequestContext<'_>, sessions: &Sessions, active: &Active) -> serde_json::Value {
    let times = sessions.times(active);
    let cookie = cookie::attributes(&ctx.fixed.session);
    let mut body = serde_json::json!({
        "authenticated": active.record.kind == SessionKind::Shopper,
        "kind": active.record.kind.as_str(),
        "access_expires_at": rfc3339(times.access_expires_at),
        "session_expires_at": rfc3339(times.session_expires_at),
        "refreshes": times.refreshes,
        // A page cannot read an HttpOnly cookie: this is what tokengate sets, for it to show.
        "cookie": {
            "name": cookie.name,
            "path": cookie.path,
            "http_only": cookie.http_only,
            "same_site": cookie.same_site,
            "secure": cookie.secure,
            "expires_at": rfc3339(active.record.absolute_expires_at),
        },
    });
    // The ID token's non-secret claims (`flavor = "oauth2"`); never a token, never `sid`.
    if let Some(identity) = &active.record.identity {
        body["user"] = serde_json::json!({
            "sub": identity.sub,
            "name": identity.name,
            "email": identity.email,
        });
    }
    body
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
