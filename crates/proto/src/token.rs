//! Signed session tokens: the opaque string an application keeps in the user's cookie.
//!
//! # Format
//! URL-safe base64 without padding of:
//! ```text
//! 1   token version (2; version 1, without the generation, is still read)
//! 1   key id of the secret that signed it
//! 16  session id
//! 8   generation: the session's handover generation at the owner when signed
//! 7|19 owner peer address (family 4|6, address, u16 port)
//! 1   backup count, 0..=2
//! ..  that many backup addresses
//! 16  tag: HMAC-SHA256(secret[key id], all bytes above), first 16 bytes
//! ```
//! Verification checks the tag (in constant time) before any other field is used; only the
//! version and key id are looked at first, to choose the key.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::BufMut;
use hmac::Mac;
use subtle::ConstantTimeEq;

use crate::keys::Keyring;
use crate::session::SessionId;
use crate::wire::{addr_len, put_addr, Reader};

/// The token layout version this crate writes (it also reads version 1).
pub const TOKEN_VERSION: u8 = 2;
/// The first layout, without the generation: still accepted, read as generation 0.
const TOKEN_VERSION_1: u8 = 1;
/// Bytes of the generation field (version 2).
const GENERATION_LEN: usize = 8;
/// Bytes of the truncated HMAC tag.
pub const TAG_LEN: usize = 16;
/// Most backup addresses a token may name.
pub const MAX_BACKUPS: usize = 2;
/// Longest binary token: three IPv6 addresses.
const MAX_TOKEN_LEN: usize = 2 + 16 + GENERATION_LEN + 3 * 19 + 1 + TAG_LEN;
/// Longest token string (three IPv6 addresses: 100 bytes, 134 characters of base64url
/// without padding); longer input is rejected before it is decoded, so a string that
/// passes decodes to at most 100 bytes.
pub const MAX_TOKEN_STR_LEN: usize = (4 * MAX_TOKEN_LEN).div_ceil(3);
/// Shortest binary token: a version-1 token, one IPv4 owner, no backups.
const MIN_TOKEN_LEN: usize = 2 + 16 + 7 + 1 + TAG_LEN;

/// What a verified token says: which session, which node owns it, where its backups are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The session.
    pub session_id: SessionId,
    /// The session's handover generation at the owner when the token was signed (0 in a
    /// version-1 token: unknown). A node whose own copy is of an older generation knows
    /// its copy is superseded and fetches the session instead of serving it, so a client
    /// never reads a state older than one it was given.
    pub generation: u64,
    /// The owner node's advertised peer address.
    pub owner: SocketAddr,
    /// Backup nodes' peer addresses, at most [`MAX_BACKUPS`].
    pub backups: Vec<SocketAddr>,
}

/// Why a token string was rejected. Nothing in a rejected token is ever used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Too long, not base64url, or not the token layout.
    #[error("token is malformed")]
    Malformed,
    /// A token version this node does not read.
    #[error("token version {0} is not supported")]
    UnsupportedVersion(u8),
    /// Signed with a key id this node does not have.
    #[error("token key id {0} is unknown")]
    UnknownKey(u8),
    /// The tag does not verify: forged, altered or signed with another secret.
    #[error("token signature does not verify")]
    BadSignature,
}

impl Token {
    /// Signs the token with the ring's current key and encodes it as a cookie-safe string.
    /// Backups beyond [`MAX_BACKUPS`] are not included.
    pub fn sign(&self, keys: &Keyring) -> String {
        let backups = &self.backups[..self.backups.len().min(MAX_BACKUPS)];
        let len = 2
            + 16
            + GENERATION_LEN
            + addr_len(&self.owner)
            + 1
            + backups.iter().map(addr_len).sum::<usize>()
            + TAG_LEN;
        let mut raw = Vec::with_capacity(len);
        raw.put_u8(TOKEN_VERSION);
        raw.put_u8(keys.current_id());
        raw.put_slice(&self.session_id.0);
        raw.put_u64(self.generation);
        put_addr(&mut raw, &self.owner);
        raw.put_u8(backups.len() as u8);
        for b in backups {
            put_addr(&mut raw, b);
        }
        let mut mac = keys.current_mac();
        mac.update(&raw);
        raw.put_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes and verifies a token string. The tag is checked before the fields are read.
    pub fn verify(token: &str, keys: &Keyring) -> Result<Token, TokenError> {
        if token.len() > MAX_TOKEN_STR_LEN {
            return Err(TokenError::Malformed);
        }
        // Decoded on the stack: verification runs on every request and allocates nothing
        // (the backups list only when the token names some).
        let mut buf = [0u8; MAX_TOKEN_LEN + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(token, &mut buf)
            .map_err(|_| TokenError::Malformed)?;
        let raw = &buf[..n];
        if raw.len() < MIN_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let version = raw[0];
        if version != TOKEN_VERSION && version != TOKEN_VERSION_1 {
            return Err(TokenError::UnsupportedVersion(version));
        }
        let mut mac = keys.mac(raw[1]).ok_or(TokenError::UnknownKey(raw[1]))?;
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        mac.update(signed);
        let expected = mac.finalize().into_bytes();
        if !bool::from(expected[..TAG_LEN].ct_eq(tag)) {
            return Err(TokenError::BadSignature);
        }
        // Authentic from here on; the structure is still checked strictly.
        let mut r = Reader::new(&signed[2..]);
        let parse = |r: &mut Reader<'_>| -> Result<Token, crate::error::DecodeError> {
            let session_id = SessionId(r.array()?);
            let generation = if version == TOKEN_VERSION_1 { 0 } else { r.u64()? };
            let owner = r.addr()?;
            let n = usize::from(r.u8()?);
            if n > MAX_BACKUPS {
                return Err(crate::error::DecodeError::Invalid("too many backups".into()));
            }
            let mut backups = Vec::with_capacity(n);
            for _ in 0..n {
                backups.push(r.addr()?);
            }
            r.finish()?;
            Ok(Token {
                session_id,
                generation,
                owner,
                backups,
            })
        };
        parse(&mut r).map_err(|_| TokenError::Malformed)
    }
}
