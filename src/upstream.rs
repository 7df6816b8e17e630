//! The pooled HTTP client to the Commerce API, shared by the token client and forwarding.
//!
//! One `hyper_util` legacy client over rustls: connections are pooled and reused across
//! requests and sessions, HTTP/2 is used when the API offers it by ALPN, and the trust
//! roots are the compiled-in Mozilla set plus an optional `ca_file` (tests use a
//! self-signed upstream). Connect timeout is enforced by the connector; the per-request
//! timeout by the callers, who know what a timeout means for them.

pub mod h1;

use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::Body;
use crate::config::UpstreamConfig;

/// The client type every upstream call goes through.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Builds the pooled client. Fails only on an unreadable or empty `ca_file`.
pub fn build_client(config: &UpstreamConfig) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));

    let tls = tls_client_config(config.ca_file.as_deref(), "upstream.ca_file")?;
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

/// A rustls client config (ring) trusting the compiled-in Mozilla roots plus `ca_file`;
/// `key` names the config key in messages. Shared by the upstream client and the Redis
/// store, so both trust the same way.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
    key: &str,
) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup: {error}"))?
        .with_root_certificates(root_store(ca_file, key)?)
        .with_no_client_auth())
}

fn root_store(ca_file: Option<&std::path::Path>, key: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let Some(path) = ca_file else { return Ok(roots) };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("{key} {}: {error}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{key} {}: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificates in it", path.display()));
    }
    for cert in certs {
        roots.add(cert).map_err(|error| format!("{key} {}: {error}", path.display()))?;
    }
    Ok(roots)
}
