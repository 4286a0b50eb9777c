//! The cluster secret(s): HMAC-SHA256 keys with ids, for tokens and the peer handshake.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256, the MAC behind tokens and the peer handshake.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes: 128 bits, the strength of the truncated token tag.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a keyring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A secret is shorter than [`MIN_SECRET_LEN`].
    #[error("secret for key id {0} is shorter than {MIN_SECRET_LEN} bytes")]
    TooShort(u8),
    /// Two secrets were given the same key id.
    #[error("key id {0} is given twice")]
    DuplicateId(u8),
    /// The signing key id has no secret.
    #[error("signing key id {0} has no secret")]
    MissingCurrent(u8),
}

/// The cluster's secrets by key id. New tokens and handshakes use the current key; any key
/// in the ring verifies. Rotating a secret: add the new key everywhere, then make it
/// current everywhere, then (after the longest session lifetime) remove the old one.
#[derive(Clone)]
pub struct Keyring {
    current: u8,
    /// Pre-keyed MAC states by id; cloning one skips re-hashing the key per use.
    keys: Vec<(u8, HmacSha256)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

impl Keyring {
    /// A ring with one secret under key id 0.
    pub fn single(secret: &[u8]) -> Result<Keyring, KeyError> {
        Keyring::new(0, [(0, secret)])
    }

    /// A ring of `(key id, secret)` pairs, signing with `current`.
    pub fn new<'a>(
        current: u8,
        secrets: impl IntoIterator<Item = (u8, &'a [u8])>,
    ) -> Result<Keyring, KeyError> {
        let mut keys: Vec<(u8, HmacSha256)> = Vec::new();
        for (id, secret) in secrets {
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::TooShort(id));
            }
            if keys.iter().any(|(k, _)| *k == id) {
                return Err(KeyError::DuplicateId(id));
            }
            // HMAC accepts keys of any length, so this cannot fail.
            let mac = <HmacSha256 as Mac>::new_from_slice(secret).map_err(|_| KeyError::TooShort(id))?;
            keys.push((id, mac));
        }
        if !keys.iter().any(|(k, _)| *k == current) {
            return Err(KeyError::MissingCurrent(current));
        }
        Ok(Keyring { current, keys })
    }

    /// The id new tokens and handshakes are made with.
    pub fn current_id(&self) -> u8 {
        self.current
    }

    /// The key ids in the ring, the current one first.
    pub fn key_ids(&self) -> Vec<u8> {
        let mut ids = vec![self.current];
        ids.extend(self.keys.iter().map(|(k, _)| *k).filter(|k| *k != self.current));
        ids
    }

    /// A 32-byte sub-key of key `id`'s secret for another purpose (`info` names it):
    /// HKDF-Expand (RFC 5869) with the secret as the pseudo-random key, that is
    /// `HMAC-SHA256(secret, info || 0x01)`. `None` if the ring lacks `id`. Used for the
    /// membership datagrams' AEAD key (protocol.md, "Membership").
    pub fn derive_key(&self, id: u8, info: &[u8]) -> Option<[u8; 32]> {
        let mut mac = self.mac(id)?;
        mac.update(info);
        mac.update(&[1]);
        Some(mac.finalize().into_bytes().into())
    }

    /// A fresh MAC state for key `id`, if the ring has it.
    pub(crate) fn mac(&self, id: u8) -> Option<HmacSha256> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, m)| m.clone())
    }

    /// A fresh MAC state for the current key.
    pub(crate) fn current_mac(&self) -> HmacSha256 {
        // `new` guarantees the current id is in the ring.
        self.keys
            .iter()
            .find(|(k, _)| *k == self.current)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.keys[0].1.clone())
    }
}
