//! The read lease (protocol.md 12.5): a read of a session whose holders have not had a
//! replication round from here for longer than `--read-lease` first runs one, so a node
//! that lost the session without hearing of it stops serving its old state.

use super::*;

/// How many read leases old a session's last replication round (answered or not) may be
/// for a read whose own round no node answers to be served from the copy
/// ([`Node::renew_read_lease`]); past that the read waits for its round (at most a peer
/// timeout) and is refused when no node answers it. Part of the bound on stale reads that
/// protocol.md 12.5 states, which the simulation's checker uses too.
pub(crate) const STALE_READ_LEASES: u32 = 3;

/// A read whose lease lapsed while one of the session's holders is silent waits for the
/// renewal round at most a peer timeout divided by this ([`Node::renew_read_lease`]):
/// long enough for the live holders' answers (a loopback or same-zone round trip is well
/// under it), short enough that a paused holder does not hold reads up.
const SILENT_HOLDER_WAIT_DIVISOR: u32 = 10;

/// How often a wait for a failed owner's read lease checks whether that owner's process is
/// known to be gone ([`Node::wait_out_old_owner_lease`]).
const LEASE_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);
/// Failed owners whose last probe time is kept, at most (a cluster has a few dozen
/// members; more names come only from peers naming addresses that are not members).
const MAX_OWNER_PROBES: usize = 1024;

impl Node {
    /// The read lease (protocol.md 12.5): whether a read of this session (served here as
    /// `s`) must first renew it ([`Node::renew_read_lease`]): with replicas, its holders
    /// last got a replication round from here longer ago than `--read-lease` (and that
    /// is not zero).
    fn read_lease_lapsed(&self, s: &Served) -> bool {
        let lease = self.config.read_lease.as_millis() as u64;
        lease > 0 && self.config.replicas > 0 && !s.backups.is_empty() && s.replication_lag_ms() > lease
    }

    /// The read lease's step after one pass of a read (GET, TOUCH) that served `found`:
    /// serve it, defer the request (`LocalOnly` may not wait for a renewal), or read again
    /// (the renewal ended the copy here; the second pass follows the newer owner and is
    /// not checked again: a session fetched back here has a fresh lease). `checked`: set
    /// once this read has renewed the lease.
    pub(super) async fn read_lease_step(
        &self,
        mode: Mode,
        found: &Result<Resolved<Served>, SessionFailure>,
        checked: &mut bool,
    ) -> LeaseStep {
        let Ok(r) = found else {
            return LeaseStep::Serve;
        };
        if *checked || !self.read_lease_lapsed(&r.value) {
            return LeaseStep::Serve;
        }
        if mode == Mode::LocalOnly {
            return LeaseStep::Defer;
        }
        *checked = true;
        self.renew_read_lease(r.id, &r.value).await
    }

    /// Renews the read lease of the session `s` (`id`) with a replication round. A node
    /// that lost the session without hearing of it (paused, or cut off while a backup
    /// took it over) learns it there, from a holder that knows the newer owner or the
    /// session's tombstone, instead of serving its old state for good (simulation seed
    /// 271). Returns the read's step: [`LeaseStep::ReadAgain`] when the round ended the
    /// copy here (a newer owner, a tombstone, or handed on meanwhile); the read is then
    /// run again, and follows. A round that reached no holder keeps the read
    /// here (reads stay available while the holders are cut off) unless the copy's last
    /// round began more than [`STALE_READ_LEASES`] leases before and no node answered
    /// this one at all: then the read is refused ([`LeaseStep::Unconfirmed`]), and the
    /// round renews nothing ([`Node::lease_long_lapsed`]). A holder found silent
    /// within the last peer timeout ([`Peers::silent`](crate::peer_link::Peers)) is
    /// waited for only a tenth of a peer timeout: a live holder's tombstone ends the round
    /// within it (simulation seed 492 without crashes: a destroyed session read
    /// back at its old owner while one holder was silent and the other had the
    /// tombstone); past it the read is served and the round runs on in the background (and
    /// keeps that finding fresh while the holder stays silent), so a paused holder holds no
    /// read up for a peer timeout (tests/drain.rs, a backup node paused). An older
    /// finding is tried again: after a heal nothing may have gone over the link since.
    /// Only for a session whose last round began within [`STALE_READ_LEASES`] leases
    /// of this read: an older copy is what a node paused or cut off for long holds, and it
    /// must hear from the holders before it serves again (after the heal, its silence
    /// findings may be its own: its requests timed out while it was stopped).
    async fn renew_read_lease(&self, id: SessionId, s: &Served) -> LeaseStep {
        Stats::bump(&self.stats.read_lease_rounds);
        let lately = self.config.peer_timeout;
        let recent = !self.lapsed_long(s.replication_lag_ms());
        if recent && s.backups.iter().any(|h| self.peers.silent(*h, lately)) {
            // The round is waited for a short while: a live holder that has the session's
            // tombstone answers within it, and that ends the round at once
            // (`replicate_round`); the silent one is not waited for. Cut short, the round
            // (cancel-safe: nothing is applied before it ends) is run again in the
            // background.
            let bound = lately / SILENT_HOLDER_WAIT_DIVISOR;
            return match tokio::time::timeout(bound, self.replicate(id, &[])).await {
                Ok(Replication::Done(_)) => LeaseStep::Serve,
                Ok(_) => LeaseStep::ReadAgain,
                Err(_) => {
                    let _ = self.refresh.try_send(id);
                    LeaseStep::Serve
                }
            };
        }
        match self.replicate(id, &[]).await {
            // A copy this old is what a node paused or cut off for long holds: when no
            // node answered its round at all, any holder may have claimed the session
            // meanwhile (and destroyed it), so the read is not served from it (simulation
            // seed 49365 with crashes: the round after a 22 s pause lost both REPLICATEs
            // and the read returned a session destroyed meanwhile). The client retries;
            // the round did not renew the lease, so the retry runs another. A claim
            // installed here from an old backup copy while no holder answers is refused
            // so too: its access time is the copy's (`tests/unsettled_claim.rs`).
            Replication::Done(b) if !recent && b.heard_from == 0 => {
                Stats::bump(&self.stats.read_lease_refusals);
                LeaseStep::Unconfirmed
            }
            Replication::Done(_) => LeaseStep::Serve,
            _ => LeaseStep::ReadAgain,
        }
    }

    /// Whether the copy `snap` was taken of had had no renewing round for more than
    /// [`STALE_READ_LEASES`] leases when it was taken: what a node paused or cut off
    /// for long holds.
    pub(super) fn lease_long_lapsed(&self, snap: &crate::table::Snapshot) -> bool {
        snap.replicated_before
            .is_some_and(|before| self.lapsed_long(snap.record.meta.last_access_ms.saturating_sub(before)))
    }

    /// Whether a copy whose backups lag `lag_ms` behind its access time had its last
    /// round more than [`STALE_READ_LEASES`] leases ago: the one measure of "old"
    /// that both the read's refusal and the round's put-back use.
    fn lapsed_long(&self, lag_ms: u64) -> bool {
        lag_ms > u64::from(STALE_READ_LEASES) * self.config.read_lease.as_millis() as u64
    }

    /// The answer to a read refused by [`LeaseStep::Unconfirmed`]: the client retries (the
    /// next read runs a round again, which may reach the holders and say whether this
    /// copy is still the owner's).
    pub(super) fn unconfirmed_read(&self, request_id: u64, out: &mut BytesMut) -> After {
        self.error(
            request_id,
            ErrorCode::OwnerUnreachable,
            "no node answered this node's round for its old copy of the session; retry",
            out,
        )
    }
}

/// The other side of the lease: a node about to claim a failed owner's session waits
/// until that owner's reads without asking anyone have ended.
impl Node {
    /// When the read lease of `owner`'s copy of `id` may still be running (Unix ms), if it
    /// may: `owner`'s last replication round that reached the backup copy held here began
    /// before the copy was written, so the lease it gave `owner` ends at most a lease
    /// after that (protocol.md 12.3, "Claims wait out the failed owner's read lease"). `None`
    /// when that time has passed, there is no lease, the copy here is not `owner`'s, or
    /// `owner` is this node, or the process that wrote the copy is known to be gone, and
    /// its lease with it: a newer process of `owner` REPLICATEd here or answered this node
    /// since, or a dial to `owner` was refused since (nothing listened there).
    pub(crate) fn old_owner_lease_ends(&self, id: &SessionId, owner: SocketAddr, now: u64) -> Option<u64> {
        let lease = self.config.read_lease.as_millis() as u64;
        if lease == 0 || self.config.replicas == 0 || owner == self.advertise {
            return None;
        }
        let written = self.table.backup_written_ms(id, owner)?;
        if self.peers.processes.gone_since(owner) > written {
            return None;
        }
        Some(written.saturating_add(lease)).filter(|&ends| ends > now)
    }

    /// Waits until `failed`'s read lease on the backup copy of `id` held here has ended
    /// ([`Node::old_owner_lease_ends`]), so that a local claim of it acknowledges nothing
    /// while `failed`, cut off but alive, may still serve reads of its copy without asking
    /// anyone (a destroyed session read back there: simulation seed 745 without crashes).
    /// Returns whether the claim may go on: `false` when `failed` wrote the copy again
    /// meanwhile (it is alive and acting as the owner).
    pub(super) async fn wait_out_old_owner_lease(&self, id: &SessionId, failed: SocketAddr) -> bool {
        let Some(ends) = self.old_owner_lease_ends(id, failed, now_ms()) else {
            return true;
        };
        let written = self.table.backup_written_ms(id, failed);
        tracing::debug!(session = %id, %failed, wait_ms = ends.saturating_sub(now_ms()), "waiting out the failed owner's read lease before claiming");
        Stats::bump(&self.stats.claims_waited_for_lease);
        // Checked again every [`LEASE_RECHECK`]: news that the owner's process is gone (a
        // refused dial, a new process answering) ends the wait early.
        while self.old_owner_lease_ends(id, failed, now_ms()).is_some() {
            self.probe_failed_owner(failed);
            tokio::time::sleep(LEASE_RECHECK).await;
            if self.table.backup_written_ms(id, failed) != written {
                return false;
            }
        }
        self.table.backup_written_ms(id, failed) == written
    }

    /// Finds out, in the background, whether `owner`'s process is still there: a PING to
    /// it, so that a refused dial or a new process answering ([`Node::old_owner_lease_ends`])
    /// ends a wait for its lease early. At most one per [`LEASE_RECHECK`] per owner.
    pub(crate) fn probe_failed_owner(&self, owner: SocketAddr) {
        let now = now_ms();
        {
            let mut last = self.owner_probes.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: PROMOTE names any address as the failed owner, and a probe older
            // than a recheck decides nothing.
            if last.len() >= MAX_OWNER_PROBES {
                last.retain(|_, at| now.saturating_sub(*at) < LEASE_RECHECK.as_millis() as u64);
            }
            if last.len() >= MAX_OWNER_PROBES && !last.contains_key(&owner) {
                return;
            }
            let at = last.entry(owner).or_insert(0);
            if now.saturating_sub(*at) < LEASE_RECHECK.as_millis() as u64 {
                return;
            }
            *at = now;
        }
        let peers = self.peers.clone();
        let deadline = tokio::time::Instant::now() + self.config.peer_timeout;
        // Not tracked by the shutdown tracker: one request bounded by the peer timeout.
        crate::clock::spawn_keeping_clock(async move {
            let _ = peers.request(owner, PeerMessage::Ping(0), deadline).await;
        });
    }
}
