//! Certificates made in the test with rcgen: a CA, node certificates naming 127.0.0.1,
//! written to PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use sessync_server::TlsFiles;

/// A certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// A leaf certificate for 127.0.0.1 and "localhost", valid now (or expired in 2001).
    pub fn leaf(&self, cn: &str, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf's cert/key and this CA to `dir/name.{crt,key}` and `dir/name-ca.crt`.
    pub fn files(&self, dir: &Path, name: &str, expired: bool) -> TlsFiles {
        let (cert, key) = self.leaf(name, expired);
        write_files(dir, name, &cert, &key, &self.pem)
    }
}

pub fn write_files(dir: &Path, name: &str, cert: &str, key: &str, ca: &str) -> TlsFiles {
    let f = |ext: &str, body: &str| -> PathBuf {
        let p = dir.join(format!("{name}.{ext}"));
        std::fs::write(&p, body).unwrap();
        p
    };
    TlsFiles {
        cert: f("crt", cert),
        key: f("key", key),
        ca: Some(f("ca.crt", ca)),
    }
}

/// A TLS 1.3 client configuration trusting `ca_pem` and presenting `client`.
pub fn client_config(ca_pem: &str, client: (&str, &str)) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(client.0.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(client.1.as_bytes()).unwrap();
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap(),
    )
}

/// A TLS 1.3 server configuration presenting `cert`, asking for no client certificate.
pub fn server_config(cert: (&str, &str)) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

/// The certificate a TLS server at `addr` presents, as lossy text (its CN appears
/// verbatim), verified against `ca_pem`, presenting `client` as the client certificate.
pub async fn server_cert_text(addr: std::net::SocketAddr, ca_pem: &str, client: (&str, &str)) -> String {
    let config = client_config(ca_pem, client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio::time::timeout(
        super::WAIT,
        tokio_rustls::TlsConnector::from(config)
            .connect(rustls_pki_types::ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    String::from_utf8_lossy(der.as_ref()).to_string()
}
