//! `commerce-mock healthcheck`: one plain HTTP/1.1 `GET /__mock/health` over a tokio
//! `TcpStream`, for container HEALTHCHECKs in images without curl. Exit 0 on a 200
//! status line, 1 on anything else (refused, timeout, other status, garbage).

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Whole-probe budget; a container check runs with its own short timeout anyway.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The status line is all we read; stop after this much without one.
const MAX_HEAD_BYTES: usize = 4096;

/// Probes `base_url` and turns the result into the process exit code.
pub async fn run(base_url: &str) -> ExitCode {
    match tokio::time::timeout(PROBE_TIMEOUT, probe(base_url)).await {
        Ok(Ok(200)) => ExitCode::SUCCESS,
        Ok(Ok(status)) => fail(&format!("status {status}")),
        Ok(Err(message)) => fail(&message),
        Err(_) => fail("timed out"),
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("commerce-mock healthcheck: unhealthy: {reason}");
    ExitCode::FAILURE
}

async fn probe(base_url: &str) -> Result<u16, String> {
    let authority = authority_of(base_url)?;
    let mut stream = TcpStream::connect(&authority)
        .await
        .map_err(|error| format!("cannot connect to {authority}: {error}"))?;
    let request = format!(
        "GET /__mock/health HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("cannot send the request: {error}"))?;
    let head = read_status_line(&mut stream).await?;
    parse_status(&head).ok_or_else(|| "not an HTTP/1.x response".to_owned())
}

async fn read_status_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < MAX_HEAD_BYTES {
        let read =
            stream.read(&mut chunk).await.map_err(|error| format!("cannot read the response: {error}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of an `HTTP/1.x NNN ...` status line.
fn parse_status(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut words = line.split_whitespace();
    let version = words.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

/// `host:port` of an `http://` URL; port 80 when absent.
fn authority_of(base_url: &str) -> Result<String, String> {
    let rest = base_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, got {base_url}"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("no host in {base_url}"));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    Ok(if has_port { authority.to_owned() } else { format!("{authority}:80") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_gets_a_default_port() {
        assert_eq!(authority_of("http://127.0.0.1:8081").as_deref(), Ok("127.0.0.1:8081"));
        assert_eq!(authority_of("http://localhost/x").as_deref(), Ok("localhost:80"));
        assert_eq!(authority_of("http://[::1]").as_deref(), Ok("[::1]:80"));
        assert_eq!(authority_of("http://[::1]:9/").as_deref(), Ok("[::1]:9"));
        assert!(authority_of("https://x").is_err());
        assert!(authority_of("http://").is_err());
    }

    #[test]
    fn status_line_is_parsed() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(parse_status("SSH-2.0-OpenSSH\r\n"), None);
    }
}
