//! The table's part of leaving and repair (protocol.md 17): listing what a leaving node
//! still owns or holds, answering LOCATE, and finding sessions whose backups were lost.
//! Read-only scans: every change of an entry still goes through the handover and backup
//! steps of `handover.rs` and `backup.rs`, so their fencing rules apply unchanged.

use std::collections::HashMap;
use std::sync::PoisonError;

use sessync_proto::Role;

use super::*;

impl Table {
    /// The live sessions owned here (not expired), at most `limit`.
    pub fn owned_ids(&self, now: u64, limit: usize) -> Vec<SessionId> {
        self.live_ids_where(now, limit, |_| true)
    }

    /// The live sessions owned here (not expired) that `keep` accepts, at most `limit`: one
    /// scan, inner table by inner table under its read lock.
    fn live_ids_where(&self, now: u64, limit: usize, keep: impl Fn(&LiveNode) -> bool) -> Vec<SessionId> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for lock in shard.map.inners() {
                let g = lock.read().unwrap_or_else(PoisonError::into_inner);
                for n in g.iter_live() {
                    if out.len() >= limit {
                        return out;
                    }
                    if !n.expired(now) && keep(n) {
                        out.push(*n.id());
                    }
                }
            }
        }
        out
    }

    /// Visits every entry that is not a live session (backups, handovers, tombstones):
    /// one scan, inner table by inner table under its read lock.
    fn for_each_other(&self, mut visit: impl FnMut(&SessionId, &Entry)) {
        for shard in self.shards.iter() {
            for lock in shard.map.inners() {
                let g = lock.read().unwrap_or_else(PoisonError::into_inner);
                for (id, e) in g.iter_other() {
                    visit(id, e);
                }
            }
        }
    }

    /// Backup copies held here (not expired), grouped by the owner they came from.
    pub fn backups_by_owner(&self, now: u64) -> HashMap<SocketAddr, Vec<SessionId>> {
        let mut out: HashMap<SocketAddr, Vec<SessionId>> = HashMap::new();
        self.for_each_other(|id, e| {
            if let Entry::Backup(b) = e {
                if !b.live.expired(now) {
                    out.entry(b.owner).or_default().push(*id);
                }
            }
        });
        out
    }

    /// Whether this node holds a backup copy of `id` from `owner` (repair: a copy that is
    /// still the owner's own).
    pub fn holds_backup_from(&self, id: &SessionId, owner: SocketAddr) -> bool {
        let g = self.shard(id).map.read(id);
        matches!(g.find_other(id), Some(Entry::Backup(b)) if b.owner == owner)
    }

    /// Whether this node holds a backup copy of `id` (from any owner).
    pub fn holds_backup(&self, id: &SessionId) -> bool {
        let g = self.shard(id).map.read(id);
        matches!(g.find_other(id), Some(Entry::Backup(_)))
    }

    /// Whether there is any entry for `id` here (live, backup or tombstone). A node with
    /// none never had the session (or restarted since).
    pub fn knows(&self, id: &SessionId) -> bool {
        self.shard(id).map.read(id).contains(id)
    }

    /// If this node's own lineage of `id` is over (it handed the session on, holds a newer
    /// owner's copy, was fenced by one, or destroyed it), the newest generation a copy of
    /// that lineage can have: a backup copy still recorded under this node's name is then
    /// one nobody counts on (the current owner's copies name it), and may be dropped by a
    /// DROP of this generation. `None` while it owns the session or is handing it over (a
    /// handover can still fall back), and when it knows nothing of it.
    pub fn lineage_ended_at(&self, id: &SessionId, now: u64) -> Option<u64> {
        // Only non-live states answer: read in place, nothing materialized.
        let g = self.shard(id).map.read(id);
        match g.find_other(id)? {
            Entry::Forwarded {
                received, until_ms, ..
            } if now < *until_ms => Some(received + 1),
            Entry::Backup(b) if !b.live.expired(now) => Some(b.live.received),
            Entry::Fenced {
                generation, until_ms, ..
            } if now < *until_ms => Some(*generation),
            Entry::Destroyed { until_ms } if now < *until_ms => Some(u64::MAX),
            _ => None,
        }
    }

    /// What this node knows of `id`, for LOCATE: it owns it (the address is `me`), holds a
    /// backup copy from the owner named, handed it over to the node named, or destroyed it
    /// (`me`). Fences say nothing (`None`): they name no live copy.
    ///
    /// A copy this node claimed and is placing on backups before it installs it
    /// (HandingOver to `me`) is answered as owned: it is about to be, and whoever asks
    /// must wait for it. Answered as "handed over to itself", a lookup counted the member
    /// out (a pointer to a member that answered without owning the session leads nowhere
    /// new) and, finding nothing else, answered SESSION_NOT_FOUND for a session that was
    /// being installed (a kill during a drain, tests/elastic.rs).
    pub fn locate(&self, id: &SessionId, me: SocketAddr, now: u64) -> Option<(Role, SocketAddr)> {
        self.locate_generation(id, me, now)
            .map(|(role, addr, _)| (role, addr))
    }

    /// [`Table::locate`] with the newest handover generation of the session known here,
    /// for the LOCATED reply: owned, the one it is owned under; backup, the copy's; handed
    /// over, the one handed on (at least); destroyed, 0.
    pub fn locate_generation(
        &self,
        id: &SessionId,
        me: SocketAddr,
        now: u64,
    ) -> Option<(Role, SocketAddr, u64)> {
        let g = self.shard(id).map.read(id);
        if let Some(n) = g.find_live(id) {
            return (!n.expired(now)).then_some((Role::Owner, me, n.received()));
        }
        match g.find_other(id)? {
            Entry::HandingOver(h) if h.to == me && !h.live.expired(now) => {
                Some((Role::Owner, me, h.transfer))
            }
            Entry::Backup(b) if !b.live.expired(now) => Some((Role::Backup, b.owner, b.live.received)),
            Entry::HandingOver(h) if !h.live.expired(now) => Some((Role::HandedOver, h.to, h.transfer)),
            Entry::Forwarded {
                to,
                until_ms,
                received,
                ..
            } if now < *until_ms => Some((Role::HandedOver, *to, received.saturating_add(1))),
            Entry::Destroyed { until_ms } if now < *until_ms => Some((Role::Destroyed, me, 0)),
            _ => None,
        }
    }

    /// The live sessions owned here that have fewer than `want` backups outside `lost`
    /// (nodes whose copies are gone or unreachable), at most `limit`; and, separately,
    /// how many such sessions there are in all.
    pub fn under_replicated(
        &self,
        lost: &[SocketAddr],
        want: usize,
        now: u64,
        limit: usize,
    ) -> (Vec<SessionId>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        for shard in self.shards.iter() {
            for lock in shard.map.inners() {
                let g = lock.read().unwrap_or_else(PoisonError::into_inner);
                for n in g.iter_live() {
                    if n.expired(now) {
                        continue;
                    }
                    let good = n.backup_addrs().iter().filter(|b| !lost.contains(b)).count();
                    if good < want {
                        total += 1;
                        if out.len() < limit {
                            out.push(*n.id());
                        }
                    }
                }
            }
        }
        (out, total)
    }

    /// The live sessions owned here whose backups include `holder`, at most `limit`.
    pub fn backed_by(&self, holder: SocketAddr, now: u64, limit: usize) -> Vec<SessionId> {
        self.live_ids_where(now, limit, |n| n.backup_addrs().contains(&holder))
    }

    /// The sessions this node is handing over (waiting for the receiver's COPY_ACK) whose
    /// backups include `holder`: the receiver placed its copy there too (12.4), so that
    /// holder's fence is what keeps this node's copy from being handed on again as a
    /// second owner's.
    pub fn handing_over_backed_by(&self, holder: SocketAddr, now: u64) -> Vec<SessionId> {
        let mut out = Vec::new();
        self.for_each_other(|id, e| {
            if let Entry::HandingOver(h) = e {
                if !h.live.expired(now) && h.live.backups.contains(&holder) {
                    out.push(*id);
                }
            }
        });
        out
    }
}
