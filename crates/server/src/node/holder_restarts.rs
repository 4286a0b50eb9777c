//! A holder that restarted empty forgot the fences and newer copies it kept (protocol.md
//! 12.2, "a holder that restarted"). A stale owner (paused, or cut off while its session
//! moved on) whose holder restarted would otherwise get its next REPLICATE stored there and
//! acknowledge a write that the session's newer lineage never sees (simulation seed 31
//! with crashes). So when a new process answers at a holder's address
//! ([`crate::peer_link::Peers::processes`]), every session this node owns with a copy
//! there is *unsure*: its next round's confirmations from a restarted holder count only
//! once every member has said, by LOCATE, that it knows no newer generation of the
//! session ([`Node::survey_lineage`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// The sessions whose holders include a node that restarted since their copy was placed
/// there, and every address a new process has answered at.
#[derive(Default)]
pub(super) struct UnsureHolders {
    inner: std::sync::Mutex<Unsure>,
    /// Whether `sessions` may be non-empty: read without the lock on every replicated
    /// write, which nearly always finds nothing to check.
    any: AtomicBool,
}

#[derive(Default)]
struct Unsure {
    sessions: HashSet<SessionId>,
    restarted: HashSet<SocketAddr>,
    /// Sessions installed here by a failover's claim that fewer holders confirmed than
    /// `--replicas` asks: a rival claim of the same lineage may have been placed where
    /// this one was not, so every confirmation counts only after a survey.
    unconfirmed_claims: HashSet<SessionId>,
    /// Unconfirmed claims a background round is placing again right now
    /// ([`Node::settle_holders_in_background`]).
    confirming: HashSet<SessionId>,
}

/// What the members said of a session this node owns under some generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineageSurvey {
    /// Every member answered, none with a newer (or rival) generation.
    Clean,
    /// A member knows a newer owner, or a rival of the same generation: the node named.
    Newer(SocketAddr),
    /// A member has the session destroyed or rotated away.
    Destroyed,
    /// Some member did not answer: nothing can be said.
    Unknown,
}

impl Node {
    /// Whether a round's confirmations of `id` need the members' word first: it was owned
    /// here, with a copy at a holder whose process has changed since. Takes in the restarts
    /// the peer links saw since the last call (the sessions backed by each become unsure).
    fn holders_unsure(&self, id: &SessionId) -> bool {
        let holders = &self.unsure_holders;
        // In this order: a restart taken by another round meanwhile has set `any` first.
        if !self.peers.processes.may_have_restarted() && !holders.any.load(Ordering::SeqCst) {
            return false;
        }
        self.take_in_restarts().sessions.contains(id)
    }

    /// Marks `id`, just installed by a claim that fewer holders confirmed than wanted,
    /// unsure: its next round's confirmations count only after a survey of the members
    /// (simulation seed 130: a claim placed on no holder took its first confirmation from
    /// a restarted holder, and the rival claim of the same generation, which had
    /// acknowledged an append, was superseded by it).
    /// Not without replicas: there are no holders, and no round surveys (`replicate`
    /// returns at once), so the mark would never clear, and the session could never be
    /// handed over (tests/rolling_restart.rs with `--replicas 0`: a restarted node took
    /// its old process's session back, every COPY of it was answered NOT_FOUND until the
    /// asker gave up, SESSION_NOT_FOUND for a live session, and the node's drain ended
    /// with that session left).
    pub(super) fn mark_unconfirmed_claim(&self, id: SessionId) {
        if self.config.replicas == 0 {
            return;
        }
        let holders = &self.unsure_holders;
        let mut unsure = holders.inner.lock().unwrap_or_else(|e| e.into_inner());
        unsure.sessions.insert(id);
        unsure.unconfirmed_claims.insert(id);
        holders.any.store(true, Ordering::SeqCst);
    }

    /// Whether `id` is owned here with holders whose word is not sure: a failover's claim
    /// that its holders have not confirmed yet ([`Node::mark_unconfirmed_claim`]), or a
    /// session with a copy at a holder that restarted since. Such a session is not handed
    /// over until a survey of the members has settled it:
    /// - an unconfirmed claim: a silent holder may hold a rival claim of the same
    ///   generation with acknowledged writes, and the receiver's copy, one generation
    ///   higher, would supersede it there (simulation seed 295: a copy taken back from a
    ///   restarted receiver was handed to it again before the survey, and the rival
    ///   claim's acknowledged append was lost);
    /// - a restarted holder: it forgot the fence a newer lineage left there, so this copy
    ///   may be a stale owner's, and the receiver's install would make it live again over
    ///   the newer lineage's acknowledged writes (simulation seed 6063 with crashes: the
    ///   backup that claimed the session crashed, and a stale owner handed its older copy
    ///   to the new process while the newer owner was paused).
    pub(crate) fn holders_unsettled(&self, id: &SessionId) -> bool {
        if !self.holders_unsure(id) {
            return false;
        }
        // Only while it is live here: a session given up since points elsewhere.
        self.table.live_generation(id, now_ms()).is_some()
    }

    /// Places a session whose holders are unsettled ([`Node::holders_unsettled`]) on its
    /// holders again, in the background, so that the survey that confirms it (or finds
    /// the newer owner it must yield to) runs without waiting for a write. One round at a
    /// time per session.
    pub(crate) fn settle_holders_in_background(self: &Arc<Self>, id: SessionId) {
        // Bounded by two peer timeouts and a survey's one.
        self.one_settling_task(id, move |node| async move {
            let replication = node.replicate(id, &[]).await;
            tracing::debug!(session = %id, ?replication, "placed a session with unsettled holders again");
        });
    }

    /// Runs `task` for `id` on a task of its own, unless one settling `id` runs already.
    /// Not tracked by the shutdown tracker: each is bounded by peer timeouts.
    pub(super) fn one_settling_task<F, Fut>(self: &Arc<Self>, id: SessionId, task: F)
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !self.unsure().confirming.insert(id) {
            return;
        }
        let node = self.clone();
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            task(node.clone()).await;
            node.unsure().confirming.remove(&id);
        }));
    }

    /// Whether a PROMOTE from `asker` naming `failed_owner` must not take the copy this
    /// node is handing to `failed_owner`, yet: a holder of the session restarted since the
    /// handover began. The receiver places its copy on this node's holders before it
    /// installs it (12.4), and that placement is what refuses a second owner of the copy
    /// kept here; a holder that restarted forgot it, so the receiver may have installed
    /// the copy and acknowledged writes that no fence protects any more (simulation seed
    /// 1681 with crashes: the receiver's only holder crashed while the receiver was
    /// paused, the copy kept here was handed on again, and an acknowledged append was
    /// lost). Until the members' word says no node knows the handover's generation (a
    /// survey in the background, [`Node::survey_handover_in_background`]), the asker is
    /// answered MOVED to the receiver. Not for the receiver's own new process: its old
    /// one's copy is gone with it.
    pub(crate) fn handover_unsure(
        self: &Arc<Self>,
        id: &SessionId,
        failed_owner: SocketAddr,
        asker: SocketAddr,
    ) -> bool {
        if asker == failed_owner || !self.holders_unsure(id) {
            return false;
        }
        match self.table.handing_over_to(id, now_ms()) {
            Some((to, transfer)) if to == failed_owner => {
                self.survey_handover_in_background(*id, transfer);
                true
            }
            _ => false,
        }
    }

    /// Asks the members whether any knows generation `transfer` of `id` (the receiver of
    /// this node's handover installed it, or a copy of it is held); when none does, the
    /// session is sure again and the copy kept here may be handed on. One survey at a
    /// time per session.
    fn survey_handover_in_background(self: &Arc<Self>, id: SessionId, transfer: u64) {
        // Bounded by one survey (a peer timeout).
        self.one_settling_task(id, move |node| async move {
            let found = node.survey_lineage(id, transfer, &[]).await;
            tracing::debug!(session = %id, transfer, ?found, "surveyed the members for a handover whose holder restarted");
            if found == LineageSurvey::Clean {
                node.unsure().sessions.remove(&id);
            }
        });
    }

    /// The unsure sessions, without taking in new restarts.
    fn unsure(&self) -> std::sync::MutexGuard<'_, Unsure> {
        self.unsure_holders
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new process has answered at `addr` since this node first met one there.
    pub(super) fn has_restarted(&self, addr: SocketAddr) -> bool {
        self.take_in_restarts().restarted.contains(&addr)
    }

    /// The unsure sessions and restarted addresses, with the restarts the peer links saw
    /// since the last call taken in (the sessions backed by each become unsure).
    fn take_in_restarts(&self) -> std::sync::MutexGuard<'_, Unsure> {
        let holders = &self.unsure_holders;
        let mut unsure = holders.inner.lock().unwrap_or_else(|e| e.into_inner());
        holders.any.store(true, Ordering::SeqCst);
        for addr in self.peers.processes.take_restarted() {
            let mut backed = self.table.backed_by(addr, now_ms(), usize::MAX);
            backed.extend(self.table.handing_over_backed_by(addr, now_ms()));
            tracing::info!(holder = %addr, sessions = backed.len(), "a holder restarted; its confirmations count again after a survey of the members");
            unsure.sessions.extend(backed);
            unsure.restarted.insert(addr);
        }
        holders.any.store(!unsure.sessions.is_empty(), Ordering::SeqCst);
        unsure
    }

    /// Forgets the unsure sessions this node has no entry for any more (expired, or
    /// their tombstone has): called by the repair once a tick, so the set holds at most
    /// the sessions the table knows. A session handed on stays unsure: it may come back
    /// with the same holders. (Forgetting those too cost the simulation 4 more failing
    /// seeds of 13 000.)
    pub(super) fn prune_unsure_holders(&self) {
        let holders = &self.unsure_holders;
        if !holders.any.load(Ordering::SeqCst) {
            return;
        }
        let mut unsure = holders.inner.lock().unwrap_or_else(|e| e.into_inner());
        unsure.sessions.retain(|id| self.table.knows(id));
        let Unsure {
            sessions,
            unconfirmed_claims,
            ..
        } = &mut *unsure;
        unconfirmed_claims.retain(|id| sessions.contains(id));
        holders.any.store(!unsure.sessions.is_empty(), Ordering::SeqCst);
    }

    /// Checks a round's confirmations of `id` (owned here under `generation`) against
    /// restarted holders: returns `None` when they may count as they are; otherwise what
    /// the survey of the members found. On [`LineageSurvey::Unknown`], `confirmed` loses
    /// the restarted holders (they may have stored a copy a fence would have refused).
    pub(super) async fn check_restarted_holders(
        &self,
        id: SessionId,
        generation: u64,
        confirmed: &mut Vec<SocketAddr>,
        holders: &[SocketAddr],
    ) -> Option<LineageSurvey> {
        if confirmed.is_empty() || !self.holders_unsure(&id) {
            return None;
        }
        let found = self.survey_lineage(id, generation, holders).await;
        tracing::debug!(session = %id, generation, ?found, "surveyed the members for a session backed by a restarted holder");
        let mut unsure = self
            .unsure_holders
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match found {
            // An unconfirmed claim's every confirmation waits for the members' word: the
            // silent one may hold the rival claim.
            LineageSurvey::Unknown if unsure.unconfirmed_claims.contains(&id) => confirmed.clear(),
            LineageSurvey::Unknown => confirmed.retain(|b| !unsure.restarted.contains(b)),
            // Clean: sure now. Otherwise the copy here ends (the caller gives it up):
            // nothing to survey again.
            LineageSurvey::Clean | LineageSurvey::Newer(_) | LineageSurvey::Destroyed => {
                unsure.sessions.remove(&id);
                unsure.unconfirmed_claims.remove(&id);
            }
        }
        Some(found)
    }

    /// Asks every member LOCATE for `id`, which this node owns under `generation`:
    /// whether one knows a newer generation (an owner, a handover or a backup copy of one
    /// at least as new, other than this node's own), or the session destroyed.
    /// `holders`: where this node's round placed its copy (a copy naming this node
    /// elsewhere, of its generation or newer, is not this process's).
    async fn survey_lineage(&self, id: SessionId, generation: u64, holders: &[SocketAddr]) -> LineageSurvey {
        let members = self.lookup_members();
        let replies = self.survey(id, &members).await;
        let me = self.advertise;
        // A node before LOCATED carried a generation: taken to know a newer one.
        let at_least = |g: Option<u64>, than: u64| g.is_none_or(|g| g >= than);
        // Members that yielded their own copy of this generation to this one (the tie of
        // two claims): each now holds this copy as a backup naming this node. Not one this
        // node ever saw restart: a new process there stores this copy as a backup too,
        // while its old one's copy, and the writes it acknowledged, live on in a backup
        // elsewhere (simulation seed 40863 with crashes).
        let yielded_here: Vec<SocketAddr> = members
            .iter()
            .zip(&replies)
            .filter(|(&m, _)| self.peers.processes.gone_since(m) == 0)
            .filter(|(_, reply)| {
                matches!(reply, Ok(PeerMessage::Located {
                    session_id,
                    role: sessync_proto::Role::Backup,
                    addr,
                    generation: theirs,
                }) if *session_id == id && *addr == me && *theirs == Some(generation))
            })
            .map(|(&m, _)| m)
            .collect();
        let mut found = LineageSurvey::Clean;
        for (&m, reply) in members.iter().zip(replies) {
            let this = match reply {
                Ok(PeerMessage::NotFound { session_id }) if session_id == id => LineageSurvey::Clean,
                Ok(PeerMessage::Located {
                    session_id,
                    role,
                    addr,
                    generation: theirs,
                }) if session_id == id => match role {
                    sessync_proto::Role::Destroyed => LineageSurvey::Destroyed,
                    // A rival owner of this very generation, while the copy here may have
                    // acknowledged writes: not newer (this copy does not give up to it,
                    // `rival_claims.rs`), but nothing is settled while it stands
                    // (simulation seed 6475 with crashes: the survey gave an acknowledged
                    // append up to a rival that had acknowledged nothing).
                    sessync_proto::Role::Owner
                        if theirs == Some(generation) && self.keeps_against_rival(&id, generation) =>
                    {
                        LineageSurvey::Unknown
                    }
                    // A rival owner of this generation among this copy's holders, while
                    // this copy never acknowledged, and whose node id is lower: the round
                    // placing this copy reaches it, and it yields to this copy by the tie
                    // of two claims if it never acknowledged either, or answers MOVED, and
                    // this copy gives up then (12.4). Nothing is settled until it has.
                    // Counted newer, both gave up at once and only fences were left
                    // (simulation seed 31330 without crashes).
                    sessync_proto::Role::Owner
                        if theirs == Some(generation) && self.wins_tie_against(m, holders) =>
                    {
                        LineageSurvey::Unknown
                    }
                    sessync_proto::Role::Owner if at_least(theirs, generation) => LineageSurvey::Newer(m),
                    sessync_proto::Role::HandedOver if addr != me && at_least(theirs, generation + 1) => {
                        LineageSurvey::Newer(addr)
                    }
                    // Handing a newer generation over to this node, which never installed
                    // it: that member took the lineage past this copy (it installed a
                    // later copy, may have acknowledged writes on it) and still holds it
                    // until the ACK. Counted clean, a handover survey let this node hand
                    // its older copy on over an acknowledged append (simulation seed
                    // 10576 with crashes: the member was paused, its handover here lost).
                    sessync_proto::Role::HandedOver if addr == me && at_least(theirs, generation + 1) => {
                        LineageSurvey::Newer(m)
                    }
                    // A backup of a rival copy of this generation whose owner yielded it to
                    // this copy (it answered this survey as a backup naming this node): a
                    // copy of that abandoned claim, left where its DROP has not landed.
                    // Unsettled, not newer: counted newer, this copy gave up while the
                    // rival had yielded to it, and only fences were left (simulation seed
                    // 28730 without crashes). A rival that crashed after it acknowledged
                    // writes on its copy is not taken to have yielded, and counts as newer
                    // (seed 40863 with crashes).
                    sessync_proto::Role::Backup
                        if addr != me && theirs == Some(generation) && yielded_here.contains(&addr) =>
                    {
                        LineageSurvey::Unknown
                    }
                    // A backup of a rival owner's copy of this very generation, while this
                    // copy may have acknowledged writes: as for the rival itself, not
                    // newer. Such a member restarted since it held this copy and took the
                    // rival's (simulation seed 29620 with crashes).
                    sessync_proto::Role::Backup
                        if addr != me
                            && theirs == Some(generation)
                            && self.keeps_against_rival(&id, generation) =>
                    {
                        LineageSurvey::Unknown
                    }
                    sessync_proto::Role::Backup if addr != me && at_least(theirs, generation) => {
                        LineageSurvey::Newer(addr)
                    }
                    // A copy naming this address that is not this process's: under a
                    // newer generation than this node owns (an earlier process's lineage
                    // went on past this claim: simulation seed 9744 with crashes), or under
                    // this very generation at a member this round did not place it on (an
                    // earlier process's claim of the same generation, a rival branch: seed
                    // 6663). The holder is named: asked, it points on.
                    sessync_proto::Role::Backup
                        if addr == me
                            && (theirs.is_none_or(|t| t > generation)
                                || (theirs == Some(generation) && !holders.contains(&m))) =>
                    {
                        LineageSurvey::Newer(m)
                    }
                    _ => LineageSurvey::Clean,
                },
                _ => LineageSurvey::Unknown,
            };
            found = match (found, this) {
                (LineageSurvey::Destroyed, _) | (_, LineageSurvey::Destroyed) => LineageSurvey::Destroyed,
                (LineageSurvey::Newer(a), _) | (_, LineageSurvey::Newer(a)) => LineageSurvey::Newer(a),
                (LineageSurvey::Unknown, _) | (_, LineageSurvey::Unknown) => LineageSurvey::Unknown,
                _ => LineageSurvey::Clean,
            };
        }
        found
    }
}
