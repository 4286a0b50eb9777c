//! Finding a session its token no longer leads to (protocol.md 13.3): the owner the
//! token names does not know it (it drained and left, or restarted empty) and no backup
//! the token names has it. Then this node asks every live member (LOCATE) and follows the
//! answer through the ordinary paths: COPY from the owner found, or PROMOTE at a holder of
//! a copy whose owner is gone. A lookup never creates or changes a copy by itself, so the
//! fencing rules of sections 11 and 12 apply unchanged.

use std::sync::atomic::Ordering;

use sessync_proto::Role;

use super::*;

impl Node {
    /// Called where a fetch has failed (`fetch_from_peers`, after the failover): when the
    /// failure says the session was not found or its owner is unreachable, looks it up
    /// among live members. `asked`: the nodes the fetch already asked (they are not asked
    /// again). Any other outcome is returned as it is.
    pub(super) async fn lookup_if_lost(
        &self,
        id: SessionId,
        result: FetchResult,
        asked: &[SocketAddr],
        backups: &[SocketAddr],
    ) -> FetchResult {
        if !matches!(
            &result,
            Err((ErrorCode::SessionNotFound | ErrorCode::OwnerUnreachable, _))
        ) {
            return result;
        }
        let members: Vec<SocketAddr> = self
            .live_members()
            .into_iter()
            .filter(|m| !asked.contains(m))
            .collect();
        if members.is_empty() {
            return result;
        }
        // Bounded: a flood of tokens for expired sessions costs at most this many
        // broadcasts at once; past it, the request fails as it would have without.
        let Ok(_slot) = self.elastic.lookup_slots.try_acquire() else {
            return result;
        };
        self.elastic.lookups.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.config.peer_timeout;
        let replies = futures_util::future::join_all(members.iter().map(|&m| {
            self.peers
                .request(m, PeerMessage::Locate { session_id: id }, deadline)
        }))
        .await;
        let mut owner = None;
        let mut handed = None;
        let mut copies: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        for (&m, reply) in members.iter().zip(replies) {
            if let Ok(PeerMessage::Located {
                session_id,
                role,
                addr,
            }) = reply
            {
                if session_id != id {
                    continue;
                }
                match role {
                    Role::Owner if addr == m => owner = Some(m),
                    Role::HandedOver if addr != self.advertise && !asked.contains(&addr) => {
                        handed = Some(addr)
                    }
                    Role::Backup => copies.push((m, addr)),
                    _ => {}
                }
            }
        }
        tracing::debug!(session = %id, ?owner, ?handed, ?copies, "lookup");
        let found = if let Some(o) = owner.or(handed) {
            self.copy_chain(id, o, true, backups).await.0
        } else if let Some(&(_, failed)) = copies.first() {
            // Copies whose owner is one the fetch found gone (or that is not reachable
            // now): take one over as a failover would, with PROMOTE naming that owner.
            let holders: Vec<SocketAddr> = copies
                .iter()
                .filter(|(_, o)| *o == failed)
                .map(|(h, _)| *h)
                .collect();
            let gone = asked.contains(&failed) || failed == self.advertise || !self.alive(failed).await;
            if !gone {
                self.copy_chain(id, failed, true, backups).await.0
            } else {
                match self.failover(id, failed, &holders).await {
                    Some(r) => r,
                    None => return result,
                }
            }
        } else {
            return result;
        };
        if found.is_ok() {
            self.elastic.lookups_found.fetch_add(1, Ordering::Relaxed);
            tracing::info!(session = %id, "found a session its token no longer led to, by a lookup among members");
            found
        } else {
            result
        }
    }

    /// Whether a session whose token names this node, which does not have it, may still
    /// be found elsewhere (a lookup): there are other live members.
    pub(super) fn may_look_up(&self) -> bool {
        !self.live_members().is_empty()
    }
}
