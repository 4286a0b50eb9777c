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
    /// for the session, or ran into a cycle of forwarding pointers, looks it up among the
    /// members. `asked`: the nodes the fetch asked, in order (not asked again, but after a
    /// cycle). Any other outcome is returned as it is. "Not found" is never the answer
    /// while this node holds a backup copy of the session ([`Node::not_found_unless_held`]).
    pub(super) async fn lookup_if_lost(
        &self,
        id: SessionId,
        result: FetchResult,
        asked: &[SocketAddr],
        backups: &[SocketAddr],
    ) -> FetchResult {
        let result = self.look_up(id, result, asked, backups).await;
        self.not_found_unless_held(id, result)
    }

    /// A fetch's "not found" (the chain ended at a node without it, and the lookup, if
    /// any, found nothing) turned into a retryable failure while this node holds a backup
    /// copy of the session: its owner placed it here, so the session exists, and a fetch
    /// begun again starts from that copy's owner. Answered "not found", a session whose
    /// new owner took it over while this fetch's chain was under way was reported gone:
    /// the owner answered COPY NOT_FOUND while it placed its copy, and the copy it placed
    /// here was the proof (simulation seed 24348 with crashes). Not for a tombstone
    /// (destroyed: nothing brings it back) or a copy that expired in flight.
    fn not_found_unless_held(&self, id: SessionId, result: FetchResult) -> FetchResult {
        match &result {
            Err(e)
                if e.not_found()
                    && !matches!(e, FetchError::Destroyed | FetchError::ExpiredInFlight)
                    && matches!(
                        self.table.locate(&id, self.advertise, now_ms()),
                        Some((Role::Backup, _))
                    ) =>
            {
                Err(FetchError::Unsure(format!(
                    "{e}; but this node holds a backup copy of it, so its owner is to be asked again"
                )))
            }
            _ => result,
        }
    }

    /// The body of [`Node::lookup_if_lost`].
    async fn look_up(
        &self,
        id: SessionId,
        result: FetchResult,
        asked: &[SocketAddr],
        backups: &[SocketAddr],
    ) -> FetchResult {
        // Forwarding pointers that lead back to a node already asked form a cycle: no node
        // on it owns the session (each points on), so following them again cannot end. The
        // simulation stranded sessions that way for good (TOO_MANY_HOPS at every node after
        // the heal: two claims of one generation that fenced each other, leaving backups
        // and pointers only). Every member is then asked, the nodes of the cycle included.
        let cycle = matches!(&result, Err(e) if e.too_many_hops())
            && asked.iter().enumerate().any(|(i, a)| asked[..i].contains(a));
        let own_copy = match &result {
            Ok(Fetched::PointsHere) => self.own_copy_passed_over(id, asked),
            _ => None,
        };
        let lost = match &result {
            Err(e) if e.not_found() || e.unreachable() => true,
            Ok(Fetched::PointsHere) => !self.table.knows(&id) || own_copy.is_some(),
            _ => cycle,
        };
        if !lost {
            return result;
        }
        // After a cycle, or a chain that passed the owner of the copy held here, the nodes
        // asked are asked again: what they pointed at led nowhere.
        let asked: &[SocketAddr] = if cycle || own_copy.is_some() { &[] } else { asked };
        // Boxed: a lookup is rare, and its state (~3.8 KB) would otherwise sit inside
        // every fetch's future, which a deferred request allocates and copies once per
        // move (BENCHMARKS.md, "The deferred request's future").
        Box::pin(self.lookup_lost(id, result, asked, backups, own_copy)).await
    }

    /// The owner of the backup copy held here, when the fetch asked it and the chain went
    /// on from it and came back here: the owner pointed elsewhere (it restarted, fenced at
    /// an older generation, or yielded), so the copy here may be the newest there is, and
    /// nobody else would take it over. Simulation seed 283 with crashes: the owner of
    /// generation 19 restarted, its new process held a fence of 16 pointing at a stale
    /// owner, whose refused handover pointed back here, and the copy here, which held an
    /// acknowledged append, answered TOO_MANY_HOPS at every node for good. Not when the
    /// owner itself points here: it is handing the session to this node.
    fn own_copy_passed_over(&self, id: SessionId, asked: &[SocketAddr]) -> Option<SocketAddr> {
        match self.table.locate(&id, self.advertise, now_ms()) {
            Some((Role::Backup, owner))
                if owner != self.advertise && asked.contains(&owner) && asked.last() != Some(&owner) =>
            {
                Some(owner)
            }
            _ => None,
        }
    }

    /// The lookup of [`Node::lookup_if_lost`], for a fetch that ended lost. `own_copy`:
    /// the owner of the copy held here, which counts as one found
    /// ([`Node::own_copy_passed_over`]).
    async fn lookup_lost(
        &self,
        id: SessionId,
        result: FetchResult,
        asked: &[SocketAddr],
        backups: &[SocketAddr],
        own_copy: Option<SocketAddr>,
    ) -> FetchResult {
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
        let unsure = |why: String| -> FetchResult { Err(FetchError::Unsure(why)) };
        // Bounded: a flood of tokens for expired sessions costs at most this many
        // broadcasts at once.
        let Ok(Ok(_slot)) =
            tokio::time::timeout(self.config.peer_timeout, self.elastic.lookup_slots.acquire()).await
        else {
            return unsure("too many lookups among members are under way".into());
        };
        self.elastic.lookups.fetch_add(1, Ordering::Relaxed);
        let replies = self.survey(id, &members).await;
        // An owner under a generation older than the client's token, while a member is
        // silent (or the node this fetch asked did not answer): the session lived on past
        // that copy, and the silent node may hold that lineage (cut off), so the older
        // owner is not followed yet (retry). Once every one answers, it is (the newer
        // lineage may be gone for good, and this copy the best there is). Followed at
        // once, a stale original owner's copy, cut off while a backup claimed the
        // session, went on at a restarted node and its lineage overwrote the claim's
        // acknowledged append (simulation seed 5845 with crashes).
        let known = self.token_generation_fetching(&id);
        // Silent as the loop below counts it: any reply but NOT_FOUND or LOCATED (an ERROR
        // says nothing about the session either).
        let any_silent = replies
            .iter()
            .any(|r| !matches!(r, Ok(PeerMessage::NotFound { .. } | PeerMessage::Located { .. })))
            || matches!(&result, Err(e) if e.unreachable());
        let mut stale_owner = None;
        let mut owner = None;
        let mut handed: Vec<SocketAddr> = Vec::new();
        let mut copies: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        // Members still handing the session to a node that does not have it: this address
        // (its earlier process was killed before it acknowledged the handover, so before
        // it served anything, 12.4, and this one has no entry), or a node this fetch
        // already asked, which did not have it (it restarted) or did not answer. With the
        // address that failed.
        let mut handing_to_lost: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        // The newest generation a member is handing to this address under, and the newest
        // any member answered otherwise with (an answer without one counts as newest).
        let mut handed_here_at: Option<u64> = None;
        let mut newest_elsewhere: u64 = 0;
        let mut silent: Vec<SocketAddr> = Vec::new();
        // Members that answered without owning the session: a pointer to one of them
        // leads nowhere new.
        let mut answered: Vec<SocketAddr> = Vec::new();
        // Members that answered with a pointer (they handed it on: maybe in flight).
        let mut pointing: Vec<SocketAddr> = Vec::new();
        // Every (giver, receiver) of a handover under way, and the members that answered
        // holding at most a backup copy (nothing they would hand on).
        let mut handovers: Vec<(SocketAddr, SocketAddr, Option<u64>)> = Vec::new();
        let mut without: Vec<SocketAddr> = Vec::new();
        for (&m, reply) in members.iter().zip(replies.clone()) {
            match &reply {
                Ok(PeerMessage::Located {
                    session_id,
                    role: Role::HandedOver,
                    addr,
                    generation,
                }) if *session_id == id => handovers.push((m, *addr, *generation)),
                Ok(PeerMessage::Located {
                    session_id,
                    role: Role::Backup,
                    ..
                }) if *session_id == id => without.push(m),
                Ok(PeerMessage::NotFound { session_id }) if *session_id == id => without.push(m),
                _ => {}
            }
            if matches!(&reply, Ok(PeerMessage::Located { session_id, role: Role::HandedOver, .. }) if *session_id == id)
            {
                pointing.push(m);
            }
            let about_it = matches!(&reply, Ok(PeerMessage::NotFound { session_id }) if *session_id == id)
                || matches!(&reply, Ok(PeerMessage::Located { session_id, role, .. }) if *session_id == id && *role != Role::Owner);
            if about_it {
                answered.push(m);
            }
            if let Ok(PeerMessage::Located {
                session_id,
                role,
                addr,
                generation,
            }) = &reply
            {
                if *session_id == id && *role != Role::Destroyed {
                    let g = generation.unwrap_or(u64::MAX);
                    if *role == Role::HandedOver && *addr == self.advertise {
                        handed_here_at = handed_here_at.max(Some(g));
                    } else {
                        newest_elsewhere = newest_elsewhere.max(g);
                    }
                }
            }
            match reply {
                Ok(PeerMessage::Located {
                    session_id,
                    role,
                    addr,
                    generation,
                }) if session_id == id => match role {
                    Role::Owner if addr == m && any_silent && generation.is_some_and(|g| g < known) => {
                        tracing::debug!(session = %id, owner = %m, ?generation, known, "an owner older than the client's token, while a node is silent: not followed yet");
                        stale_owner = Some(m);
                    }
                    Role::Owner if addr == m => owner = Some(m),
                    Role::HandedOver if addr != self.advertise && !asked.contains(&addr) => handed.push(addr),
                    // Handed to this address under a generation this process holds nothing
                    // of: its earlier process received it (an older copy or fence held here
                    // does not make it this process's: simulation seed 28989 with crashes).
                    Role::HandedOver
                        if addr == self.advertise
                            && match generation {
                                Some(g) => {
                                    self.table.live_generation(&id, now_ms()).is_none()
                                        && self.table.last_received(&id) < g
                                }
                                None => !self.table.knows(&id),
                            } =>
                    {
                        handing_to_lost.push((m, addr))
                    }
                    Role::HandedOver if asked.contains(&addr) => handing_to_lost.push((m, addr)),
                    Role::Backup => copies.push((m, addr)),
                    // Destroyed (or rotated away) there: nothing may bring it back.
                    Role::Destroyed => return Err(FetchError::Destroyed),
                    _ => {}
                },
                Ok(PeerMessage::NotFound { .. }) | Ok(PeerMessage::Located { .. }) => {}
                _ => silent.push(m),
            }
        }
        // A pointer to a member that answered without owning the session (a cycle of
        // pointers, or a stale one) leads nowhere new; one to a node that did not answer,
        // or that is not a member, may lead to the owner.
        handed.retain(|h| !answered.contains(h));
        // A handover stuck for good: its receiver answered, and holds at most a backup
        // copy (its COPY_DATA was lost and it never asked again). The giver still holds the
        // newest state, and answers every other asker MOVED to the receiver, which points
        // back at its owner: a cycle no COPY chain leaves (simulation seed 233). Or the
        // receiver points back at the giver under an older generation than the handover's:
        // it handed the session to the giver before and never installed the copy coming
        // back (simulation seed 120 with crashes: a PROMOTE delayed past its asker's
        // patience, answered by the giver after a pause; the COPY_DATA found no request).
        let points_back_older = |giver: SocketAddr, to: SocketAddr, transfer: Option<u64>| {
            handovers.iter().any(|&(m, a, g)| {
                m == to && a == giver && matches!((g, transfer), (Some(g), Some(t)) if g < t)
            })
        };
        let stuck: Vec<(SocketAddr, SocketAddr)> = handovers
            .iter()
            .filter(|&&(giver, to, transfer)| {
                to != self.advertise && (without.contains(&to) || points_back_older(giver, to, transfer))
            })
            .map(|&(giver, to, _)| (giver, to))
            .collect();
        // A member hands this address a generation newer than anything any other member,
        // or this process, holds: that copy is the session's newest state, and the copies
        // (older ones: of another claim, or the one held here) are not taken over past it;
        // it is handed here again below, once every member answered. Taking the copies
        // branch instead followed a copy held here back to the giver, which pointed here,
        // for good (simulation seeds 4191 and 30859 with crashes: TOO_MANY_HOPS after the
        // heal). A copy of this address's earlier process at the handover's generation or
        // newer is such a newer answer, and keeps the copies branch first (seed 30417).
        let handed_here_newest = handed_here_at
            .is_some_and(|g| g > newest_elsewhere && g > self.table.last_received(&id))
            && handing_to_lost.iter().any(|(_, lost)| *lost == self.advertise);
        // This node's own handover under way, to a member that answered without owning the
        // session, when no member answered with anything of its generation or newer.
        let own_handover_stuck = self
            .table
            .handing_over_to(&id, now_ms())
            .filter(|&(to, transfer)| {
                to != self.advertise
                    && answered.contains(&to)
                    && silent.is_empty()
                    && newest_elsewhere < transfer
            })
            .map(|(to, _)| to);
        tracing::debug!(session = %id, ?owner, ?handed, ?copies, ?own_copy, ?silent, ?stuck, handed_here_newest, ?own_handover_stuck, "lookup");
        let found = if let Some(o) = owner.or(handed.first().copied()) {
            self.copy_chain_or_rehand(id, o, true, backups).await.0
        } else if let Some(&(giver, to)) = stuck.first() {
            // The picture must hold still for as long as a receiver may take to protect a
            // copy before installing it (two peer timeouts): then the receiver never will,
            // and the giver hands its copy on again (PROMOTE naming the receiver, 12.4). Were
            // the receiver's install only late, it and this node claim one generation from
            // one state, and the holders accept only one (12.2).
            if !self.holds_still(id, &members, &replies).await {
                return unsure("the session was still moving".into());
            }
            // The giver may have heard an ACK since (it points on, holding nothing): then
            // the copies of its lineage that the members hold are all that is left of the
            // session (simulation seed 609: the receiver held the giver's backup copy, and
            // the giver pointed at it), and one of them is taken over as below.
            let lineage: Vec<SocketAddr> = copies.iter().map(|(h, _)| *h).collect();
            let givers: Vec<SocketAddr> = copies
                .iter()
                .filter(|(_, o)| *o == giver)
                .map(|(h, _)| *h)
                .collect();
            // (`failover_fencing` tries a copy of the giver's held here first.)
            let rehanded = match self.failover(id, to, &[giver]).await {
                Some(r) => Some(r),
                None => self.failover_fencing(id, giver, &givers, &lineage).await,
            };
            match rehanded {
                Some(r) => r,
                None => return unsure("the member handing it on did not hand it over again".into()),
            }
        } else if (!copies.is_empty() || own_copy.is_some()) && !handed_here_newest {
            // Copies of one or more owners, none of which owns the session now: take one
            // over as a failover would, with PROMOTE naming its owner (one held here is
            // tried first, `failover_fencing`).
            let mut owners: Vec<SocketAddr> = own_copy.into_iter().collect();
            for (_, o) in &copies {
                if !owners.contains(o) {
                    owners.push(*o);
                }
            }
            if owners.contains(&self.advertise) {
                return unsure("copies of this node's earlier process are taken over by the repair".into());
            }
            // Fenced as a failover is (protocol.md 17.3): a copy is taken over only when it
            // is certain that no other node owns the session. Every member but the copies'
            // owners answered (one that did not may own it now, on the other side of a
            // partition: taking a copy over then makes a second owner).
            if silent.iter().any(|s| !owners.contains(s)) {
                return unsure(format!(
                    "{} member(s) did not answer a lookup, and one of them may own it",
                    silent.iter().filter(|s| !owners.contains(s)).count()
                ));
            }
            // Each owner must be gone. A member that answered without owning it (it
            // yielded, was fenced, or restarted empty; a destroyed session ended the lookup
            // above) is. One that did not answer (or is no member) is asked LOCATE: gone
            // when it has no entry at all (restarted empty) or stays silent and fails a
            // fresh PING (a slow owner is never failed over from, 11.3). One that answers
            // otherwise is asked with COPY.
            let mut alive_owner = None;
            for &o in &owners {
                if answered.contains(&o) && !pointing.contains(&o) {
                    continue;
                }
                if pointing.contains(&o) {
                    // It handed the session on (perhaps still in flight): follow it.
                    alive_owner = Some(o);
                    break;
                }
                let gone = match self.gone_without(id, o).await {
                    Ok(g) => g,
                    Err(destroyed) => return destroyed,
                };
                if !gone {
                    alive_owner = Some(o);
                    break;
                }
            }
            if alive_owner.is_none() {
                // The picture must hold still: a session in flight (its receiver places
                // its copy on backups before it installs it, up to two peer timeouts)
                // looks ownerless for that long. Asked again after that, every member
                // must answer as before, or nothing is taken over (a quiet cluster under
                // load must never fail over, tests/chaos.rs).
                if !self.holds_still(id, &members, &replies).await {
                    return unsure("the session was still moving".into());
                }
            }
            let found = if let Some(o) = alive_owner {
                Some(self.copy_chain_or_rehand(id, o, true, backups).await.0)
            } else {
                // Every holder found takes the new copy (the holders rule of 12.3, with
                // all the lineages the lookup saw): a newer copy among them refuses it.
                let lineage: Vec<SocketAddr> = copies.iter().map(|(h, _)| *h).collect();
                let mut taken = None;
                for &o in &owners {
                    let holders: Vec<SocketAddr> =
                        copies.iter().filter(|(_, x)| *x == o).map(|(h, _)| *h).collect();
                    taken = self.failover_fencing(id, o, &holders, &lineage).await;
                    if taken.is_some() {
                        break;
                    }
                }
                taken
            };
            match found {
                Some(r) => r,
                None => unsure("no holder of its copy handed it over".into()),
            }
        } else if let Some(&(giver, lost)) = handing_to_lost.first() {
            // PROMOTE naming the node it was handed to as the failed owner: the giver hands
            // its copy on again, to this node (protocol.md 12.4, "re-handing"). Only when
            // that node is this one, or is gone as a failover requires (it has no entry:
            // a new process; or it fails a fresh PING): a slow receiver may have installed
            // the copy and be serving it, its ACK still on the way.
            //
            // And only when every other member answered: the giver still handing the copy
            // over says only that it never heard the receiver's COPY_ACK, not that the
            // receiver never sent it. The receiver may have installed the copy, placed it
            // on holders other than the giver and acknowledged writes before it died; a
            // member that holds that branch and did not answer would then see an older
            // copy of the same generation handed on over it (simulation seed 30417 with
            // crashes: the earlier process of this address placed the copy on a paused
            // member only and acknowledged two appends; its new process took the giver's
            // copy back and lost them). A member that answered with such a copy sends the
            // lookup down the copies branch above instead.
            let unheard = silent.iter().filter(|s| **s != lost).count();
            if unheard > 0 {
                return unsure(format!(
                    "{unheard} member(s) did not answer a lookup, and one of them may hold what the receiver it was handed to acknowledged"
                ));
            }
            let gone = lost == self.advertise
                || match self.gone_without(id, lost).await {
                    Ok(g) => g,
                    Err(destroyed) => return destroyed,
                };
            if !gone {
                return unsure("the node it was handed to has not acknowledged it yet".into());
            }
            match self.failover(id, lost, &[giver]).await {
                Some(r) => r,
                None => return unsure("the member handing it here did not hand it over again".into()),
            }
        } else if let Some(to) = own_handover_stuck {
            // This node is handing the session to `to`, which answered holding nothing of
            // the handover's generation, as did every other member: the copy kept here is
            // the newest there is, and nobody else would take it back (the lookup asks
            // the others, never this node's own entry). The failover takes it back once
            // `to` answers so again (`failover_from`). Simulation seed 20963 with
            // crashes: the receiver's process died with the copy installed and its
            // COPY_ACK held back; its new process and the third member held only fences
            // of each other, and every request circled between them for good.
            if !self.holds_still(id, &members, &replies).await {
                return unsure("the session was still moving".into());
            }
            match self.failover(id, to, &[]).await {
                Some(r) => r,
                None => return unsure("the copy this node is handing over was not taken back".into()),
            }
        } else if here(&self.table) {
            Ok(Fetched::PointsHere)
        } else if !silent.is_empty() {
            return unsure(format!("{} member(s) did not answer a lookup", silent.len()));
        } else if !pointing.is_empty() && !self.holds_still(id, &members, &replies).await {
            // A member pointed on to one that did not have it yet: a handover in flight (a
            // drain's, tests/rolling_restart.rs with `--replicas 0`: the receiver answered
            // before it installed the copy). Not found only if the picture holds still.
            return unsure("the session was still moving".into());
        } else if let Some(older) = stale_owner {
            return unsure(format!(
                "{older} owns it under a generation older than the client's token, and a member is silent"
            ));
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
            Err(e) => unsure(format!(
                "a lookup found it but fetching it failed ({}: {e})",
                e.code()
            )),
        }
    }

    /// Whether the members answer as in `replies` when asked again two peer timeouts later
    /// (the longest a receiver protects a copy before it installs it, during which a
    /// session in flight looks ownerless or stuck).
    async fn holds_still(
        &self,
        id: SessionId,
        members: &[SocketAddr],
        replies: &[Result<PeerMessage, LinkError>],
    ) -> bool {
        tokio::time::sleep(self.config.peer_timeout * 2).await;
        same_answers(id, replies, &self.survey(id, members).await)
    }

    /// LOCATE to each of `members`, in parallel, within one peer timeout.
    pub(super) async fn survey(
        &self,
        id: SessionId,
        members: &[SocketAddr],
    ) -> Vec<Result<PeerMessage, LinkError>> {
        let deadline = Instant::now() + self.config.peer_timeout;
        futures_util::future::join_all(members.iter().map(|&m| {
            self.peers
                .request(m, PeerMessage::Locate { session_id: id }, deadline)
        }))
        .await
    }

    /// LOCATE for `id` to `node`, within one peer timeout, read one way for every caller.
    pub(super) async fn locate_at(&self, id: SessionId, node: SocketAddr) -> LocateAnswer {
        locate_answer(id, self.ask_locate(id, node).await)
    }
}

/// What a LOCATE answer about `id` says ([`Node::locate_at`]).
pub(super) fn locate_answer(id: SessionId, reply: Result<PeerMessage, LinkError>) -> LocateAnswer {
    match reply {
        Ok(PeerMessage::NotFound { session_id }) if session_id == id => LocateAnswer::NoEntry,
        Ok(PeerMessage::Located {
            session_id,
            role: Role::Destroyed,
            ..
        }) if session_id == id => LocateAnswer::Destroyed,
        Ok(PeerMessage::Located {
            session_id,
            role,
            generation,
            ..
        }) if session_id == id => LocateAnswer::Entry(role, generation),
        Ok(_) => LocateAnswer::Unclear,
        Err(_) => LocateAnswer::Silent,
    }
}

impl Node {
    /// Whether every member but `except` answered LOCATE for `id` holding nothing of
    /// `generation` or newer (no entry, or an owner, pointer or copy of an older
    /// generation). A silent member, or an answer without a generation, counts as holding
    /// something newer: the caller's premise ("nobody went on from there") is then unknown.
    /// `mine_too`: whether an answer naming this node (a copy of its own state, a pointer
    /// to it) counts as well; not for a caller whose own state is what it would claim.
    pub(super) async fn members_hold_nothing_from(
        &self,
        id: SessionId,
        generation: u64,
        except: SocketAddr,
        mine_too: bool,
    ) -> bool {
        let members: Vec<SocketAddr> = self
            .lookup_members()
            .into_iter()
            .filter(|m| *m != except)
            .collect();
        let replies = self.survey(id, &members).await;
        let nothing = replies.iter().all(|reply| match reply {
            Ok(PeerMessage::NotFound { session_id }) => *session_id == id,
            Ok(PeerMessage::Located {
                session_id,
                role,
                addr,
                generation: theirs,
            }) => {
                *session_id == id
                    && *role != Role::Destroyed
                    && ((!mine_too && *addr == self.advertise) || theirs.is_some_and(|g| g < generation))
            }
            _ => false,
        });
        tracing::debug!(session = %id, generation, %except, nothing, "asked the members whether a lineage went on past a generation");
        nothing
    }

    /// Whether some member answers LOCATE for `id` that it is handing the session to `to`
    /// under a generation above `generation` (LOCATED role 3, naming `to`).
    pub(super) async fn member_handing_past(&self, id: SessionId, to: SocketAddr, generation: u64) -> bool {
        let members = self.lookup_members();
        let replies = self.survey(id, &members).await;
        replies.iter().any(|reply| {
            matches!(reply, Ok(PeerMessage::Located {
                session_id,
                role: Role::HandedOver,
                addr,
                generation: Some(g),
            }) if *session_id == id && *addr == to && *g > generation)
        })
    }

    /// [`Node::locate_at`], asked again while `node` is silent, up to `tries` times in
    /// all: where a lost reply must not pass for an answer.
    pub(super) async fn locate_at_retrying(
        &self,
        id: SessionId,
        node: SocketAddr,
        tries: usize,
    ) -> LocateAnswer {
        let mut answer = self.locate_at(id, node).await;
        for _ in 1..tries {
            if !matches!(answer, LocateAnswer::Silent) {
                break;
            }
            answer = self.locate_at(id, node).await;
        }
        answer
    }

    /// LOCATE{`id`} to `node`, within one peer timeout: its raw reply.
    pub(super) async fn ask_locate(&self, id: SessionId, node: SocketAddr) -> Result<PeerMessage, LinkError> {
        let deadline = Instant::now() + self.config.peer_timeout;
        self.peers
            .request(node, PeerMessage::Locate { session_id: id }, deadline)
            .await
    }

    /// Whether `node` is gone as far as session `id` goes: it answers LOCATE with
    /// NOT_FOUND (a new process there, with no entry), or does not answer and fails a
    /// fresh PING. `Err`: it says the session was destroyed (the lookup's answer).
    async fn gone_without(&self, id: SessionId, node: SocketAddr) -> Result<bool, FetchResult> {
        match self.locate_at(id, node).await {
            LocateAnswer::NoEntry => Ok(true),
            LocateAnswer::Destroyed => Err(Err(FetchError::Destroyed)),
            LocateAnswer::Entry(..) | LocateAnswer::Unclear => Ok(false),
            LocateAnswer::Silent => Ok(!self.alive(node).await),
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

/// What a node's answer to one LOCATE says about its entry for the session
/// ([`Node::locate_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LocateAnswer {
    /// NOT_FOUND: no entry at all, so a new process there (a destroyed or rotated-away
    /// session leaves a tombstone, answered otherwise).
    NoEntry,
    /// LOCATED with role 4: destroyed or rotated away there.
    Destroyed,
    /// LOCATED with any other role: it owns, holds, or points on from an entry, and the
    /// generation it gave (`None` from a node before LOCATED carried one).
    Entry(Role, Option<u64>),
    /// An answer about another session, or an error frame: it says nothing either way.
    Unclear,
    /// No answer within the peer timeout (or no link).
    Silent,
}

/// Whether two surveys of the members ([`Node::survey`]) say the same about session `id`:
/// every member gave the same kind of answer naming the same node (no answer counts as
/// one kind).
fn same_answers(
    id: SessionId,
    first: &[Result<PeerMessage, LinkError>],
    second: &[Result<PeerMessage, LinkError>],
) -> bool {
    let key = |r: &Result<PeerMessage, LinkError>| match r {
        Ok(PeerMessage::Located {
            session_id,
            role,
            addr,
            ..
        }) if *session_id == id => Some(Some((*role, *addr))),
        Ok(PeerMessage::NotFound { session_id }) if *session_id == id => Some(None),
        _ => None,
    };
    first.len() == second.len() && first.iter().zip(second).all(|(a, b)| key(a) == key(b))
}
