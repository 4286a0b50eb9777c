//! A backup's table steps and the owner's record of its holders: REPLICATE with
//! fencing, DROP and fences, snapshots for replication, giving a session up
//! (protocol.md 12.2).

use super::*;

/// What a backup did with a REPLICATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replicated {
    /// Stored (or it replaced an older copy). When it replaced this node's own pending
    /// handover to the sender (the sender chose the giver as its backup), the backups the
    /// session had here, which must now be told to DROP.
    Stored(Option<OldBackups>),
    /// The copy held is as new or newer; nothing changed (still OK for the sender).
    Ignored,
    /// This node knows a newer owner: the sender lost the session and must stop serving it.
    Moved(SocketAddr),
    /// This node owns the session itself: the sender must stop serving it.
    OwnedHere,
    /// This node owns the session live under the generation a claim was made from, and
    /// the claimed copy is not its own: a rival lineage of that generation, refused.
    RivalLineage,
    /// The session was destroyed here: nothing is stored, and the sender must not count
    /// this node as holding its write.
    Destroyed,
    /// No room for the copy.
    Capacity,
}

/// What the new owner must tell the old backups after a handover completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldBackups {
    /// The backups the session had here.
    pub backups: Box<[SocketAddr]>,
    /// The generation under which this node owned it (DROP's guard).
    pub generation: u64,
}

/// A live session's state to send to backups.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The owner's generation.
    pub generation: u64,
    /// The session.
    pub record: SessionRecord,
    /// Its current backups.
    pub backups: Box<[SocketAddr]>,
    /// The access time the backups had before this snapshot recorded its own (`None`
    /// without backups): put back when the round renews no read lease
    /// ([`Table::read_lease_not_renewed`]).
    pub replicated_before: Option<u64>,
}

/// What a backup did with a DROP: see [`Table::drop_backup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The sender's copy was replaced by a fence (a tombstone, for RETIRE).
    Fenced,
    /// The sender's copy, which this node's own claim had yielded to, was kept below it
    /// (`BackupCopy::yielded_to`).
    Kept,
    /// No copy of the sender's was held (nothing to do).
    NotHeld,
    /// A newer owner holds the session (the unspecified address: this node itself).
    Newer(SocketAddr),
}

/// The copy a REPLICATE_CLAIM's claim was made from, when it is not this node's own
/// ([`Table::replicate_in_from`]): the claim is of a rival lineage of `base.generation` if
/// this node holds (or is handing over) another copy of that generation.
#[derive(Debug, Clone, Copy)]
pub struct RivalBase {
    /// What the claim names as its base.
    pub base: sessync_proto::ClaimBase,
    /// The tag ([`writer_tag`]) of the process last seen at `base.owner`, if any: a base
    /// written by another is a copy of a process that has been replaced there.
    pub writer_now: Option<u32>,
    /// Whether `base.owner` is this node's own address (the base is a copy an earlier
    /// process here wrote).
    pub here: bool,
}

impl RivalBase {
    /// Whether the base was written by a process that has been replaced at its owner's
    /// address by the one that wrote `writer`'s copy.
    fn written_before(&self, owner: SocketAddr, generation: u64, writer: u32) -> bool {
        let b = &self.base;
        b.owner == owner
            && b.generation == generation
            && b.writer != 0
            && writer != 0
            && b.writer != writer
            && self.writer_now == Some(writer)
    }
}

impl Table {
    /// [`Table::replicate_in_from`] from a process that runs (the table's tests).
    #[cfg(test)]
    pub fn replicate_in(
        &self,
        owner: PeerIdentity,
        generation: u64,
        record: &SessionRecord,
        now: u64,
    ) -> Replicated {
        self.replicate_in_from(owner, generation, record, now, false, None)
    }

    /// A backup's step: stores `record`, sent by `owner`, which owns it under
    /// `generation`. Copies are ordered by (generation, version, last access); an older
    /// one is ignored. A node that handed the session on (or promoted it) to another node
    /// answers with that node when the sender is not it or newer: the sender lost the
    /// session. `sender_gone`: the sender's process is one that another has replaced at
    /// its address since, so this is a late message of a process that is gone
    /// (`peer_link/processes.rs`). `rival_base`: the sender claims a copy of this
    /// generation that is not this node's own (REPLICATE_CLAIM).
    pub fn replicate_in_from(
        &self,
        owner: PeerIdentity,
        generation: u64,
        record: &SessionRecord,
        now: u64,
        sender_gone: bool,
        rival_base: Option<RivalBase>,
    ) -> Replicated {
        let id = record.id;
        let shard = self.shard(&id);
        let order = |g: u64, m: &SessionMeta| (g, m.version, m.last_access_ms);
        let incoming = order(generation, &record.meta);
        let backup_yielded_to = |yielded_to: bool| {
            Entry::Backup(Box::new(BackupCopy {
                owner: owner.advertised,
                live: Live::from_record(record, generation),
                kept: false,
                yielded_to,
                writer: writer_tag(&owner.node_id),
                written_ms: now,
            }))
        };
        let backup = || backup_yielded_to(false);
        if Live::from_record(record, generation).expired(now) {
            return Replicated::Ignored;
        }
        let fits = |extra: usize| {
            let s = self.stats();
            s.sessions + s.backups < self.config.max_sessions && s.bytes + extra <= self.config.max_memory
        };
        let entry = shard.map.entry(id);
        // A late copy whose DROP came first (`late_fence.rs`) is refused, and its sender
        // (long done with the round it belongs to) pointed at itself, as a fence does.
        // Checked under the entry's lock, as the DROP set it.
        if shard.late.refuses(&id, owner.advertised, generation, now) {
            return Replicated::Moved(owner.advertised);
        }
        match entry {
            MapEntry::Vacant(v) => {
                let e = backup();
                if !fits(e.charge()) {
                    return Replicated::Capacity;
                }
                self.account_add(shard, &e);
                v.insert(e);
                Replicated::Stored(None)
            }
            MapEntry::Occupied(mut o) => {
                // The state held here again, from the process that stored it (a round
                // placing it anew, or renewing the owner's read lease): nothing to store,
                // but the owner counts this answer as a confirmation, so its lease runs
                // from now, and a claim of this copy waits that out. Left at the first
                // write, a backup whose owner had just placed the same state again claimed
                // it after waiting out the older lease only, while that owner, cut off, went
                // on serving it, and a destroyed session came back there (simulation seed
                // 42844 with crashes).
                if let Entry::Backup(b) = o.get_mut() {
                    if !sender_gone
                        && !b.kept
                        && !b.live.expired(now)
                        && b.owner == owner.advertised
                        && b.writer == writer_tag(&owner.node_id)
                        && incoming == order(b.live.received, &b.live.meta())
                    {
                        b.written_ms = now;
                        return Replicated::Ignored;
                    }
                }
                let handing_over = matches!(o.get(), Entry::HandingOver(_));
                let handed_to = match o.get() {
                    // An owner here under an older generation than the sender's has been
                    // superseded (the session was handed on or promoted past it while it
                    // was paused or cut off; it cannot have acknowledged anything since,
                    // its holders refuse it): it yields, keeps the newer copy as a backup,
                    // and its own holders are fenced. An older or equal sender is refused.
                    Entry::Live(l) if !l.expired(now) && generation <= l.received => {
                        return Replicated::OwnedHere
                    }
                    // A claim of a rival lineage of this owner's generation (another
                    // owner's copy of it, or this address's earlier process's): it holds
                    // none of the writes this owner acknowledged under it (simulation
                    // seed 16020 without crashes: the claim that lost a tie of two claims
                    // left its copy at a third node, which claimed it a generation up,
                    // and this owner yielded to it with an acknowledged append).
                    Entry::Live(l)
                        if !l.expired(now) && rival_base.map(|r| r.base.generation) == Some(l.received) =>
                    {
                        return Replicated::RivalLineage
                    }
                    // Nor does a dead process's late REPLICATE supersede the owner here:
                    // whatever its claim acknowledged is on the holders that confirmed it,
                    // which answer this owner's next round in its name, and its sender's
                    // address runs a process without it (simulation seed 7096 with crashes:
                    // the owner of 31 yielded to a crashed claimer's copy of 32, and only a
                    // stale owner of 30 was left serving).
                    Entry::Live(l) if sender_gone && !l.expired(now) => return Replicated::OwnedHere,
                    // A copy kept when this node yielded to `b.owner` fences as the
                    // forwarding pointer it stands for: only that owner's copies of its
                    // generation, or newer ones, are taken (another owner's of that
                    // generation is a rival claim).
                    Entry::Backup(b) if b.kept && !b.live.expired(now) => {
                        let theirs = b.live.received + 1;
                        if generation < theirs || (generation == theirs && b.owner != owner.advertised) {
                            return Replicated::Moved(b.owner);
                        }
                        None
                    }
                    // A REPLICATE its sender's process sent before it died (its link
                    // delivered it late) never supersedes another owner's copy: that
                    // owner may be live and have acknowledged writes on it (simulation
                    // seed 11377 with crashes). Elsewhere it is stored as any copy: it
                    // may be all that is left of the dead process's state (seed 26746).
                    Entry::Backup(b)
                        if sender_gone && b.owner != owner.advertised && !b.live.expired(now) =>
                    {
                        return Replicated::Moved(b.owner);
                    }
                    // A claim made from a copy of this generation that the owner's
                    // address wrote before its process was replaced, while this copy is
                    // the replacing process's own of that generation (which may have
                    // acknowledged writes the base lacks): refused, naming that owner,
                    // as the owner itself refuses a rival lineage (protocol.md 12.4;
                    // simulation seed 35328 with crashes: a paused node claimed a
                    // crashed process's copy of 2 while the address's new process owned
                    // 2 anew with an acknowledged append, and this holder took the
                    // claim's copy over it).
                    Entry::Backup(b)
                        if !b.kept
                            && !b.live.expired(now)
                            && generation > b.live.received
                            && rival_base
                                .is_some_and(|r| r.written_before(b.owner, b.live.received, b.writer)) =>
                    {
                        return Replicated::Moved(b.owner)
                    }
                    Entry::Backup(b) if !b.live.expired(now) => {
                        let held = b.live.received;
                        // Fencing: a copy from a superseded generation, or from another
                        // owner claiming the generation this copy holds, is refused, never
                        // reported as stored: its sender must not acknowledge the write.
                        if generation < held || (generation == held && b.owner != owner.advertised) {
                            return Replicated::Moved(b.owner);
                        }
                        // The same owner's older (resent or reordered) state: the copy
                        // held already contains it. Not a copy the address's earlier
                        // process stored (a claim of this generation of its own, taken
                        // over since from another copy): it contains none of this
                        // process's writes, and is replaced. Reported as held, the new
                        // process counted this node as holding an append it never got,
                        // and a failover here later took that earlier copy over
                        // (simulation seed 26289 with crashes). Not for a late message
                        // of that earlier process itself: its older state stays older.
                        let earlier_process = !sender_gone
                            && !b.kept
                            && b.writer != 0
                            && b.writer != writer_tag(&owner.node_id);
                        if incoming <= order(held, &b.live.meta()) && !earlier_process {
                            return Replicated::Ignored;
                        }
                        None
                    }
                    // Two claims of one generation (two backups promoted at once after
                    // their owner failed), ours still replicating: neither can have been
                    // installed (each needs the other's acceptance, and each refuses the
                    // other), so nothing was acknowledged under either, and the higher node
                    // id wins. Without the tie-break both refuse, both give up, and no copy
                    // is left (simulation seed 190).
                    // The copy kept is the rival's this node's claim yielded to
                    // (`BackupCopy::yielded_to`): the claim, still being placed, must not
                    // climb past it (`Node::protect_and_install`).
                    Entry::HandingOver(h)
                        if h.claim && generation == h.transfer && owner.node_id > h.to_node =>
                    {
                        let e = backup_yielded_to(true);
                        self.replace(shard, o.get_mut(), e);
                        return Replicated::Stored(None);
                    }
                    // A holder of the copy being handed over from here claimed that
                    // handover's generation itself (it promoted its backup while this node
                    // looked failed). The receiver places the copy on this copy's holders
                    // before it serves, and a holder refuses a rival of the generation it
                    // claimed, so the receiver acknowledges nothing under this handover
                    // while that claim stands (protocol.md 12.4): the claim wins the tie,
                    // and this node keeps the claim's copy as its backup. Pointing the
                    // claim at the receiver instead made it give up and fence its holders,
                    // though it had acknowledged writes this copy lacks (simulation seed
                    // 6544 without crashes).
                    Entry::HandingOver(h)
                        if !h.claim
                            && generation == h.transfer
                            && owner.advertised != h.to
                            && h.live.backups.contains(&owner.advertised) =>
                    {
                        None
                    }
                    // The node this copy is being handed to claims this address's
                    // earlier process's copy of its generation, not the one handed there:
                    // what it places is not this copy, which may hold writes it lacks,
                    // and it is refused as the live owner refuses it (seed 35328: the
                    // claimer turned the handed copy down as older than its claim). Not
                    // a claim of another node's copy: a backup handing its copy over
                    // under PROMOTE owns nothing, and the claimer may take its own copy
                    // of that owner instead (seed 16597 without crashes, with a first
                    // version of this rule: the claim gave up, and no one owned the
                    // session).
                    Entry::HandingOver(h)
                        if generation == h.transfer
                            && h.to == owner.advertised
                            && rival_base.is_some_and(|r| r.here && r.base.generation == h.live.received) =>
                    {
                        return Replicated::RivalLineage
                    }
                    Entry::HandingOver(h) => Some((h.to, h.transfer)),
                    Entry::Forwarded { to, received, .. } => Some((*to, received + 1)),
                    // A fence refuses every copy of its generation or older (the session
                    // moved past it).
                    Entry::Fenced {
                        owner: fenced,
                        generation: g,
                        until_ms,
                    } if now < *until_ms && generation <= *g => return Replicated::Moved(*fenced),
                    Entry::Destroyed { until_ms } if now < *until_ms => return Replicated::Destroyed,
                    _ => None,
                };
                // The owner this node gave its own copy of the generation up to (a kept
                // copy, or its copy taken when this node yielded): still so.
                let yielded_to = matches!(o.get(), Entry::Backup(b) if b.owner == owner.advertised
                    && ((b.kept && b.live.received.checked_add(1) == Some(generation))
                        || (b.yielded_to && b.live.received == generation)));
                if let Some((to, transfer)) = handed_to {
                    // We handed the session to `to` under `transfer`: the sender is that
                    // node (it installed our copy), or someone who got it later.
                    let newer = generation > transfer || (generation == transfer && to == owner.advertised);
                    if !newer {
                        // The sender's copy is older than the one we handed on. If it went
                        // to the sender itself (which still runs an older lineage) and we
                        // still hold it, the newest copy is here: point the sender at us,
                        // never at itself (a forwarding pointer to oneself strands it).
                        if to == owner.advertised && handing_over {
                            return Replicated::OwnedHere;
                        }
                        return Replicated::Moved(to);
                    }
                }
                let e = backup_yielded_to(yielded_to);
                match self.replace(shard, o.get_mut(), e) {
                    Entry::HandingOver(h) => Replicated::Stored(Some(OldBackups {
                        backups: h.live.backups,
                        generation: h.live.received,
                    })),
                    Entry::Live(l) => {
                        tracing::warn!(session = %id, newer = %owner.advertised, "an owner with a newer generation exists; yielding the session");
                        Replicated::Stored(Some(OldBackups {
                            backups: l.backups,
                            generation: l.received,
                        }))
                    }
                    _ => Replicated::Stored(None),
                }
            }
        }
    }

    /// When `owner` last wrote the backup copy of `id` held here (a REPLICATE stored it, or,
    /// for a kept copy, this node learned `owner` holds a newer one): `None` when the copy
    /// here is not a backup of `owner`'s. The read lease of the owner's last round that
    /// reached this copy ends a lease after it ([`crate::Node`]'s failover waits for that).
    pub fn backup_written_ms(&self, id: &SessionId, owner: SocketAddr) -> Option<u64> {
        let g = self.shard(id).map.read(id);
        match g.find_other(id) {
            Some(Entry::Backup(b)) if b.owner == owner => Some(b.written_ms),
            _ => None,
        }
    }

    /// Since when the backup copy of `id` held here from `owner` has been what `owner`'s
    /// lineage placed here (Unix ms): its last REPLICATE, or 0 for a kept copy (this
    /// node's own older state: `owner` placed nothing here). A holder whose process
    /// changed after this lost what `owner` placed there since, so its confirmation of a
    /// claim of this copy fences nothing.
    pub fn backup_placed_since_ms(&self, id: &SessionId, owner: SocketAddr) -> Option<u64> {
        let g = self.shard(id).map.read(id);
        match g.find_other(id) {
            Some(Entry::Backup(b)) if b.owner == owner => Some(if b.kept { 0 } else { b.written_ms }),
            _ => None,
        }
    }

    /// The generation of the state in a kept copy of `id` held here below `owner`
    /// (`BackupCopy::kept`: one above its `received`), if that is what is held.
    pub fn kept_generation(&self, id: &SessionId, owner: SocketAddr, now: u64) -> Option<u64> {
        let g = self.shard(id).map.read(id);
        match g.find_other(id) {
            Some(Entry::Backup(b)) if b.kept && b.owner == owner && !b.live.expired(now) => {
                Some(b.live.received + 1)
            }
            _ => None,
        }
    }

    /// A backup's step: forgets `owner`'s copy of the session if it is of `generation` or
    /// older (a newer owner's copy stays), leaving a fence (see [`Entry::Fenced`]) so that a
    /// late or stale REPLICATE from that generation is refused rather than stored again.
    /// Returns whether it did.
    pub fn drop_backup(&self, id: &SessionId, owner: SocketAddr, generation: u64, now: u64) -> Dropped {
        self.end_backup(id, owner, generation, now, false)
    }

    /// [`Table::drop_backup`] for a session `owner` destroyed or rotated away (RETIRE,
    /// protocol.md 10): what is left is a tombstone, not a fence, so that the session's
    /// end outlives the owner (a crash of the owner lost it, and a stale copy elsewhere
    /// was taken over: simulation seed 153, a rotated-away id taking writes). A kept copy
    /// of `owner`'s lineage and a fence of its generation become tombstones too.
    pub fn retire_backup(&self, id: &SessionId, owner: SocketAddr, generation: u64, now: u64) -> Dropped {
        self.end_backup(id, owner, generation, now, true)
    }

    /// The body of [`Table::drop_backup`] and [`Table::retire_backup`].
    fn end_backup(
        &self,
        id: &SessionId,
        owner: SocketAddr,
        generation: u64,
        now: u64,
        ended: bool,
    ) -> Dropped {
        let shard = self.shard(id);
        // Nothing of the sender's held: the DROP may have overtaken the REPLICATE it
        // retires, which is refused when it lands (`late_fence.rs`; seeds 39 and 51).
        // Set under the entry's lock, where `replicate_in` reads it.
        let late = || {
            shard.late.add(*id, owner, generation, now);
            Dropped::NotHeld
        };
        let mut o = match shard.map.entry(*id) {
            MapEntry::Vacant(_) => return late(),
            MapEntry::Occupied(o) => o,
        };
        // The rival this node's claim yielded to gave its claim up too: its copy is kept
        // below it, as this node's own would have been ([`Table::lose_ownership`]), so that
        // some copy of the session is left (`BackupCopy::yielded_to`). Changed in place: a
        // kept copy is charged as the backup copy it was.
        if let Entry::Backup(b) = o.get_mut() {
            if !ended && b.yielded_to && b.owner == owner && b.live.received == generation {
                tracing::warn!(session = %id, %owner, generation, "the rival claim this node yielded to gave the session up too; its copy is kept");
                b.live.received = generation.saturating_sub(1);
                b.kept = true;
                b.yielded_to = false;
                b.written_ms = 0;
                return Dropped::Kept;
            }
        }
        let until_ms = match o.get() {
            // A kept copy (`BackupCopy::kept`) holds this node's own state, not the
            // sender's: the sender's DROP (it lost the session too) leaves it, or rivals
            // that yielded to each other fence every copy away (seed 29 without crashes).
            Entry::Backup(b) if b.owner == owner && b.live.received <= generation && (!b.kept || ended) => {
                b.live.meta().expires_at_ms().max(now + 1)
            }
            Entry::Fenced {
                owner: by,
                generation: g,
                until_ms,
            } if ended && now < *until_ms && *by == owner && *g <= generation => *until_ms,
            Entry::Destroyed { until_ms } if ended && now < *until_ms => return Dropped::Fenced,
            // A newer owner's copy, or this node owns or handed on the session since: the
            // sender is not the owner any more, and must not report its DESTROY or ROTATE
            // as done (fencing, like a REPLICATE).
            Entry::Backup(b) if !b.live.expired(now) && b.live.received >= generation && b.owner != owner => {
                return Dropped::Newer(b.owner)
            }
            Entry::Live(l) if !l.expired(now) => return Dropped::Newer(SocketAddr::from(([0, 0, 0, 0], 0))),
            // This node handed the session on (or was fenced by another owner) at a
            // generation the sender's is not newer than: the session moved past it.
            Entry::HandingOver(h) if h.live.received >= generation && h.to != owner => {
                return Dropped::Newer(h.to)
            }
            Entry::Forwarded {
                to,
                received,
                until_ms,
                ..
            } if now < *until_ms && *received >= generation && *to != owner => return Dropped::Newer(*to),
            Entry::Fenced {
                owner: by,
                generation: g,
                until_ms,
            } if now < *until_ms && *by != owner && *g >= generation => return Dropped::Newer(*by),
            _ => return late(),
        };
        let end = if ended {
            Entry::Destroyed { until_ms }
        } else {
            Entry::Fenced {
                owner,
                generation,
                until_ms,
            }
        };
        self.replace(shard, o.get_mut(), end);
        Dropped::Fenced
    }

    /// The live session's state for its backups; also records that its current access
    /// time is being sent (so reads know when the backups lag).
    pub fn snapshot(&self, id: &SessionId, now: u64) -> Option<Snapshot> {
        // In place under the write lock: one copy of the attributes (the record's), the
        // node itself is not rebuilt.
        let mut g = self.shard(id).map.write(id);
        let n = g.find_live_mut(id).filter(|n| !n.expired(now))?;
        let replicated_before = n.note_replicated();
        Some(Snapshot {
            generation: n.received(),
            record: SessionRecord {
                id: *id,
                meta: n.meta(),
                attributes: n.packed(),
            },
            backups: n.backup_addrs().into(),
            replicated_before,
        })
    }

    /// The round that `snap` began renewed no read lease (protocol.md 12.5: no node
    /// answered it): the access time the backups had before it is put back, if the copy
    /// is still the one `snap` was taken of (live under its generation, no round recorded
    /// since).
    pub fn read_lease_not_renewed(&self, id: &SessionId, snap: &Snapshot) {
        let Some(before) = snap.replicated_before else {
            return;
        };
        let mut g = self.shard(id).map.write(id);
        if let Some(n) = g.find_live_mut(id).filter(|n| n.received() == snap.generation) {
            n.replicated_back(snap.record.meta.last_access_ms, before);
        }
    }

    /// Whether this node handed the session on by a COPY (or PROMOTE) from `generation`:
    /// `Some(true)` once the receiver acknowledged it (a write applied here under that
    /// generation is then in the copy the receiver installed), `Some(false)` while it has
    /// not yet, `None` when it did not hand it on from there. (A node that yielded keeps
    /// `received` one below its generation, so it does not count.)
    pub fn handed_over_from(&self, id: &SessionId, generation: u64) -> Option<bool> {
        // Only non-live states count: read in place, nothing materialized.
        let g = self.shard(id).map.read(id);
        match g.find_other(id) {
            Some(Entry::HandingOver(h)) if h.live.received == generation => Some(false),
            // Refused (COPY_REFUSED), the copy did not live on: as if never handed on.
            Some(Entry::Forwarded {
                received,
                placed: true,
                ..
            }) if *received == generation => Some(true),
            _ => None,
        }
    }

    /// The generation under which the session is live here, if it is.
    pub fn live_generation(&self, id: &SessionId, now: u64) -> Option<u64> {
        // Read in place: the attributes are not copied out.
        let g = self.shard(id).map.read(id);
        g.find_live(id).filter(|n| !n.expired(now)).map(|n| n.received())
    }

    /// The version of the live session here (what a write bumps), if it is live.
    pub fn live_version(&self, id: &SessionId, now: u64) -> Option<u64> {
        let g = self.shard(id).map.read(id);
        g.find_live(id).filter(|n| !n.expired(now)).map(|n| n.version())
    }

    /// Records the backups that confirmed the session's copy, if it is still live here
    /// under `generation`.
    pub fn set_backups(&self, id: &SessionId, generation: u64, backups: &[SocketAddr]) {
        let shard = self.shard(id);
        // Checked in place first: the node is rebuilt only when its backups change.
        let changes = shard
            .map
            .read(id)
            .find_live(id)
            .is_some_and(|n| n.received() == generation && n.backup_addrs()[..] != *backups);
        if !changes {
            return;
        }
        if let Some(mut r) = shard.map.get_mut(id) {
            if matches!(r.value(), Entry::Live(l) if l.received == generation && *l.backups != *backups) {
                if let Entry::Live(l) = r.value_mut() {
                    l.backups = backups.into();
                }
            }
        }
    }

    /// Gives this node's live copy of `id` under `generation` up to a rival claim of that
    /// very generation (`owner`'s, whose copy `record` is): the rival's copy is kept as a
    /// backup of `owner`'s, and this copy's holders are returned, to be fenced. Only for a
    /// copy that never acknowledged a write (the caller knows, `node/rival_claims.rs`).
    pub fn yield_to_rival(
        &self,
        owner: PeerIdentity,
        generation: u64,
        record: &SessionRecord,
        now: u64,
    ) -> Option<OldBackups> {
        let id = record.id;
        let shard = self.shard(&id);
        let mut r = shard.map.get_mut(&id)?;
        if !matches!(r.value(), Entry::Live(l) if l.received == generation && !l.expired(now)) {
            return None;
        }
        let copy = Entry::Backup(Box::new(BackupCopy {
            owner: owner.advertised,
            live: Live::from_record(record, generation),
            kept: false,
            yielded_to: true,
            writer: writer_tag(&owner.node_id),
            written_ms: now,
        }));
        tracing::warn!(session = %id, rival = %owner.advertised, generation, "a rival claim of this generation wins the tie; yielding the session");
        match self.replace(shard, r.value_mut(), copy) {
            Entry::Live(l) => Some(OldBackups {
                backups: l.backups,
                generation,
            }),
            _ => None,
        }
    }

    /// Marks the copy of `owner`'s held here under `generation` as the rival claim this
    /// node's own claim of that generation gave itself up to (`BackupCopy::yielded_to`).
    pub fn mark_yielded_to(&self, id: &SessionId, owner: SocketAddr, generation: u64, now: u64) {
        if let Some(mut r) = self.shard(id).map.get_mut(id) {
            if let Entry::Backup(b) = r.value_mut() {
                if b.owner == owner && b.live.received == generation && !b.kept && !b.live.expired(now) {
                    b.yielded_to = true;
                }
            }
        }
    }

    /// The rival and its generation that this node's claim of `id` gave itself up to, if
    /// the copy held here is still that rival's (`BackupCopy::yielded_to`).
    pub fn yielded_to(&self, id: &SessionId, now: u64) -> Option<(SocketAddr, u64)> {
        let g = self.shard(id).map.read(id);
        match g.find_other(id) {
            Some(Entry::Backup(b)) if b.yielded_to && !b.kept && !b.live.expired(now) => {
                Some((b.owner, b.live.received))
            }
            _ => None,
        }
    }

    /// Gives up a session a backup says is owned elsewhere now (`to` promoted it while this
    /// node seemed gone): it becomes a forwarding tombstone, so requests follow it.
    pub fn lose_ownership(&self, id: &SessionId, generation: u64, to: SocketAddr, now: u64) -> bool {
        let shard = self.shard(id);
        let Some(mut r) = shard.map.get_mut(id) else {
            return false;
        };
        if !matches!(r.value(), Entry::Live(l) if l.received == generation && !l.expired(now)) {
            return false;
        }
        tracing::warn!(session = %id, %to, "a backup knows a newer owner; giving the session up");
        // Kept as a copy of `to`'s (see `BackupCopy::kept`): requests are pointed at `to`
        // as by a forwarding pointer. `to` may hold this very generation (a colliding claim
        // that won): its copies must still be accepted here, so only the generation before
        // ours is kept.
        self.transform(shard, r.value_mut(), |old| match old {
            Entry::Live(mut l) => {
                l.received = l.received.saturating_sub(1);
                l.backups = Box::default();
                Entry::Backup(Box::new(BackupCopy {
                    owner: to,
                    live: l,
                    kept: true,
                    yielded_to: false,
                    writer: 0,
                    // `to`'s process that is alive now owns a newer copy: a PROMOTE
                    // naming it failed while it still REPLICATEs here is refused.
                    written_ms: now,
                }))
            }
            other => other,
        });
        true
    }
}
