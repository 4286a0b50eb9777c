//! The COPY_ACKs (and COPY_REFUSEDs) of handovers: those held back while a copy installed here has too few
//! backups ([`Node::receive_copy`], protocol.md 12.4), and the giver's wait for the
//! receiver's ACK before it acknowledges a write that went with the copy.

use super::*;

/// How often a write whose session was handed on meanwhile looks for the receiver's
/// acknowledgement ([`Node::handover_acknowledged`]).
const ACK_POLL: std::time::Duration = std::time::Duration::from_millis(5);

impl Node {
    /// Sends the COPY_ACK held back for `id` ([`Node::receive_copy`]), if any: the copy
    /// installed here now has its backups, or its next owner acknowledged it.
    pub(crate) fn release_held_ack(&self, id: SessionId) {
        if let Some(held) = self.held_acks.take(&id) {
            self.send_held_ack(id, held);
        }
    }

    /// Sends a held COPY_ACK (or COPY_REFUSED), in the background (up to 3 tries until the
    /// giver answers).
    pub(super) fn send_held_ack(&self, id: SessionId, held: HeldAck) {
        tracing::debug!(session = %id, giver = %held.giver, transfer = held.transfer, refused = held.refused, "sending a COPY_ACK held back until backups took the copy");
        self.peers
            .send_until_ok(held.giver, held.message(id), 3, self.config.peer_timeout);
    }

    /// Answers `giver`'s COPY_DATA of `id` (`transfer`) with COPY_REFUSED, in the
    /// background (up to 3 tries until it answers OK): the copy was not installed here as
    /// the live session, so the giver must acknowledge no write that went only into it
    /// (protocol.md 12.4).
    pub(super) fn refuse_copy(&self, giver: SocketAddr, id: SessionId, transfer: u64) {
        let refused = PeerMessage::CopyRefused {
            session_id: id,
            transfer,
        };
        self.peers
            .send_until_ok(giver, refused, 3, self.config.peer_timeout);
    }

    /// [`Node::refuse_copy`], held back as a COPY_ACK is while the copy that made this
    /// one not newer is this node's own claim with holders not settled yet
    /// ([`Node::holders_unsettled`]): refused, the giver ends its handover and fences its
    /// holders, and a crash of this node before any holder took the claim lost the
    /// session (simulation seed 14790 with crashes). Unheard, the giver keeps its copy,
    /// and hands it on again if this node restarts empty; the refusal goes once the
    /// claim's holders have it ([`Node::release_held_ack`]).
    pub(super) fn refuse_copy_once_settled(&self, giver: SocketAddr, id: SessionId, transfer: u64) {
        match self.held_acks.get(&id) {
            // This very refusal, held already (the giver was asked again).
            Some(h) if h.refused && h.giver == giver && h.transfer == transfer => return,
            // Another giver's copy is kept for this claim: that one outlives a crash here.
            Some(_) => return self.refuse_copy(giver, id, transfer),
            None if !self.holders_unsettled(&id) => return self.refuse_copy(giver, id, transfer),
            None => {}
        }
        tracing::info!(session = %id, %giver, transfer, "the claim here has too few holders yet; the refusal waits for them");
        let held = HeldAck {
            giver,
            transfer,
            refused: true,
        };
        for (id, forgotten) in self.held_acks.insert(id, held, now_ms()) {
            self.send_held_ack(id, forgotten);
        }
    }

    /// Sends every COPY_ACK held back for `giver`, which announced it is leaving: its
    /// copies go when it exits all the same, and its drain waits for every ACK.
    pub(super) fn release_held_acks_to(&self, giver: SocketAddr) {
        for (id, held) in self.held_acks.take_all(|h| h.giver == giver) {
            self.send_held_ack(id, held);
        }
    }

    /// [`Node::release_held_ack`] for an id that is gone here (destroyed, rotated away),
    /// waiting for the giver's OK (at most one peer timeout): whether nothing was held or
    /// the giver confirmed.
    pub(super) async fn release_held_ack_now(&self, id: SessionId) -> bool {
        let Some(held) = self.held_acks.take(&id) else {
            return true;
        };
        let deadline = Instant::now() + self.config.peer_timeout;
        match self.peers.request(held.giver, held.message(id), deadline).await {
            Ok(PeerMessage::Ok) => true,
            _ => {
                // Still sent, in the background: unheard, the giver keeps its copy.
                self.send_held_ack(id, held);
                false
            }
        }
    }

    /// Waits, at most one peer timeout, until the receiver of the copy this node handed
    /// on from `generation` acknowledges it.
    pub(super) async fn handover_acknowledged(&self, id: SessionId, generation: u64) -> bool {
        let deadline = Instant::now() + self.config.peer_timeout;
        loop {
            match self.table.handed_over_from(&id, generation) {
                Some(true) => return true,
                Some(false) if Instant::now() < deadline => tokio::time::sleep(ACK_POLL).await,
                _ => return false,
            }
        }
    }
}

impl HeldAck {
    /// The message held back for session `id`.
    fn message(&self, session_id: SessionId) -> PeerMessage {
        let transfer = self.transfer;
        if self.refused {
            PeerMessage::CopyRefused { session_id, transfer }
        } else {
            PeerMessage::CopyAck { session_id, transfer }
        }
    }
}
