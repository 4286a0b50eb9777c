//! A session that becomes ours: a copy handed over (COPY_DATA, also a late one), or a
//! failover's claim, is installed only behind its replication (protocol.md 12.3): its
//! copy is placed on the holders first, and a holder's refusal decides whether the
//! claim climbs a generation, yields, or lands as a kept copy. The rounds themselves are
//! in `backup.rs`.

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
        self.receive_copy(from, transfer, record, holders, prefer, None, &mut None)
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
    /// that went only into it (seed 208 without crashes), and points here. One that
    /// answers a recent PROMOTE is installed as the claim it is.
    pub(crate) async fn install_late_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
    ) {
        let id = record.id;
        let Some(asked) = self.unanswered_copy_to(id, from) else {
            return self.install_copy(from, transfer, record, holders, &[]).await;
        };
        let had = asked.had;
        if self.table.owned_past(&id, had, now_ms()) {
            tracing::info!(session = %id, %from, transfer, had, "a late COPY_DATA of a state older than this node's own since it asked; not installed, not acknowledged");
            return;
        }
        // Only while the failover it answers is recent: a PROMOTE the network held for
        // seconds was answered by a new process at the backup's address from a copy it
        // had kept, the owner named failed was serving again by then, and the claim
        // climbed past it and lost four acknowledged appends (simulation seed 31420 with
        // crashes). Older, it is installed as a plain moved copy (refused as before).
        let recent = Self::LATE_CLAIM_TIMEOUTS * self.config.peer_timeout.as_millis() as u64;
        let Some(promote) = asked.promote.filter(|_| now_ms() <= asked.asked_ms + recent) else {
            return self.install_copy(from, transfer, record, holders, &[]).await;
        };
        // The answer to a PROMOTE: the backup is handing its copy over as a claim, and
        // installed as a plain copy it was refused below this node's fence of the same
        // generation; the giver then pointed here, and this node's fence pointed back at
        // it, with the only copy at a third node (simulation seed 12290 with crashes).
        // Taken as the answered PROMOTE's copy is (a claim that may climb, refused when
        // the live copy here is not older).
        if self.promoted_copy_not_newer(&id, had, transfer) {
            tracing::info!(session = %id, failed = %promote.failed, backup = %from, transfer, "a late promoted copy is no newer than the live copy here; refused");
            return self.refuse_copy(from, id, transfer);
        }
        tracing::info!(session = %id, failed = %promote.failed, backup = %from, transfer, "installing a late answer to PROMOTE as its claim");
        let all = with_lineage(holders, &promote.lineage);
        self.install_promoted_copy(from, transfer, record, &all, &[], promote.failed)
            .await;
        if promote.failed == self.advertise && self.table.live_generation(&id, now_ms()).is_some() {
            self.mark_unconfirmed_claim(id);
        }
    }

    /// How many peer timeouts after its PROMOTE went unanswered a late answer is still
    /// installed as the claim it answers ([`Node::install_late_copy`]).
    const LATE_CLAIM_TIMEOUTS: u64 = 3;

    /// Whether a backup's copy handed over under PROMOTE with generation `transfer` is no
    /// newer than the live copy of generation `had` here, and is refused: see the PROMOTE
    /// reply in [`Node::failover_traced`]. Whether that copy is live is read as the answer
    /// comes: read when the PROMOTE went out, a copy given up to a claim while the
    /// PROMOTE was asked again (the backup waiting out a lease) refused the claim's own
    /// copy, and the two nodes pointed at each other for good (simulation seed 29282 with
    /// crashes).
    pub(super) fn promoted_copy_not_newer(&self, id: &SessionId, had: u64, transfer: u64) -> bool {
        self.table.live_generation(id, now_ms()) == Some(had)
            && transfer <= had + 1
            && !(transfer == had + 1 && self.acknowledged_nothing_here(id, had))
    }

    /// Remembers that a COPY (`promote` `None`) or PROMOTE for `id` to `giver` got no
    /// reply in time, sent while this node's entry had generation `had`: a late
    /// COPY_DATA is weighed against it. Bounded ([`memo::SessionMemo`]): entries older
    /// than a minute go first.
    pub(super) fn unanswered_copy(
        &self,
        id: SessionId,
        giver: SocketAddr,
        had: u64,
        promote: Option<UnansweredPromote>,
    ) {
        // Forgetting one costs a refusal not made (protocol.md 12.4): dropped.
        let asked_ms = now_ms();
        let unanswered = UnansweredCopy {
            giver,
            had,
            asked_ms,
            promote,
        };
        let _ = self.unanswered_copies.insert(id, unanswered, asked_ms);
    }

    /// The unanswered COPY or PROMOTE for `id` that went to `from`, if one did. Kept
    /// after it is read (until a newer ask replaces it, or it ages out): a COPY that the
    /// network duplicated is answered twice, and the second late COPY_DATA must meet the
    /// same refusal as the first.
    fn unanswered_copy_to(&self, id: SessionId, from: SocketAddr) -> Option<UnansweredCopy> {
        self.unanswered_copies.get(&id).filter(|u| u.giver == from)
    }

    /// [`Node::install_copy`] for a copy the backup `from` handed over under PROMOTE: it
    /// is handing the session to us and owns nothing, so a holder that names it as the
    /// newer owner answers from a fence or kept copy of an abandoned claim, and the claim
    /// climbs a generation ([`Node::protect_and_install`], `stale`). `failed`: the owner
    /// this claim takes over from. Returns the holder whose newer copy of this address's
    /// earlier process the claim met, to be taken over instead ([`Landed::EarlierProcess`]).
    pub(super) async fn install_promoted_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
        prefer: &[SocketAddr],
        failed: SocketAddr,
    ) -> Option<SocketAddr> {
        let mut earlier = None;
        self.receive_copy(
            from,
            transfer,
            record,
            holders,
            prefer,
            Some(failed),
            &mut earlier,
        )
        .await;
        earlier
    }

    /// The body of [`Node::install_copy`] and [`Node::install_promoted_copy`]; `earlier`
    /// is set as the latter returns.
    #[allow(clippy::too_many_arguments)]
    async fn receive_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        holders: &[SocketAddr],
        prefer: &[SocketAddr],
        failed: Option<SocketAddr>,
        earlier: &mut Option<SocketAddr>,
    ) {
        // A copy handed over under PROMOTE (from the failed owner's backup `from`) is a
        // claim; `from` owns nothing (`stale`, [`Node::protect_and_install`]).
        let claim = failed.is_some();
        let giver = [from];
        let stale: &[SocketAddr] = if claim { &giver } else { &[] };
        if transfer == 0 {
            // No handover has generation 0 (protocol.md 11.1): not installed, replicated
            // or acknowledged.
            tracing::warn!(%from, session = %record.id, "a peer sent COPY_DATA with transfer id 0; ignored");
            return;
        }
        // A moved copy no newer than what this node's entry remembers is refused at its
        // install (`Table::install_as`); refused before it is placed, so that no holder
        // takes it. Placed first, it stayed on a holder that had restarted empty, as the
        // backup copy of an owner that never installed it, and a failover later
        // promoted it over the newer lineage's copy (simulation seed 283: a stale
        // owner's generation 16 handed to a backup of generation 19). Not a claim: it
        // may climb past what this node remembers (12.3).
        if !claim && self.config.replicas > 0 && self.table.last_received(&record.id) >= transfer {
            tracing::info!(session = %record.id, %from, transfer, "a copy no newer than the one remembered here; refused before it is placed");
            return self.refuse_copy_once_settled(from, record.id, transfer);
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
        // While the copy is placed, this node has no entry for the session, and a LOCATE
        // answered NOT_FOUND, which reads as "a new process that lost it": the giver then
        // took its copy back, and a third node promoted a backup, both rival claims of a
        // live handover (tests/drain.rs, a holder paused: each placement waits a peer
        // timeout). So LOCATE answers as the owner meanwhile (protocol.md 12.4). Without
        // replicas the copy is installed at once: nothing to mark.
        let receiving = (!claim && self.config.replicas > 0)
            .then(|| Receiving::start(&self.receiving, record.id, transfer));
        let landed = self
            .protect_and_install(
                transfer,
                record,
                &current,
                &first,
                stale,
                failed.map(|failed| ClaimOf { failed, base: None }),
            )
            .await;
        drop(receiving);
        if let Landed::EarlierProcess(holder) = landed {
            *earlier = Some(holder);
        }
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
            // The very copy installed here already (a duplicated COPY_DATA, or two requests'
            // fetches of one handover), whose COPY_ACK is held back while too few backups
            // have it: the giver's copy must outlive a crash of this node's, so the giver
            // hears nothing until the ACK goes. Refused, the giver ended its handover and
            // fenced its holders, and a crash of this node lost the session (simulation
            // seed 6954 with crashes).
            Landed::NotNewer
                if self
                    .held_acks
                    .get(&record.id)
                    .is_some_and(|h| h.giver == from && h.transfer == transfer) =>
            {
                tracing::info!(session = %record.id, %from, transfer, "this copy is installed here already, its COPY_ACK held back; not refused");
                return;
            }
            Landed::NotNewer => {
                tracing::info!(session = %record.id, %from, transfer, "another copy of this generation was installed here first; this one is refused");
                return self.refuse_copy_once_settled(from, record.id, transfer);
            }
            Landed::Elsewhere | Landed::EarlierProcess(_) | Landed::HandingHere(_) => {
                match self.table.locate(&record.id, self.advertise, now_ms()) {
                    Some((sessync_proto::Role::Backup, owner))
                        if owner != from && owner != self.advertise =>
                    {
                        tracing::info!(session = %record.id, %from, %owner, transfer, "the copy lost to a newer owner at a holder; kept, and refused");
                        return self.refuse_copy(from, record.id, transfer);
                    }
                    _ => None,
                }
            }
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
                    refused: false,
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
    /// under PROMOTE; for a claim, this node too, which the round reports as
    /// `names_self`): a holder that names one of them as the newer owner answers from a
    /// fence or kept copy left by an abandoned claim, and the claim is placed again one
    /// generation higher (at most [`MAX_CLAIM_BUMPS`] times; 12.3).
    /// Never the failed owner of a failover: it may be alive and cut off, and its holders'
    /// refusal is what keeps a second owner out (seed 168).
    /// `claim_of`: for a claim (a failover's takeover, not a move), the owner it takes over
    /// from (`failed`) and the backup copy claimed. A rival claim that placed its copy on
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
        claim_of: Option<ClaimOf>,
    ) -> Landed {
        let failed = claim_of.map(|c| c.failed);
        let base = claim_of.and_then(|c| c.base);
        let claim = failed.is_some();
        let id = record.id;
        let first_generation = generation;
        let mut generation = generation;
        let mut earlier_process = None;
        let mut handing_here = None;
        let (landing_backups, superseded) = if self.config.replicas == 0 {
            (None, None)
        } else {
            let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
            let _one_at_a_time = self.replication_locks[stripe].lock().await;
            // Another copy of this generation (or a newer one) was installed here while
            // this one waited for the stripe (two requests' fetches, a PROMOTE's copy and
            // a hand-over): this one is not placed. Placed, a claim's copy outranked the
            // live copy at its holder by version, so the holder kept it and answered the
            // live copy's REPLICATE as already held; a later claim there promoted it, and
            // an acknowledged append was lost (simulation seed 20226 without crashes).
            if self
                .table
                .live_generation(&id, now_ms())
                .is_some_and(|live| live >= generation)
            {
                return Landed::NotNewer;
            }
            let before = self.table.locate(&id, self.advertise, now_ms());
            let mut bumps = 0;
            let outcome = loop {
                let round = self
                    .replicate_round(id, generation, record, current, prefer, base)
                    .await;
                // Also a node that took this very copy in the round, as a holder: it gave
                // its own pending claim of this generation up to this one (12.2: between
                // two pending claims the higher node id wins), so what names it elsewhere
                // is that claim's copy, fenced by it as it yields. Without the climb both
                // claims yielded and no copy was left (seed 3296 without crashes). Not if
                // it restarted since this node first met it: a new process takes any copy,
                // and the old one may have installed its claim and acknowledged writes.
                // And, for a claim, a holder that names this node itself: its fence or
                // kept copy is of this node's own abandoned claim (this node claims, so it
                // owns nothing newer). Taking that holder for the newer owner left a kept
                // copy here pointing at it and its fence pointing back, a cycle that no
                // request could resolve (seed 230).
                let (to, only_names_self) = match &round {
                    RoundOutcome::Superseded {
                        to,
                        yielded,
                        names_self,
                        ..
                    } if bumps < MAX_CLAIM_BUMPS => {
                        let owns_nothing = stale.contains(to) || (*yielded && !self.has_restarted(*to));
                        if !(owns_nothing || (*names_self && claim)) {
                            break round;
                        }
                        (*to, !owns_nothing)
                    }
                    _ => break round,
                };
                // The giver that handed its copy here under PROMOTE owned nothing then, but
                // may own the session again since (it fetched it back while this claim was
                // being placed): then the refusal is real (seed 1026 without crashes: the
                // claim climbed past the giver's newer lineage and replaced its
                // acknowledged append). It is asked.
                // (`to` is never this node: a MOVED naming it is reported as `names_self`,
                // with the holder that sent it as `to`.)
                // A LOCATE whose reply was lost is asked again: taken for "not the owner",
                // the claim climbed past the giver's live copy and its acknowledged append
                // (simulation seed 20142 without crashes).
                let answer = self.locate_at_retrying(id, to, 3).await;
                if matches!(
                    answer,
                    super::lookup::LocateAnswer::Entry(sessync_proto::Role::Owner, _)
                ) {
                    tracing::info!(session = %id, %to, generation, "the node that handed its copy here owns the session again; the claim yields");
                    break round;
                }
                // Nor when it has since been part of a lineage newer than this claim (its
                // entry, a pointer onward or a backup copy, is of a higher generation; a
                // pointer to this claim is of the claim's own generation): it fetched the
                // session back and handed it on while this claim was placed, and the
                // holder refusing in its name keeps that lineage, with its acknowledged
                // writes. Climbed past, they were gone (simulation seed 48272 without
                // crashes: the giver fetched the session back at 14 and handed it on at
                // 15, three appends acknowledged; this claim of 13 climbed to 16 over
                // them while the giver was between owners).
                if !only_names_self
                    && matches!(answer, super::lookup::LocateAnswer::Entry(_, Some(g)) if g > generation)
                {
                    tracing::info!(session = %id, %to, generation, "the node that handed its copy here has held a newer generation since; the claim yields");
                    break round;
                }
                // A holder that names this node only because of its backup copy of a
                // generation newer than this claim's: this process never placed it (its
                // own abandoned claims are of this claim's generation or older, and a
                // newer one would have left a pointer here newer than the backup it
                // claims from), so an earlier process at this address did, and may have
                // acknowledged writes on it. Climbed past, they were gone (simulation seed
                // 7171 with crashes: the new process claimed its backup copy of 16 and
                // climbed to 19 over the old process's copy of 19, which held three
                // acknowledged appends). That copy is taken over instead, as a failover
                // from this node's earlier process (`Node::failover_fencing`).
                // A holder that names this node because it is handing this node a copy of
                // a generation newer than this claim's: the reply to this node's COPY was
                // lost, and the holder owned that newer lineage. Climbing to the handover's
                // generation made the holder take this claim's older state for the copy
                // it handed over, and its acknowledged append was lost (simulation seed
                // 21549 with crashes: a kept copy of 6 claimed while its holder handed 7
                // here). The holder is asked for its copy instead (`Landed::HandingHere`).
                if only_names_self
                    && matches!(answer, super::lookup::LocateAnswer::Entry(sessync_proto::Role::HandedOver, Some(h)) if h > generation)
                {
                    tracing::info!(session = %id, holder = %to, generation, "a holder is handing a newer copy to this node; asked for it, not climbed past");
                    handing_here = Some(to);
                    break round;
                }
                if only_names_self
                    && matches!(answer, super::lookup::LocateAnswer::Entry(sessync_proto::Role::Backup, Some(h)) if h > generation)
                {
                    tracing::info!(session = %id, holder = %to, generation, "a holder keeps a newer copy of this address's earlier process; taken over, not climbed past");
                    earlier_process = Some(to);
                    break round;
                }
                // Nor past a holder that refuses in `to`'s name because it is handing
                // `to` a newer generation than this claim's: the reply to `to`'s COPY was
                // lost, so `to` never had it (and answers LOCATE with nothing newer), and
                // the holder keeps the newest state itself. Climbed past, that copy was
                // replaced and its acknowledged append lost (simulation seed 23049 with
                // crashes: a claim of 66 climbed to 69 past a holder handing 68). The
                // claim yields to `to`, whose lookup then finds the handover stuck
                // (protocol.md 17.3). Only on that answer: a wider rule (any member
                // holding anything newer, or silent) cost more seeds than it saved.
                if self.member_handing_past(id, to, generation).await {
                    tracing::info!(session = %id, %to, generation, "a member is handing the node named a newer generation than this claim; the claim yields");
                    break round;
                }
                // Fences and kept copies of abandoned claims refuse every copy of
                // their generation (seed 128: each failed claim of generation 6
                // fenced another holder at 6, until no copy was left).
                bumps += 1;
                generation += 1;
                tracing::info!(session = %id, %to, generation, "a holder refused the claim on behalf of a node that does not own the session; claiming one generation higher");
            };
            // A rival's copy taken here meanwhile, as its holder (see `failed`).
            // Not the failed owner's own copy of an older generation, placed here while
            // this claim was placed (it kept placing its unsure claim on its holders):
            // that is the copy this claim supersedes, and the failed owner yields to
            // this claim's copy at its holders. Taken for a rival, both yielded and
            // fenced each other's copies, and no copy of the session was left anywhere
            // (simulation seed 3476 without crashes). Nor a copy of a generation older
            // than the one this claim began with: a rival claim is of this claim's
            // generation (or one it climbed to), and an older copy is a stale owner's,
            // stored at this address while its new process had nothing (simulation seed
            // 37179 with crashes: a claim of 9 yielded to a stale owner's copy of 4, and
            // the acknowledged append of the lineage it claimed was lost). A rival that
            // confirmed this copy still wins here: a node handing its copy to this one
            // confirms this one's claim as its receiver's, while its own copy, with
            // acknowledged writes, may be on its way here (simulation seed 7223 with
            // crashes, with a first version of seed 10153's rule that let such a rival
            // pass).
            // And whatever it was before, a rival this node's claim yielded to while it
            // was placed (two pending claims of one generation, the higher node id
            // wins, 12.2): that rival counted this node as a holder that confirmed it,
            // and may have acknowledged writes. Climbed past (a holder named this
            // node's own fence), the claim installed over that copy and lost its
            // acknowledged append (simulation seed 15588 without crashes).
            let yielded = self
                .table
                .yielded_to(&id, now_ms())
                .filter(|&(o, theirs)| claim && o != self.advertise && theirs >= first_generation);
            let rival = yielded.map(|(o, _)| o).or_else(|| {
                match self.table.locate_generation(&id, self.advertise, now_ms()) {
                    Some((sessync_proto::Role::Backup, o, theirs))
                        if claim
                            && o != self.advertise
                            && !stale.contains(&o)
                            && Some((sessync_proto::Role::Backup, o)) != before
                            && !(Some(o) == failed && theirs < generation)
                            && theirs >= first_generation =>
                    {
                        Some(o)
                    }
                    _ => None,
                }
            });
            let outcome = match (outcome, rival) {
                // Not to a rival that promised in this round to yield to this copy (its
                // VERSION_CONFLICT): both yielded, fenced each other's copies, and no copy
                // was left anywhere (simulation seed 46337 without crashes).
                (RoundOutcome::Done(b), Some(to)) if !b.yielding.contains(&to) => {
                    tracing::info!(session = %id, %to, generation, "a rival claim placed its copy here while this one was placed; it yields");
                    self.table.mark_yielded_to(&id, to, generation, now_ms());
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
                            // A moved copy is not marked so: it carries what its giver
                            // acknowledged (`rival_claims.rs`).
                            self.mark_claim_short_of_confirmations(id, generation, base);
                        } else {
                            self.mark_move_never_acknowledged(id, generation);
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
        // A holder that confirmed this copy, and whose fence of this generation is here,
        // yielded its own copy of the generation to this one: the fence does not keep
        // this copy out.
        // A rival that promised to yield to it (`Backups::yielding`): its copy here does not
        // either.
        let yielded = landing_backups.as_ref().map_or(&[][..], |b| &b.confirmed[..]);
        let yielding = landing_backups.as_ref().map_or(&[][..], |b| &b.yielding[..]);
        match self
            .table
            .install_over_yielded(record, generation, landing, yielded, yielding, now_ms())
        {
            Ok(true) if superseded.is_none() => {
                Stats::bump(&self.stats.copies_received);
                Landed::Owner(landing_backups)
            }
            Ok(false) if superseded.is_none() => Landed::NotNewer,
            _ => match (earlier_process, handing_here) {
                (Some(holder), _) => Landed::EarlierProcess(holder),
                (None, Some(holder)) => Landed::HandingHere(holder),
                (None, None) => Landed::Elsewhere,
            },
        }
    }
}

/// A copy handed over here and being placed on its holders ([`Node::receiving`]): the mark
/// goes when this does, however the placement ends (or if its request is cancelled).
struct Receiving<'a> {
    map: &'a DashMap<SessionId, u64>,
    id: SessionId,
    transfer: u64,
}

impl<'a> Receiving<'a> {
    fn start(map: &'a DashMap<SessionId, u64>, id: SessionId, transfer: u64) -> Self {
        map.insert(id, transfer);
        Receiving { map, id, transfer }
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        // Another copy of it may be placed meanwhile (a late COPY_DATA): its mark stays.
        self.map.remove_if(&self.id, |_, t| *t == self.transfer);
    }
}

/// A claim's `holders` and the failed owner's `lineage` besides them: every node the
/// claim is placed on.
pub(super) fn with_lineage(holders: &[SocketAddr], lineage: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut all = holders.to_vec();
    all.extend(lineage.iter().filter(|l| !holders.contains(l)));
    all
}

/// A claim being installed ([`Node::protect_and_install`]): the owner it takes the session
/// over from, and the backup copy claimed (its rounds name it: REPLICATE_CLAIM), if the
/// claim is of a backup copy held here.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClaimOf {
    /// The failed owner.
    pub(super) failed: SocketAddr,
    /// The backup copy claimed.
    pub(super) base: Option<sessync_proto::ClaimBase>,
}
