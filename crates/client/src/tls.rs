//! TLS to a node's client port (rustls, TLS 1.3 only): the node's certificate is verified
//! against the CA you give and must name the server name you give.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::ClientError;

/// How to reach a node over TLS: a rustls configuration and the name the node's
/// certificate must carry (a DNS name or an IP address).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The rustls client configuration (trusted CAs, optional client certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// The name checked against the node's certificate.
    pub server_name: ServerName<'static>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}: {e}"),
    ))
}

impl TlsOptions {
    /// TLS 1.3 trusting the PEM CA certificates in `ca_pem`, presenting `client_cert`
    /// (PEM chain and PEM key) when the node asks for one, and checking that the node's
    /// certificate names `server_name` (a DNS name or an IP address).
    pub fn from_pem(
        ca_pem: &[u8],
        client_cert: Option<(&[u8], &[u8])>,
        server_name: &str,
    ) -> Result<TlsOptions, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(c.map_err(|e| bad("CA file", e))?)
                .map_err(|e| bad("CA file", e))?;
        }
        if roots.is_empty() {
            return Err(bad("CA file", "no certificate in it"));
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| bad("TLS", e))?
                .with_root_certificates(roots);
        let config = match client_cert {
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("client certificate", e))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("client key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client certificate", e))?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|e| bad("server name", e))?;
        Ok(TlsOptions {
            config: Arc::new(config),
            server_name,
        })
    }
}
