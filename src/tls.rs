//! HTTPS on the storefront listener: the rustls server configuration from
//! `[server.tls]` PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
//!
//! Loaded once at startup; a missing, empty or mismatched certificate or key stops the
//! start with a message naming the file (never the key's contents).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// The acceptor for `files`.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let cert_path = files.cert_file.display();
    let chain = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|error| format!("server.tls.cert_file {cert_path}: {error}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("server.tls.cert_file {cert_path}: {error}"))?;
    if chain.is_empty() {
        return Err(format!("server.tls.cert_file {cert_path}: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|_| {
        format!("server.tls.key_file {}: no usable private key in it", files.key_file.display())
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup: {error}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("server.tls: the certificate and key do not fit together: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
