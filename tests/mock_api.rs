//! Wire-format tests of the real `commerce-mock` binary over a real socket.
//!
//! Each test starts its own mock (`--listen 127.0.0.1:0`, port read from the one stdout
//! line), talks to it with a small hyper-util client, and kills it by PID on drop (its
//! stderr log is printed when the test fails). Nothing here sleeps to synchronise: waits
//! poll with a deadline. Uses no `tokengate::` item: the mock shares no types with the
//! proxy on purpose.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const MOCK_BINARY: &str = env!("CARGO_BIN_EXE_commerce-mock");
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const WIDGET: u64 = 5104501700;

/// A running mock, killed by PID when dropped.
struct Mock {
    /// `None` once `terminate` has taken it to wait for the exit.
    child: Option<Child>,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    directory: tempfile::TempDir,
}

/// A complete response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(error) => panic!("not JSON ({error}): {}", String::from_utf8_lossy(&self.body)),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

impl Mock {
    fn start(extra_args: &[&str]) -> Mock {
        let directory = tempfile::tempdir().expect("temp dir");
        let stderr = std::fs::File::create(directory.path().join("mock.log")).expect("log file");
        let mut command = Command::new(MOCK_BINARY);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for variable in ["MOCK_LISTEN", "MOCK_CLIENT_ID", "MOCK_CLIENT_SECRET", "MOCK_ACCESS_TTL"] {
            command.env_remove(variable);
        }
        for variable in ["MOCK_REFRESH_TTL", "MOCK_USERS", "MOCK_ISSUED_TOKENS_FILE", "MOCK_URL"] {
            command.env_remove(variable);
        }
        for variable in ["MOCK_REDIRECT_URIS", "MOCK_ANY_REDIRECT_URI"] {
            command.env_remove(variable);
        }
        let mut child = command.spawn().expect("start commerce-mock");
        let base = match read_ready_line(&mut child) {
            Ok(base) => base,
            Err(message) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(directory.path().join("mock.log"));
                panic!("{message}; mock log: {}", log.unwrap_or_default());
            }
        };
        let client = Client::builder(TokioExecutor::new()).build_http();
        Mock { child: Some(child), base, client, directory }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.directory.path().join(file)
    }

    async fn try_send(&self, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(REQUEST_DEADLINE, exchange).await.map_err(|_| "request timed out".to_owned())?
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let request = build_request(&self.base, method, path, headers, body);
        match self.try_send(request).await {
            Ok(reply) => reply,
            Err(error) => panic!("{path}: {error}"),
        }
    }

    /// A GET with a bearer token, asking for JSON (resources answer XML otherwise).
    async fn get(&self, path: &str, token: &str) -> Reply {
        let bearer = format!("bearer {token}");
        self.call(Method::GET, path, &[("authorization", &bearer), ("accept", JSON)], "").await
    }

    /// A POST with a bearer token, asking for JSON.
    async fn post(&self, path: &str, token: &str) -> Reply {
        let bearer = format!("bearer {token}");
        self.call(Method::POST, path, &[("authorization", &bearer), ("accept", JSON)], "").await
    }

    /// `POST /oauth20/token` with the default client's Basic credentials.
    async fn token(&self, form: &str) -> Reply {
        let authorization = basic_auth();
        let headers = [("authorization", authorization.as_str()), ("content-type", FORM)];
        self.call(Method::POST, "/oauth20/token", &headers, form).await
    }

    /// A guest pair: (access token, refresh token).
    async fn guest(&self) -> (String, String) {
        let reply = self.token("grant_type=password").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        let body = reply.json();
        (text(&body["access_token"]), text(&body["refresh_token"]))
    }

    async fn control(&self, method: Method, path: &str, body: Value) -> Reply {
        let headers = [("content-type", "application/json")];
        self.call(method, path, &headers, &body.to_string()).await
    }

    async fn stats(&self) -> Value {
        self.call(Method::GET, "/__mock/stats", &[], "").await.json()
    }

    /// Sends SIGTERM by PID and waits, with a deadline, for the exit status. A waiter
    /// thread blocks on the child so nothing sleeps or spins; past the deadline the
    /// child is killed by the same PID.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("mock still running");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(child.wait());
        });
        match receiver.recv_timeout(EXIT_DEADLINE) {
            Ok(status) => status.expect("wait for the mock"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("mock did not exit within {EXIT_DEADLINE:?} of SIGTERM");
            }
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID; never a name-based kill.
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.path("mock.log")).unwrap_or_default();
            eprintln!("---- commerce-mock log ----\n{log}");
        }
    }
}

/// Reads `commerce-mock listening on http://127.0.0.1:PORT` within the deadline.
fn read_ready_line(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send(result);
    });
    let line = receiver
        .recv_timeout(STARTUP_DEADLINE)
        .map_err(|_| "no ready line before the deadline".to_owned())?
        .map_err(|error| format!("reading stdout: {error}"))?;
    let base = line
        .trim_end()
        .strip_prefix("commerce-mock listening on ")
        .ok_or_else(|| format!("unexpected ready line {line:?}"))?;
    assert!(base.starts_with("http://127.0.0.1:"), "ready line {line:?}");
    Ok(base.to_owned())
}

fn build_request(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(format!("{base}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from(body.to_owned()))).expect("valid request")
}

fn basic_auth() -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode("demo-api-key:demo-secret");
    format!("Basic {encoded}")
}

fn text(value: &Value) -> String {
    let Some(text) = value.as_str() else { panic!("not a string: {value}") };
    text.to_owned()
}

fn encoded(password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(password)
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

fn login_form(limited_token: Option<&str>) -> String {
    let password = encoded("p4ssw0rd!");
    let mut pairs =
        vec![("grant_type", "password"), ("username", "jdoe@example.com"), ("password", password.as_str())];
    if let Some(token) = limited_token {
        pairs.push(("dr_limited_token", token));
    }
    form(&pairs)
}

/// The token endpoint's answer to an unknown, revoked or expired refresh token.
static DEAD_REFRESH_TOKEN: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({"error":"invalid_token","error_description":"The refresh token is invalid or expired."}),
);

fn first_error(body: &Value) -> &Value {
    &body["errors"]["error"][0]
}

#[tokio::test]
async fn anonymous_token_has_the_dr_wire_format() {
    let mock = Mock::start(&[]);
    let reply = mock.token("grant_type=password").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    let (access, refresh) = (text(&body["access_token"]), text(&body["refresh_token"]));
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86397);
    assert_eq!((access.len(), refresh.len()), (160, 176));
    assert_eq!(access[..64], refresh[..64]);
    let lowercase_hex = |t: &str| t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    assert!(lowercase_hex(&access) && lowercase_hex(&refresh));

    let info = mock.get("/oauth20/access-tokens", &access).await;
    assert_eq!(info.status, StatusCode::OK);
    let info_text = String::from_utf8_lossy(&info.body).into_owned();
    assert!(!info_text.contains(&access) && !info_text.contains(&refresh));
    let info = info.json();
    assert_eq!(info["authenticated"], "false");
    assert_eq!(info["cartId"], Value::Null);
    assert!(info["sessionId"].is_u64() && info["userId"].is_u64());
    assert!(info["expiresIn"].as_u64().is_some_and(|left| left <= 86397 && left > 86000));
    assert_eq!(text(&info["sessionTag"]).len(), 32);
    assert!(text(&info["createdOn"]).ends_with('Z'));

    let me = mock.get("/v1/shoppers/me", &access).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["shopper"]["id"], "Anonymous");
    assert!(me.header("set-cookie").is_some_and(|c| c.starts_with("JSESSIONID=")));
    assert!(me.header("x-dr-requestid").is_some());
}

#[tokio::test]
async fn client_authentication_errors_use_the_flat_shape() {
    let mock = Mock::start(&[]);
    let wrong = format!("Basic {}", encoded("demo-api-key:wrong"));
    let headers = [("authorization", wrong.as_str()), ("content-type", FORM)];
    let reply = mock.call(Method::POST, "/oauth20/token", &headers, "grant_type=password").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.json(),
        json!({"error":"invalid_client","error_description":"Request Contains Invalid Client ID","error_uri":"http://developers.digitalriver.com/oauth20/overview"})
    );
    let public = [("content-type", FORM)];
    let body = "grant_type=password&client_id=demo-api-key";
    let reply = mock.call(Method::POST, "/oauth20/token", &public, body).await;
    assert_eq!(reply.status, StatusCode::OK, "public app with client_id is accepted");
    assert_eq!(mock.token("").await.json()["error"], "invalid_request");
    assert_eq!(mock.token("grant_type=magic").await.json()["error"], "unsupported_grant_type");
    let get = mock.call(Method::GET, "/oauth20/token", &[], "").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn login_with_limited_token_carries_the_guest_cart() {
    let mock = Mock::start(&[]);
    let (guest, _) = mock.guest().await;
    let path = format!("/v1/shoppers/me/carts/active/line-items?productId={WIDGET}&quantity=2");
    let added = mock.post(&path, &guest).await;
    assert_eq!(added.status, StatusCode::OK);
    let cart = added.json();
    assert_eq!(cart["cart"]["totalItemsInCart"], "2");
    let cart_id = text(&cart["cart"]["id"]);
    let guest_info = mock.get("/oauth20/access-tokens", &guest).await.json();
    assert_eq!(guest_info["cartId"].to_string(), cart_id);

    let plain =
        form(&[("grant_type", "password"), ("username", "jdoe@example.com"), ("password", "p4ssw0rd!")]);
    let rejected = mock.token(&plain).await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        rejected.json(),
        json!({"error":"invalid_grant","error_description":"Invalid username or password"})
    );
    let bad_limited = mock.token(&login_form(Some("feedface"))).await;
    assert_eq!(bad_limited.json()["error"], "dr_limited_token_invalid");

    let login = mock.token(&login_form(Some(&guest))).await;
    assert_eq!(login.status, StatusCode::OK);
    let shopper = text(&login.json()["access_token"]);
    let info = mock.get("/oauth20/access-tokens", &shopper).await.json();
    assert_eq!(info["authenticated"], "true");
    assert_eq!(info["cartId"].to_string(), cart_id);
    let carried = mock.get("/v1/shoppers/me/carts/active", &shopper).await.json();
    assert_eq!(carried["cart"]["lineItems"]["lineItem"][0]["quantity"], 2);
    assert_eq!(mock.get("/v1/shoppers/me", &shopper).await.json()["shopper"]["username"], "jdoe@example.com");
    let carts = mock.call(Method::GET, "/__mock/carts", &[], "").await.json();
    let expected_id: u64 = cart_id.parse().expect("numeric cart id");
    let owned = json!({"carts": [{"cart_id": expected_id, "user": "jdoe@example.com", "items": 2}]});
    assert_eq!(carts, owned);
    let dead_guest = mock.get("/v1/shoppers/me", &guest).await;
    assert_eq!(dead_guest.status, StatusCode::UNAUTHORIZED, "the guest session transitioned");
}

#[tokio::test]
async fn carts_are_priced_and_the_default_shoppers_have_names() {
    let mock = Mock::start(&[]);
    let (guest, _) = mock.guest().await;
    let products = mock.get("/v1/shoppers/me/products", &guest).await.json();
    let widget = &products["products"]["product"][0];
    assert_eq!((widget["id"].as_u64(), widget["price"].as_str()), (Some(WIDGET), Some("$49.99")));
    assert_eq!(widget["pricing"]["listPrice"], json!({"currency": "USD", "value": 49.99}));
    let empty = mock.get("/v1/shoppers/me/carts/active", &guest).await.json();
    assert_eq!(empty["cart"]["pricing"]["formattedOrderTotal"], "$0.00");
    mock.post(&format!("/v1/shoppers/me/carts/active?productId={WIDGET}&quantity=2"), &guest).await;
    let cart = mock.post("/v1/shoppers/me/carts/active?productId=5104502000", &guest).await.json();
    let line = &cart["cart"]["lineItems"]["lineItem"][0]["pricing"];
    assert_eq!(line["formattedListPrice"], "$49.99");
    assert_eq!(line["salePriceWithQuantity"], json!({"currency": "USD", "value": 99.98}));
    assert_eq!(line["formattedSalePriceWithQuantity"], "$99.98");
    let pricing = &cart["cart"]["pricing"];
    assert_eq!(pricing["orderTotal"], json!({"currency": "USD", "value": 109.93}));
    assert_eq!(
        (&pricing["formattedSubtotal"], &pricing["formattedTax"], &pricing["formattedOrderTotal"]),
        (&json!("$109.93"), &json!("$0.00"), &json!("$109.93"))
    );

    let anonymous = mock.get("/v1/shoppers/me", &guest).await.json();
    assert_eq!(
        (&anonymous["shopper"]["id"], &anonymous["shopper"]["firstName"]),
        (&json!("Anonymous"), &Value::Null)
    );
    let login = mock.token(&login_form(None)).await.json();
    let shopper = mock.get("/v1/shoppers/me", &text(&login["access_token"])).await.json();
    assert_eq!(
        (&shopper["shopper"]["firstName"], &shopper["shopper"]["lastName"]),
        (&json!("Jane"), &json!("Doe"))
    );
}

#[tokio::test]
async fn refresh_rotates_and_kills_the_old_pair() {
    let mock = Mock::start(&[]);
    let (access, refresh) = mock.guest().await;
    let rotated = mock.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])).await;
    assert_eq!(rotated.status, StatusCode::OK);
    let body = rotated.json();
    let (new_access, new_refresh) = (text(&body["access_token"]), text(&body["refresh_token"]));
    assert!(new_access != access && new_refresh != refresh);
    assert_eq!(mock.get("/v1/shoppers/me", &access).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.get("/v1/shoppers/me", &new_access).await.status, StatusCode::OK);
    let reused = mock.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])).await;
    assert_eq!(
        reused.status,
        StatusCode::UNAUTHORIZED,
        "a dead refresh token is a 401, as the API answers it"
    );
    assert_eq!(reused.json(), DEAD_REFRESH_TOKEN.clone());
}

#[tokio::test]
async fn access_token_info_on_both_spellings_and_delete_revokes_the_pair() {
    let mock = Mock::start(&[]);
    let (access, refresh) = mock.guest().await;
    let plural = mock.get("/oauth20/access-tokens", &access).await.json();
    let singular = mock.get("/oauth20/access-token", &access).await.json();
    let by_query = mock.call(Method::GET, &format!("/oauth20/access-tokens?token={access}"), &[], "").await;
    assert_eq!(plural["sessionId"], singular["sessionId"]);
    assert_eq!(by_query.json()["sessionId"], plural["sessionId"]);

    let bearer = format!("Bearer {access}");
    let deleted = mock.call(Method::DELETE, "/oauth20/access-token", &[("authorization", &bearer)], "").await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.json()["sessionId"], plural["sessionId"]);
    let after = mock.get("/oauth20/access-tokens", &access).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    let error = after.json();
    assert_eq!(first_error(&error)["code"], "invalid_token");
    assert!(text(&first_error(&error)["relation"]).ends_with("/AccessTokensResource"));
    let refreshed = mock.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])).await;
    assert_eq!(refreshed.status, StatusCode::UNAUTHORIZED, "DELETE also revoked the refresh token");
    assert_eq!(refreshed.json(), DEAD_REFRESH_TOKEN.clone());
}

#[tokio::test]
async fn resource_401_bodies_say_why() {
    let mock = Mock::start(&[]);
    let missing = mock.call(Method::GET, "/v1/shoppers/me", &[("accept", JSON)], "").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(first_error(&missing.json())["description"], "Missing token");
    let invalid = mock.get("/v1/shoppers/me", "0123abcd").await.json();
    assert_eq!(
        invalid,
        json!({"errors":{"error":[{"relation":"https://developers.digitalriver.com/v1/shoppers/ShoppersResource","code":"invalid_token","description":"Invalid token for specified shopper"}]}})
    );
    let (access, refresh) = mock.guest().await;
    let expired = mock.control(Method::POST, "/__mock/expire", json!({"all": true})).await.json();
    assert_eq!(expired, json!({"expired": 1}));
    let lapsed = mock.get("/v1/shoppers/me.json", &access).await;
    assert_eq!(first_error(&lapsed.json())["description"], "Session expired");
    let refreshed = mock.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])).await;
    assert_eq!(refreshed.status, StatusCode::OK, "expire leaves refresh tokens valid");
    let unknown = mock.get("/v1/nothing-here", &text(&refreshed.json()["access_token"])).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(first_error(&unknown.json())["code"], "resource-not-found");
}

#[tokio::test]
async fn token_faults_round_trip() {
    let mock = Mock::start(&[]);
    let faults = json!({"token_status": 503, "error_shape": "nested"});
    let put = mock.control(Method::PUT, "/__mock/faults", faults).await;
    assert_eq!(put.status, StatusCode::OK);
    let current = mock.call(Method::GET, "/__mock/faults", &[], "").await.json();
    assert_eq!(
        (current["token_status"].clone(), current["rotate_refresh"].clone()),
        (json!(503), json!(true))
    );
    let failed = mock.token("grant_type=password").await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first_error(&failed.json())["code"], "temporarily_unavailable");

    let shaped = json!({"wrap_token": true, "expires_in_string": true});
    mock.control(Method::PUT, "/__mock/faults", shaped).await;
    let wrapped = mock.token("grant_type=password").await.json();
    assert_eq!(wrapped["token"]["expires_in"], "86397");

    mock.control(Method::PUT, "/__mock/faults", json!({"token_close": true})).await;
    let request = build_request(
        &mock.base,
        Method::POST,
        "/oauth20/token",
        &[("authorization", &basic_auth())],
        "grant_type=password",
    );
    assert!(mock.try_send(request).await.is_err(), "connection is dropped");

    mock.control(Method::DELETE, "/__mock/faults", json!({})).await;
    let (_, refresh) = mock.guest().await;
    mock.control(Method::PUT, "/__mock/faults", json!({"reject_refresh": true})).await;
    let refresh_form = form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]);
    assert_eq!(mock.token(&refresh_form).await.status, StatusCode::BAD_REQUEST);
    mock.control(Method::DELETE, "/__mock/faults", json!({})).await;
    assert_eq!(mock.token(&refresh_form).await.status, StatusCode::OK, "rejected refresh kept the token");
    let invalid = mock.control(Method::PUT, "/__mock/faults", json!({"token_stauts": 500})).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_held_token_call_is_counted_and_answers_with_the_settings_it_is_released_into() {
    let mock = Mock::start(&[]);
    mock.control(Method::PUT, "/__mock/faults", json!({"token_hold": true})).await;
    let answered = AtomicBool::new(false);
    let call = async {
        let reply = mock.token("grant_type=password").await;
        answered.store(true, Ordering::SeqCst);
        reply
    };
    let release = async {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        while mock.stats().await["token_calls"]["anonymous"] != 1 {
            assert!(Instant::now() < deadline, "the held call was never counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!answered.load(Ordering::SeqCst), "a held call must not answer");
        // Lifting the hold and reporting a zero lifetime in one change.
        mock.control(Method::PUT, "/__mock/faults", json!({"expires_in": 0})).await;
    };
    let (reply, ()) = tokio::join!(call, release);
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["expires_in"], 0, "the call answers with the settings of its release");
    let me = mock.get("/v1/shoppers/me", &text(&body["access_token"])).await;
    assert_eq!(me.status, StatusCode::OK, "expires_in changes what is reported, not the lifetime");
}

#[tokio::test]
async fn resource_faults_round_trip() {
    let mock = Mock::start(&[]);
    let (access, _) = mock.guest().await;
    let faults = json!({"resource_status": 502, "access_token_status": 500});
    mock.control(Method::PUT, "/__mock/faults", faults).await;
    let resource = mock.get("/v1/shoppers/me", &access).await;
    assert_eq!(resource.status, StatusCode::BAD_GATEWAY);
    assert_eq!(first_error(&resource.json())["code"], "injected_fault");
    let info = mock.get("/oauth20/access-tokens", &access).await;
    assert_eq!(info.status, StatusCode::INTERNAL_SERVER_ERROR);

    mock.control(Method::PUT, "/__mock/faults", json!({"echo_token": true})).await;
    let leaked = mock.get("/v1/shoppers/me", &access).await;
    assert_eq!(leaked.header("x-leaked-token"), Some(access.as_str()));
    assert_eq!(leaked.json()["leaked_token"], access.as_str());
    mock.control(Method::DELETE, "/__mock/faults", json!({})).await;
    let clean = mock.get("/v1/shoppers/me", &access).await;
    assert!(clean.header("x-leaked-token").is_none());
    assert!(!String::from_utf8_lossy(&clean.body).contains(&access));
}

#[tokio::test]
async fn counters_count_every_call_and_reset() {
    let mock = Mock::start(&[]);
    let (access, refresh) = mock.guest().await;
    mock.token(&login_form(None)).await;
    mock.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])).await;
    mock.token("grant_type=client_credentials").await;
    mock.token("grant_type=password&username=nobody&password=eA==").await;
    mock.get("/oauth20/access-tokens", &access).await;
    mock.get("/v1/shoppers/me", "dead").await;
    let stats = mock.stats().await;
    assert_eq!(
        stats["token_calls"],
        json!({"anonymous":1,"login":2,"refresh":1,"client_credentials":1,"failed":1,"total":5})
    );
    assert_eq!((stats["access_token_get"].clone(), stats["resource_calls"].clone()), (json!(1), json!(1)));
    assert_eq!(stats["resource_401"], 1);
    assert_eq!(stats["live_sessions"], 3, "guest (refreshed), shopper, client credentials");
    let revoked = mock.control(Method::POST, "/__mock/revoke", json!({"all": true})).await.json();
    assert_eq!(revoked, json!({"revoked": 3}));
    let reset = mock.call(Method::POST, "/__mock/stats/reset", &[], "").await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT);
    let stats = mock.stats().await;
    assert_eq!(stats["token_calls"]["total"], 0);
    assert_eq!(stats["live_sessions"], 0);
}

#[tokio::test]
async fn issued_tokens_file_lists_every_token_before_the_response() {
    let directory = tempfile::tempdir().expect("temp dir");
    let file = directory.path().join("issued.txt");
    let mock = Mock::start(&["--issued-tokens-file", file.to_str().expect("utf-8 path")]);
    let (access, refresh) = mock.guest().await;
    let written = std::fs::read_to_string(&file).expect("issued file");
    assert_eq!(written, format!("{access}\n{refresh}\n"));
    let listed = mock.call(Method::GET, "/__mock/tokens", &[], "").await.json();
    assert_eq!(listed, json!({"access_tokens": [access], "refresh_tokens": [refresh]}));
}

#[tokio::test]
async fn hosted_login_redirects_with_the_token_in_the_fragment() {
    let mock = Mock::start(&["--redirect-uri", "http://127.0.0.1:9/session/callback?s=1"]);
    let (guest, _) = mock.guest().await;
    let query = form(&[
        ("client_id", "demo-api-key"),
        ("redirect_uri", "http://127.0.0.1:9/session/callback?s=1"),
        ("response_type", "token"),
        ("dr_limited_token", &guest),
        ("state", "xyz"),
    ]);
    let page = mock.call(Method::GET, &format!("/oauth20/authorize?{query}"), &[], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("action=\"/oauth20/authorize/login\""));

    let headers = [("content-type", FORM)];
    let wrong = format!("{query}&{}", form(&[("username", "jdoe@example.com"), ("password", "nope")]));
    let retry = mock.call(Method::POST, "/oauth20/authorize/login", &headers, &wrong).await;
    assert_eq!(retry.status, StatusCode::OK, "bad credentials re-render the form");
    let right = format!("{query}&{}", form(&[("username", "jdoe@example.com"), ("password", "p4ssw0rd!")]));
    let done = mock.call(Method::POST, "/oauth20/authorize/login", &headers, &right).await;
    assert_eq!(done.status, StatusCode::FOUND);
    let location = done.header("location").expect("location").to_owned();
    let (target, fragment) = location.split_once('#').expect("fragment");
    assert_eq!(target, "http://127.0.0.1:9/session/callback?s=1");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(fragment.as_bytes()).into_owned().collect();
    let value = |name: &str| pairs.iter().find(|(key, _)| key == name).map(|(_, v)| v.clone());
    assert_eq!(value("token_type").as_deref(), Some("bearer"));
    assert_eq!(value("state").as_deref(), Some("xyz"));
    assert!(value("refresh_token").is_none(), "implicit gives no refresh token");
    let shopper = value("access_token").expect("access token");
    assert_eq!(mock.get("/oauth20/access-tokens", &shopper).await.json()["authenticated"], "true");
    let bad_client =
        mock.call(Method::GET, "/oauth20/authorize?client_id=x&redirect_uri=http://a/", &[], "").await;
    assert_eq!(bad_client.json()["error"], "invalid_client");
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let mock = Mock::start(&[]);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let request = build_request(&mock.base, Method::GET, "/__mock/health", &[], "");
    let response = tokio::time::timeout(REQUEST_DEADLINE, client.request(request))
        .await
        .expect("in time")
        .expect("h2 response");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn echo_redacts_credentials_and_bytes_stream() {
    let mock = Mock::start(&[]);
    let (access, _) = mock.guest().await;
    let bearer = format!("bearer {access}");
    let headers = [("authorization", bearer.as_str()), ("x-test", "1"), ("cookie", "a=b")];
    let echo = mock.call(Method::POST, "/v1/debug/echo/x?token=abc&q=1", &headers, "hello").await;
    let echo_text = String::from_utf8_lossy(&echo.body).into_owned();
    assert!(!echo_text.contains(&access), "the echo never reflects the token");
    let body = echo.json();
    assert_eq!(body["headers"]["authorization"], "bearer <valid>");
    assert_eq!(body["query"], "token=<redacted>&q=1");
    assert_eq!((body["body_len"].clone(), body["token"].clone()), (json!(5), json!("guest")));
    assert_eq!(body["body_sha256"], "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");

    let sized = mock.get("/v1/debug/bytes?n=100000", &access).await;
    assert_eq!(sized.header("content-length"), Some("100000"));
    assert!(sized.body.len() == 100_000 && sized.body.iter().all(|byte| *byte == b'a'));
    let chunked = mock.get("/v1/debug/bytes?n=40000&chunked=1", &access).await;
    assert_eq!(chunked.header("content-length"), None);
    assert_eq!(chunked.body.len(), 40_000);
    assert_eq!(mock.get("/v1/debug/bytes?n=99999999999", &access).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn healthcheck_reports_health_and_sigterm_exits_zero() {
    let mut mock = Mock::start(&[]);
    let healthy =
        tokio::process::Command::new(MOCK_BINARY).args(["healthcheck", "--url", &mock.base]).status();
    let healthy = tokio::time::timeout(REQUEST_DEADLINE, healthy).await.expect("in time").expect("run");
    assert!(healthy.success());

    // A server that answers 503 makes the healthcheck fail.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buffer = [0u8; 1024];
        let _ = stream.read(&mut buffer).await;
        let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
    });
    let unhealthy = tokio::process::Command::new(MOCK_BINARY)
        .args(["healthcheck", "--url", &format!("http://{address}")])
        .stderr(Stdio::null())
        .status();
    let unhealthy = tokio::time::timeout(REQUEST_DEADLINE, unhealthy).await.expect("in time").expect("run");
    assert_eq!(unhealthy.code(), Some(1));
    server.await.expect("fake server");

    assert_eq!(mock.terminate().code(), Some(0));
}

/// `POST /oauth20/token` with no Authorization header: a public client.
async fn public_token(mock: &Mock, path: &str, form: &str) -> Reply {
    mock.call(Method::POST, path, &[("content-type", FORM)], form).await
}

fn erid_form(reference: &str, limited_token: Option<&str>) -> String {
    let mut pairs = vec![("grant_type", "client_credentials"), ("dr_external_reference_id", reference)];
    if let Some(token) = limited_token {
        pairs.push(("dr_limited_token", token));
    }
    form(&pairs)
}

#[tokio::test]
async fn client_hosted_shopper_is_authenticated_and_carries_the_guest_cart() {
    let mock = Mock::start(&[]);
    let (guest, _) = mock.guest().await;
    let added =
        mock.post(&format!("/v1/shoppers/me/carts/active?productId={WIDGET}&quantity=3"), &guest).await;
    let cart_id = text(&added.json()["cart"]["id"]);

    let bad_limited = mock.token(&erid_form("shop-42", Some("feedface"))).await;
    assert_eq!(bad_limited.json()["error"], "dr_limited_token_invalid");
    let signed_in = mock.token(&erid_form("shop-42", Some(&guest))).await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", String::from_utf8_lossy(&signed_in.body));
    let shopper = text(&signed_in.json()["access_token"]);
    assert!(signed_in.json()["refresh_token"].is_string(), "the API's example answer has one");

    let info = mock.get("/oauth20/access-tokens", &shopper).await.json();
    assert_eq!(info["authenticated"], "true");
    assert_eq!(info["externalReferenceId"], "shop-42");
    assert!(info["userId"].is_u64());
    assert_eq!(info["cartId"].to_string(), cart_id, "the guest's cart carried over");
    let me = mock.get("/v1/shoppers/me", &shopper).await.json();
    let user_id = text(&me["shopper"]["id"]);
    assert!(user_id.parse::<u64>().is_ok(), "a real shopper id, not Anonymous: {user_id}");
    assert_eq!(me["shopper"]["externalReferenceId"], "shop-42");
    let cart = mock.get("/v1/shoppers/me/carts/active", &shopper).await.json();
    assert_eq!(cart["cart"]["totalItemsInCart"], "3");
    assert_eq!(
        mock.get("/v1/shoppers/me", &guest).await.status,
        StatusCode::UNAUTHORIZED,
        "guest transitioned"
    );

    let again = mock.token(&erid_form("shop-42", None)).await;
    let again = text(&again.json()["access_token"]);
    assert_eq!(
        mock.get("/v1/shoppers/me", &again).await.json()["shopper"]["id"],
        user_id.as_str(),
        "same id"
    );
    let later_cart = mock.get("/v1/shoppers/me/carts/active", &again).await.json();
    assert_eq!(text(&later_cart["cart"]["id"]), cart_id, "the shopper's cart stays the shopper's");
    let other = mock.token(&erid_form("shop-43", None)).await;
    let other = text(&other.json()["access_token"]);
    assert_ne!(mock.get("/v1/shoppers/me", &other).await.json()["shopper"]["id"], user_id.as_str());

    let no_reference = mock.token("grant_type=client_credentials").await;
    let anonymous = text(&no_reference.json()["access_token"]);
    assert_eq!(mock.get("/oauth20/access-tokens", &anonymous).await.json()["authenticated"], "false");
}

#[tokio::test]
async fn a_public_client_may_not_sign_in_a_client_hosted_shopper() {
    let mock = Mock::start(&[]);
    let by_param = format!("{}&client_id=demo-api-key", erid_form("shop-42", None));
    let refused = public_token(&mock, "/oauth20/token", &by_param).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"], "unauthorized_client");
    let empty_secret = format!("Basic {}", encoded("demo-api-key:"));
    let headers = [("authorization", empty_secret.as_str()), ("content-type", FORM)];
    let refused = mock.call(Method::POST, "/oauth20/token", &headers, &erid_form("shop-42", None)).await;
    assert_eq!(refused.json()["error"], "unauthorized_client");
    let stats = mock.stats().await;
    assert_eq!(stats["token_calls"]["failed"], 2);
}

#[tokio::test]
async fn public_clients_use_the_legacy_forms() {
    let mock = Mock::start(&[]);
    let literal =
        "client_id=demo-api-key&grant_type=password&username=anonymous&password=anonymous&ts=1700000000000";
    let minted = public_token(&mock, "/oauth20/token", literal).await;
    assert_eq!(minted.status, StatusCode::OK, "{}", String::from_utf8_lossy(&minted.body));
    let access = text(&minted.json()["access_token"]);
    assert_eq!(mock.get("/oauth20/access-tokens", &access).await.json()["authenticated"], "false");
    assert_eq!(mock.stats().await["token_calls"]["anonymous"], 1, "counted as an anonymous grant");

    let in_query = public_token(&mock, "/oauth20/token?grant_type=password&client_id=demo-api-key", "").await;
    assert_eq!(in_query.status, StatusCode::OK);
    let refresh = text(&in_query.json()["refresh_token"]);
    let refresh_form =
        form(&[("grant_type", "refresh_token"), ("client_id", "demo-api-key"), ("refresh_token", &refresh)]);
    let refreshed = public_token(&mock, "/oauth20/token", &refresh_form).await;
    assert_eq!(refreshed.status, StatusCode::OK, "refresh with client_id");

    let unknown = public_token(&mock, "/oauth20/token", "client_id=nope&grant_type=password").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json()["error"], "invalid_client");
    let nobody = public_token(&mock, "/oauth20/token", "grant_type=password").await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    assert_eq!(nobody.json()["error"], "invalid_client");
    let not_literal = "client_id=demo-api-key&grant_type=password&username=anonymous&password=YW5vbnltb3Vz";
    let rejected = public_token(&mock, "/oauth20/token", not_literal).await;
    assert_eq!(rejected.json()["error"], "invalid_grant", "only the literal pair is the anonymous login");
}

#[tokio::test]
async fn dead_refresh_tokens_get_the_apis_401() {
    let mock = Mock::start(&["--refresh-ttl", "0"]);
    let (_, expired) = mock.guest().await;
    let refresh = |token: &str| form(&[("grant_type", "refresh_token"), ("refresh_token", token)]);
    for token in [expired.as_str(), "feedface"] {
        let reply = mock.token(&refresh(token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.json(), DEAD_REFRESH_TOKEN.clone());
    }
    mock.control(Method::PUT, "/__mock/faults", json!({"error_shape": "nested"})).await;
    let nested = mock.token(&refresh("feedface")).await;
    assert_eq!(nested.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first_error(&nested.json())["code"], "invalid_token");

    let mock = Mock::start(&[]);
    let (_, revoked) = mock.guest().await;
    mock.control(Method::POST, "/__mock/revoke", json!({"all": true})).await;
    let reply = mock.token(&refresh(&revoked)).await;
    assert_eq!((reply.status, reply.json()), (StatusCode::UNAUTHORIZED, DEAD_REFRESH_TOKEN.clone()));
}

fn authorize_query(redirect_uri: &str, response_type: &str, state: Option<&str>) -> String {
    let mut pairs =
        vec![("client_id", "demo-api-key"), ("redirect_uri", redirect_uri), ("response_type", response_type)];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    form(&pairs)
}

const UNREGISTERED: &str = "redirect_uri does not match a redirect URI configured for the client";

#[tokio::test]
async fn authorize_accepts_only_registered_redirect_uris() {
    let mock = Mock::start(&[]);
    for registered in ["http://127.0.0.1:8080/session/callback", "http://localhost:8080/session/callback"] {
        let page = mock
            .call(
                Method::GET,
                &format!("/oauth20/authorize?{}", authorize_query(registered, "token", None)),
                &[],
                "",
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{registered} is registered by default");
    }
    for unregistered in [
        "http://127.0.0.1:8080/session/callback?state=abc",
        "http://127.0.0.1:8080/session/callback/",
        "http://127.0.0.1:8081/session/callback",
        "https://evil.example/session/callback",
    ] {
        let query = authorize_query(unregistered, "token", Some("s1"));
        let refused = mock.call(Method::GET, &format!("/oauth20/authorize?{query}"), &[], "").await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{unregistered}");
        assert!(refused.header("location").is_none(), "never redirects to {unregistered}");
        assert_eq!(refused.json(), json!({"error": "invalid_request", "error_description": UNREGISTERED}));
        let credentials = form(&[("username", "jdoe@example.com"), ("password", "p4ssw0rd!")]);
        let headers = [("content-type", FORM)];
        let posted = mock
            .call(Method::POST, "/oauth20/authorize/login", &headers, &format!("{query}&{credentials}"))
            .await;
        assert_eq!(posted.status, StatusCode::BAD_REQUEST, "the login form checks it too");
        assert!(posted.header("location").is_none());
    }

    let own = Mock::start(&[
        "--redirect-uri",
        "http://shop.test/session/callback",
        "--redirect-uri",
        "https://b.test/cb",
    ]);
    for (uri, expected) in [
        ("http://shop.test/session/callback", StatusCode::OK),
        ("https://b.test/cb", StatusCode::OK),
        ("http://127.0.0.1:8080/session/callback", StatusCode::BAD_REQUEST),
    ] {
        let reply = own
            .call(
                Method::GET,
                &format!("/oauth20/authorize?{}", authorize_query(uri, "token", None)),
                &[],
                "",
            )
            .await;
        assert_eq!(reply.status, expected, "{uri}: the option replaces the defaults");
    }

    let open = Mock::start(&["--any-redirect-uri"]);
    let anywhere = authorize_query("https://anywhere.example/cb?x=1", "token", None);
    let page = open.call(Method::GET, &format!("/oauth20/authorize?{anywhere}"), &[], "").await;
    assert_eq!(page.status, StatusCode::OK, "--any-redirect-uri turns the check off");
}

#[tokio::test]
async fn the_redirect_uri_list_can_come_from_the_environment() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(MOCK_BINARY);
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("MOCK_REDIRECT_URIS", "http://a.test/cb,http://b.test/cb")
        .env_remove("MOCK_ANY_REDIRECT_URI")
        .env_remove("MOCK_CLIENT_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(directory.path().join("mock.log")).expect("log file"));
    let mut child = command.spawn().expect("start commerce-mock");
    let base = read_ready_line(&mut child).expect("ready line");
    let mock = Mock {
        child: Some(child),
        base,
        client: Client::builder(TokioExecutor::new()).build_http(),
        directory,
    };
    for (uri, expected) in [
        ("http://a.test/cb", StatusCode::OK),
        ("http://b.test/cb", StatusCode::OK),
        ("http://127.0.0.1:8080/session/callback", StatusCode::BAD_REQUEST),
    ] {
        let reply = mock
            .call(
                Method::GET,
                &format!("/oauth20/authorize?{}", authorize_query(uri, "token", None)),
                &[],
                "",
            )
            .await;
        assert_eq!(reply.status, expected, "{uri}");
    }
}

fn fragment_of(reply: &Reply) -> (String, Vec<(String, String)>) {
    let location = reply.header("location").expect("a redirect");
    let (target, fragment) = location.split_once('#').expect("a fragment");
    (target.to_owned(), form_urlencoded::parse(fragment.as_bytes()).into_owned().collect())
}

fn value_of(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone())
}

#[tokio::test]
async fn state_comes_back_as_its_own_fragment_parameter() {
    let mock = Mock::start(&["--redirect-uri", "http://shop.test/session/callback"]);
    let state = "a b&c=d/é";
    let query = authorize_query("http://shop.test/session/callback", "token", Some(state));
    let credentials = form(&[("username", "jdoe@example.com"), ("password", "p4ssw0rd!")]);
    let headers = [("content-type", FORM)];
    let done = mock
        .call(Method::POST, "/oauth20/authorize/login", &headers, &format!("{query}&{credentials}"))
        .await;
    assert_eq!(done.status, StatusCode::FOUND);
    let (target, pairs) = fragment_of(&done);
    assert_eq!(target, "http://shop.test/session/callback", "the registered URI, untouched");
    let names: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["access_token", "token_type", "expires_in", "state"]);
    assert_eq!(value_of(&pairs, "state").as_deref(), Some(state));
    assert_eq!(value_of(&pairs, "expires_in").as_deref(), Some("86397"));

    let code_flow = authorize_query("http://shop.test/session/callback", "code", Some("s2"));
    let refused = mock.call(Method::GET, &format!("/oauth20/authorize?{code_flow}"), &[], "").await;
    assert_eq!(refused.status, StatusCode::FOUND);
    let (_, pairs) = fragment_of(&refused);
    assert_eq!(value_of(&pairs, "error").as_deref(), Some("unsupported_response_type"));
    assert!(value_of(&pairs, "error_description").is_some());
    assert_eq!(value_of(&pairs, "state").as_deref(), Some("s2"));

    let stateless = authorize_query("http://shop.test/session/callback", "token", None);
    let done = mock
        .call(Method::POST, "/oauth20/authorize/login", &headers, &format!("{stateless}&{credentials}"))
        .await;
    assert!(value_of(&fragment_of(&done).1, "state").is_none(), "no state given, none sent");
}

#[tokio::test]
async fn resources_answer_xml_unless_json_is_asked_for() {
    let mock = Mock::start(&[]);
    let (access, _) = mock.guest().await;
    let bearer = format!("bearer {access}");
    let plain = mock.call(Method::GET, "/v1/shoppers/me", &[("authorization", &bearer)], "").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.header("content-type"), Some("application/xml"));
    let xml = String::from_utf8_lossy(&plain.body).into_owned();
    assert!(xml.starts_with("<?xml version=\"1.0\""), "{xml}");
    assert!(
        xml.contains("<shopper><uri>") && xml.contains("<id>Anonymous</id>") && xml.ends_with("</shopper>"),
        "{xml}"
    );
    let browser_default = [("authorization", bearer.as_str()), ("accept", "*/*")];
    let star = mock.call(Method::GET, "/v1/shoppers/me", &browser_default, "").await;
    assert_eq!(star.header("content-type"), Some("application/xml"), "*/* gets the API's default");

    let add = format!("/v1/shoppers/me/carts/active?productId={WIDGET}");
    let cart = mock.call(Method::POST, &add, &[("authorization", &bearer)], "").await;
    let xml = String::from_utf8_lossy(&cart.body).into_owned();
    assert!(
        xml.contains("<lineItems><lineItem><id>") && xml.contains("<totalItemsInCart>1</totalItemsInCart>"),
        "{xml}"
    );

    for (path, headers) in [
        (
            "/v1/shoppers/me",
            vec![("authorization", bearer.as_str()), ("accept", "text/html, application/json;q=0.9")],
        ),
        ("/v1/shoppers/me?format=json", vec![("authorization", bearer.as_str())]),
        ("/v1/shoppers/me.json", vec![("authorization", bearer.as_str())]),
    ] {
        let reply = mock.call(Method::GET, path, &headers, "").await;
        assert_eq!(reply.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(reply.json()["shopper"]["id"], "Anonymous");
    }

    let refused = mock.call(Method::GET, "/v1/shoppers/me", &[("authorization", "bearer dead")], "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.header("content-type"), Some("application/xml"));
    let xml = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(xml.ends_with("<errors><error><relation>https://developers.digitalriver.com/v1/shoppers/ShoppersResource</relation><code>invalid_token</code><description>Invalid token for specified shopper</description></error></errors>"), "{xml}");

    let echo = mock.call(Method::GET, "/v1/debug/echo", &[("authorization", &bearer)], "").await;
    assert_eq!(echo.header("content-type"), Some("application/json"), "the mock's debug endpoints stay JSON");
    let info = mock.call(Method::GET, "/oauth20/access-tokens", &[("authorization", &bearer)], "").await;
    assert_eq!(info.header("content-type"), Some("application/json"), "OAuth endpoints stay JSON");
    let dead =
        mock.call(Method::GET, "/oauth20/access-tokens", &[("authorization", "bearer dead")], "").await;
    assert_eq!(dead.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn resource_401_faults_answer_before_the_token_is_read() {
    let mock = Mock::start(&[]);
    let (access, _) = mock.guest().await;
    mock.control(Method::PUT, "/__mock/faults", json!({"resource_401": "invalid_client"})).await;
    let reply = mock.get("/v1/shoppers/me", &access).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.header("www-authenticate").is_none());
    assert_eq!(first_error(&reply.json())["code"], "invalid_client");
    assert_eq!(first_error(&reply.json())["description"], "Request Contains Invalid Client ID");
    let bearer = format!("bearer {access}");
    let xml = mock.call(Method::GET, "/v1/shoppers/me", &[("authorization", &bearer)], "").await;
    assert!(String::from_utf8_lossy(&xml.body).contains("<code>invalid_client</code>"));

    mock.control(Method::PUT, "/__mock/faults", json!({"resource_401": "site_mismatch"})).await;
    let reply = mock.get("/v1/shoppers/me/carts/active", &access).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer error=\"invalid_request\""));
    assert_eq!(first_error(&reply.json())["code"], "invalid_request");
    assert_eq!(first_error(&reply.json())["description"], "Request Site ID does not match Token Site ID");

    let counted = json!({"resource_401": "bearer_invalid_token", "resource_401_count": 1});
    mock.control(Method::PUT, "/__mock/faults", counted).await;
    let reply = mock.get("/v1/shoppers/me", &access).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
    assert!(reply.body.is_empty() && reply.header("content-type").is_none());
    assert_eq!(mock.get("/v1/shoppers/me", &access).await.status, StatusCode::OK, "the count ran out");

    mock.get("/v1/shoppers/me", "dead").await;
    let stats = mock.stats().await;
    assert_eq!(
        stats["resource_401_kinds"],
        json!({"invalid_token": 1, "invalid_client": 2, "site_mismatch": 1, "bearer_invalid_token": 1})
    );
    assert_eq!(stats["resource_401"], 1, "resource_401 still counts only refused tokens");
    let unknown = mock.control(Method::PUT, "/__mock/faults", json!({"resource_401": "teapot"})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_query_token_is_a_credential_and_is_counted() {
    let mock = Mock::start(&[]);
    let (access, _) = mock.guest().await;
    let by_query =
        mock.call(Method::GET, &format!("/v1/shoppers/me?token={access}"), &[("accept", JSON)], "").await;
    assert_eq!(by_query.status, StatusCode::OK);
    let echo = mock.call(Method::GET, &format!("/v1/debug/echo?token={access}"), &[], "").await;
    assert_eq!(echo.json()["credential"], "query_token");
    let bearer = format!("bearer {access}");
    let both = mock.call(Method::GET, "/v1/debug/echo?token=other", &[("authorization", &bearer)], "").await;
    assert_eq!(both.json()["credential"], "bearer", "the bearer header wins");
    mock.get("/v1/shoppers/me", &access).await;
    let stats = mock.stats().await;
    assert_eq!(stats["resource_credential"], json!({"bearer": 2, "query_token": 2}));
    assert_eq!(stats["query_token_seen"], 3);
    let info = mock.call(Method::GET, &format!("/oauth20/access-tokens?token={access}"), &[], "").await;
    assert_eq!(info.json()["authenticated"], "false");
}
