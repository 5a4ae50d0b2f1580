//! Native TLS (HTTPS and `wss://`) with rustls, and certificate reload without dropping
//! connections.
//!
//! Handshakes run in each connection's own task (`server`), within `--request-timeout`, so a
//! client that stalls mid-handshake cannot hold up the accept loop. The certificate lives behind
//! a lock that [`TlsReloader::reload`] swaps: connections already established keep the session
//! they negotiated; new ones get the new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or not PEM.
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is missing, unreadable, not PEM, or holds no private key.
    #[error("cannot read TLS private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (for example a key that does not match the certificate).
    #[error("TLS certificate and key rejected: {0}")]
    Config(#[from] rustls::Error),
}

/// Reads a PEM certificate chain and private key (PKCS#8; PKCS#1 and SEC1 also accepted)
/// into a rustls server configuration offering HTTP/1.1.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The current certificate, and where to re-read it from.
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl TlsReloader {
    /// Loads the pair once; fails like [`load`].
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<TlsReloader>, TlsError> {
        let config = load(&cert, &key)?;
        Ok(Arc::new(TlsReloader {
            cert,
            key,
            acceptor: RwLock::new(TlsAcceptor::from(config)),
        }))
    }

    /// Re-reads both files. On error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.cert, &self.key)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(config);
        Ok(())
    }

    /// The acceptor for a new connection (the current certificate).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
