//! Two live copies of one generation (protocol.md 12.4, "Rival copies of one
//! generation"): two claims, or a claim and a move, installed at two nodes while each was
//! cut off from the other's holders. When one's REPLICATE reaches the other, one of them
//! must give the session up, and never one that may hold an acknowledged write the other
//! lacks.
//!
//! Each node knows one thing about its own copy: whether it is a *claim* (a failover's
//! take-over) installed with fewer confirmations than it needs that has had no complete
//! round since: it *never acknowledged* a write under that generation. A moved copy
//! never counts so: it carries what its giver acknowledged, which a rival claim from a
//! stale branch may lack (seed 3531 without crashes, with a first version that marked
//! moves too). Before these rules each copy answered the other's REPLICATE with MOVED
//! naming itself, and each gave up on the other's MOVED: both copies became pointers at
//! each other and every request answered TOO_MANY_HOPS for good (simulation seeds 349,
//! 3341, 7536 and 7805). Now:
//! - a claim that never acknowledged yields to a rival of its generation whose node id is
//!   higher (the tie-break 12.2 uses between pending claims), keeps the rival's copy as
//!   its backup, and fences its own holders;
//! - it answers a lower rival MOVED as before, and then challenges it: one REPLICATE of
//!   its own copy to the rival, giving up if the rival answers MOVED naming itself;
//! - a copy that may have acknowledged never gives up to a rival of its own generation:
//!   the rival's MOVED counts as a holder that did not confirm, so nothing more is
//!   acknowledged until the rival yields and takes this copy, and the session is not
//!   handed over meanwhile (an unconfirmed claim, `holder_restarts.rs`: a copy handed on
//!   would supersede the rival's by number). Whether the node that
//!   answered MOVED naming itself owns that very generation (and not a newer one, which
//!   supersedes this copy as before) is asked with LOCATE, and a survey of the members
//!   (`holder_restarts.rs`) counts such a rival as unsettled, not newer; and a MOVED from
//!   a holder naming a rival that has since yielded to this copy is stale, not a reason
//!   to give up.
//!
//! Beside the rivals of one generation (session 25): a moved copy installed without
//! confirmations is remembered as never acknowledged too, not to yield to rivals, but so
//! that a failover may take a sibling branch of its generation over it (`fetch.rs`).

use sessync_proto::{ClaimBase, ErrorCode, ErrorReply, PeerIdentity, SessionRecord};

use super::*;

/// How many times [`Node::moved_names_a_yielded_rival`] asks a rival that still owns a copy
/// of this generation (half a peer timeout apart) or is silent, within two peer timeouts: a
/// rival's round lasts at most that, after which it has yielded or kept its copy for good.
const RIVAL_ROUND_ASKS: usize = 5;

impl Node {
    /// Remembers that this node's claim of `id`, installed under `generation`, was not
    /// confirmed by the backups it needs: it has acknowledged nothing yet. With
    /// `--backup-policy degrade` a write is acknowledged with fewer copies, so nothing is
    /// remembered.
    /// `base`: the backup copy the claim was made from, named in the claim's later
    /// rounds too until one completes (REPLICATE_CLAIM).
    pub(super) fn mark_never_acknowledged(&self, id: SessionId, generation: u64, base: Option<ClaimBase>) {
        if self.config.backup_policy != BackupPolicy::Degrade {
            let _ = self.never_acknowledged.insert(id, (generation, base), now_ms());
        }
    }

    /// A claim of `id` under `generation`, installed here, lacks the confirmations that
    /// fence it (fewer holders confirmed than wanted, or only holders that restarted since
    /// its copy was written): its confirmations count only after a survey of the members
    /// ([`Node::mark_unconfirmed_claim`]), and it has acknowledged nothing, so it yields to
    /// a rival of its generation ([`Node::mark_never_acknowledged`]), until a round
    /// completes.
    pub(super) fn mark_claim_short_of_confirmations(
        &self,
        id: SessionId,
        generation: u64,
        base: Option<ClaimBase>,
    ) {
        self.mark_unconfirmed_claim(id);
        self.mark_never_acknowledged(id, generation, base);
    }

    /// Remembers that a copy of `id` moved here under `generation` was installed without
    /// the confirmations it needs: it has acknowledged nothing under that generation yet.
    /// Unlike a claim's mark, this one never makes the copy yield to a rival; it only lets
    /// a sibling branch's copy replace it when this node's owner is sought
    /// ([`Node::acknowledged_nothing_here`]).
    pub(super) fn mark_move_never_acknowledged(&self, id: SessionId, generation: u64) {
        if self.config.backup_policy != BackupPolicy::Degrade {
            let _ = self.moves_never_acknowledged.insert(id, generation, now_ms());
        }
    }

    /// Forgets that the copy of `id` held here never acknowledged: a complete round
    /// confirmed it (it may acknowledge writes now), or it was given up.
    pub(super) fn forget_never_acknowledged(&self, id: SessionId) {
        let _ = self.never_acknowledged.take(&id);
        let _ = self.moves_never_acknowledged.take(&id);
    }

    /// Whether the live copy of `id` here, under `generation`, claimed or moved, has
    /// acknowledged no write under that generation: everything acknowledged in it was
    /// acknowledged by the generation before, which a sibling copy of the same generation
    /// carries too (fencing, protocol.md 12.2). A forgotten mark counts as "may have".
    pub(crate) fn acknowledged_nothing_here(&self, id: &SessionId, generation: u64) -> bool {
        self.never_acknowledged(id, generation)
            || (self.moves_never_acknowledged.get(id) == Some(generation)
                && self.table.live_generation(id, now_ms()) == Some(generation))
    }

    /// Whether this node's live copy of `id` under `generation` has never acknowledged a
    /// write. A forgotten entry counts as "may have acknowledged", the safe side.
    pub(super) fn never_acknowledged(&self, id: &SessionId, generation: u64) -> bool {
        self.never_acknowledged.get(id).map(|(g, _)| g) == Some(generation)
            && self.table.live_generation(id, now_ms()) == Some(generation)
    }

    /// The backup copy this node's live claim of `id` under `generation` was made from,
    /// while the claim has acknowledged nothing: its rounds name it (REPLICATE_CLAIM), so
    /// that the live owner of a rival lineage of that copy's generation refuses the claim
    /// at whichever round reaches it (in simulation seed 35328 with crashes the claim's
    /// first rounds were lost, and a later one reached that owner; there the owner was
    /// handing its copy over by then, which this refusal does not cover).
    pub(super) fn unconfirmed_claim_base(&self, id: &SessionId, generation: u64) -> Option<ClaimBase> {
        match self.never_acknowledged.get(id)? {
            (g, base) if g == generation && self.table.live_generation(id, now_ms()) == Some(generation) => {
                base
            }
            _ => None,
        }
    }

    /// Whether this node's live copy of `id` under `generation` may have acknowledged a
    /// write, so that it must not give up to a rival of that generation.
    pub(super) fn may_have_acknowledged(&self, id: &SessionId, generation: u64) -> bool {
        self.table.live_generation(id, now_ms()) == Some(generation)
            && !self.never_acknowledged(id, generation)
    }

    /// Whether this node's copy of `id` under `generation` must not give up to a rival
    /// copy of that generation: a live copy that may have acknowledged writes, or a moved
    /// copy still being placed (it carries what its giver acknowledged, which a rival
    /// claim from a backup may lack).
    pub(super) fn keeps_against_rival(&self, id: &SessionId, generation: u64) -> bool {
        self.may_have_acknowledged(id, generation) || self.receiving.get(id).is_some_and(|t| *t == generation)
    }

    /// Whether a rival copy at `rival`, among this copy's holders (`holders`), yields to
    /// this node's copy by the tie of two claims of one generation (the higher node id
    /// wins, 12.4) when neither acknowledged: this node's REPLICATE reaches it in the
    /// round, so the rival is asked whether it did before this copy gives up to it.
    pub(super) fn wins_tie_against(&self, rival: SocketAddr, holders: &[SocketAddr]) -> bool {
        holders.contains(&rival)
            && self
                .peers
                .processes
                .node_id_at(rival)
                .is_some_and(|r| r < self.node_id)
    }

    /// Whether a MOVED naming `named`, which the holder `b` answered this node's REPLICATE
    /// of `id` (under `generation`) with, is stale: `named` (asked with LOCATE) holds the
    /// session as a backup or forwarding pointer naming this node, so it yielded to this
    /// copy, and what `b` holds is a fence or copy of `named`'s abandoned claim. A copy that
    /// may have acknowledged writes then keeps the session (a moved copy being placed is
    /// installed), counting `b` as a holder that did not confirm; gave up, both copies
    /// pointed at each other, and a later claim from the abandoned branch lost an
    /// acknowledged append (simulation seed 24267 with crashes), or no copy was left at
    /// all (seed 5541 without crashes).
    ///
    /// A `named` that still owns a copy of `generation` may be a rival claim in the middle
    /// of a round, which yields to this copy once the round is over (it answered this
    /// copy's REPLICATE with VERSION_CONFLICT, 12.4): it is asked again after a pause, up
    /// to [`RIVAL_ROUND_ASKS`] times in all and for two peer timeouts (a round's bound).
    /// Taken at its first answer, the moved copy gave up a millisecond before the rival
    /// yielded to it, and only fences were left (simulation seed 9566 without crashes). A
    /// silent `named` is asked again within the same bounds (seed 12118 without crashes:
    /// the one LOCATE was lost, and the rival yielded just after the copy gave up). When
    /// the bounds pass with `named` silent since it said it owns the generation, after it
    /// promised in `yield_promised` to yield, a copy that keeps against rivals keeps the
    /// session too, contested (see the end of the body).
    ///
    /// Asked only for a copy that keeps against a rival ([`Node::keeps_against_rival`]),
    /// or one that never acknowledged whose round (`batch`) reached a `named` that the tie
    /// of two claims makes yield to it ([`Node::wins_tie_against`]); otherwise `false`.
    /// For the latter only that yield counts: `named`
    /// holding this copy's generation as a backup naming this node. A handover of a newer
    /// generation to this node is not one (simulation seed 34242 without crashes: counted
    /// so, an older claim kept its copy beside the handover's, and an acknowledged append
    /// was lost between the two branches).
    pub(super) async fn moved_names_a_yielded_rival(
        &self,
        id: SessionId,
        b: SocketAddr,
        named: SocketAddr,
        generation: u64,
        batch: &[SocketAddr],
        yield_promised: &[SocketAddr],
    ) -> bool {
        if named == b || named == self.advertise {
            return false;
        }
        let by_tie = if self.keeps_against_rival(&id, generation) {
            false
        } else if self.wins_tie_against(named, batch) {
            true
        } else {
            return false;
        };
        let mut asks = 0;
        let until = Instant::now() + self.config.peer_timeout * 2;
        // `named` answered that it owns a copy of this generation, and has been silent
        // since: a rival in the middle of its round, whose yield may have been lost.
        let mut rival_then_silent = false;
        let stale = loop {
            asks += 1;
            let again = asks < RIVAL_ROUND_ASKS && Instant::now() < until;
            match self.ask_locate(id, named).await {
                Ok(PeerMessage::Located {
                    session_id,
                    role,
                    addr,
                    generation: theirs,
                }) if session_id == id
                    && addr == self.advertise
                    && if by_tie {
                        role == sessync_proto::Role::Backup && theirs == Some(generation)
                    } else {
                        matches!(
                            role,
                            sessync_proto::Role::Backup | sessync_proto::Role::HandedOver
                        )
                    } =>
                {
                    break true
                }
                Ok(PeerMessage::Located {
                    session_id,
                    role: sessync_proto::Role::Owner,
                    generation: Some(theirs),
                    ..
                }) if session_id == id && theirs == generation => {
                    rival_then_silent = true;
                    if !again {
                        // Still the owner at the end: its round is over and it did not
                        // yield (it may have acknowledged writes since).
                        rival_then_silent = false;
                        break false;
                    }
                    tokio::time::sleep(self.config.peer_timeout / 2).await;
                }
                // Silent (its reply lost, or the link still coming up): asked again too.
                Err(_) if again => {}
                _ => break false,
            }
        };
        // A copy that keeps against rivals does not give up to a rival of its generation
        // that promised in this round to yield to it (VERSION_CONFLICT: it never
        // acknowledged a write) and has been silent since it last said it owns the
        // generation: it counts the holder as one that did not confirm, and stays
        // contested until a survey settles it. Given up, and the rival yielded to it a
        // moment later (its answers to the last asks were lost), only fences were left
        // (simulation seed 15021 without crashes). A rival still owning the generation at
        // the last ask is taken for the owner as before: its round ended without its
        // yield, and it may have acknowledged writes this copy lacks (seed 3594 with
        // crashes lost an append when such a rival was kept beside).
        if !stale && rival_then_silent && !by_tie && yield_promised.contains(&named) {
            tracing::info!(session = %id, holder = %b, %named, generation, "a holder named a rival copy of this generation, which may have acknowledged writes: it stays a holder until the rival yields");
            self.mark_unconfirmed_claim(id);
            return true;
        }
        if stale {
            tracing::info!(session = %id, holder = %b, %named, "a holder named a rival that has yielded to this copy, which may have acknowledged writes: the holder stays one that did not confirm");
        }
        stale
    }

    /// Whether `node`, which answered a REPLICATE of `id` under `generation` with MOVED
    /// naming itself, owns the session under that very generation (a rival copy), rather
    /// than a newer one (which supersedes the copy here).
    pub(super) async fn rival_of_generation(&self, id: SessionId, node: SocketAddr, generation: u64) -> bool {
        let rival = matches!(
            self.locate_at(id, node).await,
            super::lookup::LocateAnswer::Entry(sessync_proto::Role::Owner, Some(g)) if g == generation
        );
        if rival {
            tracing::info!(session = %id, %node, generation, "a rival copy of this generation refused this one, which may have acknowledged writes: it stays a holder until it yields");
            // Contested: not handed over (the receiver's copy, one generation higher,
            // would supersede the rival's by number) until a survey finds the rival gone.
            self.mark_unconfirmed_claim(id);
        }
        rival
    }

    /// The peer port's answer to REPLICATE of `record` under `generation` from `peer`,
    /// when this node owns the session under that generation or a newer one.
    pub(crate) fn answer_rival_copy(
        self: &Arc<Self>,
        peer: &PeerIdentity,
        generation: u64,
        record: &SessionRecord,
    ) -> PeerMessage {
        let id = record.id;
        let moved = PeerMessage::Moved {
            session_id: id,
            owner: self.advertise,
        };
        if peer.advertised == self.advertise || !self.never_acknowledged(&id, generation) {
            return moved;
        }
        if peer.node_id < self.node_id {
            self.challenge_rival_in_background(id, generation, peer.advertised);
            return moved;
        }
        // This copy yields. Not while a round of it runs (it may be about to acknowledge
        // a write): then once the round is over, and the rival is told to ask again
        // (MOVED would make it give up too, and neither copy would be left).
        let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
        if let Ok(_round) = self.replication_locks[stripe].try_lock() {
            return if self.yield_to_rival(*peer, generation, record) {
                PeerMessage::Ok
            } else {
                moved
            };
        }
        let (node, peer, record) = (self.clone(), *peer, record.clone());
        // Not tracked by the shutdown tracker: it waits for one round, bounded by two peer
        // timeouts.
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            let _round = node.replication_locks[stripe].lock().await;
            node.yield_to_rival(peer, generation, &record);
        }));
        PeerMessage::Error(ErrorReply::new(
            ErrorCode::VersionConflict,
            "this node's rival copy of the generation yields to yours once its round is over; send it again",
        ))
    }

    /// Gives this node's copy of `id` (never acknowledged, under `generation`) up to the
    /// rival `peer`'s `record`, with the session's replication stripe held: its holders
    /// are fenced and a held COPY_ACK goes. Whether it did.
    fn yield_to_rival(self: &Arc<Self>, peer: PeerIdentity, generation: u64, record: &SessionRecord) -> bool {
        let id = record.id;
        if !self.never_acknowledged(&id, generation) {
            return false;
        }
        let Some(old) = self.table.yield_to_rival(peer, generation, record, now_ms()) else {
            return false;
        };
        self.forget_never_acknowledged(id);
        self.release_held_ack(id);
        self.spawn_drop_backups(id, old);
        true
    }

    /// One REPLICATE of this node's copy of `id` (never acknowledged, under `generation`)
    /// to `rival`, which holds a live copy of that generation: it gives this copy up if
    /// the rival refuses it naming itself (the rival may have acknowledged writes, or
    /// wins the tie), and counts the rival as a holder if it took the copy.
    fn challenge_rival_in_background(self: &Arc<Self>, id: SessionId, generation: u64, rival: SocketAddr) {
        let node = self.clone();
        // Not tracked by the shutdown tracker: one request bounded by the peer timeout.
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
            let _one_at_a_time = node.replication_locks[stripe].lock().await;
            if !node.never_acknowledged(&id, generation) {
                return;
            }
            let Some(snap) = node.table.snapshot(&id, now_ms()) else {
                return;
            };
            if snap.generation != generation {
                return;
            }
            let deadline = Instant::now() + node.config.peer_timeout;
            let message = PeerMessage::Replicate {
                generation,
                record: snap.record,
            };
            match node.peers.request(rival, message, deadline).await {
                Ok(PeerMessage::Moved { owner, .. }) if owner == rival => {
                    if !node.never_acknowledged(&id, generation) {
                        return;
                    }
                    tracing::info!(session = %id, %rival, generation, "a rival copy of this generation refused this one, which never acknowledged a write; it yields");
                    node.spawn_fence(id, generation, snap.backups.to_vec());
                    node.release_held_ack(id);
                    node.forget_never_acknowledged(id);
                    let _ = node.table.lose_ownership(&id, generation, rival, now_ms());
                }
                Ok(PeerMessage::Ok) if !snap.backups.contains(&rival) => {
                    let mut holders = snap.backups.to_vec();
                    holders.push(rival);
                    node.table.set_backups(&id, generation, &holders);
                }
                _ => {}
            }
        }));
    }
}
