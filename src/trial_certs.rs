//! `sessync cluster --tls`: a throw-away CA and one certificate per node (rcgen), written
//! to a private temporary directory that is removed when the cluster stops.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use sessync_server::TlsFiles;

/// The generated files: the directory, the CA certificate, and each node's files.
pub(crate) struct TrialCerts {
    pub(crate) dir: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) nodes: Vec<TlsFiles>,
}

impl Drop for TrialCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, body: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(body.as_bytes())?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
    }
}

/// A CA and `n` node certificates for 127.0.0.1 and localhost (valid for 30 days).
pub(crate) fn generate(n: usize) -> Result<TrialCerts> {
    let dir = std::env::temp_dir().join(format!("sessync-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut certs = TrialCerts {
        ca: dir.join("ca.crt"),
        dir,
        nodes: Vec::new(),
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Valid from an hour ago (clocks a little behind) for 30 days.
    let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs.saturating_sub(3600));
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sessync trial cluster CA");
    let until = now + std::time::Duration::from_secs(30 * 86400);
    ca_params.not_before = now;
    ca_params.not_after = until;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(&certs.ca, ca.pem())?;
    for i in 0..n {
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.distinguished_name
            .push(DnType::CommonName, format!("sessync trial node {i}"));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = now;
        p.not_after = until;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        let files = TlsFiles {
            cert: certs.dir.join(format!("node{i}.crt")),
            key: certs.dir.join(format!("node{i}.key")),
            ca: Some(certs.ca.clone()),
        };
        std::fs::write(&files.cert, cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        certs.nodes.push(files);
    }
    Ok(certs)
}
