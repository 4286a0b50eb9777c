//! A failover whose answer was lost, completed when the owner it took over from asks.
//!
//! This node sent PROMOTE{failed: F} to a backup B because the copy here was older than
//! a client's token naming F (or it had none), and the answer never came: B may have
//! promoted its copy of F's lineage to us and be handing it here (HandingOver to us), so F's
//! holders refuse F from then on. When F then yields to us and asks us by COPY, the copy
//! here is the superseded one: handed over, it would replace F's acknowledged writes (a
//! transfer of the generation after ours, which F's own fence lets in). So this node first
//! asks B again by COPY (B answers a lost reply with the same copy, 11.4) and installs
//! what B hands over; F gets NOT_FOUND meanwhile and asks again. Simulation seed 32878
//! without crashes: F's acknowledged append was lost so.

use super::*;

impl Node {
    /// The backup this node's unanswered PROMOTE for `id` went to, when that PROMOTE named
    /// `asker` as the failed owner and the live copy here is the one it had when it asked:
    /// the same generation and the same version. A write acknowledged here since (the
    /// version moved on) is in no copy the backup could hand over, so the rule stands
    /// aside and the asker gets the copy here, with that write, as before the rule.
    pub(crate) fn lost_failover_from(&self, id: &SessionId, asker: SocketAddr) -> Option<SocketAddr> {
        let asked = self.unanswered_copies.get(id)?;
        let promote = asked.promote.as_ref().filter(|p| p.failed == asker)?;
        let now = now_ms();
        let unchanged = self.table.live_generation(id, now) == Some(asked.had)
            && promote.live_version.is_some()
            && self.table.live_version(id, now) == promote.live_version;
        unchanged.then_some(asked.giver)
    }

    /// Asks `giver` for `id` again by COPY and installs the copy it hands over, in the
    /// background (one such task per session). Whatever the answer, the unanswered PROMOTE
    /// is forgotten once it is done: the next COPY here is answered from the table again,
    /// so the session is never held back for longer than a peer timeout and a placing.
    pub(crate) fn complete_lost_failover_in_background(self: &Arc<Self>, id: SessionId, giver: SocketAddr) {
        // Bounded by one peer timeout and an install's placing.
        self.one_settling_task(id, move |node| async move {
            let ask = PeerMessage::Copy {
                session_id: id,
                last_transfer: node.table.last_received(&id),
            };
            let answer = node
                .peers
                .request(giver, ask, Instant::now() + node.config.peer_timeout)
                .await;
            match answer {
                Ok(PeerMessage::CopyData {
                    transfer,
                    holders,
                    record,
                }) if record.id == id => {
                    tracing::info!(session = %id, %giver, transfer, "completing a failover whose answer was lost");
                    node.install_copy(giver, transfer, &record, &holders, &[]).await;
                }
                other => {
                    tracing::debug!(session = %id, %giver, answer = %format!("{other:?}").chars().take(60).collect::<String>(), "a lost failover's backup handed nothing over")
                }
            }
            // Forgotten only now: until the copy is installed, a COPY here must not get
            // the superseded copy either.
            let _ = node.unanswered_copies.take(&id);
        });
    }
}
