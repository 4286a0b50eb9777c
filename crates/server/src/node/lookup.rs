//! Finding a session its token no longer leads to (protocol.md 17.3): the owner the
//! token names does not know it (it drained and left, or restarted empty), no backup the
//! token names has it, or the forwarding pointers end at this node, which does not have
//! it (it restarted since). Then this node asks every other member (LOCATE) and follows
//! the answer through the ordinary paths: COPY from the owner found (or the node it was
//! handed to), or PROMOTE at a holder of a copy whose owner is gone. A lookup never
//! creates or changes a copy by itself, so the fencing rules of sections 11 and 12 apply
//! unchanged. "Not found" is answered only when every member said it does not know the
//! session; a lookup that could not ask everyone fails retryably (OWNER_UNREACHABLE).

use std::sync::atomic::Ordering;

use sessync_proto::Role;

use super::*;

impl Node {
    /// Called where a fetch ends (`fetch_from_peers`, after the failover): when it failed
    /// with "not found" or "owner unreachable", or ended at this node which has no entry
    /// for the session, looks it up among the members. `asked`: the nodes the fetch
    /// already asked (not asked again). Any other outcome is returned as it is.
    pub(super) async fn lookup_if_lost(
        &self,
        id: SessionId,
        result: FetchResult,
        asked: &[SocketAddr],
        backups: &[SocketAddr],
    ) -> FetchResult {
        let lost = match &result {
            Err((ErrorCode::SessionNotFound | ErrorCode::OwnerUnreachable, _)) => true,
            Ok(Fetched::PointsHere) => !self.table.knows(&id),
            _ => false,
        };
        if !lost {
            return result;
        }
        // It may have come here meanwhile (another node handed it to this one while this
        // fetch was under way): then the request is served here.
        let here = |table: &Table| {
            matches!(
                table.locate(&id, self.advertise, now_ms()),
                Some((Role::Owner, _))
            )
        };
        if here(&self.table) {
            return Ok(Fetched::PointsHere);
        }
        // Every member, reachable or not: a member whose link is still backing off after
        // it restarted may be the one that has the session now.
        let members: Vec<SocketAddr> = self
            .lookup_members()
            .into_iter()
            .filter(|m| !asked.contains(m))
            .collect();
        if members.is_empty() {
            return result;
        }
        let unsure = |why: String| -> FetchResult {
            Err((
                ErrorCode::OwnerUnreachable,
                format!("the session's owner does not have it, and {why}; try again"),
            ))
        };
        // Bounded: a flood of tokens for expired sessions costs at most this many
        // broadcasts at once.
        let Ok(Ok(_slot)) =
            tokio::time::timeout(self.config.peer_timeout, self.elastic.lookup_slots.acquire()).await
        else {
            return unsure("too many lookups among members are under way".into());
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
        let mut silent = 0;
        for (&m, reply) in members.iter().zip(replies) {
            match reply {
                Ok(PeerMessage::Located {
                    session_id,
                    role,
                    addr,
                }) if session_id == id => match role {
                    Role::Owner if addr == m => owner = Some(m),
                    Role::HandedOver if addr != self.advertise && !asked.contains(&addr) => {
                        handed = Some(addr)
                    }
                    Role::Backup => copies.push((m, addr)),
                    // Destroyed (or rotated away) there: nothing may bring it back.
                    Role::Destroyed => {
                        return Err((
                            ErrorCode::SessionNotFound,
                            "no such session: it was destroyed".into(),
                        ))
                    }
                    _ => {}
                },
                Ok(PeerMessage::NotFound { .. }) | Ok(PeerMessage::Located { .. }) => {}
                _ => silent += 1,
            }
        }
        tracing::debug!(session = %id, ?owner, ?handed, ?copies, silent, "lookup");
        let found = if let Some(o) = owner.or(handed) {
            self.copy_chain(id, o, true, backups).await.0
        } else if let Some(&(_, failed)) = copies.first() {
            // Copies whose owner is one the fetch found gone (or that does not answer):
            // take one over as a failover would, with PROMOTE naming that owner.
            let holders: Vec<SocketAddr> = copies
                .iter()
                .filter(|(_, o)| *o == failed)
                .map(|(h, _)| *h)
                .collect();
            // Only an owner that does not answer a fresh PING is failed over from here (a
            // slow owner never is, 11.3). One that answers but does not have the session
            // may have destroyed or rotated it (a DROP to this copy may have been lost):
            // a lookup does not bring such a copy back; the repair (16.4) takes over the
            // copies of an owner that restarted empty, after asking everyone.
            // Gone: it does not answer a fresh PING, or it answers but has no entry at
            // all for the session (it restarted empty; asked again with LOCATE, which
            // tells that apart from a session it destroyed: such a copy, whose DROP may
            // have been lost, is never brought back). A slow owner is never failed over
            // from (11.3).
            if failed == self.advertise {
                return unsure("copies of this node's earlier process are taken over by the repair".into());
            }
            let gone = match self
                .peers
                .request(
                    failed,
                    PeerMessage::Locate { session_id: id },
                    Instant::now() + self.config.peer_timeout,
                )
                .await
            {
                Ok(PeerMessage::NotFound { .. }) => true,
                Ok(PeerMessage::Located {
                    role: Role::Destroyed,
                    ..
                }) => {
                    return Err((
                        ErrorCode::SessionNotFound,
                        "no such session: it was destroyed".into(),
                    ))
                }
                Ok(_) => false,
                Err(_) => !self.alive(failed).await,
            };
            if !gone {
                self.copy_chain(id, failed, true, backups).await.0
            } else {
                match self.failover(id, failed, &holders).await {
                    Some(r) => r,
                    None => unsure("no holder of its copy handed it over".into()),
                }
            }
        } else if here(&self.table) {
            Ok(Fetched::PointsHere)
        } else if silent > 0 {
            return unsure(format!("{silent} member(s) did not answer a lookup"));
        } else {
            return result;
        };
        match found {
            Ok(f) => {
                self.elastic.lookups_found.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(session = %id, "found a session its token no longer led to, by a lookup among members");
                Ok(f)
            }
            // Found somewhere, but not fetched: a retry may succeed.
            Err((code, message)) => unsure(format!(
                "a lookup found it but fetching it failed ({code}: {message})"
            )),
        }
    }

    /// The members a lookup asks: every peer of the cluster (the alive members, or the
    /// `--peers` list without membership) and every member the view has not declared dead,
    /// but this node. Leaving members are asked too: a draining node still owns what it
    /// has not handed over yet, and a lookup that skipped it answered SESSION_NOT_FOUND
    /// for a live session during rolling restarts.
    pub(super) fn lookup_members(&self) -> Vec<SocketAddr> {
        let mut members: Vec<SocketAddr> = self.cluster_peers().iter().copied().collect();
        if let Some(m) = self.membership() {
            members.extend(m.not_dead_peers());
        }
        members.sort();
        members.dedup();
        members.retain(|p| *p != self.advertise);
        members
    }

    /// Whether a session whose token names this node, which does not have it, may still
    /// be found elsewhere (a lookup): there are other members.
    pub(super) fn may_look_up(&self) -> bool {
        !self.lookup_members().is_empty()
    }
}
