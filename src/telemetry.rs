//! Logging setup: `tracing` to stderr, text or JSON, level from config unless `RUST_LOG`
//! is set. What is logged is chosen field by field at each call site; whole requests,
//! headers and query strings are never logged.
//!
//! The level filter sits behind a reload handle so SIGHUP can change it (`set_level`);
//! the format is fixed for the life of the process.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogFormat;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static FROM_ENVIRONMENT: OnceLock<bool> = OnceLock::new();

/// Parses a level or filter (`info`, `tokengate=debug,hyper=warn`) without ever panicking.
///
/// tracing-subscriber's parser panics on some inputs (a directive with leading spaces and a
/// non-ASCII byte, e.g. `" a\u{e9}="`, which the fuzzer found): directives are trimmed,
/// empty ones dropped, and anything but printable ASCII refused before it gets there.
pub fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("only printable ASCII is allowed in a log filter".to_string());
    }
    let directives: Vec<&str> = text.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    EnvFilter::try_new(directives.join(",")).map_err(|error| error.to_string())
}

/// Installs the global subscriber: `format` (`log.format`, fixed) and `level`
/// (`log.level`, changed later by [`set_level`]). Later calls are ignored.
pub fn init(format: LogFormat, level: &str) {
    let from_environment = std::env::var("RUST_LOG").ok().and_then(|text| parse_filter(&text).ok());
    let uses_environment = from_environment.is_some();
    let filter =
        from_environment.or_else(|| parse_filter(level).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer().json().flatten_event(true).with_current_span(false).with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => {
            registry.with(fmt::layer().with_target(false).with_writer(std::io::stderr)).try_init()
        }
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
        let _ = FROM_ENVIRONMENT.set(uses_environment);
    }
}

/// Changes the level filter (a reload). `RUST_LOG`, when it was set at start, keeps winning.
pub fn set_level(level: &str) -> Result<(), String> {
    if FROM_ENVIRONMENT.get().copied().unwrap_or(false) {
        return Ok(());
    }
    let filter = parse_filter(level)?;
    match FILTER.get() {
        Some(handle) => handle.reload(filter).map_err(|error| error.to_string()),
        None => Ok(()),
    }
}
