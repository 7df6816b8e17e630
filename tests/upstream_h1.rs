//! tokengate's own HTTP/1.1 upstream client (`upstream.protocol = "http1"`, the default)
//! against a keep-alive upstream of the tests' own that counts its connections: answers
//! framed every way HTTP/1.1 frames them arrive whole, connections are reused across
//! calls and sessions, one the API closed while idle is never used, a body cut short is
//! never completed to the browser, and `upstream.protocol = "auto"` (hyper's client) still
//! forwards.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The upstream: mints tokens at `/oauth20/token`, answers `/v1/ka/<case>`, and counts
/// the connections that carried API calls (the token client's are not counted).
struct KeepAlive {
    url: String,
    api_connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeepAlive {
    async fn start() -> KeepAlive {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let api_connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&api_connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&counter)));
            }
        });
        KeepAlive { url, api_connections, task }
    }

    fn api_connections(&self) -> usize {
        self.api_connections.load(Ordering::SeqCst)
    }
}

/// One request: method, path, headers (lower-cased names), body.
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serves requests on one connection until the client closes it or a case closes it.
async fn serve(mut stream: TcpStream, api_connections: Arc<AtomicUsize>) {
    let mut buffer = Vec::new();
    let mut counted = false;
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        if request.path.starts_with("/v1/") && !counted {
            counted = true;
            api_connections.fetch_add(1, Ordering::SeqCst);
        }
        let (answer, close) = answer(&request);
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (request_line.next()?.to_string(), request_line.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some(Seen { method, path, headers, body })
}

/// The answer to `request`, and whether to close the connection after it (without
/// saying so).
fn answer(request: &Seen) -> (Vec<u8>, bool) {
    const JSON: &str = "content-type: application/json\r\n";
    if request.path.starts_with("/oauth20/token") {
        let body = format!(
            r#"{{"access_token":"{}","token_type":"bearer","expires_in":86397,"refresh_token":"{}"}}"#,
            "a".repeat(160),
            "b".repeat(176)
        );
        let text = format!("HTTP/1.1 200 OK\r\n{JSON}content-length: {}\r\n\r\n{body}", body.len());
        return (text.into_bytes(), false);
    }
    let case = request.path.trim_start_matches("/v1/ka/");
    let text = match case {
        "plain" => format!("HTTP/1.1 200 OK\r\n{JSON}content-length: 14\r\n\r\n{{\"plain\":true}}"),
        "chunked" => format!(
            "HTTP/1.1 200 OK\r\n{JSON}transfer-encoding: chunked\r\n\r\n\
             6\r\n{{\"chun\r\n7;ext=1\r\nked\":tr\r\n3\r\nue}}\r\n0\r\nx-trailer: dropped\r\n\r\n"
        ),
        "interim" => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n{JSON}content-length: 2\r\n\r\n{{}}"
        ),
        "no-content" => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
        "until-close" => {
            return (format!("HTTP/1.1 200 OK\r\n{JSON}\r\n{{\"until\":\"close\"}}").into_bytes(), true)
        }
        "close-after" => {
            return (format!("HTTP/1.1 200 OK\r\n{JSON}content-length: 2\r\n\r\n{{}}").into_bytes(), true);
        }
        "truncated" => {
            return (
                format!("HTTP/1.1 200 OK\r\n{JSON}content-length: 100\r\n\r\n{{\"cut\":").into_bytes(),
                true,
            );
        }
        "echo" => {
            let content_length = request
                .headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .map_or("none", |(_, value)| value.as_str());
            let hosts = request.headers.iter().filter(|(name, _)| name == "host").count();
            let body = serde_json::json!({
                "method": request.method,
                "content_length": content_length,
                "hosts": hosts,
                "body": String::from_utf8_lossy(&request.body),
            })
            .to_string();
            format!("HTTP/1.1 200 OK\r\n{JSON}content-length: {}\r\n\r\n{body}", body.len())
        }
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string(),
    };
    (text.into_bytes(), false)
}

async fn env_for(upstream: &KeepAlive, protocol: Option<&str>) -> Env {
    let mut options = Options::default().set("upstream", "base_url", upstream.url.as_str());
    if let Some(protocol) = protocol {
        options = options.set("upstream", "protocol", protocol);
    }
    Env::with(options).await
}

#[tokio::test]
async fn every_framing_arrives_whole_and_connections_are_reused() {
    let upstream = KeepAlive::start().await;
    let env = env_for(&upstream, None).await;
    let shoppers = [env.browser(), env.browser().fresh()];
    for round in 0..5 {
        for browser in &shoppers {
            let plain = browser.get("/api/ka/plain").await;
            assert_eq!(
                (plain.status, plain.text().as_str()),
                (StatusCode::OK, r#"{"plain":true}"#),
                "round {round}"
            );
            let chunked = browser.get("/api/ka/chunked").await;
            assert_eq!(chunked.status, StatusCode::OK);
            assert_eq!(
                chunked.text(),
                r#"{"chunked":true}"#,
                "chunks joined, extensions and trailers dropped"
            );
            assert!(!chunked.headers.contains_key("x-trailer"));
            let interim = browser.get("/api/ka/interim").await;
            assert_eq!((interim.status, interim.text().as_str()), (StatusCode::CREATED, "{}"), "100 skipped");
            let empty = browser.get("/api/ka/no-content").await;
            assert_eq!((empty.status, empty.body.len()), (StatusCode::NO_CONTENT, 0));
        }
    }
    assert_eq!(
        upstream.api_connections(),
        1,
        "40 sequential calls of two sessions went over one kept-alive connection"
    );
    assert!(env.find_leaks().is_empty());
}

#[tokio::test]
async fn a_connection_the_api_closed_is_never_used_again() {
    let upstream = KeepAlive::start().await;
    let env = env_for(&upstream, None).await;
    let browser = env.browser();
    for call in 0..10 {
        let reply = browser.get("/api/ka/close-after").await;
        assert_eq!((reply.status, reply.text().as_str()), (StatusCode::OK, "{}"), "call {call}");
        let reply = browser.get("/api/ka/until-close").await;
        assert_eq!(reply.text(), r#"{"until":"close"}"#, "a body framed by the close, call {call}");
    }
    assert_eq!(upstream.api_connections(), 20, "each answer's connection was closed by the API");
}

#[tokio::test]
async fn request_bodies_go_with_their_own_length_and_one_host() {
    let upstream = KeepAlive::start().await;
    let env = env_for(&upstream, None).await;
    let browser = env.browser();
    let reply = browser.post_json("/api/ka/echo", serde_json::json!({"productId": 5104501700u64})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], r#"{"productId":5104501700}"#);
    assert_eq!(seen["content_length"], "24");
    assert_eq!(seen["hosts"], 1);
    // An empty POST still says its length, as hyper's client did.
    let seen = browser.post("/api/ka/echo").await.json();
    assert_eq!((seen["content_length"].as_str(), seen["body"].as_str()), (Some("0"), Some("")));
    let seen = browser.send(Method::DELETE, "/api/ka/echo", &[], None).await.json();
    assert_eq!((seen["method"].as_str(), seen["content_length"].as_str()), (Some("DELETE"), Some("none")));
}

#[tokio::test]
async fn a_body_cut_short_by_the_api_is_never_completed() {
    let upstream = KeepAlive::start().await;
    let env = env_for(&upstream, None).await;
    let browser = env.browser();
    assert_eq!(browser.get("/api/ka/plain").await.status, StatusCode::OK, "a session first");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let cookie = format!("{COOKIE}={}", browser.cookie().expect("a cookie"));
    let request = http::Request::get(format!("{}/api/ka/truncated", browser.base))
        .header("cookie", cookie)
        .body(Full::default())
        .expect("a request");
    // The head may or may not have gone out before the body broke (hyper writes it with
    // the first bytes); either way the answer must break, never end.
    if let Ok(response) = client.request(request).await {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err(), "the browser sees the body break, not end");
    }
    // The session and the pool are fine afterwards.
    let reply = browser.get("/api/ka/plain").await;
    assert_eq!((reply.status, reply.text().as_str()), (StatusCode::OK, r#"{"plain":true}"#));
}

#[tokio::test]
async fn hypers_client_still_forwards_with_protocol_auto() {
    let upstream = KeepAlive::start().await;
    let env = env_for(&upstream, Some("auto")).await;
    let browser = env.browser();
    for _ in 0..3 {
        let reply = browser.get("/api/ka/chunked").await;
        assert_eq!((reply.status, reply.text().as_str()), (StatusCode::OK, r#"{"chunked":true}"#));
    }
    let seen = browser.post_json("/api/ka/echo", serde_json::json!({"a": 1})).await.json();
    assert_eq!(seen["body"], r#"{"a":1}"#);
}
