//! The `tokengate` command: run the proxy, check a config, probe health, or run the demo.
//!
//! Exit codes: 0 success; 1 a runtime failure (cannot bind, unhealthy); 78 (`EX_CONFIG`)
//! an invalid configuration, reported before any port is bound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tokengate::config::{Config, ConfigError};
use tokengate::{demo, runtime, telemetry};

const EX_CONFIG: u8 = 78;

/// Per-thread free lists for the request path's small allocations (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tokengate", version, about = "Token-handler proxy for the Digital River Commerce API")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration, print every problem with its key, exit non-zero if any.
    CheckConfig,
    /// Ask the configured admin listener's /healthz; exit 0 when healthy.
    Healthcheck,
    /// Start commerce-mock and the proxy with a demo storefront page.
    Demo {
        /// Where the demo storefront listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::Healthcheck => healthcheck(&cli.config),
        Command::Demo { listen } => run_demo(listen),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        print_errors(path, &errors);
        ExitCode::from(EX_CONFIG)
    })
}

fn print_errors(path: &std::path::Path, errors: &[ConfigError]) {
    eprintln!("{}: {} problem(s):", path.display(), errors.len());
    for error in errors {
        eprintln!("  {error}");
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} route(s), {} warning(s))",
                path.display(),
                config.live.routes.len(),
                config.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// How a failure that stops the process maps to its exit code.
trait ExitStatus: std::fmt::Display {
    fn exit_code(&self) -> ExitCode;
}

/// A file or value the config names is unusable (TLS, CA, snapshot): 78, like a bad
/// config, and nothing was bound. Anything else: 1.
impl ExitStatus for runtime::RunError {
    fn exit_code(&self) -> ExitCode {
        match self {
            runtime::RunError::Config(_) => ExitCode::from(EX_CONFIG),
            runtime::RunError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

impl ExitStatus for String {
    fn exit_code(&self) -> ExitCode {
        ExitCode::FAILURE
    }
}

/// Runs `serve` on a multi-threaded runtime with SIGTERM/SIGINT wired to its shutdown
/// token; an `Err` is printed with `what` and exits with its code.
fn serve_until_signalled<F, Fut, E>(what: &str, serve: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: ExitStatus,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(runtime::cancel_on_signal(shutdown.clone()));
        match serve(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                eprintln!("{what}: {error}");
                error.exit_code()
            }
        }
    })
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init(config.fixed.log_format, &config.live.log_level);
    for warning in &config.warnings {
        tracing::warn!(key = %warning.key, "insecure setting: {}", warning.message);
    }
    let announce = |bound: runtime::Bound| {
        // One stable line on stdout, for scripts and tests that bound port 0.
        let admin = bound.admin.map_or("off".to_string(), |a| format!("http://{a}"));
        let scheme = if bound.https { "https" } else { "http" };
        println!("tokengate listening on {scheme}://{} admin {admin}", bound.public);
        let _ = std::io::stdout().flush();
    };
    serve_until_signalled("tokengate", |shutdown| runtime::run(config, shutdown, announce))
}

fn run_demo(listen: SocketAddr) -> ExitCode {
    telemetry::init(tokengate::config::LogFormat::Text, "info");
    serve_until_signalled("tokengate demo", |shutdown| demo::run(listen, shutdown))
}

/// GETs `/healthz` on the admin listener with a plain HTTP/1.1 request (no curl needed).
fn healthcheck(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(mut address) = config.fixed.server.admin_listen else {
        eprintln!("healthcheck: server.admin_listen is off");
        return ExitCode::FAILURE;
    };
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    match probe(address) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("healthcheck: {address} answered, but not 200");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthcheck: {address}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn probe(address: SocketAddr) -> std::io::Result<bool> {
    use std::io::Read;
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 16];
    let read = stream.read(&mut head)?;
    Ok(head[..read].starts_with(b"HTTP/1.1 200"))
}
