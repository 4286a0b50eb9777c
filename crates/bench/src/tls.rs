//! TLS to sessync nodes' client ports (`--tls-ca`), for the TLS/plain comparison: one
//! connector set before any connection, used by every connection to a sessync node.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpStream;

use crate::load::IO_TIMEOUT;

/// TLS to sessync nodes' client ports (`--tls-ca`): set once before any connection.
static SESSYNC_TLS: std::sync::OnceLock<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)> =
    std::sync::OnceLock::new();

/// Makes every later connection to a sessync node use TLS 1.3, trusting the PEM CA in
/// `ca` and checking `server_name`.
pub(crate) fn use_tls(ca: &std::path::Path, server_name: &str) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())?;
    let _ = SESSYNC_TLS.set((
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        name,
    ));
    Ok(())
}

/// A connection, plain or TLS.
pub(crate) type Stream = tokio_util::either::Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// `stream` as the load loop uses it: over TLS when `--tls-ca` was given and the target is
/// a sessync node (`sessync`), plain otherwise.
pub(crate) async fn wrap(stream: TcpStream, addr: SocketAddr, sessync: bool) -> anyhow::Result<Stream> {
    Ok(match SESSYNC_TLS.get() {
        Some((connector, name)) if sessync => tokio_util::either::Either::Right(
            tokio::time::timeout(IO_TIMEOUT, connector.connect(name.clone(), stream))
                .await
                .with_context(|| format!("TLS to {addr}: timed out"))?
                .with_context(|| format!("TLS to {addr}"))?,
        ),
        _ => tokio_util::either::Either::Left(stream),
    })
}
