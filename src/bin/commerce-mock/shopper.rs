//! The `/v1/*` shopper resources: `shoppers/me`, the static product list, the active
//! cart and adding line items, plus routing to the debug endpoints in `debug.rs`.
//!
//! Every request passes the same gate in order: count, injected latency, injected
//! status, injected 401, live access token (bearer header or `?token=`, counted by
//! which). Every answer carries `x-dr-requestid`; every success also carries a
//! `JSESSIONID` cookie, so tests can check that the proxy drops upstream `Set-Cookie`.
//! Answers are XML unless the request asks for JSON (`xml.rs`), as the real API's are;
//! the mock's own `/v1/debug/*` endpoints always answer JSON.

use http::header::{
    HeaderName, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    HOST, SET_COOKIE, WWW_AUTHENTICATE,
};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::carts::{formatted, product, Cart, CartError, CATALOG, CURRENCY};
use crate::debug;
use crate::faults::{delay, Faults, Resource401};
use crate::respond::{
    api_path, empty, json, param, query_params, random_hex, request_token, resource_error, set_dynamic,
    set_static, status_or_500, MockResponse, Params, TokenSource,
};
use crate::state::{AccessLookup, SessionView};
use crate::stats::Counter;
use crate::xml::{into_xml, Format};
use crate::App;

/// Relation names used in error bodies.
const SHOPPERS: &str = "ShoppersResource";
const CARTS: &str = "CartsResource";

/// The authenticated caller of a resource. Not `Debug`: it holds the access token.
pub struct Caller {
    /// The live access token the request used.
    pub token: String,
    /// Its session.
    pub session: SessionView,
    /// Where the token came from.
    pub credential: Credential,
}

/// Where a resource call's access token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: bearer`.
    Bearer,
    /// `?token=`.
    QueryToken,
}

impl Credential {
    /// The name `/v1/debug/echo` reports.
    pub fn name(self) -> &'static str {
        match self {
            Credential::Bearer => "bearer",
            Credential::QueryToken => "query_token",
        }
    }
}

/// What a resource produced; JSON successes are decorated (leak fault) before sending.
pub enum Outcome {
    /// 200 with this JSON body.
    Json(Value),
    /// A success with a ready-made response (the streamed bytes body).
    Raw(MockResponse),
    /// An error response, sent as is.
    Failed(MockResponse),
}

/// Handles any `/v1/*` request.
pub async fn handle(app: &App, request: Request<Incoming>) -> MockResponse {
    app.stats.bump(Counter::ResourceCalls);
    let query = query_params(request.uri());
    let path = request.uri().path();
    let debug = path.starts_with("/v1/debug/");
    let format = if debug { Format::Json } else { Format::of(path, request.headers(), &query) };
    let faults = app.faults.snapshot();
    delay(faults.resource_latency_ms).await;
    let mut response = gate_and_route(app, request, &query, &faults).await;
    if format == Format::Xml {
        response = into_xml(response).await;
    }
    set_dynamic(&mut response, HeaderName::from_static("x-dr-requestid"), &random_hex(16));
    if faults.resource_cors {
        set_static(&mut response, ACCESS_CONTROL_ALLOW_ORIGIN, "*");
        set_static(&mut response, ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        set_static(&mut response, ACCESS_CONTROL_EXPOSE_HEADERS, "x-dr-requestid");
    }
    response
}

async fn gate_and_route(
    app: &App,
    request: Request<Incoming>,
    query: &Params,
    faults: &Faults,
) -> MockResponse {
    if let Some(status) = faults.resource_status {
        return resource_error(status_or_500(status), SHOPPERS, "injected_fault", "injected fault");
    }
    if let Some(kind) = app.faults.take_resource_401(faults) {
        return injected_401(app, kind);
    }
    let caller = match authenticate(app, &request, query) {
        Ok(caller) => caller,
        Err(description) => {
            app.stats.bump(Counter::Resource401);
            return resource_error(StatusCode::UNAUTHORIZED, SHOPPERS, "invalid_token", description);
        }
    };
    let outcome = route(app, request, query, &caller).await;
    finish(outcome, &caller, faults)
}

/// The `resource_401` fault: a 401 the API sends for reasons other than a dead token
/// (reference §9.3, F2), or one whose only sign is the `WWW-Authenticate` header.
fn injected_401(app: &App, kind: Resource401) -> MockResponse {
    let status = StatusCode::UNAUTHORIZED;
    let (counter, mut response) = match kind {
        Resource401::InvalidClient => (
            Counter::Resource401InvalidClient,
            resource_error(status, SHOPPERS, "invalid_client", "Request Contains Invalid Client ID"),
        ),
        Resource401::SiteMismatch => {
            let description = "Request Site ID does not match Token Site ID";
            let mut response = resource_error(status, SHOPPERS, "invalid_request", description);
            set_static(&mut response, WWW_AUTHENTICATE, "Bearer error=\"invalid_request\"");
            (Counter::Resource401SiteMismatch, response)
        }
        Resource401::BearerInvalidToken => {
            let mut response = empty(status);
            set_static(&mut response, WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"");
            (Counter::Resource401BearerInvalidToken, response)
        }
    };
    app.stats.bump(counter);
    set_static(&mut response, http::header::CACHE_CONTROL, "no-store");
    response
}

/// The description says why, as DR's 401 bodies do. Counts which credential was used
/// and whether a `token` query parameter came at all (a proxy should drop a browser's).
fn authenticate(app: &App, request: &Request<Incoming>, query: &Params) -> Result<Caller, &'static str> {
    if param(query, "token").is_some() {
        app.stats.bump(Counter::QueryTokenSeen);
    }
    let source = request_token(request.headers(), query);
    match source {
        TokenSource::Bearer(_) => app.stats.bump(Counter::CredentialBearer),
        TokenSource::Query(_) => app.stats.bump(Counter::CredentialQuery),
        TokenSource::Missing => {}
    }
    let credential = match source {
        TokenSource::Query(_) => Credential::QueryToken,
        _ => Credential::Bearer,
    };
    let token = source.token().ok_or("Missing token")?;
    let lookup = app.store().lookup_access(token);
    match lookup {
        AccessLookup::Live(session) => Ok(Caller { token: token.to_owned(), session, credential }),
        AccessLookup::Expired => Err("Session expired"),
        AccessLookup::Unknown => Err("Invalid token for specified shopper"),
    }
}

async fn route(app: &App, request: Request<Incoming>, query: &Params, caller: &Caller) -> Outcome {
    let path = api_path(request.uri().path()).to_owned();
    let method = request.method().clone();
    if path == "/v1/debug/echo" || path.starts_with("/v1/debug/echo/") {
        return debug::echo(request, caller).await;
    }
    match (path.as_str(), method) {
        ("/v1/shoppers/me", Method::GET) => Outcome::Json(shopper_me(&request, &caller.session)),
        ("/v1/shoppers/me/products", Method::GET) => Outcome::Json(products()),
        ("/v1/shoppers/me/carts/active", Method::GET) => active_cart(app, &caller.session),
        ("/v1/shoppers/me/carts/active", Method::POST)
        | ("/v1/shoppers/me/carts/active/line-items", Method::POST) => {
            add_to_cart(app, query, &caller.session)
        }
        ("/v1/debug/bytes", Method::GET) => debug::bytes(query),
        (known, _) if allowed_methods(known).is_some() => {
            let allow = allowed_methods(known).unwrap_or_default();
            let mut response = resource_error(
                StatusCode::METHOD_NOT_ALLOWED,
                SHOPPERS,
                "method-not-allowed",
                "Method not allowed",
            );
            set_static(&mut response, http::header::ALLOW, allow);
            Outcome::Failed(response)
        }
        _ => Outcome::Failed(resource_error(
            StatusCode::NOT_FOUND,
            SHOPPERS,
            "resource-not-found",
            "Resource not found",
        )),
    }
}

fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/v1/shoppers/me" | "/v1/shoppers/me/products" | "/v1/debug/bytes" => Some("GET"),
        "/v1/shoppers/me/carts/active" => Some("GET, POST"),
        "/v1/shoppers/me/carts/active/line-items" => Some("POST"),
        _ => None,
    }
}

/// Adds the success headers and, under the `echo_token` fault, leaks the token.
fn finish(outcome: Outcome, caller: &Caller, faults: &Faults) -> MockResponse {
    let mut response = match outcome {
        Outcome::Failed(response) => return response,
        Outcome::Raw(response) => response,
        Outcome::Json(mut body) => {
            if let (true, Some(object)) = (faults.echo_token, body.as_object_mut()) {
                object.insert("leaked_token".to_owned(), caller.token.as_str().into());
            }
            json(StatusCode::OK, &body)
        }
    };
    let cookie = format!("JSESSIONID={}; Path=/; HttpOnly", random_hex(16).to_uppercase());
    set_dynamic(&mut response, SET_COOKIE, &cookie);
    if faults.echo_token {
        set_dynamic(&mut response, HeaderName::from_static("x-leaked-token"), &caller.token);
    }
    response
}

fn shopper_me(request: &Request<Incoming>, session: &SessionView) -> Value {
    // HTTP/2 carries the host in the URI authority, HTTP/1.1 in the Host header.
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            let header = request.headers().get(HOST)?;
            header.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    // A client-hosted shopper has no DR-held user name (the mock keeps no shopper record).
    let (id, username) = match (&session.user, &session.external_reference_id) {
        (None, _) => ("Anonymous".to_owned(), None),
        (Some(_), Some(_)) => (session.user_id.to_string(), None),
        (Some(name), None) => (session.user_id.to_string(), Some(name.clone())),
    };
    let (first_name, last_name) = username.as_deref().and_then(demo_shopper_name).unzip();
    json!({"shopper": {
        "uri": format!("http://{host}/v1/shoppers/me"),
        "id": id,
        "username": username,
        "externalReferenceId": session.external_reference_id,
        "firstName": first_name,
        "lastName": last_name,
        "emailAddress": username,
        "locale": "en_US",
        "currency": "USD",
    }})
}

/// The first and last name of the default shoppers (the mock keeps no shopper profile, and
/// a storefront needs a name to greet someone with); any other user's are `null`.
fn demo_shopper_name(username: &str) -> Option<(&'static str, &'static str)> {
    match username {
        "jdoe@example.com" => Some(("Jane", "Doe")),
        "demo@example.com" => Some(("Demo", "Shopper")),
        _ => None,
    }
}

fn products() -> Value {
    let list: Vec<Value> = CATALOG
        .iter()
        .map(|product| {
            json!({
                "id": product.id,
                "displayName": product.display_name,
                "price": formatted(product.cents),
                "pricing": {"listPrice": money(product.cents), "formattedListPrice": formatted(product.cents)},
            })
        })
        .collect();
    json!({"products": {"product": list}})
}

/// An amount as the API writes one: `{"currency": "USD", "value": 49.99}`.
fn money(cents: u64) -> Value {
    // Exact for every amount below 2^53 cents; the shortest form prints as written.
    json!({"currency": CURRENCY, "value": cents as f64 / 100.0})
}

fn active_cart(app: &App, session: &SessionView) -> Outcome {
    let cart = app.store().active_cart(session.session_id);
    match cart {
        Some(cart) => Outcome::Json(cart_body(&cart)),
        None => Outcome::Failed(session_gone()),
    }
}

/// `productId` (required, from the catalog) and `quantity` (positive, default 1).
fn add_to_cart(app: &App, query: &Params, session: &SessionView) -> Outcome {
    let bad_request = |code, description| {
        Outcome::Failed(resource_error(StatusCode::BAD_REQUEST, CARTS, code, description))
    };
    let Some(product_text) = param(query, "productId").filter(|text| !text.is_empty()) else {
        return bad_request("missing-product-id", "The productId parameter is required");
    };
    let Ok(product_id) = product_text.parse::<u64>() else {
        return bad_request("invalid-product-id", "Invalid product id");
    };
    let quantity = match param(query, "quantity").map(str::parse::<u64>) {
        None => 1,
        Some(Ok(quantity)) if quantity > 0 => quantity,
        Some(_) => return bad_request("invalid-quantity", "quantity must be a positive integer"),
    };
    let added = app.store().add_to_cart(session.session_id, product_id, quantity);
    match added {
        Ok(cart) => Outcome::Json(cart_body(&cart)),
        Err(CartError::UnknownProduct) => bad_request("invalid-product-id", "Invalid product id"),
        Err(CartError::NoSuchCart) => Outcome::Failed(session_gone()),
    }
}

/// The session was revoked between the token check and the cart access.
fn session_gone() -> MockResponse {
    let description = "Invalid token for specified shopper";
    resource_error(StatusCode::UNAUTHORIZED, SHOPPERS, "invalid_token", description)
}

/// A cart in Digital River's shape, prices included: each line's `pricing` (unit list
/// price, and the line's price with its quantity) and the cart's `pricing` (subtotal, tax
/// and order total, each also `formatted…`). The mock has no tax, discounts or shipping,
/// so the order total is the subtotal.
fn cart_body(cart: &Cart) -> Value {
    let lines: Vec<Value> = cart
        .line_items
        .iter()
        .map(|item| {
            let (name, unit) = product(item.product_id).map_or(("", 0), |p| (p.display_name, p.cents));
            let line = item.price_cents();
            json!({
                "id": item.id,
                "quantity": item.quantity,
                "product": {"id": item.product_id, "displayName": name},
                "pricing": {
                    "listPrice": money(unit),
                    "listPriceWithQuantity": money(line),
                    "salePriceWithQuantity": money(line),
                    "formattedListPrice": formatted(unit),
                    "formattedListPriceWithQuantity": formatted(line),
                    "formattedSalePriceWithQuantity": formatted(line),
                },
            })
        })
        .collect();
    let subtotal = cart.subtotal_cents();
    json!({"cart": {
        "id": cart.id.to_string(),
        "lineItems": {"lineItem": lines},
        "totalItemsInCart": cart.total_items().to_string(),
        "pricing": {
            "subtotal": money(subtotal),
            "tax": money(0),
            "orderTotal": money(subtotal),
            "formattedSubtotal": formatted(subtotal),
            "formattedTax": formatted(0),
            "formattedOrderTotal": formatted(subtotal),
        },
    }})
}
