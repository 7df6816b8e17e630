//! `tokengate check-config` reports every problem of a file in one run: unknown keys,
//! wrong types, bad values, bad durations, invalid origins and URLs, missing secret
//! variables — each with its key path — then exits 78 (`EX_CONFIG`).
//!
//! Runs the real binary; needs nothing else (no mock, no ports).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EX_CONFIG: i32 = 78;

/// The binary with a clean environment: no `RUST_LOG`, no `TOKENGATE_*` overrides from
/// the machine running the tests, plus `env`.
fn check_config(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command.env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOKENGATE_") {
            command.env_remove(&name);
        }
    }
    command.envs(env.iter().copied()).arg("check-config").arg("--config").arg(path);
    command.output().expect("tokengate check-config runs")
}

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).expect("the test's directory is writable");
    path
}

/// The lines of stderr that report a problem (`  key: message`).
fn problem_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("  "))
        .map(|line| line.trim().to_string())
        .collect()
}

/// A file with ten problems of seven kinds; without `unknown_keys`, the two unknown keys
/// (`server.surprise`, `route[0].color`) are left out.
fn many_problems(unknown_keys: bool) -> String {
    let (surprise, color) = if unknown_keys { ("surprise = true", "color = \"blue\"") } else { ("", "") };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{surprise}
public_origin = "https://shop.example.com/cart"
allowed_origins = ["https://shop.example.com", "shop.example.com"]
max_connections = "lots"

[upstream]
base_url = "https://key:secret@api.example.com/?debug=1"

[oauth]
client_id = "key"
client_secret_env = "TOKENGATE_CHECK_CONFIG_TEST_UNSET"

[session]
cookie_name = "tg"
cookie_secure = false
same_site = "diagonal"
idle_timeout = "a while"

[leak_guard]
enabled = "yes"

[[route]]
prefix = "/api/"
{color}
"#
    )
}

#[test]
fn every_problem_of_a_file_is_reported_with_its_key_in_one_run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write(&dir, &many_problems(true));
    let output = check_config(&path, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{stderr}");
    let lines = problem_lines(&output);
    let expected = [
        ("server.surprise", "unknown key"),
        ("route[0].color", "unknown key"),
        ("server.max_connections", "must be a non-negative integer"),
        ("leak_guard.enabled", "must be true or false"),
        ("server.public_origin", "path"),
        ("server.allowed_origins", "\"shop.example.com\""),
        ("upstream.base_url", "user info"),
        ("oauth.client_secret_env", "TOKENGATE_CHECK_CONFIG_TEST_UNSET is not set"),
        ("session.same_site", "\"diagonal\""),
        ("session.idle_timeout", "\"a while\" is not a duration"),
    ];
    for (key, words) in expected {
        assert!(
            lines.iter().any(|line| line.starts_with(&format!("{key}: ")) && line.contains(words)),
            "no {key:?} problem mentioning {words:?} in:\n{stderr}"
        );
    }
    assert_eq!(lines.len(), expected.len(), "one line per problem, no repeats:\n{stderr}");
    assert!(stderr.contains(&format!("{} problem(s)", expected.len())), "{stderr}");
    assert!(!stderr.contains("secret@"), "the URL's credentials must not be echoed:\n{stderr}");
}

#[test]
fn fixing_one_problem_leaves_exactly_the_others() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write(&dir, &many_problems(false));
    let output = check_config(&path, &[]);
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    let lines = problem_lines(&output);
    assert_eq!(lines.len(), 8, "{lines:#?}");
    assert!(!lines.iter().any(|line| line.contains("surprise") || line.contains("color")));
}

#[test]
fn a_bad_override_is_reported_with_the_problems_of_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write(
        &dir,
        "[oauth]\nclient_id = \"key\"\n[session]\nsame_site = \"diagonal\"\nbogus = 1\n[[route]]\nprefix = \"/api/\"\n",
    );
    let output = check_config(
        &path,
        &[("TOKENGATE_CLIENT_SECRET", "s3cret-value"), ("TOKENGATE_SESSION_MAX_SESSIONS", "many")],
    );
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in
        ["session.max_sessions (from TOKENGATE_SESSION_MAX_SESSIONS)", "session.same_site", "session.bogus"]
    {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("s3cret-value"));
}

#[test]
fn a_clean_file_passes_and_a_syntax_error_is_one_problem() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write(
        &dir,
        "[server]\npublic_origin = \"https://Shop.Example.com\"\n[oauth]\nclient_id = \"key\"\n[[route]]\nprefix = \"/api/\"\n",
    );
    let output = check_config(&path, &[("TOKENGATE_CLIENT_SECRET", "s3cret-value")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 route(s)"));

    let path = write(&dir, "[server\nlisten = 1\n");
    let output = check_config(&path, &[("TOKENGATE_CLIENT_SECRET", "s3cret-value")]);
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    assert_eq!(problem_lines(&output).len(), 1, "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_tls_file_that_is_not_pem_stops_the_start_with_78_before_anything_is_bound() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let garbage = dir.path().join("not-a-certificate.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("writes");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"off\"\n\
         [server.tls]\ncert_file = \"{file}\"\nkey_file = \"{file}\"\n\
         [oauth]\nclient_id = \"key\"\n[[route]]\nprefix = \"/api/\"\n",
        file = garbage.display()
    );
    let path = write(&dir, &text);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command.env_remove("RUST_LOG").env("TOKENGATE_CLIENT_SECRET", "s3cret-value");
    let output = command.arg("--config").arg(&path).output().expect("runs tokengate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(!stdout.contains("listening"), "nothing may be served: {stdout}");
    assert!(stderr.contains("not-a-certificate.pem"), "the message names the file: {stderr}");
}
