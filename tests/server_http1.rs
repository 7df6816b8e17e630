//! The listener's HTTP/1.1 wire behaviour, pinned over raw `TcpStream`s: bytes written by
//! hand, answers parsed by hand (`Conn`), so the tests hold for whichever HTTP/1.1
//! implementation sits behind `src/server*`.
//!
//! Covered: keep-alive over many requests, pipelining, a head split into tiny writes,
//! request bodies framed by Content-Length and by chunked (extensions and trailers),
//! `Expect: 100-continue`, HTTP/1.0 with and without keep-alive, `Connection: close`,
//! HEAD, ambiguous or broken framing (refused, and never a second request upstream),
//! oversized heads (431), the answer's own framing and `Date`, a client that vanishes
//! mid-body, absolute-form targets and many connections at once.
//!
//! Nothing sleeps to synchronise: every read has a generous deadline ([`WAIT`]); the one
//! pause (pacing the byte-by-byte writes) only makes the server see the head in pieces.

mod common;

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long any one read may wait for the server.
const WAIT: Duration = Duration::from_secs(10);

/// The most head bytes an answer may have before the reader calls it malformed.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// The raw client: one connection, its unread bytes, and an HTTP/1.x answer parser.
// ---------------------------------------------------------------------------------------

/// How an answer's body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body by rule: an answer to HEAD, 1xx, 204, 304.
    None,
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs to the end of the connection.
    Close,
}

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    version: String,
    status: u16,
    reason: String,
    /// Names lowercased, in order, repeats kept.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status, framing and body, for assertion messages.
    fn describe(&self) -> String {
        format!("{} {} {:?} {:?}: {}", self.version, self.status, self.reason, self.framing, self.text())
    }
}

/// Why no answer could be read.
enum ReadError {
    /// The server closed the connection (EOF or reset) after these bytes of a would-be answer.
    Closed(Vec<u8>),
    /// Nothing complete arrived within [`WAIT`]; these bytes had.
    TimedOut(Vec<u8>),
    /// The bytes are not a well-framed HTTP/1.x answer.
    Malformed(String),
}

impl fmt::Debug for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed(bytes) => write!(f, "closed after {:?}", String::from_utf8_lossy(bytes)),
            ReadError::TimedOut(bytes) => {
                write!(f, "no answer within {WAIT:?}; got {:?}", String::from_utf8_lossy(bytes))
            }
            ReadError::Malformed(why) => write!(f, "malformed answer: {why}"),
        }
    }
}

/// A raw client connection to the proxy.
struct Conn {
    stream: TcpStream,
    /// Bytes received and not yet consumed by an answer (pipelined answers arrive together).
    unread: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("the proxy accepts a connection");
        stream.set_read_timeout(Some(WAIT)).expect("a read timeout on the socket");
        stream.set_nodelay(true).expect("TCP_NODELAY on the socket");
        Conn { stream, unread: Vec::new() }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("the proxy reads what the client writes");
    }

    /// Writes, ignoring a failure: a server that refuses early may close (even reset)
    /// while the client still writes, and what it answered is still to be read.
    fn send_lossy(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.stream.write_all(bytes.as_ref());
    }

    /// Reads once more into `unread`; `Ok(0)` at EOF (a reset counts as EOF here).
    fn fill(&mut self) -> Result<usize, ReadError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.unread.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadError::TimedOut(self.unread.clone()));
                }
                Err(_) => return Ok(0),
            }
        }
    }

    /// Reads until `unread` holds at least `n` bytes.
    fn need(&mut self, n: usize) -> Result<(), ReadError> {
        while self.unread.len() < n {
            if self.fill()? == 0 {
                return Err(ReadError::Closed(self.unread.clone()));
            }
        }
        Ok(())
    }

    /// The next CRLF-terminated line, without its CRLF.
    fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(at) = find(&self.unread, b"\r\n") {
                let line: Vec<u8> = self.unread.drain(..at + 2).take(at).collect();
                return Ok(line);
            }
            if self.unread.len() > MAX_ANSWER_HEAD {
                return Err(ReadError::Malformed("a line without CRLF".into()));
            }
            if self.fill()? == 0 {
                return Err(ReadError::Closed(self.unread.clone()));
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        self.need(n)?;
        Ok(self.unread.drain(..n).collect())
    }

    /// One answer, head then body (none if `to_head` says it answers a HEAD).
    fn try_answer(&mut self, to_head: bool) -> Result<Answer, ReadError> {
        let head_end = loop {
            if let Some(at) = find(&self.unread, b"\r\n\r\n") {
                break at;
            }
            if self.unread.len() > MAX_ANSWER_HEAD {
                return Err(ReadError::Malformed("an answer head over 64 KiB".into()));
            }
            if self.fill()? == 0 {
                return Err(ReadError::Closed(self.unread.clone()));
            }
        };
        let head: Vec<u8> = self.unread.drain(..head_end + 4).take(head_end).collect();
        let head =
            String::from_utf8(head).map_err(|_| ReadError::Malformed("a head that is not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let malformed = |why: &str| ReadError::Malformed(format!("{why}: {head:?}"));
        let (version, rest) = status_line.split_once(' ').ok_or_else(|| malformed("status line"))?;
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Err(malformed("version"));
        }
        // Any reason phrase, even none at all ("HTTP/1.1 200" or "HTTP/1.1 200 ").
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let status: u16 = match code.parse() {
            Ok(status) if code.len() == 3 && (100..600).contains(&status) => status,
            _ => return Err(malformed("status code")),
        };
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| malformed("header line"))?;
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(malformed("header name"));
            }
            headers.push((name.to_ascii_lowercase(), value.trim_matches([' ', '\t']).to_string()));
        }
        let mut answer = Answer {
            version: version.to_string(),
            status,
            reason: reason.to_string(),
            headers,
            body: Vec::new(),
            framing: Framing::None,
        };
        let te = answer.headers_named("transfer-encoding").join(",");
        let lengths: Vec<String> = answer
            .headers_named("content-length")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect();
        if !te.is_empty() && !lengths.is_empty() {
            return Err(malformed("both Transfer-Encoding and Content-Length"));
        }
        answer.framing = if to_head || status < 200 || status == 204 || status == 304 {
            Framing::None
        } else if !te.is_empty() {
            let last = te.rsplit(',').next().unwrap_or_default().trim().to_ascii_lowercase();
            if last == "chunked" {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else if !lengths.is_empty() {
            Framing::Length
        } else {
            Framing::Close
        };
        match answer.framing {
            Framing::None => {}
            Framing::Length => {
                let first = lengths[0].clone();
                if lengths.iter().any(|l| *l != first)
                    || first.is_empty()
                    || !first.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(malformed("Content-Length"));
                }
                let n: usize = first.parse().map_err(|_| malformed("Content-Length"))?;
                answer.body = self.take(n)?;
            }
            Framing::Chunked => loop {
                let line = self.line()?;
                let line = String::from_utf8_lossy(&line).into_owned();
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| ReadError::Malformed(format!("chunk size {line:?}")))?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                answer.body.extend(self.take(size)?);
                if self.take(2)? != b"\r\n" {
                    return Err(ReadError::Malformed("a chunk not followed by CRLF".into()));
                }
            },
            Framing::Close => {
                while self.fill()? > 0 {}
                answer.body = std::mem::take(&mut self.unread);
            }
        }
        Ok(answer)
    }

    /// One answer to a request other than HEAD; fails the test if there is none.
    fn answer(&mut self) -> Answer {
        self.try_answer(false).unwrap_or_else(|e| panic!("no well-framed answer: {e:?}"))
    }

    /// The final answer, and any 1xx answers before it.
    fn final_answer(&mut self) -> (Vec<Answer>, Answer) {
        let mut interim = Vec::new();
        loop {
            let answer = self.answer();
            if answer.status >= 200 {
                return (interim, answer);
            }
            interim.push(answer);
        }
    }

    /// Whether the server closed the connection (EOF or reset) with nothing more sent.
    fn closed(&mut self) -> Result<(), String> {
        if !self.unread.is_empty() {
            return Err(format!("bytes after the answer: {:?}", String::from_utf8_lossy(&self.unread)));
        }
        match self.fill() {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!("bytes after the answer: {:?}", String::from_utf8_lossy(&self.unread))),
            Err(error) => Err(format!("still open: {error:?}")),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Requests and the world around them.
// ---------------------------------------------------------------------------------------

/// An environment with a guest session; returns the browser that holds it and the cookie
/// value for raw requests.
async fn guest() -> (Env, Browser, String) {
    let env = Env::start().await;
    let browser = env.browser();
    let reply = browser.post("/session/guest").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let cookie = browser.cookie().expect("the guest session's cookie");
    (env, browser, cookie)
}

/// `GET target` with the session cookie and `Accept: application/json`.
fn get(target: &str, cookie: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
    )
}

/// The head of a `POST /api/debug/echo` with the session cookie, CSRF proof and `extra`
/// header lines (each ending in CRLF), without the blank line.
fn echo_post_head(cookie: &str, extra: &str) -> String {
    format!(
        "POST /api/debug/echo HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nX-CSRF: 1\r\n\
         Cookie: {COOKIE}={cookie}\r\nContent-Type: application/octet-stream\r\n{extra}"
    )
}

/// A cookieless request that, if it were ever served, mints a guest token at the API
/// (`token_calls.anonymous`): the marker of a smuggled request.
const SMUGGLED: &str = "POST /session/guest HTTP/1.1\r\nHost: x\r\nX-CSRF: 1\r\nContent-Length: 0\r\n\r\n";

/// The API's call counters that matter here: `/v1/*` calls and guest tokens minted.
async fn api_calls(env: &Env) -> (u64, u64) {
    let stats = env.stats().await;
    let resources = stats["resource_calls"].as_u64().expect("resource_calls in the mock's stats");
    let anonymous = stats["token_calls"]["anonymous"].as_u64().expect("anonymous in the mock's stats");
    (resources, anonymous)
}

/// A `GET /session` on a fresh connection is answered 200 for this cookie.
fn fresh_connection_is_served(addr: SocketAddr, cookie: &str) {
    let mut conn = Conn::open(addr);
    conn.send(get("/session", cookie));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "a fresh connection after the fact: {}", answer.describe());
    assert_eq!(answer.json()["kind"], "guest", "{}", answer.describe());
}

fn assert_echo(answer: &Answer, method: &str, body: &[u8]) {
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let echo = answer.json();
    assert_eq!(echo["method"], method, "{}", answer.describe());
    assert_eq!(echo["path"], "/v1/debug/echo", "{}", answer.describe());
    assert_eq!(echo["body_len"], body.len() as u64, "{}", answer.describe());
    assert_eq!(echo["body_sha256"], sha256_hex(body), "{}", answer.describe());
}

// ---------------------------------------------------------------------------------------
// 1–3: persistent connections, pipelining, fragmented heads.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_requests_one_after_another_share_one_keep_alive_connection() {
    let (env, _browser, cookie) = guest().await;
    let (resources_before, _) = api_calls(&env).await;
    let mut conn = Conn::open(env.proxy.addr);
    let mut forwarded = 0u64;
    for i in 0..50 {
        let target = match i % 3 {
            0 => "/session".to_string(),
            1 => format!("/api/debug/echo?i={i}"),
            _ => "/api/shoppers/me".to_string(),
        };
        conn.send(get(&target, &cookie));
        let answer = conn.answer();
        let what = format!("request {i} ({target}): {}", answer.describe());
        assert_eq!(answer.status, 200, "{what}");
        assert!(matches!(answer.framing, Framing::Length | Framing::Chunked), "{what}");
        let body = answer.json();
        match i % 3 {
            0 => assert_eq!(body["kind"], "guest", "{what}"),
            1 => {
                assert_eq!(body["query"], format!("i={i}"), "{what}");
                forwarded += 1;
            }
            _ => {
                assert_eq!(body["shopper"]["id"], "Anonymous", "{what}");
                forwarded += 1;
            }
        }
    }
    let (resources_after, _) = api_calls(&env).await;
    assert_eq!(resources_after - resources_before, forwarded, "each forwarded request reached the API once");
}

#[tokio::test]
async fn three_pipelined_requests_are_answered_in_order_on_one_connection() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    let body = b"pipelined\r\nGET /not-a-request HTTP/1.1\r\n\r\n";
    let batch = format!(
        "{}Content-Length: {}\r\n\r\n{}{}{}",
        echo_post_head(&cookie, ""),
        body.len(),
        String::from_utf8_lossy(body),
        get("/session", &cookie),
        get("/api/debug/echo?n=3", &cookie),
    );
    conn.send(batch);
    let first = conn.answer();
    assert_echo(&first, "POST", body);
    let second = conn.answer();
    assert_eq!(second.status, 200, "{}", second.describe());
    assert_eq!(second.json()["kind"], "guest", "{}", second.describe());
    let third = conn.answer();
    assert_eq!(third.status, 200, "{}", third.describe());
    assert_eq!(third.json()["query"], "n=3", "{}", third.describe());
    // Nothing else was answered, and the connection goes on.
    conn.send(get("/api/debug/echo?n=4", &cookie));
    let fourth = conn.answer();
    assert_eq!(fourth.json()["query"], "n=4", "{}", fourth.describe());
}

#[tokio::test]
async fn a_head_written_in_tiny_pieces_is_still_answered() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    let request = get("/api/debug/echo?split=1", &cookie);
    let bytes = request.as_bytes();
    for byte in &bytes[..40] {
        conn.send([*byte]);
        // Pacing, not synchronisation: each byte leaves as its own segment (TCP_NODELAY).
        std::thread::sleep(Duration::from_millis(2));
    }
    for piece in bytes[40..].chunks(7) {
        conn.send(piece);
    }
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["query"], "split=1", "{}", answer.describe());

    // The blank line that ends the head split across two writes.
    let request = get("/api/debug/echo?split=2", &cookie);
    let (start, last) = request.as_bytes().split_at(request.len() - 1);
    conn.send(start);
    conn.send(last);
    let answer = conn.answer();
    assert_eq!(answer.json()["query"], "split=2", "{}", answer.describe());
}

// ---------------------------------------------------------------------------------------
// 4–5: request bodies.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn content_length_and_chunked_bodies_reach_the_api_intact_and_the_connection_goes_on() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);

    // Content-Length, with bytes that look like framing and every byte value.
    let mut body = b"line one\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    body.extend(0..=255u8);
    conn.send(echo_post_head(&cookie, &format!("Content-Length: {}\r\n\r\n", body.len())));
    conn.send(&body);
    assert_echo(&conn.answer(), "POST", &body);

    // Chunked, with chunk extensions and a trailer section, on the same connection.
    let chunks: [(&str, &[u8]); 3] =
        [(";x=y", b"hello"), (";name=\"quoted value\";flag", b", chunked\r\n"), ("", b"world")];
    let mut wire = echo_post_head(&cookie, "Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    let mut expected = Vec::new();
    for (extension, data) in chunks {
        wire.extend(format!("{:x}{extension}\r\n", data.len()).into_bytes());
        wire.extend(data);
        wire.extend(b"\r\n");
        expected.extend(data);
    }
    wire.extend(b"0;last=1\r\nX-Trailer: t\r\nX-Other-Trailer: u\r\n\r\n");
    conn.send(&wire);
    assert_echo(&conn.answer(), "POST", &expected);

    // And the same connection serves another request.
    conn.send(get("/session", &cookie));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["kind"], "guest", "{}", answer.describe());
}

#[tokio::test]
async fn expect_100_continue_gets_continue_or_the_final_answer_with_the_echoed_body() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    let body = br#"{"expect":"100-continue"}"#;
    conn.send(echo_post_head(
        &cookie,
        &format!("Content-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len()),
    ));
    // As curl does: wait a while for 100 Continue, then send the body anyway.
    conn.stream.set_read_timeout(Some(Duration::from_secs(3))).expect("a read timeout on the socket");
    let first = conn.try_answer(false);
    conn.stream.set_read_timeout(Some(WAIT)).expect("a read timeout on the socket");
    match first {
        Ok(answer) => {
            assert_eq!(answer.status, 100, "before the body was sent: {}", answer.describe());
            assert!(answer.body.is_empty(), "{}", answer.describe());
        }
        Err(ReadError::TimedOut(_)) => {}
        Err(error) => panic!("nothing sensible before the body: {error:?}"),
    }
    conn.send(body);
    let (interim, answer) = conn.final_answer();
    assert!(interim.iter().all(|a| a.status == 100), "{interim:?}");
    assert_echo(&answer, "POST", body);
    conn.send(get("/session", &cookie));
    assert_eq!(conn.answer().status, 200);
}

// ---------------------------------------------------------------------------------------
// 6–8: HTTP/1.0, Connection: close, HEAD.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn http_1_0_without_keep_alive_is_answered_then_closed() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    conn.send(format!("GET /session HTTP/1.0\r\nHost: x\r\nCookie: {COOKIE}={cookie}\r\n\r\n"));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["kind"], "guest", "{}", answer.describe());
    conn.closed().unwrap_or_else(|e| panic!("HTTP/1.0 without keep-alive: {e}"));

    // A streamed (chunked upstream) answer: never chunked to an HTTP/1.0 client.
    let mut conn = Conn::open(env.proxy.addr);
    conn.send(format!(
        "GET /api/debug/bytes?n=5000&chunked=1 HTTP/1.0\r\nHost: x\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
    ));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_ne!(answer.framing, Framing::Chunked, "chunked sent to an HTTP/1.0 client");
    assert!(answer.header("transfer-encoding").is_none(), "{:?}", answer.headers);
    assert_eq!(answer.body, vec![b'a'; 5000]);
    conn.closed().unwrap_or_else(|e| panic!("HTTP/1.0 without keep-alive: {e}"));
}

#[tokio::test]
async fn http_1_0_with_keep_alive_is_answered_and_then_serves_again_or_closes_cleanly() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    let request = format!(
        "GET /session HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
    );
    conn.send(&request);
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["kind"], "guest", "{}", answer.describe());
    if answer.framing == Framing::Close {
        return; // read to EOF: the server closed, which HTTP/1.0 allows
    }
    // A write to a connection the server closed may fail; the read below tells.
    conn.send_lossy(&request);
    match conn.try_answer(false) {
        Ok(again) => {
            assert_eq!(again.status, 200, "{}", again.describe());
            assert_eq!(again.json()["kind"], "guest", "{}", again.describe());
        }
        Err(ReadError::Closed(partial)) if partial.is_empty() => {}
        Err(error) => panic!("neither a second answer nor a clean close: {error:?}"),
    }
}

#[tokio::test]
async fn connection_close_gets_its_answer_then_eof_and_nothing_after_it_is_served() {
    let (env, _browser, cookie) = guest().await;
    let before = api_calls(&env).await;
    let mut conn = Conn::open(env.proxy.addr);
    conn.send(format!(
        "GET /api/debug/echo?close=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
    ));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["query"], "close=1", "{}", answer.describe());
    conn.closed().unwrap_or_else(|e| panic!("after Connection: close: {e}"));

    // A request pipelined behind `Connection: close` is never served.
    let mut conn = Conn::open(env.proxy.addr);
    conn.send(format!(
        "GET /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {COOKIE}={cookie}\r\n\r\n{SMUGGLED}"
    ));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["kind"], "guest", "{}", answer.describe());
    conn.closed().unwrap_or_else(|e| panic!("after Connection: close: {e}"));
    fresh_connection_is_served(env.proxy.addr, &cookie);
    let after = api_calls(&env).await;
    assert_eq!(after.1, before.1, "the request behind Connection: close minted a guest");
    assert_eq!(after.0 - before.0, 1, "only the echo reached the API");
}

#[tokio::test]
async fn a_head_answer_carries_no_body_and_the_next_answer_follows_directly() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    let head = format!("HEAD /api/debug/echo HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nCookie: {COOKIE}={cookie}\r\n\r\n");
    // Sequential, then pipelined behind a GET: body bytes after the HEAD answer would be
    // read as the next answer's status line.
    for round in 0..2 {
        if round == 0 {
            conn.send(&head);
        } else {
            conn.send(format!("{head}{}", get("/api/debug/echo?after=head", &cookie)));
        }
        let answer = conn.try_answer(true).unwrap_or_else(|e| panic!("no answer to HEAD: {e:?}"));
        assert_eq!(answer.status, 200, "{}", answer.describe());
        if round == 0 {
            conn.send(get("/api/debug/echo?after=head", &cookie));
        }
        let next = conn.answer();
        assert_eq!(next.status, 200, "{}", next.describe());
        assert_eq!(next.json()["method"], "GET", "{}", next.describe());
        assert_eq!(next.json()["query"], "after=head", "{}", next.describe());
    }
}

// ---------------------------------------------------------------------------------------
// 9: ambiguous or broken framing.
// ---------------------------------------------------------------------------------------

/// Sends `request` followed by [`SMUGGLED`] on a fresh connection and returns the one
/// answer it got (`None` if the server closed without one) and how many `/v1/*` calls
/// the API saw meanwhile. Asserts that the connection then ended with nothing more, that
/// the smuggled request never reached the API, and that a fresh connection is served.
async fn send_badly_framed(env: &Env, cookie: &str, request: &str) -> (Option<Answer>, u64) {
    let before = api_calls(env).await;
    let mut conn = Conn::open(env.proxy.addr);
    conn.send_lossy(format!("{request}{SMUGGLED}"));
    let answer = match conn.try_answer(false) {
        Ok(answer) => {
            conn.closed()
                .unwrap_or_else(|e| panic!("after {}: {e}\nrequest: {request:?}", answer.describe()));
            Some(answer)
        }
        Err(ReadError::Closed(partial)) if partial.is_empty() => None,
        Err(error) => panic!("neither an answer nor a close: {error:?}\nrequest: {request:?}"),
    };
    fresh_connection_is_served(env.proxy.addr, cookie);
    let after = api_calls(env).await;
    assert_eq!(after.1, before.1, "the smuggled request reached the API (a guest was minted): {request:?}");
    (answer, after.0 - before.0)
}

/// The answer, if any, is exactly 400, and nothing reached the API.
async fn assert_400_or_closed(env: &Env, cookie: &str, request: &str) {
    let (answer, calls) = send_badly_framed(env, cookie, request).await;
    if let Some(answer) = answer {
        assert_eq!(answer.status, 400, "{}\nrequest: {request:?}", answer.describe());
    }
    assert_eq!(calls, 0, "a refused request reached the API: {request:?}");
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_never_read_two_ways() {
    let (env, _browser, cookie) = guest().await;
    // Read by Content-Length, the smuggled request is this one's body; read as chunked,
    // it is a second request. Either way it must never reach the API as a request.
    let chunked_end = "0\r\n\r\n";
    let length = chunked_end.len() + SMUGGLED.len();
    for framing in [
        format!("Content-Length: {length}\r\nTransfer-Encoding: chunked\r\n\r\n"),
        format!("Transfer-Encoding: chunked\r\nContent-Length: {length}\r\n\r\n"),
    ] {
        let request = format!("{}{framing}{chunked_end}", echo_post_head(&cookie, ""));
        // Refused outright (RFC 9112 §6.3 lets a server reject it; a proxy must).
        let (answer, calls) = send_badly_framed(&env, &cookie, &request).await;
        let answer = answer.unwrap_or_else(|| panic!("no answer to {request:?}"));
        assert_eq!(answer.status, 400, "{}", answer.describe());
        assert_eq!(calls, 0, "{}", answer.describe());
    }
}

#[tokio::test]
async fn two_different_content_lengths_are_400() {
    let (env, _browser, cookie) = guest().await;
    let long = 5 + SMUGGLED.len();
    for framing in [
        format!("Content-Length: 5\r\nContent-Length: {long}\r\n\r\nhello"),
        format!("Content-Length: 5, {long}\r\n\r\nhello"),
    ] {
        assert_400_or_closed(&env, &cookie, &format!("{}{framing}", echo_post_head(&cookie, ""))).await;
    }
}

#[tokio::test]
async fn a_transfer_encoding_that_does_not_end_in_chunked_is_400() {
    let (env, _browser, cookie) = guest().await;
    for coding in ["gzip", "chunked, gzip", "identity"] {
        let request = format!("{}Transfer-Encoding: {coding}\r\n\r\n", echo_post_head(&cookie, ""));
        assert_400_or_closed(&env, &cookie, &request).await;
    }
}

#[tokio::test]
async fn an_invalid_chunk_size_is_refused_and_ends_the_connection() {
    let (env, _browser, cookie) = guest().await;
    for chunks in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n-1\r\n\r\n", "5 5\r\nhello\r\n0\r\n\r\n"] {
        let request = format!("{}Transfer-Encoding: chunked\r\n\r\n{chunks}", echo_post_head(&cookie, ""));
        // The head is sound, so the server hands the request on; reading the body fails,
        // and a body this small is read whole before the API is called: nothing reaches it.
        assert_400_or_closed(&env, &cookie, &request).await;
    }
}

#[tokio::test]
async fn a_garbage_request_line_is_400() {
    let (env, _browser, cookie) = guest().await;
    for line in [
        "GARBAGE\r\n",
        "GET /session HTTP/1.1 extra\r\n",
        "GET /session HTTP/9.9\r\n",
        "\x01\x02\x03 / HTTP/1.1\r\n",
    ] {
        let request = format!("{line}Host: x\r\nCookie: {COOKIE}={cookie}\r\n\r\n");
        assert_400_or_closed(&env, &cookie, &request).await;
    }
}

#[tokio::test]
async fn a_header_line_without_a_colon_is_400() {
    let (env, _browser, cookie) = guest().await;
    let request = format!(
        "GET /api/debug/echo HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
    );
    assert_400_or_closed(&env, &cookie, &request).await;
}

// ---------------------------------------------------------------------------------------
// 10–11: head limits and the answer's own framing.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_head_is_431() {
    let (env, _browser, cookie) = guest().await;
    let many: String = (0..200).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "b".repeat(64 * 1024));
    for headers in [many, big] {
        let mut conn = Conn::open(env.proxy.addr);
        conn.send_lossy(format!(
            "GET /session HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE}={cookie}\r\n{headers}\r\n"
        ));
        let answer = conn.answer();
        assert_eq!(answer.status, 431, "{}", answer.describe());
        conn.closed().unwrap_or_else(|e| panic!("after 431: {e}"));
        fresh_connection_is_served(env.proxy.addr, &cookie);
    }
}

/// An IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn looks_like_http_date(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 29
        && value.ends_with(" GMT")
        && b[3] == b','
        && b[4] == b' '
        && b[19] == b':'
        && b[22] == b':'
        && [5, 6, 12, 13, 14, 15].iter().all(|&i| b[i].is_ascii_digit())
}

#[tokio::test]
async fn every_answer_has_a_date_and_exactly_one_body_framing() {
    let (env, _browser, cookie) = guest().await;
    let mut conn = Conn::open(env.proxy.addr);
    let cookieless = "GET /session HTTP/1.1\r\nHost: x\r\n\r\n".to_string();
    let cases: [(String, u16, Option<usize>); 6] = [
        (get("/session", &cookie), 200, None),
        (cookieless, 401, None),
        (get("/api/shoppers/me", &cookie), 200, None),
        (get("/api/debug/bytes?n=100000&chunked=1", &cookie), 200, Some(100_000)),
        (get("/api/debug/bytes?n=1000", &cookie), 200, Some(1000)),
        (get("/api/no/such/resource", &cookie), 404, None),
    ];
    for (request, status, length) in cases {
        conn.send(&request);
        let answer = conn.answer();
        let what = format!("{}\nrequest: {request:?}", answer.describe());
        assert_eq!(answer.status, status, "{what}");
        assert_eq!(answer.version, "HTTP/1.1", "{what}");
        let dates = answer.headers_named("date");
        assert_eq!(dates.len(), 1, "one Date: {what}\n{:?}", answer.headers);
        assert!(looks_like_http_date(dates[0]), "Date {:?}: {what}", dates[0]);
        let cl = answer.headers_named("content-length");
        let te = answer.headers_named("transfer-encoding");
        assert!(
            cl.len() + te.len() == 1,
            "exactly one of Content-Length, Transfer-Encoding: {:?}",
            answer.headers
        );
        if let [te] = te.as_slice() {
            assert!(te.eq_ignore_ascii_case("chunked"), "Transfer-Encoding: {te}");
        }
        if let Some(length) = length {
            assert!(
                answer.body == vec![b'a'; length],
                "{} body bytes, not {length} times 'a'",
                answer.body.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 12–14: vanishing clients, absolute-form targets, many connections.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_vanishes_mid_request_breaks_nothing() {
    let (env, browser, cookie) = guest().await;
    let half_body = format!("{}Content-Length: 1000\r\n\r\n{}", echo_post_head(&cookie, ""), "x".repeat(500));
    let half_chunk = format!(
        "{}Transfer-Encoding: chunked\r\n\r\n3e8\r\n{}",
        echo_post_head(&cookie, ""),
        "y".repeat(500)
    );
    let half_head = get("/session", &cookie)[..30].to_string();
    for _ in 0..3 {
        for partial in [&half_body, &half_chunk, &half_head] {
            let conn = Conn::open(env.proxy.addr);
            let mut stream = conn.stream;
            stream.write_all(partial.as_bytes()).expect("the proxy reads the partial request");
            stream.shutdown(Shutdown::Both).expect("the client closes its socket");
            drop(stream);
            fresh_connection_is_served(env.proxy.addr, &cookie);
        }
    }
    let session = browser.get("/session").await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    let me = browser.get("/api/shoppers/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let echo = browser.post_json("/api/debug/echo", serde_json::json!({"after": "vanishing clients"})).await;
    assert_eq!(echo.status, StatusCode::OK, "{}", echo.text());
}

#[tokio::test]
async fn an_absolute_form_target_is_answered_with_proper_framing() {
    let (env, _browser, cookie) = guest().await;
    let authority = env.proxy.addr.to_string();
    let mut conn = Conn::open(env.proxy.addr);
    for path in ["/session", "/api/debug/echo?abs=1"] {
        conn.send(format!(
            "GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
             Cookie: {COOKIE}={cookie}\r\n\r\n"
        ));
        let answer = conn.answer();
        assert!(
            (200..300).contains(&answer.status) || (400..500).contains(&answer.status),
            "{}",
            answer.describe()
        );
        assert!(matches!(answer.framing, Framing::Length | Framing::Chunked), "{}", answer.describe());
        assert!(answer.json().is_object(), "a JSON body: {}", answer.describe());
    }
    // The framing held: the connection serves an origin-form request next.
    conn.send(get("/session", &cookie));
    let answer = conn.answer();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.json()["kind"], "guest", "{}", answer.describe());
}

#[tokio::test]
async fn twenty_connections_open_at_once_are_all_answered() {
    let (env, _browser, cookie) = guest().await;
    let mut conns: Vec<Conn> = (0..20).map(|_| Conn::open(env.proxy.addr)).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        let target = if i % 2 == 0 { format!("/api/debug/echo?c={i}") } else { "/session".to_string() };
        conn.send(get(&target, &cookie));
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let answer = conn.answer();
        assert_eq!(answer.status, 200, "connection {i}: {}", answer.describe());
        if i % 2 == 0 {
            assert_eq!(answer.json()["query"], format!("c={i}"), "connection {i}: {}", answer.describe());
        } else {
            assert_eq!(answer.json()["kind"], "guest", "connection {i}: {}", answer.describe());
        }
    }
    // Every one of them is still a live keep-alive connection.
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(get("/session", &cookie));
        assert_eq!(conn.answer().status, 200, "connection {i}, second request");
    }
}

/// A body refused before it is read (its declared length is over `max_body_bytes`) while
/// the client is still sending it: the client still reads the 413 (the server reads and
/// drops the rest for a moment before closing, so the kernel does not reset the
/// connection over unread bytes), and the connection then ends.
#[tokio::test]
async fn an_early_413_reaches_a_client_still_sending_its_body() {
    let env = Env::with(Options::default().set("server", "max_body_bytes", 64 * 1024)).await;
    let browser = env.browser();
    browser.post("/session/guest").await;
    let cookie = browser.cookie().expect("a guest cookie");
    let mut conn = Conn::open(env.proxy.addr);
    let declared = 4 * 1024 * 1024;
    conn.send(echo_post_head(&cookie, &format!("Content-Length: {declared}\r\n\r\n")));
    // Part of the body, as a client does before it looks at an answer.
    conn.send_lossy(vec![b'z'; 192 * 1024]);
    let answer = conn.answer();
    assert_eq!(answer.status, 413, "{}", answer.describe());
    assert_eq!(answer.json()["error"]["code"], "payload_too_large", "{}", answer.describe());
    conn.closed().unwrap_or_else(|e| panic!("after an unread body: {e}"));
    assert_eq!(browser.get("/session").await.status, StatusCode::OK, "the session survives");
}

#[tokio::test]
async fn at_sigterm_an_idle_connection_is_closed_and_the_answer_in_flight_says_close() {
    let (mut env, _browser, cookie) = guest().await;
    let addr = env.proxy.addr;
    // One connection answered once and left idle.
    let mut idle = Conn::open(addr);
    idle.send(get("/session", &cookie));
    assert_eq!(idle.answer().status, 200);
    // Another with a slow call in flight when the signal comes.
    env.set_faults(json!({"resource_latency_ms": 1500})).await;
    let (resources_before, _) = api_calls(&env).await;
    let in_flight = {
        let cookie = cookie.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = Conn::open(addr);
            conn.send(get("/api/shoppers/me", &cookie));
            let answer = conn.answer();
            (answer, conn.closed())
        })
    };
    let arrived =
        eventually(WAIT, || async { (api_calls(&env).await.0 > resources_before).then_some(()) }).await;
    assert!(arrived.is_some(), "the slow call never reached the API");
    let status = env.proxy.signal_and_wait("TERM", Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    let (answer, closed) = in_flight.await.expect("the in-flight client finishes");
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.header("connection"), Some("close"), "{}", answer.describe());
    closed.unwrap_or_else(|e| panic!("the connection of the answer in flight: {e}"));
    idle.closed().unwrap_or_else(|e| panic!("the idle connection: {e}"));
    let log = env.proxy_log();
    assert!(
        !log.contains("still open after the shutdown grace period"),
        "the drain waited on a connection: {log}"
    );
}
