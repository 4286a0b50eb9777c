//! The handover's table steps: giving a session (COPY, PROMOTE), acknowledging,
//! installing, and claiming a failed owner's copy (protocol.md 11 and 12.3).

use super::*;
use sessync_proto::ClaimBase;

/// A handover this node has under way ([`Table::handover_under_way`]).
#[derive(Debug, Clone, Copy)]
pub struct HandoverUnderWay {
    /// The receiver's advertised address.
    pub to: SocketAddr,
    /// The handover's generation.
    pub transfer: u64,
    /// When it began here (Unix ms).
    pub handed_ms: u64,
}

/// The owner's answer to a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// Here is the session; the asker owns it now.
    Data {
        /// This handover's transfer id.
        transfer: u64,
        /// The nodes that may hold a backup copy of this lineage (the receiver must place
        /// its copy on each before serving; protocol.md 12.4).
        holders: Vec<SocketAddr>,
        /// The session.
        record: SessionRecord,
    },
    /// Handed to another node: ask it.
    Moved(SocketAddr),
    /// No live session here.
    NotFound,
}

/// A session claimed by [`Table::promote_local`], to be replicated and then installed.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The generation it becomes ours under.
    pub generation: u64,
    /// The session.
    pub record: SessionRecord,
    /// The nodes that held copies of it when it was handed over from here (empty for a
    /// backup copy): they must all take the new state before a write is acknowledged.
    pub holders: Box<[SocketAddr]>,
    /// The backup copy claimed (REPLICATE_CLAIM names it); `None` for this node's own
    /// copy (a kept copy, or one it handed over and takes back).
    pub base: Option<ClaimBase>,
}

impl Table {
    /// The handover generation this node remembers for the session (0: none, or created
    /// here): what this node puts in its COPY's `last_transfer`.
    pub fn last_received(&self, id: &SessionId) -> u64 {
        self.shard(id)
            .map
            .get(id)
            .map_or(0, |r| r.value().known_generation())
    }

    /// Whether this node has owned `id` under a generation newer than `had` since its
    /// entry stood at `had`: it owns it now (live, unexpired), or took it over and has
    /// handed it on already (handing over, or forwarding). A backup copy does not count:
    /// holding one says nothing of which lineage owns the session.
    pub fn owned_past(&self, id: &SessionId, had: u64, now: u64) -> bool {
        self.shard(id).map.get(id).is_some_and(|r| match r.value() {
            Entry::Live(l) => !l.expired(now) && l.received > had,
            Entry::HandingOver(h) => h.live.received > had,
            Entry::Forwarded { received, .. } => *received > had,
            _ => false,
        })
    }

    /// The node this node is handing `id` over to and the transfer it was handed under,
    /// while that handover waits for its COPY_ACK (a claim in progress here names this
    /// node itself).
    pub fn handing_over_to(&self, id: &SessionId, now: u64) -> Option<(SocketAddr, u64)> {
        self.shard(id).map.get(id).and_then(|r| match r.value() {
            Entry::HandingOver(h) if !h.live.expired(now) => Some((h.to, h.transfer)),
            _ => None,
        })
    }

    /// The handover of `id` this node has under way and not yet acknowledged, if any.
    pub fn handover_under_way(&self, id: &SessionId, now: u64) -> Option<HandoverUnderWay> {
        self.shard(id).map.get(id).and_then(|r| match r.value() {
            Entry::HandingOver(h) if !h.live.expired(now) => Some(HandoverUnderWay {
                to: h.to,
                transfer: h.transfer,
                handed_ms: h.handed_ms,
            }),
            _ => None,
        })
    }

    /// The giving side of the handover: answers a COPY (`failed_owner` `None`) or a
    /// PROMOTE (`Some(owner the requester could not get it from)`) from `requester`, whose
    /// own entry remembers generation `their_last`. See protocol.md, "The COPY handover"
    /// and "Backups". Runs under the entry's write lock, so a write at this node either
    /// lands before (and is in the copy) or after (and sees MOVED), and two promotions of
    /// one backup copy resolve to one owner.
    pub fn hand_over(
        &self,
        id: &SessionId,
        requester: PeerIdentity,
        their_last: u64,
        failed_owner: Option<SocketAddr>,
        now: u64,
    ) -> CopyOutcome {
        let (requester_node, requester) = (requester.node_id, requester.advertised);
        let shard = self.shard(id);
        let Some(mut r) = shard.map.get_mut(id) else {
            return CopyOutcome::NotFound;
        };
        // `floor`: a generation the transfer must exceed (see the backup arm below).
        let start = |live: Live, holders: Vec<SocketAddr>, floor: u64| {
            let transfer = live.received.max(floor) + 1;
            let record = live.record(id);
            tracing::debug!(session = %id, to = %requester, transfer, version = record.meta.version, "hand_over");
            let h = Entry::HandingOver(Box::new(HandingOver {
                to: requester,
                to_node: requester_node,
                live,
                transfer,
                handed_ms: now,
                claim: false,
            }));
            (
                h,
                CopyOutcome::Data {
                    transfer,
                    holders,
                    record,
                },
            )
        };
        match r.value() {
            Entry::Live(l) if !l.expired(now) => {
                let mut out = CopyOutcome::NotFound;
                self.transform(shard, r.value_mut(), |old| match old {
                    Entry::Live(live) => {
                        let holders = live.backups.to_vec();
                        let (h, o) = start(live, holders, 0);
                        out = o;
                        h
                    }
                    other => other,
                });
                out
            }
            Entry::Backup(b) if !b.live.expired(now) => {
                if failed_owner != Some(b.owner) {
                    // A plain COPY, or a PROMOTE naming another owner: the owner we know of
                    // is alive as far as anyone told us.
                    return CopyOutcome::Moved(b.owner);
                }
                tracing::info!(session = %id, failed = %b.owner, to = %requester, "promoting a backup copy");
                let mut out = CopyOutcome::NotFound;
                self.transform(shard, r.value_mut(), |old| match old {
                    Entry::Backup(b) => {
                        let mut live = b.live;
                        live.meta.version = claim_version(live.meta.version);
                        // This node is the lineage's holder that hands its copy on; the
                        // owner's other holders are unknown here (see protocol.md 12.6).
                        // Past the asker's own generation too: a fence there of an
                        // abandoned claim of the next generation would refuse the copy at
                        // its install, which acknowledges it all the same (seed 25).
                        let (h, o) = start(live, Vec::new(), their_last);
                        out = o;
                        h
                    }
                    other => other,
                });
                out
            }
            Entry::HandingOver(h)
                if h.to == requester && h.to_node == requester_node && !h.live.expired(now) =>
            {
                if their_last >= h.transfer {
                    // The asker already installed this very copy (or a later one) and asks
                    // anew because the session moved on from it: the data kept here is
                    // stale and must never be sent again. Kept all the same until the
                    // COPY_ACK (or the record's deadline): the asker holds its ACK back
                    // until its own holders took the copy, and till then this copy is the
                    // only one outside it. Ended here, the asker handed the session on,
                    // that handover's COPY_DATA was lost, and the asker crashed with the
                    // only copy (simulation seed 10938 with crashes); a new process at its
                    // address re-takes this one instead (PROMOTE, below).
                    CopyOutcome::Moved(h.to)
                } else {
                    // Its reply was lost: the same data again, under the same transfer id.
                    CopyOutcome::Data {
                        transfer: h.transfer,
                        holders: h.live.backups.to_vec(),
                        record: h.live.record(id),
                    }
                }
            }
            // A new process at the receiver's address that knows the handover's generation
            // or a newer one (a client's token named it): the receiver's earlier process did
            // take the copy over, and what it acknowledged went on from there; the copy here
            // is stale and is not re-handed (simulation seed 33331 with crashes: re-handed
            // to the receiver's new process while the lineage's newer holder was cut off,
            // it lost an acknowledged append).
            Entry::HandingOver(h)
                if failed_owner == Some(h.to)
                    && h.to == requester
                    && their_last >= h.transfer
                    && !h.live.expired(now) =>
            {
                tracing::info!(session = %id, to = %requester, transfer = h.transfer, their_last, "not re-handing: the receiver's new process knows a generation past this copy");
                CopyOutcome::Moved(h.to)
            }
            Entry::HandingOver(h)
                if failed_owner == Some(h.to)
                    && (h.to != requester || h.to_node != requester_node)
                    && !h.live.expired(now) =>
            {
                // The node we handed the session to is gone before it took the session
                // over (or restarted: a new process at its address asks, naming its
                // address as the failed owner): it neither acknowledged this handover nor made this node its
                // backup (it REPLICATEs here first, before it serves anything), so nothing
                // was acknowledged past the copy kept here. Hand that copy on instead,
                // under the same generation: it derives from the same state as the copy
                // the receiver may hold, so if that receiver is in fact alive (cut off
                // from the reporter, not dead), the two claims collide at the backups
                // and only the first is accepted (protocol.md 12.2, fencing).
                let transfer = h.transfer;
                tracing::info!(session = %id, failed = %h.to, to = %requester, transfer, "re-handing a copy its receiver never took over");
                // Same state, same charge: only the receiver, the transfer and the
                // version (a claim's jump, see `claim_version`) change.
                let Entry::HandingOver(h) = r.value_mut() else {
                    return CopyOutcome::NotFound;
                };
                h.to = requester;
                h.to_node = requester_node;
                h.transfer = transfer;
                h.handed_ms = now;
                h.live.meta.version = claim_version(h.live.meta.version);
                CopyOutcome::Data {
                    transfer,
                    holders: h.live.backups.to_vec(),
                    record: h.live.record(id),
                }
            }
            Entry::HandingOver(h) if !h.live.expired(now) => CopyOutcome::Moved(h.to),
            Entry::Forwarded { to, until_ms, .. } if now < *until_ms => CopyOutcome::Moved(*to),
            Entry::Fenced { owner, until_ms, .. } if now < *until_ms => CopyOutcome::Moved(*owner),
            _ => CopyOutcome::NotFound,
        }
    }

    /// The giver's last step: `requester` installed transfer `transfer`, so the data goes
    /// and a forwarding tombstone stays until the session's own deadline. Returns the
    /// backups the session had here, to be told to DROP, when the entry changed (a
    /// duplicate or stale ACK changes nothing).
    pub fn ack_handover(
        &self,
        id: &SessionId,
        requester: PeerIdentity,
        transfer: u64,
        now: u64,
    ) -> Option<OldBackups> {
        self.end_handover(id, requester, transfer, true, now)
    }

    /// [`Table::ack_handover`] (`installed`) and [`Table::refuse_handover`].
    fn end_handover(
        &self,
        id: &SessionId,
        requester: PeerIdentity,
        transfer: u64,
        installed: bool,
        now: u64,
    ) -> Option<OldBackups> {
        let (requester_node, requester) = (requester.node_id, requester.advertised);
        let shard = self.shard(id);
        let mut r = shard.map.get_mut(id)?;
        let t = match r.value() {
            Entry::HandingOver(h)
                if h.to == requester && h.to_node == requester_node && h.transfer == transfer =>
            {
                Entry::Forwarded {
                    to: requester,
                    until_ms: h.live.meta().expires_at_ms().max(now + 1),
                    received: if installed {
                        h.live.received
                    } else {
                        h.live.received.saturating_sub(1)
                    },
                    placed: installed,
                }
            }
            _ => return None,
        };
        tracing::debug!(session = %id, to = %requester, transfer, installed, "ack_handover");
        match self.replace(shard, r.value_mut(), t) {
            Entry::HandingOver(h) => Some(OldBackups {
                backups: h.live.backups,
                generation: h.live.received,
            }),
            _ => None,
        }
    }

    /// The new owner's step: installs a session received in COPY_DATA (generation
    /// `transfer`) as live here; a copy not newer than what this node already had is a
    /// duplicate and changes nothing. Returns whether it was installed.
    /// A session moving in is accepted even past the limits: a move adds nothing to the
    /// cluster's total, and refusing it would strand the data mid-handover. A destroyed
    /// tombstone here wins (nothing is resurrected).
    #[cfg(any(test, feature = "testing"))]
    pub fn install(&self, record: &SessionRecord, transfer: u64, now: u64) -> Result<bool, Miss> {
        self.install_as(record, transfer, Landing::Owner(&[]), now)
    }

    /// [`Table::install`], saying what the copy becomes: a live session with these backups
    /// (which already hold it: the new owner replicates *before* it installs, so nothing
    /// is ever served here unprotected, and a reply's token names every backup), or, when
    /// a backup said a newer owner has the session, a forwarding tombstone to it.
    #[cfg(any(test, feature = "testing"))]
    pub fn install_as(
        &self,
        record: &SessionRecord,
        transfer: u64,
        landing: Landing<'_>,
        now: u64,
    ) -> Result<bool, Miss> {
        self.install_over_yielded(record, transfer, landing, &[], &[], now)
    }

    /// [`Table::install_as`], where `yielded` are holders that confirmed this very copy: a
    /// fence here of this generation from one of them (the DROP with which it gave its own
    /// copy of the generation up) is not a copy of this one, so it does not refuse the
    /// install as "not newer". Refused so, the copy was installed nowhere while the rival
    /// had yielded to it (simulation seed 10153 with crashes: the rival's last REPLICATE
    /// and its DROP reached this node while its claim was placed, and only fences were
    /// left). A live backup copy of theirs still refuses it: such a holder may be handing
    /// its copy, with acknowledged writes, to this node (seed 7223 with crashes, with a
    /// first version that let it pass). `yielding` are holders that promised to yield
    /// their own claim of this generation to this copy (they never acknowledged a write
    /// under it): neither their fence nor their copy here refuses it.
    pub fn install_over_yielded(
        &self,
        record: &SessionRecord,
        transfer: u64,
        landing: Landing<'_>,
        yielded: &[SocketAddr],
        yielding: &[SocketAddr],
        now: u64,
    ) -> Result<bool, Miss> {
        let id = record.id;
        if transfer == 0 {
            // No handover has generation 0 (11.1): such a copy is refused, whoever sent it.
            return Ok(false);
        }
        let shard = self.shard(&id);
        let mut live = Live::from_record(record, transfer);
        if live.expired(now) {
            return Err(Miss::NotFound);
        }
        let new = match landing {
            Landing::Owner(backups) => {
                live.backups = backups.into();
                Entry::Live(live)
            }
            // As in `lose_ownership`: `to` may hold this very generation, and the copy is
            // kept below it (`BackupCopy::kept`), not dropped: a claim that lost may hold
            // the last copy there is (seed 29 without crashes: rivals that each lost to
            // another left nothing).
            Landing::Superseded(to) => {
                live.received = transfer.saturating_sub(1);
                Entry::Backup(Box::new(BackupCopy {
                    owner: to,
                    live,
                    kept: true,
                    yielded_to: false,
                    writer: 0,
                    written_ms: 0,
                }))
            }
            Landing::Destroyed => Entry::Destroyed {
                until_ms: live.meta().expires_at_ms().max(now + 1),
            },
        };
        tracing::debug!(session = %id, version = record.meta.version, transfer, "install");
        match shard.map.entry(id) {
            MapEntry::Vacant(v) => {
                self.account_add(shard, &new);
                v.insert(new);
                Ok(true)
            }
            MapEntry::Occupied(mut o) => {
                // Transfer ids are the session's handover generation, which only grows
                // along its one-owner history: a copy whose generation is not newer than
                // what this entry remembers is a resent or delayed duplicate of one this
                // node already installed (and maybe passed on). Installing it would make
                // a second owner.
                let known = match o.get() {
                    Entry::Destroyed { until_ms } if now < *until_ms => return Err(Miss::NotFound),
                    Entry::Fenced {
                        owner, generation, ..
                    } if *generation == transfer && (yielded.contains(owner) || yielding.contains(owner)) => {
                        0
                    }
                    Entry::Backup(b) if b.live.received == transfer && yielding.contains(&b.owner) => 0,
                    e => e.known_generation(),
                };
                if transfer <= known {
                    return Ok(false);
                }
                self.replace(shard, o.get_mut(), new);
                Ok(true)
            }
        }
    }

    /// COPY_REFUSED from `requester`: it did not install the copy handed to it under
    /// `transfer` as its live session (protocol.md 12.4). The handover ends as on
    /// COPY_ACK (the entry forwards to `requester`, and the old backups are returned to be
    /// dropped), but the forwarding entry remembers one generation less, so
    /// [`Table::handed_over_from`] does not count the handover as placed: a write that
    /// went only into the refused copy is not acknowledged.
    pub fn refuse_handover(
        &self,
        id: &SessionId,
        requester: PeerIdentity,
        transfer: u64,
        now: u64,
    ) -> Option<OldBackups> {
        self.end_handover(id, requester, transfer, false, now)
    }

    /// Claims a session locally because `failed_owner`, which owned it, is gone: a backup
    /// copy of that owner's (its generation + 1), or a copy we handed to that owner which it
    /// never took over (a HandingOver it neither acknowledged nor replaced by making us its
    /// backup: it served nothing; the generation skips past the transfer it may hold).
    /// The entry becomes a handover to this node (`me`), so nobody else can claim it, and
    /// the caller replicates the returned copy under the returned generation before it
    /// installs it ([`Table::install_as`]). `None` when there is nothing to claim.
    pub fn promote_local(
        &self,
        id: &SessionId,
        failed_owner: SocketAddr,
        me: PeerIdentity,
        now: u64,
    ) -> Option<Claimed> {
        let shard = self.shard(id);
        let mut r = shard.map.get_mut(id)?;
        match r.value() {
            Entry::Backup(b) if b.owner == failed_owner && !b.live.expired(now) => {}
            Entry::HandingOver(h) if h.to == failed_owner && !h.live.expired(now) => {}
            _ => return None,
        }
        let mut out = None;
        self.transform(shard, r.value_mut(), |old| {
            let (live, generation, base) = match old {
                Entry::Backup(b) => {
                    tracing::info!(session = %id, failed = %failed_owner, "promoting a local backup copy");
                    let g = b.live.received + 1;
                    let base = (!b.kept).then_some(ClaimBase {
                        owner: b.owner,
                        generation: b.live.received,
                        writer: b.writer,
                    });
                    let mut live = b.live;
                    live.meta.version = claim_version(live.meta.version);
                    (live, g, base)
                }
                Entry::HandingOver(h) => {
                    // The same generation as the copy handed over, not the next: if the
                    // receiver is alive after all (cut off, not dead) and took the session
                    // over elsewhere, both claims derive from one state and collide at
                    // the backups, which accept only the first (12.2, fencing).
                    tracing::info!(session = %id, failed = %failed_owner, "taking back a copy its receiver never took over");
                    let mut live = h.live;
                    live.meta.version = claim_version(live.meta.version);
                    (live, h.transfer, None)
                }
                other => return other,
            };
            out = Some(Claimed {
                generation,
                record: live.record(id),
                holders: live.backups.clone(),
                base,
            });
            Entry::HandingOver(Box::new(HandingOver {
                to: me.advertised,
                to_node: me.node_id,
                live,
                transfer: generation,
                handed_ms: now,
                claim: true,
            }))
        });
        out
    }
}

/// The version a claimed copy (a promotion, a take-back, a re-hand: the points where two
/// lineages of one session can branch) continues from: a random jump of up to 2^32 past
/// the current one. Why: each branch then counts in its own range, so a compare-and-set
/// that read its version from one branch cannot match the other branch's by accident
/// (the simulation traced a lost acknowledged append to exactly that). Versions stay
/// strictly increasing along every lineage.
fn claim_version(version: u64) -> u64 {
    let r = SessionId::random().0;
    version.saturating_add(1 + u64::from(u32::from_le_bytes([r[0], r[1], r[2], r[3]])))
}
