//! The hosted login of the implicit flow: `GET /oauth20/authorize` renders a login form,
//! `POST /oauth20/authorize/login` checks the typed (plain) password and redirects to
//! `redirect_uri#access_token=..&token_type=bearer&expires_in=..[&state=..]`.
//!
//! Implicit gives no refresh token (reference §7). Every value placed in the HTML is
//! escaped, and the redirect is built only from a validated absolute http(s) URL.

use http::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tracing::warn;

use crate::oauth::{record_issued, FORM_LIMIT_BYTES};
use crate::respond::{
    empty, escape_html, html, json, method_not_allowed, param, parse_form, query_params, read_body,
    set_static, BodyError, MockResponse, Params,
};
use crate::state::{Issue, PasswordEncoding};
use crate::stats::Counter;
use crate::App;

const LOGIN_ACTION: &str = "/oauth20/authorize/login";

/// The validated authorize parameters, carried through the form as hidden fields.
struct AuthorizeRequest {
    client_id: String,
    redirect_uri: String,
    response_type: String,
    state: Option<String>,
    limited_token: Option<String>,
}

/// `GET /oauth20/authorize`: validate, then show the login form.
pub fn page(app: &App, request: &Request<Incoming>) -> MockResponse {
    if request.method() != Method::GET {
        return method_not_allowed("GET");
    }
    app.stats.bump(Counter::Authorize);
    let params = query_params(request.uri());
    let authorize = match validate(app, &params) {
        Ok(authorize) => authorize,
        Err(error) => return error.into_response(),
    };
    if authorize.response_type != "token" {
        return unsupported_response_type(&authorize);
    }
    html(StatusCode::OK, login_form(&authorize, None))
}

/// `POST /oauth20/authorize/login`: check credentials, carry the guest cart over, redirect.
pub async fn login(app: &App, request: Request<Incoming>) -> MockResponse {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    app.stats.bump(Counter::AuthorizeLogin);
    let (parts, body) = request.into_parts();
    let mut params = match read_body(body, FORM_LIMIT_BYTES).await {
        Ok(bytes) => parse_form(&bytes),
        Err(BodyError::TooLarge) => return invalid_request(StatusCode::PAYLOAD_TOO_LARGE, "Form too large"),
        Err(BodyError::Broken) => return invalid_request(StatusCode::BAD_REQUEST, "Unreadable form"),
    };
    params.extend(query_params(&parts.uri));
    let authorize = match validate(app, &params) {
        Ok(authorize) => authorize,
        Err(error) => return error.into_response(),
    };
    if authorize.response_type != "token" {
        return unsupported_response_type(&authorize);
    }
    sign_in(app, &authorize, &params).await
}

async fn sign_in(app: &App, authorize: &AuthorizeRequest, params: &Params) -> MockResponse {
    let username = param(params, "username").unwrap_or_default();
    let password = param(params, "password").unwrap_or_default();
    let outcome = {
        let mut store = app.store();
        store
            .verify_password(username, password, PasswordEncoding::Plain)
            .then(|| store.login(username, authorize.limited_token.as_deref(), Issue::AccessOnly))
    };
    let pair = match outcome {
        None => {
            let page = login_form(authorize, Some("Invalid username or password"));
            return html(StatusCode::OK, page);
        }
        Some(Err(_)) => {
            let description = "The limited token is invalid, expired, or revoked";
            return redirect(
                authorize,
                &[("error", "dr_limited_token_invalid"), ("error_description", description)],
            );
        }
        Some(Ok(pair)) => pair,
    };
    if let Err(error) = record_issued(&app.settings, &pair).await {
        warn!("cannot append to the issued-tokens file: {error}");
        let body = json!({"error": "server_error", "error_description": "The server could not record the issued token"});
        return json(StatusCode::INTERNAL_SERVER_ERROR, &body);
    }
    let expires_in = pair.expires_in.to_string();
    let fragment = [
        ("access_token", pair.access_token.as_str()),
        ("token_type", "bearer"),
        ("expires_in", expires_in.as_str()),
    ];
    redirect(authorize, &fragment)
}

/// Why the authorize parameters cannot even be redirected back to the client.
enum AuthorizeError {
    InvalidClient,
    MissingRedirectUri,
    BadRedirectUri,
    UnregisteredRedirectUri,
}

impl AuthorizeError {
    /// These errors cannot be redirected (the target is unknown or untrusted), so JSON.
    fn into_response(self) -> MockResponse {
        match self {
            AuthorizeError::InvalidClient => {
                let body = json!({
                    "error": "invalid_client",
                    "error_description": "Request Contains Invalid Client ID",
                    "error_uri": "http://developers.digitalriver.com/oauth20/overview",
                });
                json(StatusCode::BAD_REQUEST, &body)
            }
            AuthorizeError::MissingRedirectUri => {
                invalid_request(StatusCode::BAD_REQUEST, "The required parameter is missing or empty")
            }
            AuthorizeError::BadRedirectUri => invalid_request(
                StatusCode::BAD_REQUEST,
                "redirect_uri must be an absolute http or https URL without a fragment",
            ),
            AuthorizeError::UnregisteredRedirectUri => invalid_request(
                StatusCode::BAD_REQUEST,
                "redirect_uri does not match a redirect URI configured for the client",
            ),
        }
    }
}

/// Client first (DR authenticates the app before anything else), then the redirect URI:
/// absolute, and (unless `--any-redirect-uri`) exactly one registered for the client
/// (reference §7, F1: the string as registered, no added query).
fn validate(app: &App, params: &Params) -> Result<AuthorizeRequest, AuthorizeError> {
    let client_id = param(params, "client_id").unwrap_or_default();
    if client_id != app.settings.client_id {
        return Err(AuthorizeError::InvalidClient);
    }
    let redirect_uri = match param(params, "redirect_uri") {
        None | Some("") => return Err(AuthorizeError::MissingRedirectUri),
        Some(uri) if !is_absolute_http_url(uri) => return Err(AuthorizeError::BadRedirectUri),
        Some(uri) if !is_registered(app.settings.redirect_uris.as_deref(), uri) => {
            return Err(AuthorizeError::UnregisteredRedirectUri)
        }
        Some(uri) => uri.to_owned(),
    };
    let optional = |name| param(params, name).filter(|value| !value.is_empty()).map(str::to_owned);
    Ok(AuthorizeRequest {
        client_id: client_id.to_owned(),
        redirect_uri,
        response_type: param(params, "response_type").unwrap_or_default().to_owned(),
        state: optional("state"),
        limited_token: optional("dr_limited_token"),
    })
}

/// Exact string comparison, as the API's "must match a redirect URI configured for the
/// client"; `None` (the check is off) accepts any.
fn is_registered(registered: Option<&[String]>, uri: &str) -> bool {
    registered.is_none_or(|list| list.iter().any(|entry| entry == uri))
}

/// RFC 6749 §3.1.2: absolute, no fragment. Whitespace and control characters would make
/// an invalid `Location` header, so they are refused here too.
fn is_absolute_http_url(text: &str) -> bool {
    if text.contains('#') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Ok(uri) = text.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = uri
        .scheme_str()
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"));
    scheme_ok && uri.authority().is_some_and(|authority| !authority.host().is_empty())
}

fn invalid_request(status: StatusCode, description: &str) -> MockResponse {
    json(status, &json!({"error": "invalid_request", "error_description": description}))
}

fn unsupported_response_type(authorize: &AuthorizeRequest) -> MockResponse {
    let description = "response_type must be token";
    redirect(authorize, &[("error", "unsupported_response_type"), ("error_description", description)])
}

/// 302 to `redirect_uri#<fragment>`, echoing `state` as RFC 6749 does.
fn redirect(authorize: &AuthorizeRequest, pairs: &[(&str, &str)]) -> MockResponse {
    let mut fragment = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        fragment.append_pair(name, value);
    }
    if let Some(state) = &authorize.state {
        fragment.append_pair("state", state);
    }
    let location = format!("{}#{}", authorize.redirect_uri, fragment.finish());
    let Ok(location) = HeaderValue::from_str(&location) else {
        return invalid_request(StatusCode::BAD_REQUEST, "redirect_uri is not usable in a redirect");
    };
    let mut response = empty(StatusCode::FOUND);
    response.headers_mut().insert(LOCATION, location);
    set_static(&mut response, CACHE_CONTROL, "no-store");
    response
}

/// The login page; the guest token rides in a hidden field, as on DR's hosted page.
fn login_form(authorize: &AuthorizeRequest, error: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |text| {
        format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape_html(text))
    });
    let mut hidden = String::new();
    let fields = [
        ("client_id", Some(authorize.client_id.as_str())),
        ("redirect_uri", Some(authorize.redirect_uri.as_str())),
        ("response_type", Some(authorize.response_type.as_str())),
        ("state", authorize.state.as_deref()),
        ("dr_limited_token", authorize.limited_token.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                escape_html(value)
            ));
        }
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Sign in - commerce-mock</title></head>\n<body>\n<h1>Sign in</h1>\n{error}\
         <form method=\"post\" action=\"{LOGIN_ACTION}\">\n\
         <label>Email <input name=\"username\" type=\"text\" autocomplete=\"username\"></label>\n\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\n\
         {hidden}<button type=\"submit\">Sign in</button>\n</form>\n</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_must_be_absolute_http_without_fragment() {
        assert!(is_absolute_http_url("https://shop.example.com/cb?x=1"));
        assert!(is_absolute_http_url("http://127.0.0.1:8080/session/callback"));
        assert!(!is_absolute_http_url("/relative"));
        assert!(!is_absolute_http_url("javascript:alert(1)"));
        assert!(!is_absolute_http_url("https://a.example/#frag"));
        assert!(!is_absolute_http_url("https://a.example/\r\nX: y"));
        assert!(!is_absolute_http_url("ftp://a.example/"));
    }

    #[test]
    fn registered_redirect_uris_match_exactly() {
        let list = vec!["http://shop.test/session/callback".to_owned()];
        assert!(is_registered(Some(&list), "http://shop.test/session/callback"));
        assert!(!is_registered(Some(&list), "http://shop.test/session/callback?state=x"));
        assert!(!is_registered(Some(&list), "http://shop.test/session/callback/"));
        assert!(!is_registered(Some(&list), "HTTP://shop.test/session/callback"));
        assert!(is_registered(None, "http://anything.example/"));
    }

    #[test]
    fn form_escapes_every_value() {
        let authorize = AuthorizeRequest {
            client_id: "k".to_owned(),
            redirect_uri: "https://a.example/\"><script>".to_owned(),
            response_type: "token".to_owned(),
            state: Some("<s>".to_owned()),
            limited_token: None,
        };
        let page = login_form(&authorize, Some("<bad>"));
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<s>"));
        assert!(page.contains("&lt;bad&gt;"));
        assert!(!page.contains("dr_limited_token"));
    }
}
