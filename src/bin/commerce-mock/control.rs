//! The test-control API under `/__mock/` (JSON in and out, no auth; loopback only by
//! default): health, counters, fault settings, revoking or expiring tokens behind the
//! proxy's back, and listing issued tokens and carts.
//!
//!   GET  /__mock/health        {"ok":true}
//!   GET  /__mock/stats         counters (see stats.rs)      POST /__mock/stats/reset → 204
//!   GET|PUT|DELETE /__mock/faults                            current / replace / clear
//!                              (a replace or clear without `token_hold` releases held
//!                              token calls)
//!   POST /__mock/revoke        {"all":true} | {"access_token":".."} → {"revoked":n}
//!   POST /__mock/expire        {"all":true} | {"access_token":".."} → {"expired":n}
//!   GET  /__mock/tokens        {"access_tokens":[..],"refresh_tokens":[..]}
//!   GET  /__mock/carts         {"carts":[{"cart_id","user","items"}]}
//!
//! `revoked` counts token pairs that still had a live token; `items` is a cart's total
//! quantity (DR's `totalItemsInCart`).

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::Faults;
use crate::respond::{empty, json, method_not_allowed, not_found, read_body, BodyError, MockResponse};
use crate::App;

/// Control bodies are small JSON documents.
const CONTROL_LIMIT_BYTES: usize = 1024 * 1024;

/// Which tokens a revoke or expire call targets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    access_token: Option<String>,
}

/// Handles any `/__mock/*` request.
pub async fn handle(app: &App, request: Request<Incoming>) -> MockResponse {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (path.as_str(), method) {
        ("/__mock/health", Method::GET) => json(StatusCode::OK, &json!({"ok": true})),
        ("/__mock/stats", Method::GET) => stats(app),
        ("/__mock/stats/reset", Method::POST) => {
            app.stats.reset();
            empty(StatusCode::NO_CONTENT)
        }
        ("/__mock/faults", Method::GET) => faults_body(&app.faults.snapshot()),
        ("/__mock/faults", Method::PUT) => put_faults(app, request.into_body()).await,
        ("/__mock/faults", Method::DELETE) => {
            app.faults.replace(Faults::default());
            faults_body(&Faults::default())
        }
        ("/__mock/revoke", Method::POST) => revoke(app, request.into_body()).await,
        ("/__mock/expire", Method::POST) => expire(app, request.into_body()).await,
        ("/__mock/tokens", Method::GET) => tokens(app),
        ("/__mock/carts", Method::GET) => carts(app),
        (known, _) => match allowed_methods(known) {
            Some(allow) => method_not_allowed(allow),
            None => not_found(),
        },
    }
}

fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/__mock/health" | "/__mock/stats" | "/__mock/tokens" | "/__mock/carts" => Some("GET"),
        "/__mock/stats/reset" | "/__mock/revoke" | "/__mock/expire" => Some("POST"),
        "/__mock/faults" => Some("GET, PUT, DELETE"),
        _ => None,
    }
}

fn stats(app: &App) -> MockResponse {
    let live_sessions = app.store().live_sessions();
    json(StatusCode::OK, &app.stats.to_json(live_sessions))
}

fn faults_body(faults: &Faults) -> MockResponse {
    match serde_json::to_value(faults) {
        Ok(body) => json(StatusCode::OK, &body),
        Err(error) => bad_request(&format!("cannot serialise faults: {error}")),
    }
}

async fn put_faults(app: &App, body: Incoming) -> MockResponse {
    let faults: Faults = match read_json(body).await {
        Ok(faults) => faults,
        Err(message) => return bad_request(&message),
    };
    if let Err(message) = faults.validate() {
        return bad_request(&message);
    }
    app.faults.replace(faults.clone());
    faults_body(&faults)
}

async fn revoke(app: &App, body: Incoming) -> MockResponse {
    let target: Target = match read_json(body).await {
        Ok(target) => target,
        Err(message) => return bad_request(&message),
    };
    let revoked = match (&target.all, &target.access_token) {
        (true, _) => app.store().revoke_all(),
        (false, Some(token)) => usize::from(app.store().revoke_pair_of(token)),
        (false, None) => return bad_request("give {\"all\":true} or {\"access_token\":\"...\"}"),
    };
    json(StatusCode::OK, &json!({"revoked": revoked}))
}

async fn expire(app: &App, body: Incoming) -> MockResponse {
    let target: Target = match read_json(body).await {
        Ok(target) => target,
        Err(message) => return bad_request(&message),
    };
    let expired = match (&target.all, &target.access_token) {
        (true, _) => app.store().expire_all_access(),
        (false, Some(token)) => usize::from(app.store().expire_access(token)),
        (false, None) => return bad_request("give {\"all\":true} or {\"access_token\":\"...\"}"),
    };
    json(StatusCode::OK, &json!({"expired": expired}))
}

fn tokens(app: &App) -> MockResponse {
    let (access_tokens, refresh_tokens) = app.store().issued_tokens();
    let body = json!({"access_tokens": access_tokens, "refresh_tokens": refresh_tokens});
    json(StatusCode::OK, &body)
}

fn carts(app: &App) -> MockResponse {
    let summary = app.store().cart_summary();
    let rows: Vec<Value> = summary
        .into_iter()
        .map(|(cart_id, user, items)| json!({"cart_id": cart_id, "user": user, "items": items}))
        .collect();
    json(StatusCode::OK, &json!({"carts": rows}))
}

/// Parses a JSON body; an empty body means `{}` so `PUT /__mock/faults` with no body
/// resets to defaults like `DELETE` does.
async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, String> {
    let bytes = match read_body(body, CONTROL_LIMIT_BYTES).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return Err("body too large".to_owned()),
        Err(BodyError::Broken) => return Err("body could not be read".to_owned()),
    };
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(text).map_err(|error| format!("invalid JSON: {error}"))
}

fn bad_request(message: &str) -> MockResponse {
    json(StatusCode::BAD_REQUEST, &json!({"error": "bad_request", "message": message}))
}
