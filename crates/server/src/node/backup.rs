//! Backups: REPLICATE rounds with fencing (every holder must confirm), DROP, RETIRE and
//! fences (protocol.md 12). Installing a session that became ours behind its replication
//! is `install.rs`; the read lease and the COPY_ACKs live beside it (`read_lease.rs`,
//! `copy_acks.rs`).

use super::holder_restarts::LineageSurvey;
use super::*;
use futures_util::future::Either;
use futures_util::StreamExt;

impl Node {
    /// The nodes that may hold `id`'s backups, best first: its current backups, then
    /// `prefer`, then (with `ranked`) the cluster's peers in rendezvous order of the id (so
    /// every owner of a session tends to pick the same backups, and load spreads evenly).
    /// Never this node. The ranking hashes and sorts every peer, so a write whose current
    /// backups suffice asks for it only when one of them fails.
    pub(super) fn backup_candidates(
        &self,
        id: &SessionId,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
        ranked: bool,
    ) -> Vec<SocketAddr> {
        let order = if ranked {
            super::drain::ranked(id, &self.cluster_peers())
        } else {
            Vec::new()
        };
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in current.iter().chain(prefer).copied().chain(order) {
            if a != self.advertise && !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// Whether enough backup nodes look reachable for a write (links up, or not backing
    /// off after a failure). Checked before a write under [`BackupPolicy::Refuse`].
    pub(super) fn enough_backups(&self) -> bool {
        let want = usize::from(self.config.replicas);
        want == 0
            || self
                .cluster_peers()
                .iter()
                .filter(|p| **p != self.advertise && self.peers.reachable(**p) && !self.is_leaving(**p))
                .count()
                >= want
    }

    /// Sends the session's current state to its backups (and, if they are fewer than
    /// `replicas`, to new ones) and waits for them. Bounded by two peer timeouts.
    pub(super) async fn replicate(&self, id: SessionId, prefer: &[SocketAddr]) -> Replication {
        self.replicate_of(id, prefer, None).await
    }

    /// [`Node::replicate`]; with `of`, only the copy live here under that generation (the
    /// one a write went into): another generation is [`Replication::Replaced`].
    async fn replicate_of(&self, id: SessionId, prefer: &[SocketAddr], of: Option<u64>) -> Replication {
        let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
        let _one_at_a_time = self.replication_locks[stripe].lock().await;
        let Some(snap) = self.table.snapshot(&id, now_ms()) else {
            return Replication::NotHere;
        };
        if of.is_some_and(|g| g != snap.generation) {
            return Replication::Replaced;
        }
        if self.config.replicas == 0 {
            return Replication::Done(Backups {
                confirmed: snap.backups.clone(),
                holders: snap.backups,
                yielding: Box::default(),
                heard_from: 0,
            });
        }
        // A backup the operator removed from the cluster (no longer among its peers) is
        // taken to be gone for good: the one way a node that never answers again stops
        // holding a session's writes up (membership will say so too).
        let cluster = self.cluster_peers();
        let current: Vec<SocketAddr> = if cluster.is_empty() {
            snap.backups.to_vec()
        } else {
            snap.backups
                .iter()
                .copied()
                .filter(|b| cluster.contains(b))
                .collect()
        };
        match self
            .replicate_round(
                id,
                snap.generation,
                &snap.record,
                &current,
                prefer,
                self.unconfirmed_claim_base(&id, snap.generation),
            )
            .await
        {
            // Given up here while the round ran (the peer port stored a newer owner's
            // copy over this one, which lacks what this round placed): the holders'
            // confirmations are of a copy that no longer lives on, so they acknowledge
            // nothing (simulation seed 39269 with crashes: a claim yielded to a newer
            // claim's REPLICATE in the middle of a write's round, whose holders then
            // confirmed it, and the append it acknowledged was lost). A hand-over
            // meanwhile is answered as one before the round (`replicate_write`).
            RoundOutcome::Done(_) if self.table.live_generation(&id, now_ms()) != Some(snap.generation) => {
                tracing::debug!(session = %id, generation = snap.generation, "the copy was given up while its round ran");
                Replication::NotHere
            }
            RoundOutcome::Done(b) => {
                tracing::debug!(session = %id, generation = snap.generation, version = snap.record.meta.version, confirmed = ?b.confirmed, holders = ?b.holders, "replicated");
                self.table.set_backups(&id, snap.generation, &b.holders);
                if b.confirmed.len() >= usize::from(self.config.replicas) {
                    self.release_held_ack(id);
                }
                if b.complete(usize::from(self.config.replicas)) {
                    self.forget_never_acknowledged(id);
                }
                if b.heard_from == 0 && self.lease_long_lapsed(&snap) {
                    // No node answered a round of a copy whose lease had long lapsed (a
                    // node paused or cut off for long): it renews nothing, so the next
                    // read runs a round again (protocol.md 12.5).
                    self.table.read_lease_not_renewed(&id, &snap);
                }
                Replication::Done(b)
            }
            // Still ours here: a backup promoted it meanwhile (or another node claimed
            // it), so we give it up. Not ours any more: we handed it on after the write
            // (which went with it), and the backup has heard from the new owner already.
            RoundOutcome::Superseded {
                to: owner,
                mut placed,
                ..
            } => {
                for b in current.iter() {
                    if !placed.contains(b) {
                        placed.push(*b);
                    }
                }
                self.spawn_fence(id, snap.generation, placed);
                // Given up here: a giver still keeping its copy for this node must not
                // hand it on again later (a held COPY_ACK, if any, goes now).
                self.release_held_ack(id);
                if self.table.lose_ownership(&id, snap.generation, owner, now_ms()) {
                    Replication::Lost(owner)
                } else {
                    Replication::NotHere
                }
            }
            // A later owner of this lineage destroyed (or rotated) it: this copy is stale
            // (this node was paused or cut off meanwhile) and ends here too.
            RoundOutcome::Destroyed { mut placed } => {
                for b in current.iter() {
                    if !placed.contains(b) {
                        placed.push(*b);
                    }
                }
                self.spawn_fence(id, snap.generation, placed);
                tracing::info!(session = %id, generation = snap.generation, "a holder has the session destroyed; ending the copy here");
                self.release_held_ack(id);
                let _ = self.table.destroy(&id, now_ms());
                Replication::NotHere
            }
        }
    }

    /// One REPLICATE round of `record` (owned here under `generation`): every node in
    /// `current` gets it (they may hold older copies of ours), then new candidates until
    /// `replicas` confirmed. The caller holds the session's replication stripe. `base`:
    /// for a claim of a backup copy, the copy claimed (sent as REPLICATE_CLAIM).
    ///
    /// Fencing (protocol.md 12.2): a node in `current` that fails stays a holder, so the
    /// write cannot be acknowledged until it confirms a later state; a new candidate that
    /// failed is a holder only when it may have stored the copy (its reply was lost).
    /// A node that answers MOVED knows a newer owner: the round ends with its batch. One
    /// that answers with the tombstone ends it at once (the rest of the batch is fenced).
    pub(super) async fn replicate_round(
        &self,
        id: SessionId,
        generation: u64,
        record: &sessync_proto::SessionRecord,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
        base: Option<sessync_proto::ClaimBase>,
    ) -> RoundOutcome {
        let want = usize::from(self.config.replicas);
        let overall = Instant::now() + self.config.peer_timeout * 2;
        let mut confirmed: Vec<SocketAddr> = Vec::new();
        let mut heard_from = 0usize;
        let mut holders: Vec<SocketAddr> = Vec::new();
        let mut batch: Vec<SocketAddr> = Vec::with_capacity(current.len());
        for &a in current {
            if a != self.advertise && !batch.contains(&a) {
                batch.push(a);
            }
        }
        let mut candidates = self.backup_candidates(&id, current, prefer, false);
        let mut ranked = false;
        let mut next = batch.len().min(candidates.len());
        let mut first_round = true;
        // Holders that answered VERSION_CONFLICT in this round: a rival copy of this
        // generation that never acknowledged a write, which yields to this one once its
        // own round is over (`Node::answer_rival_copy`).
        let mut yield_promised: Vec<SocketAddr> = Vec::new();
        loop {
            if !first_round {
                if confirmed.len() >= want || Instant::now() >= overall {
                    break;
                }
                if next >= candidates.len() {
                    if ranked {
                        break;
                    }
                    // The current and preferred backups are used up: the rest of the
                    // cluster, in rendezvous order (those already asked are skipped).
                    candidates = self.backup_candidates(&id, current, prefer, true);
                    ranked = true;
                    continue;
                }
                let take = (want - confirmed.len()).min(candidates.len() - next);
                batch = candidates[next..next + take]
                    .iter()
                    .copied()
                    .filter(|c| !holders.contains(c))
                    .collect();
                next += take;
            }
            let is_current = first_round;
            first_round = false;
            if batch.is_empty() {
                continue;
            }
            let deadline = (Instant::now() + self.config.peer_timeout).min(overall);
            let ask = |b: SocketAddr| {
                let record = record.clone();
                let msg = match base {
                    Some(base) => PeerMessage::ReplicateClaim {
                        generation,
                        base,
                        record,
                    },
                    None => PeerMessage::Replicate { generation, record },
                };
                let reply = self.peers.request(b, msg, deadline);
                async move { (b, reply.await) }
            };
            // A batch of one (every write with the default `--replicas 1` whose backup
            // answers) awaits its request in place: `FuturesUnordered` would allocate its
            // queue and a task cell for the request's future on every write.
            let mut replies = std::pin::pin!(if let [only] = batch[..] {
                Either::Left(futures_util::stream::once(ask(only)))
            } else {
                Either::Right(
                    batch
                        .iter()
                        .map(|&b| ask(b))
                        .collect::<futures_util::stream::FuturesUnordered<_>>(),
                )
            });
            let mut superseded: Option<(SocketAddr, bool)> = None;
            let mut destroyed = false;
            let mut answered: Vec<SocketAddr> = Vec::with_capacity(batch.len());
            while let Some((b, reply)) = replies.next().await {
                answered.push(b);
                heard_from += usize::from(reply.is_ok());
                match reply {
                    // A tombstone there: the session was destroyed or rotated away by a
                    // later owner; never install or acknowledge this copy (seed 51).
                    Ok(PeerMessage::NotFound { .. }) => destroyed = true,
                    Ok(PeerMessage::Ok) => {
                        Stats::bump(&self.stats.replicated);
                        confirmed.push(b);
                        holders.push(b);
                    }
                    // A newer owner is known. (A pointer back at this node would mean our
                    // copy is older than one handed to us and not installed yet: the
                    // newest is then where that handover waits, which the sender says by
                    // naming itself; a pointer to ourselves is never followed.)
                    // The node named owns a live copy itself: of this very generation (a
                    // rival, `rival_claims.rs`), this copy, which may have acknowledged
                    // writes, does not give up; it counts the holder as one that did not
                    // confirm. Also when the holder is not the rival but holds its copy:
                    // a holder that restarted since it confirmed this copy forgot it, and
                    // took the rival's (simulation seed 29620 with crashes: this copy
                    // gave up on such a refusal and its acknowledged append was lost).
                    Ok(PeerMessage::Moved { owner, .. })
                        if owner != self.advertise
                            && self.may_have_acknowledged(&id, generation)
                            && self.rival_of_generation(id, owner, generation).await =>
                    {
                        holders.push(b);
                    }
                    // Also for a moved copy still being placed: the rival yielded to it,
                    // so giving up too left no copy anywhere (simulation seed 5541 without
                    // crashes: a moved copy gave up on a MOVED naming a claim of its
                    // generation that had just yielded to it). A claim being placed
                    // climbs a generation past such a holder instead
                    // (`protect_and_install`).
                    //
                    // And for a copy that never acknowledged, when the rival named is
                    // one this batch of the round sent the copy to and its node id is lower: it
                    // yields to this copy by the tie of two claims (12.4) once this
                    // REPLICATE reaches it (simulation seed 40622 without crashes: the
                    // rival was paused; this claim gave up on a holder's MOVED naming
                    // it, and the rival yielded to the claim as it woke).
                    Ok(PeerMessage::Moved { owner, .. })
                        if self
                            .moved_names_a_yielded_rival(id, b, owner, generation, &batch, &yield_promised)
                            .await =>
                    {
                        holders.push(b);
                    }
                    Ok(PeerMessage::Moved { owner, .. }) => {
                        tracing::debug!(session = %id, holder = %b, %owner, generation, "a holder refused the copy, naming a newer owner");
                        superseded = Some(if owner != self.advertise {
                            (owner, false)
                        } else {
                            (b, true)
                        });
                    }
                    other => {
                        if matches!(&other, Ok(PeerMessage::Error(e)) if e.code == sessync_proto::ErrorCode::VersionConflict)
                        {
                            yield_promised.push(b);
                        }
                        Stats::bump(&self.stats.replicate_failures);
                        tracing::debug!(session = %id, backup = %b, "REPLICATE failed: {other:?}");
                        let may_hold = is_current || matches!(other, Err(LinkError::Lost));
                        if may_hold {
                            holders.push(b);
                        }
                    }
                }
                // A tombstone settles the round: it ends without waiting for the rest of
                // the batch (a silent holder would hold it up for a peer timeout, and a
                // read renewing its lease with it, protocol.md 12.5).
                if destroyed && answered.len() < batch.len() {
                    // Those not heard from may hold the copy: they are fenced with the rest.
                    holders.extend(batch.iter().filter(|b| !answered.contains(b)));
                    break;
                }
            }
            if destroyed {
                return RoundOutcome::Destroyed { placed: holders };
            }
            if let Some((to, names_self)) = superseded {
                return RoundOutcome::Superseded {
                    yielded: confirmed.contains(&to),
                    to,
                    placed: holders,
                    names_self,
                };
            }
        }
        match self
            .check_restarted_holders(id, generation, &mut confirmed, &holders)
            .await
        {
            Some(LineageSurvey::Newer(to)) => RoundOutcome::Superseded {
                to,
                placed: holders,
                yielded: false,
                names_self: false,
            },
            Some(LineageSurvey::Destroyed) => RoundOutcome::Destroyed { placed: holders },
            _ => RoundOutcome::Done(Backups {
                confirmed: confirmed.into(),
                holders: holders.into(),
                yielding: yield_promised.into(),
                heard_from,
            }),
        }
    }

    /// After a write applied here: replicates it, and says what the reply may claim.
    /// `Ok(backups)`: acknowledge, with a token naming these backups; `Err(message)`: the
    /// write is applied here but not protected as configured: INDETERMINATE.
    pub(super) async fn replicate_write(
        &self,
        id: SessionId,
        generation: u64,
        served: &[SocketAddr],
    ) -> Result<Box<[SocketAddr]>, String> {
        let want = usize::from(self.config.replicas);
        if want == 0 {
            return Ok(served.into());
        }
        match self.replicate_of(id, &[], Some(generation)).await {
            // Handed over by a COPY meanwhile: the write was applied before, so it is in
            // the copy the next owner got, and that owner places it on this lineage's
            // holders before it serves. (The receiver's claim can still lose to a rival
            // claim that lacks the write: a known gap, protocol.md 12.6.)
            Replication::NotHere if self.table.handed_over_from(&id, generation).is_some() => {
                // Only once the receiver acknowledged it: a receiver that owns a newer
                // state than the one it asked for refuses a late copy
                // ([`Node::install_late_copy`]), and this write is then in no copy that
                // lives on (seed 208 without crashes).
                if self.handover_acknowledged(id, generation).await {
                    Ok(served.into())
                } else {
                    Err("the write was applied at this node, which handed the session on meanwhile; the next owner did not confirm it took that copy: it may be lost".into())
                }
            }
            // Yielded to a newer owner (whose copy does not have this write), destroyed or
            // expired meanwhile: the write was never protected.
            Replication::NotHere => Err(
                "the write was applied at this node, but a newer owner took the session over before the write reached its backups: it may be lost".into(),
            ),
            Replication::Done(b) if b.complete(want) => Ok(b.holders),
            Replication::Done(b) => {
                if self.config.backup_policy == BackupPolicy::Degrade {
                    // Counted only when acknowledged with fewer copies (the counter's
                    // meaning); a refused or INDETERMINATE write is counted apart.
                    Stats::bump(&self.stats.under_replicated_writes);
                    Ok(b.holders)
                } else {
                    Err(format!(
                        "the write is applied at this node, but only {} of the {} backups it needs confirmed it: it is lost if this node dies",
                        b.confirmed.len(),
                        want.max(b.holders.len())
                    ))
                }
            }
            Replication::Lost(to) => Err(format!(
                "another node ({to}) took the session over while this write was being replicated; the write may be lost"
            )),
            // The copy the write went into was replaced before its round: by a newer copy
            // fetched over it (a token newer than this node's stale copy, 12.5), whose
            // round must not acknowledge a write it lacks (simulation seed 2352 without
            // crashes); or it left and came back, which is rare enough to answer as
            // unsure too.
            Replication::Replaced => Err(
                "the write was applied at this node, but its copy was replaced by another before the write reached its backups: it may be lost".into(),
            ),
        }
    }

    /// Tells `backups` to drop their copies of `id` (those of `generation` or older);
    /// returns how many could not be told.
    pub(super) async fn drop_backups(&self, id: SessionId, old: &OldBackups) -> usize {
        self.end_backups(id, old, false).await
    }

    /// [`Node::drop_backups`] for a session destroyed or rotated away here: RETIRE, so
    /// that the holders keep its tombstone, which outlives this node (protocol.md 10).
    pub(super) async fn retire_backups(&self, id: SessionId, old: &OldBackups) -> usize {
        self.end_backups(id, old, true).await
    }

    /// The body of [`Node::drop_backups`] and [`Node::retire_backups`].
    async fn end_backups(&self, id: SessionId, old: &OldBackups, ended: bool) -> usize {
        let deadline = Instant::now() + self.config.peer_timeout;
        let (session_id, generation) = (id, old.generation);
        let replies = futures_util::future::join_all(old.backups.iter().map(|&b| {
            let message = if ended {
                PeerMessage::Retire {
                    session_id,
                    generation,
                }
            } else {
                PeerMessage::Drop {
                    session_id,
                    generation,
                }
            };
            self.peers.request(b, message, deadline)
        }))
        .await;
        replies
            .into_iter()
            .filter(|r| !matches!(r, Ok(PeerMessage::Ok)))
            .count()
    }

    /// Sends a read's newer access time to the session's backups in the background, when
    /// theirs lags by more than a quarter of the idle TTL (so a backup promoted after its
    /// owner died does not expire an active session early by more than that).
    pub(super) fn refresh_backups_if_stale(&self, id: SessionId, s: &Served) {
        if self.config.replicas > 0
            && !s.backups.is_empty()
            && s.replication_lag_ms() > s.meta.idle_ttl_ms / 4
        {
            let _ = self.refresh.try_send(id);
        }
    }

    /// Serves the background refreshes of [`Node::refresh_backups_if_stale`].
    pub(crate) fn refresh_backups(self: &Arc<Self>, id: SessionId) {
        let node = self.clone();
        // Not tracked by the shutdown tracker: a round is bounded by two peer timeouts,
        // and one cut short only leaves a backup's access time older.
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            let _ = node.replicate(id, &[]).await;
        }));
    }

    /// Fences an abandoned copy: tells the nodes that may hold this node's copy of `id`
    /// under `generation` to drop it (they keep a fence), in the background. Why: this node
    /// learned that another owner is newer, so its copy (which may carry writes it never
    /// acknowledged, and lack the newer owner's) must never be promoted by a failover.
    /// A node that cannot be told keeps its copy until it expires or a newer owner's
    /// REPLICATE replaces it.
    pub(super) fn spawn_fence(&self, id: SessionId, generation: u64, nodes: Vec<SocketAddr>) {
        if nodes.is_empty() {
            return;
        }
        let (peers, timeout) = (self.peers.clone(), self.config.peer_timeout);
        // Not tracked by the shutdown tracker: bounded by the peer timeout.
        tracing::debug!(session = %id, generation, holders = ?nodes, "fencing the copies of an abandoned claim");
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            let deadline = Instant::now() + timeout;
            futures_util::future::join_all(nodes.into_iter().map(|b| {
                peers.request(
                    b,
                    PeerMessage::Drop {
                        session_id: id,
                        generation,
                    },
                    deadline,
                )
            }))
            .await;
        }));
    }

    /// Tells a handed-over session's old backups to drop their copies, in the background
    /// (leftovers expire on their own).
    pub(crate) fn spawn_drop_backups(self: &Arc<Self>, id: SessionId, old: OldBackups) {
        if old.backups.is_empty() {
            return;
        }
        let node = self.clone();
        // Not tracked: bounded by the peer timeout, and a DROP not sent leaves a copy that
        // expires on its own (and that fencing refuses to promote past the new owner).
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            node.drop_backups(id, &old).await;
        }));
    }
}
