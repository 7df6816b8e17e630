//! `tokengate demo`: commerce-mock plus the proxy with the memory store and the demo
//! storefront page, in one command, for a newcomer on a fresh machine.
//!
//! The mock is the `commerce-mock` binary built next to `tokengate`; it is started on a
//! free loopback port and stopped with the demo. The demo config is the same TOML a user
//! would write, with the secret handed over in memory instead of an environment variable.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime;

/// The demo client secret shared by the proxy and the mock it starts.
const DEMO_SECRET: &str = "demo-secret";

/// Runs commerce-mock and the proxy on `listen` until `shutdown`.
pub async fn run(listen: SocketAddr, shutdown: CancellationToken) -> Result<(), String> {
    let (mut mock, mock_url) = start_mock().await?;
    // Bind first: with port 0 the origin the page is served from is only known now.
    let public = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    let listen = public.local_addr().map_err(|error| error.to_string())?;
    let config = demo_config(listen, &mock_url)?;
    let listeners = runtime::Listeners { public, admin: None };
    let result = runtime::run_on(config, listeners, shutdown, |bound| {
        println!(
            "tokengate demo: open http://{}/ (commerce-mock at {mock_url}; Ctrl-C stops both)",
            bound.public
        );
        println!("demo shoppers: jdoe@example.com / p4ssw0rd!  and  demo@example.com / demo");
    })
    .await;
    let _ = mock.kill().await;
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
refresh_ahead = "30s"

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

/// Under `cargo run -- demo` only `tokengate` was built: ask the same cargo (it sets
/// `CARGO` and `CARGO_MANIFEST_DIR` for the program it runs) to build the mock too, in the
/// same profile.
async fn build_mock_with_cargo(exe: &std::path::Path) -> Result<(), String> {
    let (Ok(cargo), Ok(manifest_dir)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR")) else {
        return Ok(());
    };
    let release = exe.parent().and_then(|dir| dir.file_name()).is_some_and(|name| name == "release");
    println!("tokengate demo: building commerce-mock ({})…", if release { "release" } else { "debug" });
    let mut command = Command::new(cargo);
    command.current_dir(manifest_dir).args(["build", "--bin", "commerce-mock"]);
    if release {
        command.arg("--release");
    }
    let status = command.status().await.map_err(|error| format!("cannot run cargo: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("building commerce-mock failed".to_string())
    }
}

/// Starts the sibling `commerce-mock` binary and reads the URL it announces.
async fn start_mock() -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find own binary: {error}"))?;
    let mock_path = exe.with_file_name(format!("commerce-mock{}", std::env::consts::EXE_SUFFIX));
    if !mock_path.is_file() {
        build_mock_with_cargo(&exe).await?;
    }
    if !mock_path.is_file() {
        return Err(format!(
            "{} not found: build both binaries first (cargo build --release)",
            mock_path.display()
        ));
    }
    let mut child = Command::new(&mock_path)
        .args(["--listen", "127.0.0.1:0", "--client-id", "demo-api-key", "--client-secret", DEMO_SECRET])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", mock_path.display()))?;
    let stdout = child.stdout.take().ok_or("commerce-mock has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| "commerce-mock did not start within 10s".to_string())?
        .map_err(|error| format!("reading commerce-mock's output: {error}"))?
        .ok_or("commerce-mock exited at start")?;
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .ok_or_else(|| format!("unexpected commerce-mock output: {line}"))?
        .to_string();
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}
