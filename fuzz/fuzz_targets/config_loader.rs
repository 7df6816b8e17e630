//! Fuzzes the configuration loader, `tokengate::config::Config::from_toml`: TOML syntax,
//! the key table, `TOKENGATE_*` environment overrides, serde and validation.
//!
//! Input: UTF-8 (invalid bytes replaced). Up to the first NUL it is the `proxy.toml`
//! text; after it, NUL- or newline-separated `NAME=VALUE` lines are the environment
//! (e.g. `TOKENGATE_SERVER_LISTEN=...`). `TOKENGATE_CLIENT_SECRET` always holds a secret
//! the input cannot set. Each input is loaded twice, with two different secrets, and
//! beyond "never panics" it checks that
//! - an `Err` always lists at least one problem;
//! - the secret's value changes neither the verdict nor the number of problems;
//! - no error text and no `Debug` of a loaded config shows the secret (a text that shows
//!   secret A under A but not under B got it from the environment, not from the input).
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokengate::config::{Config, ConfigError};

const SECRET_A: &str = "fz-Secret-8c41f0d29e-AAAA";
const SECRET_B: &str = "fz-Secret-3a7be65c10-BBBB";

/// `client_secret_file` is read: skip inputs that name anything but a small regular file
/// (or nothing at all), so that `/dev/zero` or a FIFO cannot hang or exhaust the fuzzer.
fn is_safe_to_read(path: &str) -> bool {
    match std::fs::metadata(Path::new(path)) {
        Ok(meta) => meta.is_file() && meta.len() <= 1 << 20,
        Err(_) => true,
    }
}

fn shown(result: &Result<Config, Vec<ConfigError>>) -> String {
    match result {
        Ok(config) => format!("{config:?}"),
        Err(errors) => errors.iter().map(|e| format!("{e}\n{e:?}\n")).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let (text, env_text) = input.split_once('\0').unwrap_or((&input, ""));
    let mut overrides: HashMap<&str, &str> = HashMap::new();
    for line in env_text.split(['\0', '\n']) {
        if let Some((name, value)) = line.split_once('=') {
            overrides.entry(name).or_insert(value);
        }
    }

    let table = toml::from_str::<toml::Table>(text).ok();
    let in_text = |section: &str, key: &str| {
        table.as_ref().and_then(|t| t.get(section)?.get(key)?.as_str().map(str::to_string))
    };
    let in_env = |name: &str| overrides.get(name).map(|value| value.to_string());
    let secret_files = [in_text("oauth", "client_secret_file"), in_env("TOKENGATE_OAUTH_CLIENT_SECRET_FILE")];
    if !secret_files.iter().flatten().all(|path| is_safe_to_read(path)) {
        return;
    }
    let load = |secret: &'static str| {
        let env = |name: &str| match name {
            "TOKENGATE_CLIENT_SECRET" => Some(secret.to_string()),
            _ => overrides.get(name).map(|value| value.to_string()),
        };
        Config::from_toml(text, &env)
    };
    let a = load(SECRET_A);
    let b = load(SECRET_B);

    if let Err(errors) = &a {
        assert!(!errors.is_empty(), "Err with no error");
    }
    assert_eq!(a.is_ok(), b.is_ok(), "the secret's value changed the verdict");
    assert_eq!(
        a.as_ref().err().map(Vec::len),
        b.as_ref().err().map(Vec::len),
        "the secret's value changed the number of problems"
    );
    let (shown_a, shown_b) = (shown(&a), shown(&b));
    assert!(
        !(shown_a.contains(SECRET_A) && !shown_b.contains(SECRET_A)),
        "the secret from the environment is shown:\n{shown_a}"
    );
    assert!(
        !(shown_b.contains(SECRET_B) && !shown_a.contains(SECRET_B)),
        "the secret from the environment is shown:\n{shown_b}"
    );
});
