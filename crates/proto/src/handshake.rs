//! The peer handshake as a sans-IO state machine.
//!
//! Calling order, dialler side: [`Dialler::start`] (send its AUTH_HELLO), then
//! [`Dialler::handle_challenge`] with the AUTH_CHALLENGE (send its AUTH_PROOF, then wait
//! for AUTH_OK). Acceptor side: [`Acceptor::handle_hello`] with the AUTH_HELLO (send its
//! AUTH_CHALLENGE), then [`Acceptor::handle_proof`] with the AUTH_PROOF (send AUTH_OK).
//!
//! Each proof is `HMAC-SHA256(secret[key_id], "sessync-peer-auth" || role || version ||
//! key_id || dialler_nonce || acceptor_nonce || dialler_id || acceptor_id)` where role is
//! 1 for the dialler's proof and 2 for the acceptor's. Both nonces are fresh per attempt,
//! so a recorded handshake does not verify again (replay), and the role byte keeps one
//! side's proof from being sent back as the other's (reflection). The acceptor proves
//! first only over a nonce the dialler chose, and no session data moves before both
//! proofs have verified.

use std::net::SocketAddr;

use hmac::Mac;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::frame::{CRC_LEN, HEADER_LEN, PROTOCOL_VERSION};
use crate::keys::Keyring;
use crate::peer::{PeerMessage, NONCE_LEN, PROOF_LEN};
use crate::wire::MAX_ADDR_LEN;

const CONTEXT: &[u8] = b"sessync-peer-auth";

/// The largest frame (value of the length prefix) a handshake message needs: AUTH_CHALLENGE
/// with an IPv6 address, 115 bytes. Until a peer has proved it knows the secret, its frames
/// are read with this limit rather than `max_frame_len`, so an unauthenticated connection
/// can make a node buffer at most this much.
pub const MAX_HANDSHAKE_FRAME_LEN: u32 = {
    let hello = 16 + 1 + NONCE_LEN + MAX_ADDR_LEN;
    let challenge = 16 + NONCE_LEN + PROOF_LEN + MAX_ADDR_LEN;
    let mut body = if hello > challenge { hello } else { challenge };
    if PROOF_LEN > body {
        body = PROOF_LEN;
    }
    (HEADER_LEN + body + CRC_LEN) as u32
};
const ROLE_DIALLER: u8 = 1;
const ROLE_ACCEPTOR: u8 = 2;

/// Who is on the other end of a link that completed the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's node id (random per process start).
    pub node_id: [u8; 16],
    /// The peer's advertised peer address.
    pub advertised: SocketAddr,
}

/// Why a handshake failed. The link is closed; no session data has moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's proof does not verify: wrong secret, replay or reflection.
    #[error("peer proof does not verify")]
    BadProof,
    /// The peer uses a key id this node does not have.
    #[error("peer key id {0} is unknown")]
    UnknownKey(u8),
    /// The peer sent something other than the next handshake message.
    #[error("unexpected message during the handshake")]
    Unexpected,
    /// The peer claims this node's own id (a connection to ourselves or a reflection).
    #[error("peer claims our own node id")]
    SelfConnection,
}

#[allow(clippy::too_many_arguments)]
fn proof(
    keys: &Keyring,
    key_id: u8,
    role: u8,
    dialler_nonce: &[u8; NONCE_LEN],
    acceptor_nonce: &[u8; NONCE_LEN],
    dialler_id: &[u8; 16],
    acceptor_id: &[u8; 16],
    binding: Option<&[u8; BINDING_LEN]>,
) -> Option<[u8; PROOF_LEN]> {
    let mut mac = keys.mac(key_id)?;
    mac.update(CONTEXT);
    mac.update(&[role, PROTOCOL_VERSION, key_id]);
    mac.update(dialler_nonce);
    mac.update(acceptor_nonce);
    mac.update(dialler_id);
    mac.update(acceptor_id);
    if let Some(b) = binding {
        mac.update(b);
    }
    Some(mac.finalize().into_bytes().into())
}

fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// Length of a channel binding: TLS exporter keying material with the label
/// [`BINDING_LABEL`] and no context (protocol.md, "Transport security").
pub const BINDING_LEN: usize = 32;
/// The TLS exporter label both nodes use to derive the channel binding.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-sessync-peer-auth";

/// The dialling side of one handshake attempt.
#[derive(Debug)]
pub struct Dialler {
    keys: Keyring,
    node_id: [u8; 16],
    nonce: [u8; NONCE_LEN],
    binding: Option<[u8; BINDING_LEN]>,
}

impl Dialler {
    /// Starts a handshake; returns the state and the AUTH_HELLO to send.
    pub fn start(keys: Keyring, node_id: [u8; 16], advertised: SocketAddr) -> (Dialler, PeerMessage) {
        Dialler::start_with_nonce(keys, node_id, advertised, fresh_nonce())
    }

    /// As [`Dialler::start`] with a chosen nonce: for deterministic tests only. A real
    /// handshake MUST use a fresh random nonce.
    pub fn start_with_nonce(
        keys: Keyring,
        node_id: [u8; 16],
        advertised: SocketAddr,
        nonce: [u8; NONCE_LEN],
    ) -> (Dialler, PeerMessage) {
        let hello = PeerMessage::AuthHello {
            node_id,
            key_id: keys.current_id(),
            nonce,
            advertised,
        };
        (
            Dialler {
                keys,
                node_id,
                nonce,
                binding: None,
            },
            hello,
        )
    }

    /// Binds both proofs to the TLS session the handshake runs in: each proof then also
    /// covers `binding` (the session's exporter keying material), so a handshake relayed
    /// between two TLS sessions fails. Both sides must bind, or neither.
    pub fn with_binding(mut self, binding: [u8; BINDING_LEN]) -> Dialler {
        self.binding = Some(binding);
        self
    }

    /// Checks the acceptor's proof; on success returns who it is and the AUTH_PROOF to send.
    pub fn handle_challenge(self, msg: PeerMessage) -> Result<(PeerIdentity, PeerMessage), HandshakeError> {
        let PeerMessage::AuthChallenge {
            node_id,
            nonce,
            proof: theirs,
            advertised,
        } = msg
        else {
            return Err(HandshakeError::Unexpected);
        };
        if node_id == self.node_id {
            return Err(HandshakeError::SelfConnection);
        }
        let key_id = self.keys.current_id();
        let expected = proof(
            &self.keys,
            key_id,
            ROLE_ACCEPTOR,
            &self.nonce,
            &nonce,
            &self.node_id,
            &node_id,
            self.binding.as_ref(),
        )
        .ok_or(HandshakeError::UnknownKey(key_id))?;
        if !bool::from(expected.ct_eq(&theirs)) {
            return Err(HandshakeError::BadProof);
        }
        let ours = proof(
            &self.keys,
            key_id,
            ROLE_DIALLER,
            &self.nonce,
            &nonce,
            &self.node_id,
            &node_id,
            self.binding.as_ref(),
        )
        .ok_or(HandshakeError::UnknownKey(key_id))?;
        Ok((
            PeerIdentity { node_id, advertised },
            PeerMessage::AuthProof { proof: ours },
        ))
    }
}

/// The accepting side of one handshake attempt.
#[derive(Debug)]
pub struct Acceptor {
    keys: Keyring,
    key_id: u8,
    node_id: [u8; 16],
    nonce: [u8; NONCE_LEN],
    peer: PeerIdentity,
    dialler_nonce: [u8; NONCE_LEN],
    binding: Option<[u8; BINDING_LEN]>,
}

impl Acceptor {
    /// Answers an AUTH_HELLO; returns the state and the AUTH_CHALLENGE to send.
    pub fn handle_hello(
        keys: Keyring,
        node_id: [u8; 16],
        advertised: SocketAddr,
        msg: PeerMessage,
    ) -> Result<(Acceptor, PeerMessage), HandshakeError> {
        Acceptor::hello(keys, node_id, advertised, msg, fresh_nonce(), None)
    }

    /// As [`Acceptor::handle_hello`], with both proofs bound to the TLS session the
    /// handshake runs in (see [`Dialler::with_binding`]).
    pub fn handle_hello_bound(
        keys: Keyring,
        node_id: [u8; 16],
        advertised: SocketAddr,
        msg: PeerMessage,
        binding: [u8; BINDING_LEN],
    ) -> Result<(Acceptor, PeerMessage), HandshakeError> {
        Acceptor::hello(keys, node_id, advertised, msg, fresh_nonce(), Some(binding))
    }

    /// As [`Acceptor::handle_hello`] with a chosen nonce: for deterministic tests only.
    pub fn handle_hello_with_nonce(
        keys: Keyring,
        node_id: [u8; 16],
        advertised: SocketAddr,
        msg: PeerMessage,
        nonce: [u8; NONCE_LEN],
    ) -> Result<(Acceptor, PeerMessage), HandshakeError> {
        Acceptor::hello(keys, node_id, advertised, msg, nonce, None)
    }

    fn hello(
        keys: Keyring,
        node_id: [u8; 16],
        advertised: SocketAddr,
        msg: PeerMessage,
        nonce: [u8; NONCE_LEN],
        binding: Option<[u8; BINDING_LEN]>,
    ) -> Result<(Acceptor, PeerMessage), HandshakeError> {
        let PeerMessage::AuthHello {
            node_id: peer_id,
            key_id,
            nonce: dialler_nonce,
            advertised: peer_addr,
        } = msg
        else {
            return Err(HandshakeError::Unexpected);
        };
        if peer_id == node_id {
            return Err(HandshakeError::SelfConnection);
        }
        let ours = proof(
            &keys,
            key_id,
            ROLE_ACCEPTOR,
            &dialler_nonce,
            &nonce,
            &peer_id,
            &node_id,
            binding.as_ref(),
        )
        .ok_or(HandshakeError::UnknownKey(key_id))?;
        let challenge = PeerMessage::AuthChallenge {
            node_id,
            nonce,
            proof: ours,
            advertised,
        };
        let peer = PeerIdentity {
            node_id: peer_id,
            advertised: peer_addr,
        };
        Ok((
            Acceptor {
                keys,
                key_id,
                node_id,
                nonce,
                peer,
                dialler_nonce,
                binding,
            },
            challenge,
        ))
    }

    /// Checks the dialler's proof; on success the link is open and AUTH_OK is sent.
    pub fn handle_proof(self, msg: PeerMessage) -> Result<PeerIdentity, HandshakeError> {
        let PeerMessage::AuthProof { proof: theirs } = msg else {
            return Err(HandshakeError::Unexpected);
        };
        let expected = proof(
            &self.keys,
            self.key_id,
            ROLE_DIALLER,
            &self.dialler_nonce,
            &self.nonce,
            &self.peer.node_id,
            &self.node_id,
            self.binding.as_ref(),
        )
        .ok_or(HandshakeError::UnknownKey(self.key_id))?;
        if !bool::from(expected.ct_eq(&theirs)) {
            return Err(HandshakeError::BadProof);
        }
        Ok(self.peer)
    }
}
