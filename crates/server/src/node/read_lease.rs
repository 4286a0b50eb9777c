//! The read lease (protocol.md 12.5): a read of a session whose holders have not had a
//! replication round from here for longer than `--read-lease` first runs one, so a node
//! that lost the session without hearing of it stops serving its old state.

use super::*;

/// How many read leases old a session's last replication round may be for a read to skip
/// waiting for a silent holder ([`Node::renew_read_lease`]); past that it waits (at most
/// a peer timeout).
const SILENT_HOLDER_LEASES: u64 = 3;

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
        if self.renew_read_lease(r.id, &r.value).await {
            LeaseStep::Serve
        } else {
            LeaseStep::ReadAgain
        }
    }

    /// Renews the read lease of the session `s` (`id`) with a replication round. A node
    /// that lost the session without hearing of it (paused, or cut off while a backup
    /// took it over) learns it there, from a holder that knows the newer owner or the
    /// session's tombstone, instead of serving its old state for good (simulation seed
    /// 271). Returns whether the read may be served from here: `false` when the round
    /// ended the copy here (a newer owner, a tombstone, or handed on meanwhile); the read
    /// is then run again, and follows. A round that reached no holder keeps the read
    /// here: reads stay available while the holders are cut off. A holder found silent
    /// within the last peer timeout ([`Peers::silent`](crate::peer_link::Peers)) is
    /// not waited for: the round runs in the background (and keeps that finding fresh
    /// while the holder stays silent) and the read is served, so a paused holder holds
    /// no read up for a peer timeout (tests/drain.rs, a backup node paused). An older
    /// finding is tried again: after a heal nothing may have gone over the link since.
    /// Only for a session whose last round began within [`SILENT_HOLDER_LEASES`] leases
    /// of this read: an older copy is what a node paused or cut off for long holds, and it
    /// must hear from the holders before it serves again (after the heal, its silence
    /// findings may be its own: its requests timed out while it was stopped).
    async fn renew_read_lease(&self, id: SessionId, s: &Served) -> bool {
        Stats::bump(&self.stats.read_lease_rounds);
        let lately = self.config.peer_timeout;
        let lease = self.config.read_lease.as_millis() as u64;
        let recent = s.replication_lag_ms() <= SILENT_HOLDER_LEASES * lease;
        if recent && s.backups.iter().any(|h| self.peers.silent(*h, lately)) {
            let _ = self.refresh.try_send(id);
            return true;
        }
        matches!(self.replicate(id, &[]).await, Replication::Done(_))
    }
}
