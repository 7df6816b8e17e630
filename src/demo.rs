//! `tokengate demo`: commerce-mock plus the proxy with the memory store and the demo
//! storefront page, in one command, for a newcomer on a fresh machine.
//!
//! The mock is the `commerce-mock` binary built next to `tokengate` (under `cargo run`,
//! built or brought up to date by the same cargo first); it is started on a free loopback
//! port and stopped with the demo. The demo config is the same TOML a user
//! would write, with the secret handed over in memory instead of an environment variable.
//!
//! Processes are run with `std::process` on blocking threads, not `tokio::process`: that
//! would put tokio's process driver (an orphan check at every park of every worker) on the
//! proxy's runtime for the sake of one command.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime;

/// The demo client secret shared by the proxy and the mock it starts.
const DEMO_SECRET: &str = "demo-secret";

/// How long the mock's access tokens live in the demo, in seconds: short, so the refresh
/// tokengate does without the page noticing happens while someone is looking (the page
/// counts them). The API's own tokens live about a day.
const DEMO_ACCESS_TTL_SECS: u64 = 45;

/// The demo's `oauth.refresh_ahead`, in seconds: well under the token's life, so a token
/// serves its first 30 s untouched and the first call in its last 15 s (or after it
/// expired) refreshes it; as long as the lifetime, every call would refresh.
const DEMO_REFRESH_AHEAD_SECS: u64 = 15;

/// Runs commerce-mock and the proxy on `listen` until `shutdown`.
pub async fn run(listen: SocketAddr, shutdown: CancellationToken) -> Result<(), String> {
    // Bind first: with port 0 the origin the page is served from is only known now, and
    // the mock must register exactly that origin's callback as the redirect URI.
    let public = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    let listen = public.local_addr().map_err(|error| error.to_string())?;
    let (mock, mock_url) = start_mock(listen).await?;
    let config = demo_config(listen, &mock_url)?;
    let listeners = runtime::Listeners { public, admin: None };
    let result = runtime::run_on(config, listeners, shutdown, |bound| {
        println!(
            "tokengate demo: open http://{}/ (commerce-mock at {mock_url}; Ctrl-C stops both)",
            bound.public
        );
        println!("demo shoppers: jdoe@example.com / p4ssw0rd!  and  demo@example.com / demo");
        println!(
            "access tokens live {DEMO_ACCESS_TTL_SECS} s here; tokengate refreshes one at the first call \
             in its last {DEMO_REFRESH_AHEAD_SECS} s (the page counts the refreshes)"
        );
    })
    .await;
    drop(mock);
    result.map_err(|error| error.to_string())
}

fn demo_config(listen: SocketAddr, mock_url: &str) -> Result<Config, String> {
    let text = format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "off"
public_origin = "http://{listen}"
allowed_origins = ["http://{listen}", "http://localhost:{port}"]
demo_page = true

[upstream]
base_url = "{mock_url}"

[oauth]
client_id = "demo-api-key"
client_secret_env = "DEMO_SECRET"
refresh_ahead = "{DEMO_REFRESH_AHEAD_SECS}s"

[session]
cookie_name = "tokengate"
cookie_secure = false

[[route]]
prefix = "/api/"
upstream_prefix = "/v1/"
session = "required"
"#,
        port = listen.port()
    );
    let env = |name: &str| (name == "DEMO_SECRET").then(|| DEMO_SECRET.to_string());
    Config::from_toml(&text, &env)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

/// Under `cargo run -- demo` only `tokengate` was built: ask cargo to build the mock too,
/// every time (a no-op when it is up to date, so a mock built before a `git pull` is
/// rebuilt), in the same profile and target directory.
///
/// `cargo run` gives the program it runs variables that describe *this* package
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, …) and a library path of its own. A nested
/// cargo that inherited them would see a different environment than a plain
/// `cargo build`: build scripts that watch such variables (ring's does) would run again
/// and everything above them (ring, rustls, tokengate) would be compiled twice, here and
/// again by the next plain cargo command. So the nested cargo gets the user's
/// environment back: those variables removed, the library path restored.
async fn build_mock_with_cargo(exe: &Path) -> Result<(), String> {
    let (Some(cargo), Some(manifest_dir)) =
        (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR"))
    else {
        return Ok(());
    };
    let profile_dir = exe.parent().ok_or("cannot find own directory")?;
    let profile = profile_dir.file_name().and_then(|name| name.to_str()).unwrap_or("debug");
    println!("tokengate demo: building commerce-mock ({profile}) if it is not up to date…");
    let mut command = Command::new(cargo);
    command.current_dir(manifest_dir).args(["build", "--bin", "commerce-mock"]);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    // The directory above the profile's is the target directory when cargo marked it as
    // one; then the mock lands next to us even if `--target-dir` or a config chose it.
    if let Some(target_dir) = profile_dir.parent().filter(|dir| dir.join("CACHEDIR.TAG").is_file()) {
        command.arg("--target-dir").arg(target_dir);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_the_program) {
            command.env_remove(&name);
        }
    }
    for variable in LIBRARY_PATH_VARIABLES {
        if let Some(value) = std::env::var_os(variable) {
            match without_cargo_library_paths(&value, profile_dir) {
                Some(restored) => command.env(variable, restored),
                None => command.env_remove(variable),
            };
        }
    }
    let status = tokio::task::spawn_blocking(move || command.status())
        .await
        .map_err(|error| format!("cannot run cargo: {error}"))?
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("building commerce-mock failed".to_string())
    }
}

/// Where `cargo run` prepends its own library directories.
const LIBRARY_PATH_VARIABLES: [&str; 2] = ["LD_LIBRARY_PATH", "DYLD_FALLBACK_LIBRARY_PATH"];

/// Whether `name` is one of the variables cargo sets for the program it runs (or for a
/// crate or build script), as opposed to one the user set for cargo itself, which stays
/// (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, `CARGO_PROFILE_*`, `RUSTUP_*`, …).
fn set_by_cargo_for_the_program(name: &str) -> bool {
    const EXACT: [&str; 11] = [
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_MAKEFLAGS",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 4] = ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_CFG_", "CARGO_FEATURE_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The library path as the user had it: `cargo run` puts the profile directory, its
/// `deps` and the toolchain's library directories in front. `None` when nothing of the
/// user's is left.
fn without_cargo_library_paths(value: &OsStr, profile_dir: &Path) -> Option<OsString> {
    let added_by_cargo = |entry: &Path| {
        entry == profile_dir
            || entry == profile_dir.join("deps")
            || entry.components().any(|part| part.as_os_str() == "rustlib")
            || entry.join("rustlib").is_dir()
    };
    let entries: Vec<PathBuf> = std::env::split_paths(value).collect();
    let first_own = entries.iter().position(|entry| !added_by_cargo(entry))?;
    std::env::join_paths(&entries[first_own..]).ok()
}

/// The running mock, stopped when dropped.
struct Mock(Child);

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the sibling `commerce-mock` binary, with the callback of the demo on `listen`
/// as its registered redirect URI, and reads the URL it announces.
async fn start_mock(listen: SocketAddr) -> Result<(Mock, String), String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find own binary: {error}"))?;
    let mock_path = exe.with_file_name(format!("commerce-mock{}", std::env::consts::EXE_SUFFIX));
    build_mock_with_cargo(&exe).await?;
    if !mock_path.is_file() {
        return Err(format!(
            "{} not found: build both binaries first (cargo build --release)",
            mock_path.display()
        ));
    }
    let child = Command::new(&mock_path)
        .args(["--listen", "127.0.0.1:0", "--client-id", "demo-api-key", "--client-secret", DEMO_SECRET])
        .args(["--redirect-uri", &format!("http://{listen}/session/callback")])
        .args(["--access-ttl", &DEMO_ACCESS_TTL_SECS.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", mock_path.display()))?;
    let mut mock = Mock(child);
    let stdout = mock.0.stdout.take().ok_or("commerce-mock has no stdout")?;
    // Its first line announces the URL; the rest is drained so it never blocks on a
    // full pipe (the thread ends when the mock does).
    let (first, announced) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first.send(lines.next());
        for _ in lines.map_while(Result::ok) {}
    });
    let line = tokio::time::timeout(Duration::from_secs(10), announced)
        .await
        .map_err(|_| "commerce-mock did not start within 10s".to_string())?
        .map_err(|_| "commerce-mock exited at start".to_string())?
        .ok_or("commerce-mock exited at start")?
        .map_err(|error| format!("reading commerce-mock's output: {error}"))?;
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .ok_or_else(|| format!("unexpected commerce-mock output: {line}"))?
        .to_string();
    Ok((mock, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_refreshes_a_token_late_in_its_life_not_on_every_call() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        let config = demo_config(listen, "http://127.0.0.1:8081").unwrap_or_else(|e| panic!("{e}"));
        let ahead = config.fixed.oauth.refresh_ahead.as_secs();
        assert_eq!(ahead, DEMO_REFRESH_AHEAD_SECS);
        assert!(
            ahead > 0 && ahead * 2 < DEMO_ACCESS_TTL_SECS,
            "{ahead} s of a {DEMO_ACCESS_TTL_SECS} s token"
        );
        assert!(config.live.demo_page);
    }

    #[test]
    fn the_variables_cargo_sets_for_a_program_go_and_the_users_stay() {
        for name in ["CARGO", "CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION_MAJOR", "OUT_DIR"] {
            assert!(set_by_cargo_for_the_program(name), "{name}");
        }
        for name in ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS", "RUSTUP_TOOLCHAIN", "PATH", "HOME"]
        {
            assert!(!set_by_cargo_for_the_program(name), "{name}");
        }
    }

    #[test]
    fn the_library_path_loses_what_cargo_run_put_in_front() {
        let profile = Path::new("/src/shop/target/release");
        let toolchain = "/home/u/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/x86_64-unknown-linux-gnu/lib";
        let cargo_part = format!("/src/shop/target/release:/src/shop/target/release/deps:{toolchain}");
        let with_users = OsString::from(format!("{cargo_part}:/opt/vendor/lib:/usr/local/lib"));
        assert_eq!(
            without_cargo_library_paths(&with_users, profile),
            Some(OsString::from("/opt/vendor/lib:/usr/local/lib"))
        );
        assert_eq!(without_cargo_library_paths(OsStr::new(&cargo_part), profile), None);
    }
}
