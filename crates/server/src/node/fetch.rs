//! Getting a session to this node: verifying the token, following the COPY chain
//! (MOVED), backing off under contention, and failing over to a backup when the owner is
//! gone (protocol.md 11.3 and 12.3).

use super::lookup::LocateAnswer;
use super::*;
use sessync_proto::Role;

/// How often a failover asks a backup again while it refuses PROMOTE for the failed
/// owner's read lease ([`Node::failover_fencing`]).
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Node {
    /// Verifies a token and runs `op` on the session it names, copying the session here
    /// first when another node holds it (instant copy), or taking it over from a backup
    /// when its owner is gone.
    pub(super) async fn on_session<T>(
        &self,
        token: &str,
        mode: Mode,
        op: impl Fn(&Table, &SessionId, u64) -> Result<T, Miss>,
    ) -> Result<Resolved<T>, SessionFailure> {
        let token = Token::verify(token, &self.config.keys).map_err(SessionFailure::Token)?;
        let id = token.session_id;
        let mut fetches = 0;
        let mut first_fetch: Option<Instant> = None;
        // Set when a copy here was passed over as superseded and the newer one could not
        // be had: the copy here is then the best there is.
        let mut fall_back_to_local = false;
        // Set when the owners' chain led back here and the session is not here: this node
        // had it and lost it (a restart), so its backups are asked next.
        let mut lost_here = false;
        // A copy here older than the token's generation is superseded (this node was paused
        // or cut off while the session moved on): the client was already given a newer
        // state, so it is fetched from the owner the token names rather than served
        // (protocol.md 12.5).
        let older_than_token = || {
            token.generation > 0
                && token.owner != self.advertise
                && self
                    .table
                    .live_generation(&id, now_ms())
                    .is_some_and(|g| g < token.generation)
        };
        loop {
            let superseded_here = !fall_back_to_local && older_than_token();
            let found = if superseded_here {
                Stats::bump(&self.stats.superseded_copies_skipped);
                Err(Miss::Absent)
            } else {
                op(&self.table, &id, now_ms())
            };
            let start = match found {
                Ok(value) => return Ok(Resolved { value, id, token }),
                // We handed it on (or hold a backup): follow it. Never here: ask the owner
                // the token names (its MAC verified, so the address is one a node of ours
                // wrote).
                Err(Miss::Moved(to)) => Start::Ask(to, true),
                Err(Miss::Absent) if lost_here => Start::Failover(self.advertise),
                Err(Miss::Absent) if token.owner != self.advertise => Start::Ask(token.owner, false),
                // The token names this node, which does not have the session: it lost it
                // (a restart). Its backups may have it.
                // (Or a lookup among members may find it: drain.rs, lookup.rs.)
                Err(Miss::Absent) if !token.backups.is_empty() || self.may_look_up() => {
                    Start::Failover(self.advertise)
                }
                Err(m) => return Err(SessionFailure::Miss(m)),
            };
            if mode == Mode::LocalOnly {
                return Err(SessionFailure::Defer);
            }
            // A session snatched away between our install and our op is followed again,
            // within the hop limit. Past it (or past the hop limit of one MOVED chain), the
            // session is moving faster than we follow it: nodes are taking it from each
            // other (an application sending one user's requests to several servers at
            // once). Back off a random moment, so that one of them gets to serve, and try
            // again while the peer timeout lasts.
            let first = *first_fetch.get_or_insert_with(Instant::now);
            if fetches >= self.config.max_hops {
                self.back_off(first, "session keeps moving").await?;
                fetches = self.config.max_hops - 1;
                continue;
            }
            fetches += 1;
            let fetched = match self.fetch(id, start, &token.backups, token.generation).await {
                Ok(f) => f,
                // The newer lineage ended in a DESTROY or ROTATE: the superseded copy here
                // is of a dead id, and is tombstoned rather than served (simulation seed
                // 1374: a stale owner's copy answered a destroyed id again).
                Err(FetchError::Destroyed) if superseded_here => {
                    if self.table.destroy_superseded(&id, token.generation, now_ms()) {
                        tracing::info!(session = %id, "destroyed in a newer lineage; the superseded copy here is gone too");
                    }
                    return Err(SessionFailure::Fetch(FetchError::Destroyed));
                }
                // The newer copy is gone (its owner restarted without it and no backup
                // has it): the superseded copy here has every write that was acknowledged
                // before it was superseded, and is served as before. Not when the newer
                // owner is only out of reach: it may be paused or cut off with writes of
                // its own, and this copy's backups know nothing of that lineage, so a
                // write here would be a second owner's (simulation seed 426 with crashes:
                // a claim of a stale backup copy served a write while the newer owner was
                // paused, and that append was lost when the newer lineage came back).
                // The client gets OWNER_UNREACHABLE and retries.
                Err(e) if superseded_here && e.not_found() => {
                    fall_back_to_local = true;
                    continue;
                }
                Err(e) if e.too_many_hops() => {
                    self.back_off(first, &e.to_string()).await?;
                    continue;
                }
                Err(e) => return Err(SessionFailure::Fetch(e)),
            };
            if fetched == Fetched::PointsHere {
                // Led back here while the copy here is still older than the client's
                // token: the newer owner did not hand its copy over (it is paused or cut
                // off, and its backup pointed here). Serving the copy here would be the
                // write of a second owner, as above (seed 426 with crashes: a PROMOTE at
                // the token's backup answered MOVED to this node).
                if superseded_here && older_than_token() {
                    return Err(SessionFailure::Fetch(FetchError::Unsure(
                        "the copy found is older than the client's token".into(),
                    )));
                }
                // The owners' chain ends here: if the table has moved on (another request
                // handed it away meanwhile), the loop follows it; if it has nothing, this
                // node lost it (it restarted after the session was handed here, so the
                // giver points here): the backups its copy was placed on, or a lookup among
                // the members, may have it; failing that, the session is gone.
                match op(&self.table, &id, now_ms()) {
                    Ok(value) => return Ok(Resolved { value, id, token }),
                    Err(Miss::Moved(_)) => continue,
                    Err(Miss::Absent) if !lost_here => {
                        lost_here = true;
                        continue;
                    }
                    Err(Miss::Absent) => return Err(SessionFailure::Fetch(FetchError::PathEndsHere)),
                    Err(m) => return Err(SessionFailure::Miss(m)),
                }
            }
        }
    }

    /// Sleeps a random 2-25 ms before a request chases a session that keeps moving again,
    /// or fails it with TOO_MANY_HOPS when that would pass the peer timeout counted from
    /// `first` (its first fetch).
    pub(super) async fn back_off(&self, first: Instant, why: &str) -> Result<(), SessionFailure> {
        let pause = std::time::Duration::from_millis(2 + u64::from(SessionId::random().0[0] % 24));
        if first.elapsed() + pause >= self.config.peer_timeout {
            return Err(SessionFailure::Fetch(FetchError::KeepsMoving(why.to_string())));
        }
        Stats::bump(&self.stats.contention_backoffs);
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// How many fetches are under way here: each may still bring its session here (a
    /// drain ends only once none is).
    pub(super) fn fetches_under_way(&self) -> usize {
        self.inflight.len()
    }

    /// Copies session `id` here (following MOVED, and falling back on `backups` when the
    /// owner is gone). Concurrent callers for the same id share one fetch;
    /// `token_generation` is the generation the caller's token names.
    pub(super) async fn fetch(
        &self,
        id: SessionId,
        start: Start,
        backups: &[SocketAddr],
        token_generation: u64,
    ) -> FetchResult {
        let leader = match self.inflight.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(o) => Err(o.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(v) => Ok(v.insert(Arc::default()).clone()),
        };
        match &leader {
            Ok(fetch) | Err(fetch) => fetch.saw_token(token_generation),
        }
        match leader {
            Ok(fetch) => {
                let guard = InflightGuard {
                    map: &self.inflight,
                    id,
                    fetch,
                };
                let result = self.fetch_from_peers(id, start, backups).await;
                guard.finish(result.clone());
                result
            }
            Err(fetch) => fetch.wait().await.unwrap_or(Err(FetchError::Abandoned)),
        }
    }

    pub(super) async fn fetch_from_peers(
        &self,
        id: SessionId,
        start: Start,
        backups: &[SocketAddr],
    ) -> FetchResult {
        let (result, chain) = match start {
            Start::Ask(owner, forwarded) => self.copy_chain_or_rehand(id, owner, forwarded, backups).await,
            Start::Failover(me) => (Err(FetchError::LostHere), vec![me]),
        };
        let (result, chain) = match (result, chain.last().copied()) {
            // Our link said the owner is unreachable. Before anyone takes its sessions
            // over, make sure it is not just our link (backing off after an old failure,
            // say, while the owner restarted): dial it afresh and PING it. If it answers,
            // it is alive: ask it again, and never fail over from a live owner.
            // Only when there is somewhere to fail over to: without backups, or nodes that
            // pointed to it, the probe could change nothing, and the fetch keeps within one
            // peer timeout (protocol.md 11.3).
            (Err(e), Some(f))
                if e.unreachable()
                    && f != self.advertise
                    && (!backups.is_empty() || chain.len() > 1)
                    && self.alive(f).await =>
            {
                self.copy_chain(id, f, true, backups).await
            }
            (result, _) => (result, chain),
        };
        // The nodes a failover's own COPY chain asked after it (`Node::failover_traced`).
        let mut followed = Vec::new();
        let result = match (result, chain.split_last()) {
            // The owner is gone (unreachable, or restarted without it): the nodes that
            // pointed to it (it may have made its giver its backup, or never taken the
            // session over) and then its backups may hold the session.
            (Err(e), Some((&failed, before))) if e.unreachable() || e.not_found() => 'failover: {
                // NOT_FOUND from the owner is also what a session destroyed or rotated away
                // there gets: its backups' copies (or a copy kept by an owner it was taken
                // from) must not bring it back. The owner is asked with LOCATE, which tells
                // a tombstone from a new process with no entry (simulation seed 22: a
                // rotated-away id was taken over from a kept copy and took writes).
                if e.not_found() && failed != self.advertise {
                    match self.locate_at(id, failed).await {
                        LocateAnswer::Destroyed => {
                            tracing::debug!(session = %id, %failed, "destroyed or rotated away at its owner: no failover");
                            return Err(FetchError::Destroyed);
                        }
                        LocateAnswer::Entry(role, _) => {
                            tracing::debug!(session = %id, %failed, ?role, "the owner that answered NOT_FOUND has an entry for it now: no failover, asked again");
                            // A node MOVED named may have installed it since (its silence
                            // after NOT_FOUND ends a fetch as NOT_FOUND: `Fetch::gave_up_on`).
                            // One that says it owns it and answers COPY with NOT_FOUND is
                            // placing a copy handed to it on its holders: asked until it
                            // installs it (at most two peer timeouts, protocol.md 12.4).
                            let patience = if role == Role::Owner {
                                Patience::WhilePlaced
                            } else {
                                Patience::OnTheWire
                            };
                            break 'failover self
                                .copy_chain_with(id, failed, true, backups, patience)
                                .await
                                .0;
                        }
                        // NOT_FOUND (a new process, no entry), or no answer to this LOCATE
                        // after the owner's NOT_FOUND: its backups are asked.
                        LocateAnswer::NoEntry | LocateAnswer::Unclear | LocateAnswer::Silent => {}
                    }
                }
                let mut candidates: Vec<SocketAddr> = before.iter().rev().copied().collect();
                candidates.extend(backups.iter().filter(|b| !before.contains(b)));
                // Boxed, as the lookup: rare, and large (BENCHMARKS.md).
                match Box::pin(self.failover_traced(id, failed, &candidates, &[])).await {
                    Some((r, asked)) => {
                        followed = asked;
                        r
                    }
                    None => Err(e),
                }
            }
            (r, _) => r,
        };
        // Neither the owner nor a backup the token names has it: ask the members (lookup.rs).
        let mut chain = chain;
        chain.append(&mut followed);
        let result = self.lookup_if_lost(id, result, &chain, backups).await;
        if result.is_err() {
            Stats::bump(&self.stats.handover_failures);
        }
        result
    }

    /// Whether `peer` answers a PING over a freshly dialled (or live) link within the peer
    /// timeout. A member the membership view has declared dead is not asked: SWIM's
    /// verdict (direct and indirect probes, then suspicion) already says more than one
    /// PING would, and a request waiting on a dead owner would otherwise wait out the
    /// peer timeout first.
    pub(super) async fn alive(&self, peer: SocketAddr) -> bool {
        if self.membership().is_some_and(|m| m.known_dead(peer)) {
            return false;
        }
        // A fresh connection with its own deadline: the link we have may be stuck in TCP
        // retransmission after a partition healed (it would look dead for as long as its
        // silence timer runs), or backing off after the peer restarted.
        self.peers
            .probe(peer, Instant::now() + self.config.peer_timeout)
            .await
    }

    /// [`Node::copy_chain`]; and when the chain ends at this node, which has nothing: its
    /// earlier process was handed the session by the last node asked and was killed
    /// before it acknowledged the handover (so before it served anything: 12.4). That
    /// node still holds the session, handing it over: it is asked to hand it to this
    /// process (PROMOTE naming this address as the failed owner, 12.3).
    pub(super) async fn copy_chain_or_rehand(
        &self,
        id: SessionId,
        owner: SocketAddr,
        forwarded: bool,
        prefer: &[SocketAddr],
    ) -> (FetchResult, Vec<SocketAddr>) {
        let (result, chain) = self.copy_chain(id, owner, forwarded, prefer).await;
        match (&result, chain.last().copied()) {
            (Ok(Fetched::PointsHere), Some(giver)) if giver != self.advertise && !self.table.knows(&id) => {
                match Box::pin(self.failover(id, self.advertise, &[giver])).await {
                    Some(r) => (r, chain),
                    None => (result, chain),
                }
            }
            _ => (result, chain),
        }
    }

    /// The COPY chain from `owner`, following MOVED. Returns the outcome and the nodes
    /// asked, in order (when it failed, the last is the node it failed at).
    pub(super) async fn copy_chain(
        &self,
        id: SessionId,
        owner: SocketAddr,
        forwarded: bool,
        prefer: &[SocketAddr],
    ) -> (FetchResult, Vec<SocketAddr>) {
        self.copy_chain_with(id, owner, forwarded, prefer, Patience::OnTheWire)
            .await
    }

    /// [`Node::copy_chain`], re-asking a node that answers NOT_FOUND as `patience` says.
    async fn copy_chain_with(
        &self,
        id: SessionId,
        owner: SocketAddr,
        forwarded: bool,
        prefer: &[SocketAddr],
        patience: Patience,
    ) -> (FetchResult, Vec<SocketAddr>) {
        let (mut fetch, mut step) = Fetch::new(id, self.advertise, owner, forwarded, self.config.max_hops);
        let (deadline, pause) = match patience {
            Patience::OnTheWire => (Instant::now() + self.config.peer_timeout, NOT_YET_PAUSE),
            Patience::WhilePlaced => {
                fetch.wait_while_placed();
                // Fewer COPYs over a longer wait: a placement takes a round trip or more.
                (Instant::now() + 2 * self.config.peer_timeout, 4 * NOT_YET_PAUSE)
            }
        };
        let mut chain: Vec<SocketAddr> = Vec::new();
        loop {
            step = match step {
                Step::Ask(to) => {
                    if chain.last() != Some(&to) {
                        chain.push(to);
                    }
                    let had = self.table.last_received(&id);
                    let reply = self
                        .peers
                        .request(
                            to,
                            PeerMessage::Copy {
                                session_id: id,
                                last_transfer: had,
                            },
                            deadline,
                        )
                        .await;
                    if matches!(reply, Err(LinkError::Lost)) {
                        self.unanswered_copy(id, to, had, None);
                    }
                    match reply {
                        Ok(reply) => fetch.handle_reply(to, reply),
                        Err(LinkError::Unreachable(why)) => Step::Fail(FetchError::Unreachable(why)),
                        Err(LinkError::Lost) if Instant::now() >= deadline => fetch.gave_up_on(
                            to,
                            FetchError::SilentWithin {
                                owner: to,
                                within: self.config.peer_timeout,
                            },
                        ),
                        Err(LinkError::Lost) => fetch.handle_lost(to),
                    }
                }
                Step::AskLater(to) => {
                    if Instant::now() + pause >= deadline {
                        Step::Fail(FetchError::NotReceived { at: to })
                    } else {
                        tokio::time::sleep(pause).await;
                        Step::Ask(to)
                    }
                }
                Step::Install {
                    from,
                    transfer,
                    holders,
                    record,
                } => {
                    // Installed or not, the giver is acknowledged (it must not keep offering
                    // the data); a record already past its deadline (clocks a little apart,
                    // section 1) is a session that is gone, not one to chase.
                    let expired = record.meta.expires_at_ms() <= now_ms();
                    self.install_copy(from, transfer, &record, &holders, prefer).await;
                    if expired {
                        return (Err(FetchError::ExpiredInFlight), chain);
                    }
                    return (Ok(Fetched::Installed), chain);
                }
                Step::Local => return (Ok(Fetched::PointsHere), chain),
                Step::Fail(e) => return (Err(e), chain),
            };
        }
    }

    /// Takes session `id` over from a backup copy: `failed` (the owner) is gone. Tries a
    /// copy held here first, then each backup in the token's order with PROMOTE. `None`
    /// when no backup had it. A backup hands its copy over once (under its entry lock), so
    /// two nodes racing to promote end with one owner.
    pub(super) async fn failover(
        &self,
        id: SessionId,
        failed: SocketAddr,
        backups: &[SocketAddr],
    ) -> Option<FetchResult> {
        self.failover_fencing(id, failed, backups, &[]).await
    }

    /// [`Node::failover`], placing the taken-over copy on every node of `lineage` too
    /// (besides the holders the giver names): nodes known to hold copies of this session
    /// (a lookup found them), which must all take the new copy before it is installed, so
    /// that none of their older copies can be taken over again, and a newer copy among
    /// them refuses this one (fencing, protocol.md 12.2).
    pub(super) async fn failover_fencing(
        &self,
        id: SessionId,
        failed: SocketAddr,
        backups: &[SocketAddr],
        lineage: &[SocketAddr],
    ) -> Option<FetchResult> {
        self.failover_traced(id, failed, backups, lineage)
            .await
            .map(|(result, _)| result)
    }

    /// [`Node::failover_fencing`], with the nodes the COPY chain it followed afterwards
    /// asked, in order (none when it followed no chain): a fetch counts them as asked, so
    /// that a cycle of pointers met after a failover is looked up among the members as one
    /// met before it is (simulation seed 2617 with crashes: a restarted owner's failover
    /// met a fence pointing at a node whose kept copy pointed back, and every request
    /// ended TOO_MANY_HOPS for good).
    pub(super) async fn failover_traced(
        &self,
        id: SessionId,
        failed: SocketAddr,
        backups: &[SocketAddr],
        lineage: &[SocketAddr],
    ) -> Option<(FetchResult, Vec<SocketAddr>)> {
        self.failover_from(id, failed, backups, lineage, 0).await
    }

    /// Takes session `id` over from `holder`, which keeps a newer copy of this address's
    /// earlier process: a failover naming this node itself as the failed owner (its
    /// process is gone: this one replaced it), one more of `earlier_hops`. Boxed: it
    /// recurses into [`Node::failover_from`].
    async fn take_over_earlier(
        &self,
        id: SessionId,
        holder: SocketAddr,
        lineage: &[SocketAddr],
        earlier_hops: usize,
    ) -> Option<(FetchResult, Vec<SocketAddr>)> {
        Box::pin(self.failover_from(id, self.advertise, &[holder], lineage, earlier_hops + 1)).await
    }

    /// The body of [`Node::failover_traced`]. `earlier_hops`: how many claims of this
    /// fetch already ended at a holder keeping a newer copy of this address's earlier
    /// process, each taken over next (at most [`MAX_EARLIER_HOPS`]: each such copy is of a
    /// newer generation than the last, but a peer says which).
    async fn failover_from(
        &self,
        id: SessionId,
        failed: SocketAddr,
        backups: &[SocketAddr],
        lineage: &[SocketAddr],
        earlier_hops: usize,
    ) -> Option<(FetchResult, Vec<SocketAddr>)> {
        tracing::debug!(session = %id, %failed, ?backups, ?lineage, "owner gone; trying its backups");
        let with_lineage = |holders: &[SocketAddr]| super::install::with_lineage(holders, lineage);
        // A copy this node is still handing over (to `failed`, or to a node whose pointer
        // led to `failed`) is taken back only when its receiver is known never to have
        // taken it over: a new process with no entry (or none answering, known gone since
        // the handover began), or the same node answering with a
        // generation older than the handover (it neither installed the copy nor holds
        // anything newer; seed 94: its reply was lost in a cut, and the receiver's older
        // pointer led to a node that had restarted since, so nobody could read the
        // session). Merely unreachable, it may have installed the copy and be serving
        // it, with none of our holders told (seed 57: it rotated the session away while
        // this node took its copy back).
        let claim = match self
            .table
            .handover_under_way(&id, now_ms())
            .map(|h| (h.to, h.transfer, h.handed_ms))
            .filter(|&(to, _, _)| to != self.advertise)
        {
            // A backup copy of `failed`'s is claimed once `failed`'s read lease on it has
            // ended (protocol.md 12.3 step 1): `failed` may be alive and cut off, serving
            // reads of its copy without asking anyone until then.
            // A kept copy (this node's own older state) only while no member shows that
            // `failed`'s lineage went on past it (`node/kept_copies.rs`); else its holders
            // are asked below.
            None if self.wait_out_old_owner_lease(&id, failed).await => {
                if self.kept_copy_claimable(id, failed).await {
                    let written = self.table.backup_placed_since_ms(&id, failed);
                    self.table
                        .promote_local(&id, failed, self.identity(), now_ms())
                        .map(|c| (c, written))
                } else {
                    None
                }
            }
            // `failed` is alive and owns the session (its process wrote here: a new one
            // that took a copy over, say): it is asked, not failed over from. Asking the
            // other backups instead took an older copy over this node's newer one
            // (simulation seed 1971 with crashes: the restarted owner claimed a backup
            // copy and acknowledged two appends on it; this node's PROMOTE at the other
            // backup then installed that backup's older copy over them).
            None => {
                tracing::debug!(session = %id, %failed, "the failed owner wrote its copy here while the claim waited; not claimed, asked instead");
                return Some(self.copy_chain(id, failed, true, backups).await);
            }
            Some((to, transfer, handed_ms)) => {
                let never_took = match self.locate_at(id, to).await {
                    // A new process there: the earlier one may have installed the copy and
                    // handed it on before it died (no entry says nothing of what it did:
                    // protocol.md 12.4). Taken back only when every other member answered
                    // holding nothing of the handover's generation or newer (simulation
                    // seed 1710 with crashes: the receiver's earlier process acknowledged
                    // an append and handed the session on, a second append was
                    // acknowledged there, and this node's take-back of the first copy
                    // became the lineage that went on).
                    LocateAnswer::NoEntry => self.members_hold_nothing_from(id, transfer, to, true).await,
                    // No answer, and its process is known gone since the handover began (a
                    // dial there was refused, or another process answered there): as a new
                    // process with no entry. Left as "may be serving it", the copy stayed
                    // here for good after its receiver drained and stopped with the COPY
                    // its fetch had asked for on the way (tests/elastic.rs
                    // `scaling_3_to_5_to_2_by_a_dns_name_loses_nothing`). Asked once more
                    // a peer timeout later: a stopping process answers the requests on the
                    // connections it kept open after it stops accepting, and a COPY_DATA
                    // it sent then reaches its receiver (which answers LOCATE as owner)
                    // before the members are asked.
                    LocateAnswer::Silent if self.peers.processes.gone_since(to) > handed_ms => {
                        tokio::time::sleep(self.config.peer_timeout).await;
                        matches!(
                            self.locate_at(id, to).await,
                            LocateAnswer::Silent | LocateAnswer::NoEntry
                        ) && self.members_hold_nothing_from(id, transfer, to, true).await
                    }
                    LocateAnswer::Entry(Role::HandedOver, Some(g)) => g < transfer,
                    _ => false,
                };
                if never_took {
                    self.table
                        .promote_local(&id, to, self.identity(), now_ms())
                        .map(|c| (c, None))
                } else {
                    tracing::debug!(session = %id, %failed, receiver = %to, "not taking back a copy handed to a node that may be serving it");
                    None
                }
            }
        };
        if let Some((claim, written)) = claim {
            Stats::bump(&self.stats.promotions);
            let landed = self
                .protect_and_install(
                    claim.generation,
                    &claim.record,
                    &with_lineage(&claim.holders),
                    backups,
                    &[],
                    Some(super::install::ClaimOf {
                        failed,
                        base: claim.base,
                    }),
                )
                .await;
            // A holder whose process changed after `failed` last wrote the copy claimed
            // here lost whatever `failed` placed there since; its confirmation fences
            // nothing, so the claim counts as unconfirmed (protocol.md 12.3 step 1).
            // Simulation seed 5292 with crashes: `failed`, cut off but alive, went on
            // and rotated the session away, while this claim, confirmed only by the new
            // process of `failed`'s other holder, acknowledged an append. Nor has the
            // claim acknowledged anything yet: it yields to a rival of its generation as
            // a claim short of confirmations does (12.4), until a round completes after
            // the survey (simulation seed 29620 with crashes: kept as one that may have
            // acknowledged, it and a rival that had acknowledged an append refused each
            // other, and a lost LOCATE reply later gave up the rival's copy and append).
            if let (Landed::Owner(Some(placed)), Some(written)) = (&landed, written) {
                if placed
                    .confirmed
                    .iter()
                    .any(|h| self.peers.processes.gone_since(*h) > written)
                {
                    tracing::info!(session = %id, %failed, "a claim confirmed by a holder that restarted since its copy was written; surveyed first");
                    self.mark_claim_short_of_confirmations(id, claim.generation, claim.base);
                }
            }
            // A holder keeps a newer copy of this address's earlier process: taken over
            // from it with PROMOTE naming this node as the failed owner (its process is
            // gone: this one replaced it), at most `MAX_EARLIER_HOPS` times in one
            // failover.
            if let (Landed::EarlierProcess(holder), true) = (&landed, earlier_hops < MAX_EARLIER_HOPS) {
                return self.take_over_earlier(id, *holder, lineage, earlier_hops).await;
            }
            // A holder is handing this node a newer copy (its reply was lost): fetched.
            if let Landed::HandingHere(holder) = landed {
                return Some(self.copy_chain(id, holder, true, backups).await);
            }
            // Installed: served here. Not installed: a holder refused the claim. When it
            // points at a newer owner, the session lives on there; when it points back at
            // `failed` (a copy it kept when it yielded to `failed`, which holds nothing
            // now), its copy is the newer one and is taken over below with PROMOTE.
            // Returning "installed" regardless re-served the request from the copy kept
            // here, pointing at `failed`, in a loop (simulation seed 128).
            match self.table.locate(&id, self.advertise, now_ms()) {
                Some((Role::Owner, _)) => return Some((Ok(Fetched::Installed), Vec::new())),
                Some((Role::Destroyed, _)) => return Some((Err(FetchError::Destroyed), Vec::new())),
                Some((Role::Backup | Role::HandedOver, owner))
                    if owner != failed && owner != self.advertise =>
                {
                    return Some(self.copy_chain(id, owner, true, backups).await)
                }
                _ => {
                    tracing::debug!(session = %id, %failed, "a holder refused the claim of the copy held here; asking the holders")
                }
            }
        }
        // A backup refuses PROMOTE with MOVED{failed} while `failed`'s read lease on its
        // copy may still run (or while `failed` still REPLICATEs to it); asked again until
        // that lease has surely ended (12.3), so the request waits instead of failing.
        let lease = self.config.read_lease;
        let lease_ends = (!lease.is_zero()).then(|| Instant::now() + lease + LEASE_POLL);
        for &b in backups {
            if b == self.advertise || b == failed {
                continue;
            }
            let mut attempts = 0;
            let had = self.table.last_received(&id);
            let reply = loop {
                attempts += 1;
                let live_version = self.table.live_version(&id, now_ms());
                let ask = PeerMessage::Promote {
                    session_id: id,
                    last_transfer: self.promote_last_transfer(&id, had),
                    failed_owner: failed,
                };
                let answer = self
                    .peers
                    .request(b, ask, Instant::now() + self.config.peer_timeout)
                    .await;
                if matches!(answer, Err(LinkError::Lost)) {
                    let promote = UnansweredPromote {
                        failed,
                        lineage: lineage.into(),
                        live_version,
                    };
                    self.unanswered_copy(id, b, had, Some(promote));
                }
                match answer {
                    // A lost reply is asked again: a backup that handed its copy to us
                    // sends the same copy again.
                    Err(LinkError::Lost) if attempts < 2 => continue,
                    Ok(PeerMessage::Moved { owner, .. })
                        if owner == failed && lease_ends.is_some_and(|end| Instant::now() < end) =>
                    {
                        tokio::time::sleep(LEASE_POLL).await;
                        attempts = 0;
                        continue;
                    }
                    r => break r,
                }
            };
            match reply {
                // The backup's copy is no newer than the live copy here: it was handed
                // over under the generation just past ours, which a giver picks only when
                // its own copy's is not above it (protocol.md 12.3 step 2). Ours is the
                // later state of the lineage (or a rival branch of it); taking the older
                // one over it would lose what ours has (simulation seed 913 without
                // crashes: an owner cut off from the claimer of its next generation took
                // over a copy another node had kept from an abandoned claim, and lost
                // eight acknowledged appends). Refused, so the giver ends its handover.
                // Unless it is a sibling (handed over under ours + 1: the giver's copy is
                // of our generation) and ours acknowledged nothing since it was installed
                // without its confirmations: then the sibling may hold what was
                // acknowledged and ours holds nothing that was (simulation seed 13048
                // without crashes: a move installed cut off refused the re-handed branch
                // that had acknowledged an append, then handed itself on under a higher
                // generation, and the append was lost).
                Ok(PeerMessage::CopyData { transfer, record, .. })
                    if record.id == id && self.promoted_copy_not_newer(&id, had, transfer) =>
                {
                    tracing::info!(session = %id, %failed, backup = %b, transfer, "a backup's copy is no newer than the live copy here; refused");
                    self.refuse_copy(b, id, transfer);
                }
                Ok(PeerMessage::CopyData {
                    transfer,
                    holders,
                    record,
                }) if record.id == id && transfer != 0 => {
                    tracing::info!(session = %id, %failed, backup = %b, "took the session over from a backup");
                    Stats::bump(&self.stats.promotions);
                    let earlier = self
                        .install_promoted_copy(b, transfer, &record, &with_lineage(&holders), backups, failed)
                        .await;
                    // A holder keeps a newer copy of this address's earlier process: taken
                    // over from it in turn (simulation seed 9698 with crashes: a restarted
                    // node's claim of its old process's copy met a holder with a newer one,
                    // and the session was left behind a pointer to that holder for good).
                    if let (Some(holder), true) = (earlier, earlier_hops < MAX_EARLIER_HOPS) {
                        return self.take_over_earlier(id, holder, lineage, earlier_hops).await;
                    }
                    // A copy of this node's own earlier process: which holders that process
                    // placed newer copies on is unknown here, so the claim's confirmations
                    // count only after a survey of the members (simulation seed 9744 with
                    // crashes: a restarted node took an older backup copy over and
                    // acknowledged an append on it, while another holder kept its old
                    // process's newer copy).
                    if failed == self.advertise && self.table.live_generation(&id, now_ms()).is_some() {
                        self.mark_unconfirmed_claim(id);
                    }
                    // Not installed when a rival claim won here meanwhile
                    // (`protect_and_install`, `claim`): the session lives on there.
                    if let Some((Role::Backup, owner)) = self.table.locate(&id, self.advertise, now_ms()) {
                        if owner != self.advertise {
                            return Some(self.copy_chain(id, owner, true, backups).await);
                        }
                    }
                    return Some((Ok(Fetched::Installed), Vec::new()));
                }
                Ok(PeerMessage::Moved { owner, .. }) if owner == self.advertise => {
                    return Some((Ok(Fetched::PointsHere), Vec::new()))
                }
                // The backup knows a newer owner: the session lives on there.
                Ok(PeerMessage::Moved { owner, .. }) if owner != failed => {
                    return Some(self.copy_chain(id, owner, true, backups).await)
                }
                other => {
                    tracing::debug!(session = %id, backup = %b, "backup did not hand the session over: {other:?}")
                }
            }
        }
        None
    }
}

/// Most holders keeping a newer copy of this address's earlier process that one failover
/// takes over in turn ([`Node::failover_traced`]).
const MAX_EARLIER_HOPS: usize = 3;

/// How long a COPY chain waits for a node that answers NOT_FOUND where it should have the
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// A few short pauses (a node MOVED named: the copy is still on the wire).
    OnTheWire,
    /// Until two peer timeouts have passed: the node said (LOCATE) it owns the session,
    /// so it is placing a copy handed to it on its holders before it installs it.
    WhilePlaced,
}
