//! A hostile upstream: a small HTTP/1.1 server of the tests' own that plays the API badly
//! on purpose, so every way a response could carry the session's token to the browser is
//! a regression test.
//!
//! It mints its own tokens at `POST /oauth20/token` (random hex, as the Commerce API's
//! look) and answers `/v1/hostile/<case>` by writing the caller's Bearer token where the
//! case says: the reason phrase, a header name, a trailer, … Responses are written byte
//! by byte as the case gives them (no HTTP library in between, so nothing is "fixed" on
//! the way out) and every connection is closed after one answer.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The hostile server; stops its accept loop when dropped.
pub struct Hostile {
    pub url: String,
    issued: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Listens on a free loopback port.
    pub async fn start() -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::clone(&issued);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&tokens)));
            }
        });
        Hostile { url, issued, task }
    }

    /// Every token it issued.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the browser could read of a response: its status line, header names and
/// values, body and trailers, as one text to search.
pub fn readable(
    reason: Option<&str>,
    headers: &http::HeaderMap,
    body: &[u8],
    trailers: Option<&http::HeaderMap>,
) -> String {
    let mut text = format!("reason: {}\n", reason.unwrap_or(""));
    for map in std::iter::once(headers).chain(trailers) {
        for (name, value) in map {
            text.push_str(name.as_str());
            text.push_str(": ");
            text.push_str(&String::from_utf8_lossy(value.as_bytes()));
            text.push('\n');
        }
    }
    text.push_str(&String::from_utf8_lossy(body));
    text
}

async fn serve(mut stream: TcpStream, issued: Arc<Mutex<Vec<String>>>) {
    let Some((path, bearer)) = read_request(&mut stream).await else { return };
    let answer = if path.starts_with("/oauth20/token") {
        let (access, refresh) = (random_hex(160), random_hex(176));
        issued.lock().unwrap_or_else(|e| e.into_inner()).extend([access.clone(), refresh.clone()]);
        let body = format!(
            r#"{{"access_token":"{access}","token_type":"bearer","expires_in":86397,"refresh_token":"{refresh}"}}"#
        );
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
            .into_bytes()
    } else if let Some(case) = path.strip_prefix("/v1/hostile/") {
        hostile_answer(case, &bearer.unwrap_or_default())
    } else {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
    };
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

/// The raw response for `case`, with `token` where the case puts it.
fn hostile_answer(case: &str, token: &str) -> Vec<u8> {
    const JSON: &str = "content-type: application/json\r\nconnection: close\r\n";
    match case {
        "reason" => format!("HTTP/1.1 200 {token}\r\n{JSON}content-length: 2\r\n\r\n{{}}"),
        "header-name" => format!("HTTP/1.1 200 OK\r\n{JSON}x-{token}: 1\r\ncontent-length: 2\r\n\r\n{{}}"),
        "trailer" => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\
             transfer-encoding: chunked\r\ntrailer: x-leak\r\n\r\n2\r\nok\r\n0\r\nx-leak: {token}\r\n\r\n"
        ),
        "cookies" => format!(
            "HTTP/1.1 200 OK\r\n{JSON}set-cookie: a=1\r\nset-cookie2: b=2\r\n\
             clear-site-data: \"cookies\", \"storage\"\r\ncontent-length: 2\r\n\r\n{{}}"
        ),
        _ => {
            return body_answer(case, token).unwrap_or_else(|| {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
            })
        }
    }
    .into_bytes()
}

/// The cases that put the token in the body, in some form, under some headers.
fn body_answer(case: &str, token: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let escaped: String = token.chars().map(|c| format!("\\u{:04x}", u32::from(c))).collect();
    let percent: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    let base64 = base64::engine::general_purpose::STANDARD.encode(format!("{{\"t\":\"{token}\"}}"));
    let (headers, body) = match case {
        "octet-stream" => ("content-type: application/octet-stream\r\n", token.to_string()),
        "pdf" => ("content-type: application/pdf\r\n", format!("%PDF-1.7 {token}")),
        "two-types" => ("content-type: image/png\r\ncontent-type: application/json\r\n", token.to_string()),
        "encoding-none" => {
            ("content-type: application/json\r\ncontent-encoding: none\r\n", token.to_string())
        }
        "gzip" => ("content-type: application/json\r\ncontent-encoding: gzip\r\n", token.to_string()),
        "json-escaped" => ("content-type: application/json\r\n", format!("{{\"t\":\"{escaped}\"}}")),
        "percent" => ("content-type: text/plain\r\n", format!("t={percent}")),
        "base64" => ("content-type: text/plain\r\n", base64),
        "big-declared" => {
            ("content-type: application/json\r\n", format!("{}{token}", " ".repeat(300 * 1024)))
        }
        "late" => return Some(late_leak(token).into_bytes()),
        "gzip-leak" => return Some(gzip_answer(&format!("{{\"t\":\"{token}\"}}"))),
        "gzip-clean" => return Some(gzip_answer(&format!("{{\"ok\":\"{}\"}}", "clean ".repeat(100)))),
        "zstd-leak" => return Some(zstd_answer(&format!("{{\"t\":\"{token}\"}}"))),
        "zstd-clean" => return Some(zstd_answer(&format!("{{\"ok\":\"{}\"}}", "clean ".repeat(100)))),
        "compress" => ("content-type: application/json\r\ncontent-encoding: compress\r\n", token.to_string()),
        _ => return None,
    };
    Some(
        format!(
            "HTTP/1.1 200 OK\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A chunked JSON body: 270 KiB of harmless bytes in 16 KiB chunks, then the token.
fn late_leak(token: &str) -> String {
    let mut answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_string();
    let filler = "x".repeat(16 * 1024);
    for _ in 0..17 {
        answer.push_str(&format!("{:x}\r\n{filler}\r\n", filler.len()));
    }
    answer.push_str(&format!("{:x}\r\n{token}\r\n0\r\n\r\n", token.len()));
    answer
}

/// The request's path and Bearer token; the body (if any) is read and dropped.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let mut bearer = None;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            bearer = value.split_once(' ').map(|(_, token)| token.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().unwrap_or(0);
        }
    }
    let mut have = buffer.len() - head_end;
    while have < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        have += read;
    }
    Some((path, bearer))
}

fn random_hex(length: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(length);
    while text.len() < length {
        let _ = write!(text, "{:032x}", rand::random::<u128>());
    }
    text.truncate(length);
    text
}

/// A real gzip body, declared as such (binary: returned as bytes).
fn gzip_answer(text: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = encoder.write_all(text.as_bytes());
    encoded_answer("gzip", &encoder.finish().unwrap_or_default())
}

/// A real zstd body, declared as such.
fn zstd_answer(text: &str) -> Vec<u8> {
    encoded_answer("zstd", &zstd::stream::encode_all(text.as_bytes(), 3).unwrap_or_default())
}

fn encoded_answer(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: {encoding}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}
