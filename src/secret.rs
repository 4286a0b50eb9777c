//! Loading (or generating) the cluster secret.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use sessync_proto::Keyring;

/// Reads a secret file. Either one line holding the secret (key id 0), or several
/// `ID=SECRET` lines (ID 0..=255); the first line's key signs, all of them verify.
/// Blank lines and lines starting with `#` are skipped; secrets are at least 16 bytes.
pub(crate) fn load(path: &Path) -> Result<Keyring> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading secret file {}", path.display()))?;
    parse(&text).with_context(|| format!("secret file {}", path.display()))
}

pub(crate) fn parse(text: &str) -> Result<Keyring> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut keys: Vec<(u8, &[u8])> = Vec::new();
    for line in &lines {
        match line.split_once('=') {
            Some((id, secret)) if lines.len() > 1 || id.trim().parse::<u8>().is_ok() => {
                let id: u8 = id
                    .trim()
                    .parse()
                    .with_context(|| format!("key id {id:?} is not 0..=255"))?;
                keys.push((id, secret.trim().as_bytes()));
            }
            _ => keys.push((0, line.as_bytes())),
        }
    }
    let Some(&(current, _)) = keys.first() else {
        bail!("no secret in the file")
    };
    Ok(Keyring::new(current, keys)?)
}

/// A random 256-bit secret for a node that runs alone.
pub(crate) fn generate() -> Keyring {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    // 32 bytes is over the minimum, so this cannot fail; fall back to a fixed-size retry.
    Keyring::single(&secret).unwrap_or_else(|_| generate())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn formats() {
        // protocol.md 8.5: a one-line secret is key id 0, unless the line is `ID=SECRET`.
        assert_eq!(parse("0123456789abcdef0123\n").unwrap().current_id(), 0);
        assert_eq!(parse("5=0123456789abcdef0123\n").unwrap().current_id(), 5);
        let equals = parse("300=0123456789abcdef0123\n").unwrap();
        assert_eq!(equals.current_id(), 0);
        // The whole line is the secret.
        let t = sessync_proto::Token {
            session_id: sessync_proto::SessionId([7; 16]),
            generation: 0,
            owner: "10.0.0.1:7401".parse().unwrap(),
            backups: vec![],
        };
        let whole = sessync_proto::Keyring::single(b"300=0123456789abcdef0123").unwrap();
        assert_eq!(sessync_proto::Token::verify(&t.sign(&equals), &whole), Ok(t));
        let ring = parse("# rotation\n2=new-secret-new-secret\n1=old-secret-old-secret\n").unwrap();
        assert_eq!(ring.current_id(), 2);
        assert!(parse("short").is_err());
        assert!(parse("\n\n").is_err());
        assert!(parse("x=0123456789abcdef0123\n1=0123456789abcdef0123").is_err());
    }
}
