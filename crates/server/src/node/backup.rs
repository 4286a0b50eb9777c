//! Backups: installing a session that became ours behind its replication, REPLICATE
//! rounds with fencing (every holder must confirm), DROP, RETIRE and fences (protocol.md
//! 12). The read lease and the COPY_ACKs live beside it (`read_lease.rs`, `copy_acks.rs`).

use super::holder_restarts::LineageSurvey;
use super::*;

impl Node {
    /// Installs a session handed over by `from`, places its copy on every node of
    /// `holders` (the giver's backups: they hold older copies of this lineage, which a
    /// failover could otherwise promote) and more backups if they are too few
    /// (preferring `prefer`), and acknowledges it, so `from` can drop its copy. Also used
    /// for a COPY_DATA that arrived after its request gave up: the sender handed the
    /// session to us, so it must be installed. A holder's refusal is real here.
    pub(crate) async fn install_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
        prefer: &[SocketAddr],
    ) {
        self.receive_copy(from, transfer, record, holders, prefer, &[])
            .await
    }

    /// A COPY_DATA that came after its COPY gave up (the peer link's or the simulated
    /// network's late reply). Installed as [`Node::install_copy`] does, unless this node
    /// has owned the session under a newer generation than it had when it asked (it owns
    /// it, or has handed it on since): it took the session over some other way meanwhile
    /// (a failover, a re-handed copy), fenced at the holders, so the giver's copy holds
    /// nothing acknowledged that that lineage lacks, and installing it would make a rival
    /// owner that throws acknowledged writes away (simulation seed 13 without crashes: the
    /// giver, paused mid-fetch, answered 2.7 s late and its copy replaced a live one
    /// holding an acknowledged append; `tests/partition.rs` seed 19: the late copy landed
    /// after this node had handed its own newer copy on, and lived beside it). Such a copy is not
    /// acknowledged either: the giver, still handing it here, then acknowledges no write
    /// that went only into it (seed 208 without crashes), and points here.
    pub(crate) async fn install_late_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
    ) {
        let id = record.id;
        if let Some(had) = self.unanswered_copy_to(id, from) {
            if self.table.owned_past(&id, had, now_ms()) {
                tracing::info!(session = %id, %from, transfer, had, "a late COPY_DATA of a state older than this node's own since it asked; not installed, not acknowledged");
                return;
            }
        }
        self.install_copy(from, transfer, record, holders, &[]).await;
    }

    /// Remembers that a COPY for `id` to `giver` got no reply in time, sent while this
    /// node's entry had generation `had`: a late COPY_DATA is weighed against it. Bounded
    /// ([`memo::SessionMemo`]): entries older than a minute go first.
    pub(super) fn unanswered_copy(&self, id: SessionId, giver: SocketAddr, had: u64) {
        // Forgetting one costs a refusal not made (protocol.md 12.4): dropped.
        let _ = self
            .unanswered_copies
            .insert(id, UnansweredCopy { giver, had }, now_ms());
    }

    /// What this node had when its unanswered COPY for `id` went to `from`, if one did.
    /// Kept after it is read (until a newer ask replaces it, or it ages out): a COPY that
    /// the network duplicated is answered twice, and the second late COPY_DATA must meet
    /// the same refusal as the first.
    fn unanswered_copy_to(&self, id: SessionId, from: SocketAddr) -> Option<u64> {
        self.unanswered_copies
            .get(&id)
            .filter(|u| u.giver == from)
            .map(|u| u.had)
    }

    /// [`Node::install_copy`] for a copy the backup `from` handed over under PROMOTE: it
    /// is handing the session to us and owns nothing, so a holder that names it as the
    /// newer owner answers from a fence or kept copy of an abandoned claim, and the claim
    /// climbs a generation ([`Node::protect_and_install`], `stale`).
    pub(super) async fn install_promoted_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
        prefer: &[SocketAddr],
    ) {
        self.receive_copy(from, transfer, record, holders, prefer, &[from])
            .await
    }

    /// The body of [`Node::install_copy`] and [`Node::install_promoted_copy`].
    async fn receive_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
        prefer: &[SocketAddr],
        stale: &[SocketAddr],
    ) {
        // A copy handed over under PROMOTE (`stale` names its giver) is a claim.
        let claim = !stale.is_empty();
        if transfer == 0 {
            // No handover has generation 0 (protocol.md 11.1): not installed, replicated
            // or acknowledged.
            tracing::warn!(%from, session = %record.id, "a peer sent COPY_DATA with transfer id 0; ignored");
            return;
        }
        // The giver first: it is alive (it just answered), and as our backup it is where
        // anyone who finds us gone looks first (it named us in MOVED).
        let mut first = vec![from];
        first.extend_from_slice(prefer);
        let current: Vec<SocketAddr> = holders
            .iter()
            .copied()
            .filter(|h| *h != self.advertise && *h != from)
            .collect();
        // The giver cannot hand its older copy on (nor take it back) once it, or every
        // node that holds its lineage's backups, holds ours: such a claim collides with
        // our copy there (protocol.md 12.4). Otherwise it must hear our ACK first, except
        // while the ACK is held back (below): then the giver may still hand its copy on
        // to a node that reports us gone, a risk taken so that its copy outlives a crash
        // of ours.
        let landed = self
            .protect_and_install(transfer, record, &current, &first, stale, claim)
            .await;
        // A copy not installed as the live session is answered COPY_REFUSED, not COPY_ACK,
        // when the giver would take the ACK for more than "stop offering it": the giver
        // acknowledges a write that went only into this copy once it hears the ACK
        // (protocol.md 12.2 step 2), and what lives on here does not have it. The refusal
        // ends the handover at the giver all the same (a giver left handing over keeps a
        // stale copy that can come back: seed 3642). Two cases:
        // - a holder named a newer owner (not the giver): the copy is kept here below
        //   that owner's generation (12.2). Simulation seed 1104 without crashes: the ACK
        //   of a copy kept this way acknowledged an append that the rival claim's lineage,
        //   which went on, did not have.
        // - another copy of this generation was installed here first (another request's
        //   fetch, a failover's PROMOTE), so this one is refused as not newer. Simulation
        //   seed 403: a promoted backup copy was installed, then the live owner's copy of
        //   the same generation was refused but acknowledged, and its append was lost.
        let placed = match landed {
            Landed::Owner(placed) => placed,
            // Without backups a write is acknowledged without waiting for any ACK.
            Landed::NotNewer if self.config.replicas == 0 => None,
            Landed::NotNewer => {
                tracing::info!(session = %record.id, %from, transfer, "another copy of this generation was installed here first; this one is refused");
                return self.refuse_copy(from, record.id, transfer);
            }
            Landed::Elsewhere => match self.table.locate(&record.id, self.advertise, now_ms()) {
                Some((sessync_proto::Role::Backup, owner)) if owner != from && owner != self.advertise => {
                    tracing::info!(session = %record.id, %from, %owner, transfer, "the copy lost to a newer owner at a holder; kept, and refused");
                    return self.refuse_copy(from, record.id, transfer);
                }
                _ => None,
            },
        };
        let giver_is_fenced = match &placed {
            Some(backups) => {
                backups.confirmed.contains(&from)
                    || (!current.is_empty() && current.iter().all(|h| backups.confirmed.contains(h)))
            }
            None => true,
        };
        // Installed while too few backups took the copy (the giver among none of them):
        // the giver's copy, kept while it hands the session here, is then the only other
        // one, so the ACK waits until backups have ours ([`Node::release_held_ack`]).
        // Acknowledged at once, one crash of this node lost the session (simulation
        // seed 59: installed with no backup, acknowledged, crashed; the giver had
        // dropped its copy). Until then the giver answers MOVED to this node, and if
        // this node restarts empty, it hands its copy on again (protocol.md 12.4). Not
        // from a giver that is leaving: its copy goes when it exits all the same, and its
        // drain waits for every ACK (tests/drain.rs, a backup node paused).
        if let Some(backups) = &placed {
            if backups.confirmed.len() < usize::from(self.config.replicas)
                && !backups.confirmed.contains(&from)
                && !self.is_leaving(from)
            {
                tracing::info!(session = %record.id, %from, transfer, confirmed = backups.confirmed.len(), "installed with too few backups; the COPY_ACK waits for them");
                let held = HeldAck {
                    giver: from,
                    transfer,
                };
                for (id, forgotten) in self.held_acks.insert(record.id, held, now_ms()) {
                    self.send_held_ack(id, forgotten);
                }
                // Gone here, or the giver leaving, since the install (a DESTROY or a
                // TAKE on another task in between found nothing held): sent now.
                let still_ours = matches!(
                    self.table.locate(&record.id, self.advertise, now_ms()),
                    Some((sessync_proto::Role::Owner, _))
                );
                if !still_ours || self.is_leaving(from) {
                    self.release_held_ack(record.id);
                }
                return;
            }
        }
        // The ACK is sent even when the install was refused (a destroyed tombstone here):
        // the sender must not keep offering the data. It goes after the backups have the
        // copy: the sender then drops its own backups.
        let ack = PeerMessage::CopyAck {
            session_id: record.id,
            transfer,
        };
        let timeout = self.config.peer_timeout;
        if giver_is_fenced {
            // Up to 3 tries until the giver answers OK, without a task while its link is
            // up (queued on the link at once, its reply checked there). Bounded (3 x peer
            // timeout), and a lost ACK only leaves the giver answering MOVED to us until
            // it expires.
            self.peers.send_until_ok(from, ack, 3, timeout);
        } else {
            // The giver is not our backup, so until it hears our ACK it would hand its
            // (older) copy on to anyone who reports us gone: it must hear it before we
            // serve anything from this session.
            for _ in 0..3 {
                if let Ok(PeerMessage::Ok) = self
                    .peers
                    .request(from, ack.clone(), Instant::now() + timeout)
                    .await
                {
                    return;
                }
            }
        }
    }

    /// Makes a session that becomes ours under `generation` safe, then installs it: with
    /// replicas, its copy goes to backups (preferring `prefer`) *before* it is installed,
    /// so no request is served from it unprotected and every reply's token names its
    /// backups; a node that answers with a newer owner makes it a forwarding tombstone
    /// instead. Returns where the copy landed (installed: with its backups, `None`
    /// without replication).
    /// `current` are nodes that must take the copy (they hold older ones of this lineage).
    /// `stale`: nodes known not to own the session (the holder that handed its copy over
    /// under PROMOTE; this node always): a holder that names one of them as the newer
    /// owner answers from a fence or kept copy left by an abandoned claim, and the claim
    /// is placed again one generation higher (at most [`MAX_CLAIM_BUMPS`] times; 12.3).
    /// Never the failed owner of a failover: it may be alive and cut off, and its holders'
    /// refusal is what keeps a second owner out (seed 168).
    /// `claim`: a failover's takeover, not a move. A rival claim that placed its copy on
    /// this node, as a holder, while this one was being placed wins: this node confirmed
    /// that copy, so its owner may have acknowledged writes on it, and installing over it
    /// threw them away (seed 168 again, with the read lease: two backups promoted at once,
    /// each to a different node, and the later claim's install replaced the backup copy
    /// holding the earlier claim's acknowledged append).
    pub(super) async fn protect_and_install(
        &self,
        generation: u64,
        record: &sessync_proto::SessionRecord,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
        stale: &[SocketAddr],
        claim: bool,
    ) -> Landed {
        let id = record.id;
        let mut generation = generation;
        let (landing_backups, superseded) = if self.config.replicas == 0 {
            (None, None)
        } else {
            let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
            let _one_at_a_time = self.replication_locks[stripe].lock().await;
            let before = self.table.locate(&id, self.advertise, now_ms());
            let mut bumps = 0;
            let outcome = loop {
                let round = self
                    .replicate_round(id, generation, record, current, prefer)
                    .await;
                // Also a node that took this very copy in the round, as a holder: it gave
                // its own pending claim of this generation up to this one (12.2: between
                // two pending claims the higher node id wins), so what names it elsewhere
                // is that claim's copy, fenced by it as it yields. Without the climb both
                // claims yielded and no copy was left (seed 3296 without crashes). Not if
                // it restarted since this node first met it: a new process takes any copy,
                // and the old one may have installed its claim and acknowledged writes.
                let to = match &round {
                    RoundOutcome::Superseded { to, yielded, .. }
                        if bumps < MAX_CLAIM_BUMPS
                            && (stale.contains(to)
                                || *to == self.advertise
                                || (*yielded && !self.has_restarted(*to))) =>
                    {
                        *to
                    }
                    _ => break round,
                };
                // The giver that handed its copy here under PROMOTE owned nothing then, but
                // may own the session again since (it fetched it back while this claim was
                // being placed): then the refusal is real (seed 1026 without crashes: the
                // claim climbed past the giver's newer lineage and replaced its
                // acknowledged append). It is asked.
                if to != self.advertise
                    && matches!(
                        self.locate_at(id, to).await,
                        super::lookup::LocateAnswer::Entry(sessync_proto::Role::Owner, _)
                    )
                {
                    tracing::info!(session = %id, %to, generation, "the node that handed its copy here owns the session again; the claim yields");
                    break round;
                }
                // Fences and kept copies of abandoned claims refuse every copy of
                // their generation (seed 128: each failed claim of generation 6
                // fenced another holder at 6, until no copy was left).
                bumps += 1;
                generation += 1;
                tracing::info!(session = %id, %to, generation, "a holder refused the claim on behalf of a node that does not own the session; claiming one generation higher");
            };
            // A rival's copy taken here meanwhile, as its holder (see `claim`).
            let rival = match self.table.locate(&id, self.advertise, now_ms()) {
                Some((sessync_proto::Role::Backup, o))
                    if claim
                        && o != self.advertise
                        && !stale.contains(&o)
                        && Some((sessync_proto::Role::Backup, o)) != before =>
                {
                    Some(o)
                }
                _ => None,
            };
            let outcome = match (outcome, rival) {
                (RoundOutcome::Done(b), Some(to)) => {
                    tracing::info!(session = %id, %to, generation, "a rival claim placed its copy here while this one was placed; it yields");
                    let mut placed = b.holders.to_vec();
                    placed.extend(b.confirmed.iter().filter(|c| !b.holders.contains(c)));
                    self.spawn_fence(id, generation, placed);
                    return Landed::Elsewhere;
                }
                (outcome, _) => outcome,
            };
            match outcome {
                RoundOutcome::Done(b) => {
                    if !b.complete(usize::from(self.config.replicas)) {
                        tracing::warn!(session = %id, backups = b.confirmed.len(), "session taken over with fewer backups than wanted");
                        if claim {
                            self.mark_unconfirmed_claim(id);
                        }
                    }
                    (Some(b), None)
                }
                RoundOutcome::Superseded { to, placed, .. } => {
                    self.spawn_fence(id, generation, placed);
                    (None, Some(Landing::Superseded(to)))
                }
                RoundOutcome::Destroyed { placed } => {
                    tracing::info!(session = %id, generation, "a holder has the session destroyed; the copy claimed is not installed");
                    self.spawn_fence(id, generation, placed);
                    (None, Some(Landing::Destroyed))
                }
            }
        };
        let landing = match (&landing_backups, superseded) {
            (_, Some(instead)) => instead,
            (Some(b), None) => Landing::Owner(&b.holders),
            (None, None) => Landing::Owner(&[]),
        };
        match self.table.install_as(record, generation, landing, now_ms()) {
            Ok(true) if superseded.is_none() => {
                Stats::bump(&self.stats.copies_received);
                Landed::Owner(landing_backups)
            }
            Ok(false) if superseded.is_none() => Landed::NotNewer,
            _ => Landed::Elsewhere,
        }
    }

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
        let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
        let _one_at_a_time = self.replication_locks[stripe].lock().await;
        let Some(snap) = self.table.snapshot(&id, now_ms()) else {
            return Replication::NotHere;
        };
        if self.config.replicas == 0 {
            return Replication::Done(Backups {
                confirmed: snap.backups.clone(),
                holders: snap.backups,
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
            .replicate_round(id, snap.generation, &snap.record, &current, prefer)
            .await
        {
            RoundOutcome::Done(b) => {
                tracing::debug!(session = %id, generation = snap.generation, version = snap.record.meta.version, confirmed = ?b.confirmed, holders = ?b.holders, "replicated");
                self.table.set_backups(&id, snap.generation, &b.holders);
                if b.confirmed.len() >= usize::from(self.config.replicas) {
                    self.release_held_ack(id);
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
    /// `replicas` confirmed. The caller holds the session's replication stripe.
    ///
    /// Fencing (protocol.md 12.2): a node in `current` that fails stays a holder, so the
    /// write cannot be acknowledged until it confirms a later state; a new candidate that
    /// failed is a holder only when it may have stored the copy (its reply was lost).
    /// A node that answers MOVED knows a newer owner: the round ends there.
    pub(super) async fn replicate_round(
        &self,
        id: SessionId,
        generation: u64,
        record: &sessync_proto::SessionRecord,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
    ) -> RoundOutcome {
        let want = usize::from(self.config.replicas);
        let overall = Instant::now() + self.config.peer_timeout * 2;
        let mut confirmed: Vec<SocketAddr> = Vec::new();
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
            let replies = futures_util::future::join_all(batch.iter().map(|&b| {
                let msg = PeerMessage::Replicate {
                    generation,
                    record: record.clone(),
                };
                self.peers.request(b, msg, deadline)
            }))
            .await;
            let mut superseded = None;
            let mut destroyed = false;
            for (&b, reply) in batch.iter().zip(replies) {
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
                    Ok(PeerMessage::Moved { owner, .. }) => {
                        superseded = Some(if owner != self.advertise { owner } else { b });
                    }
                    other => {
                        Stats::bump(&self.stats.replicate_failures);
                        tracing::debug!(session = %id, backup = %b, "REPLICATE failed: {other:?}");
                        let may_hold = is_current || matches!(other, Err(LinkError::Lost));
                        if may_hold {
                            holders.push(b);
                        }
                    }
                }
            }
            if destroyed {
                return RoundOutcome::Destroyed { placed: holders };
            }
            if let Some(to) = superseded {
                return RoundOutcome::Superseded {
                    yielded: confirmed.contains(&to),
                    to,
                    placed: holders,
                };
            }
        }
        match self.check_restarted_holders(id, generation, &mut confirmed).await {
            Some(LineageSurvey::Newer(to)) => RoundOutcome::Superseded {
                to,
                placed: holders,
                yielded: false,
            },
            Some(LineageSurvey::Destroyed) => RoundOutcome::Destroyed { placed: holders },
            _ => RoundOutcome::Done(Backups {
                confirmed: confirmed.into(),
                holders: holders.into(),
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
        match self.replicate(id, &[]).await {
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
        tokio::spawn(tracing::Instrument::in_current_span(async move {
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
        tokio::spawn(tracing::Instrument::in_current_span(async move {
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
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            node.drop_backups(id, &old).await;
        }));
    }
}
