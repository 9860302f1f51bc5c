//! TLS to the CQL nodes: every node verified against the CA that signed its certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::store::StoreError;

/// A client configuration that trusts the certificates of the PEM file `ca` (and nothing else).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let unreadable =
        |e: &dyn std::fmt::Display| StoreError::Tls(format!("CA file {}: {e}", ca.display()));
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).map_err(|e| unreadable(&e))? {
        roots
            .add(certificate.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
