//! The memory store's sealed snapshot: sessions survive a restart, a wrong key or a
//! damaged file is a clear error (or an empty start where configured), and the periodic
//! writer keeps a recent copy even when the process is killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use http::StatusCode;

const WIDGET: &str = "5104501700";

/// A standard-base64 32-byte key.
fn store_key(n: u8) -> String {
    STANDARD.encode([n; 32])
}

/// A config file `name`: the running one plus a `[store]` with the snapshot in the test
/// directory, its key from `TEST_STORE_KEY`, and `store_keys`. Returns the config's path
/// and the snapshot's.
fn snapshot_config(env: &Env, name: &str, store_keys: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let file = env.dir.path().join("sessions.bin");
    let mut config = env.config().clone().set("store", "snapshot_file", file.display().to_string()).set(
        "store",
        "encryption_key_env",
        "TEST_STORE_KEY",
    );
    for (key, value) in store_keys {
        config = config.set("store", key, *value);
    }
    let path = env.dir.path().join(name);
    config.write(&path);
    (path, file)
}

/// Stops the running proxy (SIGKILL) and starts one on `config` with `keys`.
fn restart_with(env: &mut Env, browser: &mut Browser, config: &Path, keys: &str) {
    env.proxy.stop();
    env.proxy = start_proxy(config, env.dir.path(), &[("TEST_STORE_KEY", keys)]);
    browser.base = format!("http://{}", env.proxy.addr);
}

/// SIGTERM, and the exit must be clean (the final snapshot is written before it).
async fn stop_gracefully(env: &mut Env) {
    let status = env.proxy.signal_and_wait("TERM", Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status after SIGTERM: {status:?}");
}

/// Runs tokengate on `config` expecting it to refuse to start: its exit status, stdout
/// and stderr. Both pipes are drained while it runs (a full pipe would stall it); past
/// the deadline it is killed by PID and the test fails with what it printed.
async fn run_expecting_exit(config: &Path, keys: &str) -> (ExitStatus, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--config")
        .arg(config)
        .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
        .env("TEST_STORE_KEY", keys)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tokengate starts");
    let stdout = drain(child.stdout.take().expect("a piped stdout"));
    let stderr = drain(child.stderr.take().expect("a piped stderr"));
    let exited = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let status = match exited {
        Ok(status) => status.expect("the exit status of tokengate"),
        Err(_) => {
            child.kill().await.expect("kill tokengate by PID");
            let stderr = stderr.await.expect("the stderr reader ends");
            panic!("tokengate kept running with an unreadable snapshot; stderr so far:\n{stderr}");
        }
    };
    let stdout = stdout.await.expect("the stdout reader ends");
    let stderr = stderr.await.expect("the stderr reader ends");
    (status, stdout, stderr)
}

/// Reads a child's pipe to its end on its own task, while the child runs.
fn drain(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut pipe = pipe;
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Every proxy log of this test (not only the current proxy's, which the harness checks)
/// and the snapshot file hold no issued token.
fn assert_no_token_in_logs_or_snapshot(env: &Env, snapshot: &Path) {
    let mut places: Vec<(String, Vec<u8>)> = std::fs::read_dir(env.dir.path())
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("proxy-")))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap_or_default()))
        .collect();
    places.push((snapshot.display().to_string(), std::fs::read(snapshot).unwrap_or_default()));
    let tokens = env.issued_tokens();
    assert!(!tokens.is_empty());
    for (place, bytes) in places {
        let text = String::from_utf8_lossy(&bytes);
        for token in tokens.iter().filter(|t| t.len() >= 16) {
            assert!(!text.contains(token.as_str()), "token {}… in {place}", &token[..8]);
        }
    }
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

fn cart_quantity(reply: &Reply) -> u64 {
    reply.json()["cart"]["lineItems"]["lineItem"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["quantity"].as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn snapshot_keeps_a_shopper_and_the_cart_across_a_graceful_restart() {
    let mut env = Env::start().await;
    let mut browser = env.browser();
    let (config, file) = snapshot_config(&env, "snapshot.toml", &[]);
    let key = store_key(1);
    restart_with(&mut env, &mut browser, &config, &key);

    assert_eq!(browser.login().await.status, StatusCode::OK);
    let added = browser.post(&format!("/api/shoppers/me/carts/active?productId={WIDGET}&quantity=2")).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text());
    let cookie = browser.cookie();
    assert!(cookie.is_some());

    stop_gracefully(&mut env).await;
    let written = std::fs::metadata(&file).expect("a snapshot file after SIGTERM");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(written.permissions().mode() & 0o777, 0o600);
    }
    assert!(!env.dir.path().join("sessions.bin.tmp").exists(), "a temporary file was left behind");

    env.proxy = start_proxy(&config, env.dir.path(), &[("TEST_STORE_KEY", &key)]);
    browser.base = format!("http://{}", env.proxy.addr);
    let session = browser.get("/session").await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    assert_eq!(session.json()["authenticated"], true);
    assert_eq!(browser.cookie(), cookie, "the same cookie, not a new one");
    let cart = browser.get("/api/shoppers/me/carts/active").await;
    assert_eq!(cart.status, StatusCode::OK, "{}", cart.text());
    assert_eq!(cart_quantity(&cart), 2, "cart after restart: {}", cart.text());
    assert!(env.proxy_log().contains("snapshot loaded"));
    assert_no_token_in_logs_or_snapshot(&env, &file);
}

#[tokio::test]
async fn snapshot_with_a_wrong_key_stops_the_start_and_key_rotation_opens_it() {
    let mut env = Env::start().await;
    let mut browser = env.browser();
    let (config, file) = snapshot_config(&env, "snapshot.toml", &[]);
    let (old, new) = (store_key(1), store_key(2));
    restart_with(&mut env, &mut browser, &config, &old);
    assert_eq!(browser.login().await.status, StatusCode::OK);
    stop_gracefully(&mut env).await;
    let sealed = std::fs::read(&file).expect("a snapshot file after SIGTERM");

    let (status, stdout, stderr) = run_expecting_exit(&config, &new).await;
    assert_eq!(status.code(), Some(78), "an unreadable snapshot is a config problem: {stderr}");
    assert!(!stdout.contains("listening"), "it must not serve: {stdout}");
    assert!(stderr.contains(&format!("store.snapshot_file {}", file.display())), "{stderr}");
    assert!(stderr.contains("none of the 1 key(s) in store.encryption_key_env opens it"), "{stderr}");
    assert!(!stderr.contains(&new) && !stderr.contains(&old), "a key in the message: {stderr}");
    assert_eq!(std::fs::read(&file).ok(), Some(sealed), "the snapshot must be left as it was");

    // Rotation: the new key first (it seals), the old one second (it still opens).
    env.proxy = start_proxy(&config, env.dir.path(), &[("TEST_STORE_KEY", &format!("{new},{old}"))]);
    browser.base = format!("http://{}", env.proxy.addr);
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
    stop_gracefully(&mut env).await;
    // Now sealed with the new key alone.
    env.proxy = start_proxy(&config, env.dir.path(), &[("TEST_STORE_KEY", &new)]);
    browser.base = format!("http://{}", env.proxy.addr);
    assert_eq!(browser.get("/session").await.json()["authenticated"], true);
    assert_no_token_in_logs_or_snapshot(&env, &file);
}

#[tokio::test]
async fn snapshot_damaged_fails_the_start_or_with_on_error_empty_starts_empty_and_keeps_it_aside() {
    let mut env = Env::start().await;
    let mut browser = env.browser();
    let (config, file) = snapshot_config(&env, "snapshot.toml", &[]);
    let key = store_key(3);
    restart_with(&mut env, &mut browser, &config, &key);
    assert_eq!(browser.post("/session/guest").await.status, StatusCode::OK);
    stop_gracefully(&mut env).await;
    let mut damaged = std::fs::read(&file).expect("a snapshot file after SIGTERM");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&file, &damaged).expect("the snapshot file is writable");

    let (status, _, stderr) = run_expecting_exit(&config, &key).await;
    assert_eq!(status.code(), Some(78), "an unreadable snapshot is a config problem: {stderr}");
    assert!(stderr.contains("the file was damaged or altered"), "{stderr}");
    assert!(stderr.contains("snapshot_on_error"), "the message names the way out: {stderr}");

    let (lenient, _) = snapshot_config(&env, "lenient.toml", &[("snapshot_on_error", "empty")]);
    env.proxy = start_proxy(&lenient, env.dir.path(), &[("TEST_STORE_KEY", &key)]);
    browser.base = format!("http://{}", env.proxy.addr);
    let gone = browser.get("/session").await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED, "{}", gone.text());
    let aside: Vec<PathBuf> = std::fs::read_dir(env.dir.path())
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("sessions.bin.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).ok(), Some(damaged.clone()), "the unreadable file is kept as it was");
    assert!(env.proxy_log().contains("moved aside"), "the empty start is logged");

    // The next write is a fresh snapshot; the kept file is untouched.
    assert_eq!(browser.post("/session/guest").await.status, StatusCode::OK);
    stop_gracefully(&mut env).await;
    assert!(file.exists());
    assert_eq!(std::fs::read(&aside[0]).ok(), Some(damaged));
}

#[tokio::test]
async fn snapshot_is_written_every_interval_and_survives_a_kill() {
    let mut env = Env::start().await;
    let mut browser = env.browser();
    let (config, file) = snapshot_config(&env, "snapshot.toml", &[("snapshot_interval", "1s")]);
    let key = store_key(4);
    restart_with(&mut env, &mut browser, &config, &key);
    assert_eq!(browser.post("/session/guest").await.status, StatusCode::OK);

    // The writer logs each write with its session count: wait for one that holds the guest.
    let written = eventually(Duration::from_secs(5), || {
        let has_file = file.exists();
        let log = env.proxy_log();
        async move {
            let logged = log
                .lines()
                .map(strip_ansi)
                .any(|l| l.contains("snapshot written") && l.contains("sessions=1"));
            (has_file && logged).then_some(())
        }
    })
    .await;
    assert!(written.is_some(), "no periodic snapshot within the interval:\n{}", env.proxy_log());

    // SIGKILL: no final write, so what comes back is the periodic one.
    restart_with(&mut env, &mut browser, &config, &key);
    let session = browser.get("/session").await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    assert_eq!(session.json()["authenticated"], false);
    assert_no_token_in_logs_or_snapshot(&env, &file);
}
