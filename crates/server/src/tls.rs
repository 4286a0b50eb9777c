//! TLS for the peer and client ports: rustls, TLS 1.3 only, certificates read from PEM
//! files and re-read at run time ([`TlsState::reload`], on SIGHUP and on a timer), and the
//! one stream type ([`Stream`]) the ports use whether a connection is plain or TLS.
//!
//! Peer links are mutual: the accepting node requires a client certificate that chains to
//! the cluster CA, the dialling node requires the peer's certificate to chain to the same
//! CA and to name the dialled IP address (a subjectAltName of type IP). The cluster-secret
//! handshake then runs inside the TLS session (protocol.md, "Transport security").
//!
//! A reload builds new rustls configurations from the files and swaps them in; a
//! connection holds the configuration it was made with, so existing links keep working
//! and only new ones use the new certificate. Files that cannot be read or do not form a
//! valid configuration leave the current one in place (and say why).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A node warns when its own certificate expires within this long.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Where a port's certificate, key and CA live (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates the other side's certificate must chain to. Required on the peer
    /// port; on the client port it turns on client certificates.
    pub ca: Option<PathBuf>,
}

/// Which port a [`TlsState`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Mutual TLS between nodes: server and client configurations, CA required.
    Peer,
    /// The client port: a server configuration, client certificates only with a CA.
    Client,
}

/// The configurations built from one reading of the files.
pub(crate) struct Loaded {
    /// For accepting.
    pub(crate) server: Arc<ServerConfig>,
    /// For dialling (peer role only).
    pub(crate) client: Option<Arc<ClientConfig>>,
    /// The files' bytes, to tell whether a timed re-read found anything new.
    stamp: Vec<u8>,
    /// The leaf certificate's subject and expiry, for logs.
    pub(crate) subject: String,
    /// Seconds since the epoch.
    pub(crate) not_after: i64,
}

/// A port's TLS configuration, replaceable at run time.
pub(crate) struct TlsState {
    role: Role,
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
    /// Serialises reloads (SIGHUP and the timer may coincide).
    reloading: Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files were read and the new certificate is used for new connections.
    Replaced {
        /// The new certificate's subject.
        subject: String,
    },
    /// The files are the same as the ones in use.
    Unchanged,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

fn certs(pem: &[u8], path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{}: no certificate in the file", path.display())));
    }
    Ok(certs)
}

fn roots(pem: &[u8], path: &Path) -> io::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs(pem, path)? {
        store
            .add(c)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(store))
}

/// The subject and expiry (seconds since the epoch) of a DER certificate.
pub(crate) fn describe(der: &[u8]) -> io::Result<(String, i64)> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| invalid(format!("certificate: {e}")))?;
    Ok((cert.subject().to_string(), cert.validity().not_after.timestamp()))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How close a certificate is to its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// More than [`EXPIRY_WARNING`] left.
    Valid,
    /// Expires within [`EXPIRY_WARNING`]: this many whole days left.
    Soon(i64),
    /// Already expired.
    Expired,
}

/// Classifies `not_after` (seconds since the epoch) at `now`.
pub(crate) fn expiry(not_after: i64, now: i64) -> Expiry {
    let left = not_after - now;
    if left <= 0 {
        Expiry::Expired
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Expiry::Soon(left / 86400)
    } else {
        Expiry::Valid
    }
}

/// Logs a certificate's subject and expiry, warning when it expires within
/// [`EXPIRY_WARNING`] (or has expired).
fn log_certificate(port: &str, l: &Loaded) {
    let at = humantime_secs(l.not_after);
    match expiry(l.not_after, now_secs()) {
        Expiry::Expired => tracing::warn!("{port} TLS certificate {} EXPIRED at {at}", l.subject),
        Expiry::Soon(days) => tracing::warn!(
            "{port} TLS certificate {} expires at {at}, in {days} days: replace the files and send SIGHUP",
            l.subject
        ),
        Expiry::Valid => tracing::info!("{port} TLS certificate {} valid until {at}", l.subject),
    }
}

/// A UTC date and time for logs, without pulling a date crate in.
fn humantime_secs(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl TlsState {
    /// Reads the files and builds the configurations; fails when they do not form one
    /// (the node then refuses to start).
    pub(crate) fn load(role: Role, files: TlsFiles) -> io::Result<Arc<TlsState>> {
        let loaded = Self::build(role, &files)?;
        log_certificate(role.port(), &loaded);
        Ok(Arc::new(TlsState {
            role,
            files,
            current: RwLock::new(Arc::new(loaded)),
            reloading: Mutex::new(()),
        }))
    }

    /// The configurations in use now.
    pub(crate) fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the files; replaces the configurations when they changed and are valid.
    /// On error the configurations in use stay.
    pub(crate) fn reload(&self) -> io::Result<Reload> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = self.stamp()?;
        if stamp == self.current().stamp {
            return Ok(Reload::Unchanged);
        }
        let loaded = Self::build(self.role, &self.files)?;
        log_certificate(self.role.port(), &loaded);
        let subject = loaded.subject.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(Reload::Replaced { subject })
    }

    /// Warns again when the certificate in use is close to expiry (called by the timer).
    pub(crate) fn check_expiry(&self) {
        let l = self.current();
        if expiry(l.not_after, now_secs()) != Expiry::Valid {
            log_certificate(self.role.port(), &l);
        }
    }

    fn stamp(&self) -> io::Result<Vec<u8>> {
        let mut s = read(&self.files.cert)?;
        s.extend(read(&self.files.key)?);
        if let Some(ca) = &self.files.ca {
            s.extend(read(ca)?);
        }
        Ok(s)
    }

    fn build(role: Role, files: &TlsFiles) -> io::Result<Loaded> {
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let ca_pem = match &files.ca {
            Some(p) => Some(read(p)?),
            None => None,
        };
        let chain = certs(&cert_pem, &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid(format!("{}: {e}", files.key.display())))?;
        let (subject, not_after) = describe(&chain[0])?;
        let provider = provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(invalid)?;
        let ca = match (&ca_pem, &files.ca) {
            (Some(pem), Some(path)) => Some(roots(pem, path)?),
            _ => None,
        };
        if role == Role::Peer && ca.is_none() {
            return Err(invalid("peer TLS needs a CA file (--tls-ca)"));
        }
        let server = match &ca {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(invalid)?;
                server.with_client_cert_verifier(verifier)
            }
            None => server.with_no_client_auth(),
        }
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(format!("{}: {e}", files.cert.display())))?;
        let client = match (role, &ca) {
            (Role::Peer, Some(roots)) => Some(Arc::new(
                ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(invalid)?
                    .with_root_certificates(roots.clone())
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid(format!("{}: {e}", files.cert.display())))?,
            )),
            _ => None,
        };
        let mut stamp = cert_pem;
        stamp.extend(key_pem);
        if let Some(ca) = ca_pem {
            stamp.extend(ca);
        }
        Ok(Loaded {
            server: Arc::new(server),
            client,
            stamp,
            subject,
            not_after,
        })
    }
}

impl Role {
    fn port(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Client => "client",
        }
    }
}

/// A connection, plain or TLS (either side). The ports and links read and write it
/// without caring which.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, accepted by this node.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, dialled by this node.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts a TLS connection with the configuration in use now.
pub(crate) async fn accept(tls: &TlsState, tcp: TcpStream) -> io::Result<Stream> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server.clone());
    Ok(Stream::Server(Box::new(acceptor.accept(tcp).await?)))
}

/// The channel binding of a TLS connection: exporter keying material (RFC 8446 7.5) with
/// the label `EXPORTER-sessync-peer-auth`; `None` for a plain connection.
pub(crate) fn binding(stream: &Stream) -> io::Result<Option<[u8; sessync_proto::BINDING_LEN]>> {
    let mut out = [0u8; sessync_proto::BINDING_LEN];
    let r = match stream {
        Stream::Plain(_) => return Ok(None),
        Stream::Server(s) => {
            s.get_ref()
                .1
                .export_keying_material(&mut out, sessync_proto::BINDING_LABEL, None)
        }
        Stream::Client(s) => {
            s.get_ref()
                .1
                .export_keying_material(&mut out, sessync_proto::BINDING_LABEL, None)
        }
    };
    r.map_err(invalid)?;
    Ok(Some(out))
}

/// Whether the first bytes a plain port received look like a TLS ClientHello record
/// (content type 22, protocol version 3.x): a TLS client on a plain port.
pub(crate) fn looks_like_tls(first: &[u8]) -> bool {
    first.len() >= 2 && first[0] == 0x16 && first[1] == 0x03
}

/// One WARN line per `every` for a recurring kind of event, with how many were not
/// logged in between: a flood of bad connections cannot flood the log.
pub(crate) struct RateLimitedWarn {
    last: Mutex<Option<(std::time::Instant, u64)>>,
    every: Duration,
}

impl RateLimitedWarn {
    /// One line per `every`.
    pub(crate) const fn new(every: Duration) -> RateLimitedWarn {
        RateLimitedWarn {
            last: Mutex::new(None),
            every,
        }
    }

    /// Logs `msg` unless a line was logged less than `every` ago (then counts it).
    pub(crate) fn warn(&self, msg: std::fmt::Arguments<'_>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match &mut *last {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => *suppressed += 1,
            _ => {
                let suppressed = last.map(|(_, s)| s).unwrap_or(0);
                if suppressed > 0 {
                    tracing::warn!("{msg} ({suppressed} similar lines suppressed)");
                } else {
                    tracing::warn!("{msg}");
                }
                *last = Some((now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(humantime_secs(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(humantime_secs(1_796_083_200), "2026-12-01 00:00:00 UTC");
        assert_eq!(humantime_secs(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
    }

    #[test]
    fn expiry_warns_fourteen_days_ahead() {
        let day = 86_400;
        assert_eq!(expiry(100 * day, 0), Expiry::Valid);
        assert_eq!(expiry(14 * day, 0), Expiry::Valid);
        assert_eq!(expiry(14 * day - 1, 0), Expiry::Soon(13));
        assert_eq!(expiry(3 * day + 5, 0), Expiry::Soon(3));
        assert_eq!(expiry(0, 0), Expiry::Expired);
        assert_eq!(expiry(5, 10), Expiry::Expired);
    }

    #[test]
    fn tls_sniffing() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02]));
        assert!(!looks_like_tls(&[0x00, 0x00, 0x00, 0x20]));
        assert!(!looks_like_tls(&[0x16]));
    }
}
