//! Repair (protocol.md 17.4): when a member that holds backup copies of this node's
//! sessions restarts empty (another process answers at its address) or stays unreachable
//! past a grace period, the sessions it backed get new copies on live members, in the
//! background and bounded in rate, so that a session nobody touches keeps `replicas`
//! copies. Each repair is an ordinary REPLICATE round (`Node::replicate`): a restarted
//! holder is sent the copy again; an unreachable holder stays a holder (it may still hold
//! a copy: fencing) and a new member is added beside it.
//!
//! Who answers at an address is learnt with EPOCH (its node id), asked of every member
//! once per [`TICK`]: the membership view will say the same when it lands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;

use super::drain::Seen;
use super::*;
use crate::shutdown::Shutdown;

/// How often members are asked who they are, and repairs are started.
const TICK: Duration = Duration::from_secs(1);
/// Seen for the first time, a member counts as restarted when it has been up this much
/// less than this node (nodes of a cluster started together are not).
const FIRST_SIGHT_MARGIN: Duration = Duration::from_secs(1);
/// A member unreachable this long is taken to have lost the copies it held.
const GRACE: Duration = Duration::from_secs(5);
/// Most sessions repaired per tick (the rate bound).
const PER_TICK: usize = 2000;
/// Repairs under way at once.
const PARALLEL: usize = 32;

/// What the repair carries from one tick to the next.
#[derive(Default)]
struct Pending {
    /// Sessions whose copies are to be sent again (their holder restarted), in order.
    queue: VecDeque<SessionId>,
    /// The sessions in `queue`.
    queued: HashSet<SessionId>,
    /// Copies held here whose owner is gone and whose takeover did not finish (a member
    /// did not answer, a claim was refused or waited on), each with when the owner last
    /// wrote it: tried again every tick while that copy is still here unchanged (a copy
    /// the owner's address wrote since is a new process's, and not an orphan) and no
    /// member owns the session. Taken over once only, a copy nobody requested stayed
    /// orphaned for good (CI: 108 of 600 idle sessions owned by no one 40 s after a
    /// `kill -9`, tests/rolling_restart.rs).
    unadopted: HashMap<SocketAddr, Vec<(SessionId, u64)>>,
}

/// Whether another member owns a session whose copy here is a gone owner's
/// ([`Node::owned_elsewhere`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnedElsewhere {
    /// A member owns it under another generation, or handed it on: nothing to take over.
    Settled,
    /// A member owns a claim of it of the copy's own generation: looked at again next
    /// tick.
    Rival,
    /// No member owns it.
    Nobody,
}

/// Runs the repair until shutdown (spawned by `start`).
pub(crate) async fn repair_loop(node: Arc<Node>, mut shutdown: Shutdown) {
    let since = Instant::now();
    let mut pending = Pending::default();
    loop {
        // First a tick's wait: members started together may not listen yet, and a failed
        // dial would make the link back off when the first writes need it.
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        node.repair_tick(since, &mut pending).await;
        node.prune_unsure_holders();
    }
}

impl Node {
    async fn repair_tick(&self, since: Instant, pending: &mut Pending) {
        let Pending {
            queue,
            queued,
            unadopted,
        } = pending;
        let peers: Vec<SocketAddr> = self
            .cluster_peers()
            .iter()
            .copied()
            .filter(|p| *p != self.advertise)
            .collect();
        if peers.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.config.peer_timeout;
        let replies = futures_util::future::join_all(
            peers
                .iter()
                .map(|&p| self.peers.request(p, PeerMessage::Epoch, deadline)),
        )
        .await;
        let now = Instant::now();
        let mut restarted = Vec::new();
        let down: Vec<SocketAddr> = {
            let mut seen = self.elastic.seen.lock().unwrap_or_else(|e| e.into_inner());
            let mut leaving = self.elastic.leaving.lock().unwrap_or_else(|e| e.into_inner());
            for (&p, r) in peers.iter().zip(replies) {
                if let Ok(PeerMessage::EpochIs { node_id, uptime_ms }) = r {
                    // Another process than the one seen last; or, seen for the first
                    // time, one that started after this node (it may have restarted
                    // before we first saw it): the copies it held may be gone.
                    let fresh = match seen.get(&p) {
                        Some(s) => s.node_id != node_id,
                        None => Duration::from_millis(uptime_ms) + FIRST_SIGHT_MARGIN < self.uptime(),
                    };
                    if fresh {
                        restarted.push(p);
                    }
                    seen.insert(p, Seen { node_id, at: now });
                    if leaving.get(&p).is_some_and(|id| *id != node_id) {
                        tracing::info!(member = %p, "a member that left is back (a new process)");
                        leaving.remove(&p);
                    }
                }
            }
            peers
                .iter()
                .copied()
                .filter(|p| {
                    let last = seen.get(p).map_or(since, |s| s.at);
                    now.duration_since(last) > GRACE
                })
                .collect()
        };
        let want = usize::from(self.config.replicas);
        if want == 0 {
            return;
        }
        // Copies this node holds of sessions whose owner restarted (or that the membership
        // view declares dead): nobody owns them any more unless a request took them over.
        // An owner that is only unreachable from here may be alive across a partition and
        // serving them: its copies are left to requests (a failover, or a lookup, takes one
        // over when a client needs it). Adopting them after the grace period made two
        // owners of every session the owner kept serving, and the simulation lost sessions
        // that way (without crashes, 83 of 1000 seeds failed with it, 63 without it).
        let declared_dead = |d: &SocketAddr| self.membership().is_some_and(|m| m.known_dead(*d));
        let gone_owners: Vec<SocketAddr> = restarted
            .iter()
            .copied()
            .chain(
                down.iter()
                    .copied()
                    .filter(|d| declared_dead(d) && !self.elastic_orphan_checked(*d)),
            )
            .collect();
        // The two halves run side by side: taking over a gone owner's copies waits out a
        // rank stagger (seconds), and sending copies again to a restarted holder waited
        // behind it, so the sessions it backed had one copy fewer for that long (seen in
        // a simulation trace: five nodes, seed 4, the sending again 2 s late).
        tokio::join!(
            self.adopt_gone_owners(&gone_owners, unadopted),
            self.send_again(restarted, &down, want, queue, queued),
        );
    }

    /// Takes over the copies held here of `gone_owners`' sessions (protocol.md 17.4 step
    /// 2), and tries again those of earlier ticks that did not settle (`unadopted`).
    async fn adopt_gone_owners(
        &self,
        gone_owners: &[SocketAddr],
        unadopted: &mut HashMap<SocketAddr, Vec<(SessionId, u64)>>,
    ) {
        if !gone_owners.is_empty() {
            let held = self.table.backups_by_owner(now_ms());
            for &owner in gone_owners {
                if let Some(ids) = held.get(&owner) {
                    tracing::warn!(%owner, copies = ids.len(), "the owner of backup copies held here is gone; taking over those nobody else has");
                    let ids: Vec<(SessionId, u64)> = ids
                        .iter()
                        .take(PER_TICK * 10)
                        .filter_map(|id| Some((*id, self.table.backup_written_ms(id, owner)?)))
                        .collect();
                    unadopted.remove(&owner);
                    self.adopt_noting_unfinished(owner, ids, unadopted).await;
                }
            }
        }
        let retry: Vec<SocketAddr> = unadopted
            .keys()
            .copied()
            .filter(|o| !gone_owners.contains(o))
            .collect();
        for owner in retry {
            let ids: Vec<(SessionId, u64)> = unadopted
                .remove(&owner)
                .unwrap_or_default()
                .into_iter()
                .filter(|(id, written)| self.table.backup_written_ms(id, owner) == Some(*written))
                .collect();
            if !ids.is_empty() {
                tracing::info!(%owner, copies = ids.len(), "copies whose owner is gone were not all taken over; trying again");
                self.adopt_noting_unfinished(owner, ids, unadopted).await;
            }
        }
    }

    /// Sends the sessions owned here again to the `restarted` holders, and gives those
    /// backed by the `down` ones new copies (protocol.md 17.4 step 1), at most
    /// [`PER_TICK`] a tick; what did not settle stays in `queue`.
    async fn send_again(
        &self,
        restarted: Vec<SocketAddr>,
        down: &[SocketAddr],
        want: usize,
        queue: &mut VecDeque<SessionId>,
        queued: &mut HashSet<SessionId>,
    ) {
        for p in restarted {
            let ids = self.table.backed_by(p, now_ms(), usize::MAX);
            if !ids.is_empty() {
                tracing::warn!(member = %p, sessions = ids.len(), "a member that held backup copies restarted empty; sending them again");
            }
            for id in ids {
                if queued.insert(id) {
                    queue.push_back(id);
                }
            }
        }
        let (lost, total) = if down.is_empty() {
            (Vec::new(), 0)
        } else {
            self.table.under_replicated(down, want, now_ms(), PER_TICK)
        };
        let under = (total + queue.len()) as u64;
        let was = self.elastic.under_replicated.swap(under, Ordering::Relaxed);
        if under > 0 && was == 0 {
            self.elastic
                .under_replicated_since_ms
                .store(now_ms(), Ordering::Relaxed);
            tracing::warn!(sessions = under, unreachable = ?down, "sessions under-replicated; repairing");
        } else if under == 0 && was > 0 {
            let since = self.elastic.under_replicated_since_ms.swap(0, Ordering::Relaxed);
            tracing::info!(
                for_ms = now_ms().saturating_sub(since),
                "every session has its backup copies again"
            );
        }
        let mut batch: Vec<SessionId> = Vec::new();
        while batch.len() < PER_TICK {
            let Some(id) = queue.pop_front() else { break };
            queued.remove(&id);
            batch.push(id);
        }
        let resent = batch.len();
        for id in lost {
            if batch.len() >= PER_TICK {
                break;
            }
            if !batch.contains(&id) {
                batch.push(id);
            }
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let members = self.lookup_members();
        // Each id with whether `replicas` copies confirmed it; `None`: it is no longer
        // this node's to repair (destroyed, given up or handed on meanwhile).
        let outcomes: Mutex<Vec<(SessionId, Option<bool>)>> = Mutex::new(Vec::with_capacity(n));
        futures_util::stream::iter(batch.iter().copied())
            .for_each_concurrent(PARALLEL, |id| {
                let (members, outcomes) = (&members, &outcomes);
                async move {
                    let outcome = if self.destroyed_elsewhere(id, members).await {
                        None
                    } else {
                        match self.replicate(id, &[]).await {
                            Replication::Done(b) => Some(b.confirmed.len() >= want),
                            _ => None,
                        }
                    };
                    outcomes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((id, outcome));
                }
            })
            .await;
        let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
        let done = outcomes.iter().filter(|(_, r)| *r == Some(true)).count() as u64;
        let unsettled: HashSet<SessionId> = outcomes
            .iter()
            .filter(|(_, r)| *r == Some(false))
            .map(|(id, _)| *id)
            .collect();
        self.elastic.repaired.fetch_add(done, Ordering::Relaxed);
        // A copy sent again to a holder that restarted and not confirmed (it was slow to
        // come up, a reply was lost) is sent again next tick: the queue is the only record
        // of it, and dropping it reported the session repaired while its one backup was
        // missing. (Those of an unreachable holder are found again by `under_replicated`.)
        // Not when the cluster has fewer other members than `replicas`: no round can
        // confirm that many, and the queue would send every such session once a second
        // for good.
        let can_confirm = members.len() >= want;
        for id in batch.into_iter().take(resent).filter(|_| can_confirm) {
            if unsettled.contains(&id) && queued.insert(id) {
                queue.push_back(id);
            }
        }
        tracing::info!(tried = n, repaired = done, "repair round");
    }
}

impl Node {
    /// Before a session is sent to a holder that restarted empty (or to new holders): asks
    /// every member whether it was destroyed or rotated away. The holder's old process
    /// kept the fence that told this node so, and the new one would store the copy (this
    /// node may have been cut off or paused while the session ended elsewhere; simulation
    /// seed 106). When a member says so, the copy here ends too and its holders are told
    /// to drop it. Only a destroyed session is recognized: LOCATE names no generation, so
    /// a newer owner elsewhere is left to the write round's fencing.
    async fn destroyed_elsewhere(&self, id: SessionId, members: &[SocketAddr]) -> bool {
        let Some(generation) = self.table.live_generation(&id, now_ms()) else {
            return false;
        };
        let replies = self.survey(id, members).await;
        let destroyed = replies.iter().any(|r| {
            matches!(r, Ok(PeerMessage::Located { session_id, role: sessync_proto::Role::Destroyed, .. }) if *session_id == id)
        });
        if !destroyed {
            return false;
        }
        tracing::info!(session = %id, "a member has the session destroyed; ending the copy here instead of repairing it");
        if let Ok(s) = self.table.destroy(&id, now_ms()) {
            self.spawn_fence(id, generation, s.backups.to_vec());
        }
        true
    }
}

/// How long a holder waits per rank (its place in the session's rendezvous order among
/// the members) before it takes over a copy whose owner is gone, so that of several
/// holders the first in that order does it and the others find it owned.
const ADOPT_STAGGER: Duration = Duration::from_secs(2);

impl Node {
    /// Whether the orphans of `owner` (down past the grace period) were already looked at
    /// since it went down; marks them looked at.
    fn elastic_orphan_checked(&self, owner: SocketAddr) -> bool {
        let mut seen = self.elastic.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(&owner) {
            // Marked by pushing `at` far back: a member that answers again gets a new `at`.
            Some(s) if s.node_id == [0xff; 16] => true,
            Some(s) => {
                s.node_id = [0xff; 16];
                false
            }
            None => {
                seen.insert(
                    owner,
                    Seen {
                        node_id: [0xff; 16],
                        at: Instant::now() - GRACE * 2,
                    },
                );
                false
            }
        }
    }

    /// Takes over the copies of `ids` held here whose owner `owner` is gone (it has no
    /// entry for the session, or does not answer) and that no other member owns: each
    /// as a failover would (protocol.md 12.3, promote, then protect and install), after a
    /// wait by this node's rank so that one holder does it. The session then has an owner
    /// that keeps `replicas` copies, and is found by a lookup.
    ///
    /// The wait is per rank group, not per copy: the copies of rank 0 here are taken
    /// over at once, those of rank 1 after one stagger, and so on. (Waiting the stagger
    /// for each copy, 32 at a time, made 500 copies of rank 1 take over 30 s.)
    ///
    /// Returns the orphans still held here as backups of `owner`'s: their takeover did
    /// not finish, and the caller tries again.
    async fn adopt_orphans(&self, owner: SocketAddr, ids: Vec<SessionId>) -> Vec<SessionId> {
        let mut members = self.lookup_members();
        members.push(self.advertise);
        // One probe for the whole batch: a fresh connection, which also clears the
        // backoff of the link to an owner that restarted (requests on a link backing off
        // fail at once, and asking each id five times through it made a round of 700
        // copies take over 20 s). An owner that does not answer it is not asked per id.
        let owner_up = self.alive(owner).await;
        let orphans: Vec<SessionId> = futures_util::stream::iter(ids)
            .map(|id| async move { self.owner_lacks(owner, owner_up, id).await.then_some(id) })
            .buffer_unordered(PARALLEL)
            .filter_map(|id| async move { id })
            .collect()
            .await;
        // Those another member owns are settled, or (a rival claim) left for the next
        // tick, before the stagger: waited out, a rival claim's copy would hold the whole
        // tick up by its rank's stagger every second while the claim stands, and with it
        // the copies sent again to restarted holders.
        let mut left = Vec::new();
        let checked: Vec<(SessionId, OwnedElsewhere)> = futures_util::stream::iter(orphans)
            .map(|id| {
                let members = &members;
                async move { (id, self.owned_elsewhere(owner, id, members).await) }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        // The stagger counts from here: the checks above took the lower ranks as long.
        let started = Instant::now();
        let mut by_rank: std::collections::BTreeMap<usize, Vec<SessionId>> = Default::default();
        for (id, elsewhere) in checked {
            match elsewhere {
                OwnedElsewhere::Settled => continue,
                OwnedElsewhere::Rival => {
                    left.push(id);
                    continue;
                }
                OwnedElsewhere::Nobody => {}
            }
            let rank = super::drain::ranked(&id, &members)
                .iter()
                .position(|m| *m == self.advertise)
                .unwrap_or(0);
            by_rank.entry(rank).or_default().push(id);
        }
        for (rank, group) in by_rank {
            tokio::time::sleep_until(started + ADOPT_STAGGER * rank as u32).await;
            let unfinished: Mutex<Vec<SessionId>> = Mutex::new(Vec::new());
            futures_util::stream::iter(group)
                .for_each_concurrent(PARALLEL, |id| {
                    let (members, unfinished) = (&members, &unfinished);
                    async move {
                        if !self.adopt_one(owner, id, members).await {
                            unfinished.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                        }
                    }
                })
                .await;
            let unfinished = unfinished.into_inner().unwrap_or_else(|e| e.into_inner());
            left.extend(unfinished);
        }
        if !left.is_empty() {
            tracing::info!(%owner, copies = left.len(), "copies whose owner is gone are not taken over yet");
        }
        left
    }

    /// [`Node::adopt_orphans`] of `ids` (each with when `owner` last wrote the copy here),
    /// noting in `unadopted` those whose takeover did not finish, for the next tick.
    async fn adopt_noting_unfinished(
        &self,
        owner: SocketAddr,
        ids: Vec<(SessionId, u64)>,
        unadopted: &mut HashMap<SocketAddr, Vec<(SessionId, u64)>>,
    ) {
        let written: HashMap<SessionId, u64> = ids.iter().copied().collect();
        let left = self
            .adopt_orphans(owner, ids.into_iter().map(|(id, _)| id).collect())
            .await;
        if !left.is_empty() {
            let left = left.into_iter().filter_map(|id| Some((id, *written.get(&id)?)));
            unadopted.insert(owner, left.collect());
        }
    }

    /// Whether `owner` does not have session `id` (it answers LOCATE with NOT_FOUND: a new
    /// process there), or is gone (`owner_up` false, or no answer and a failed PING).
    async fn owner_lacks(&self, owner: SocketAddr, owner_up: bool, id: SessionId) -> bool {
        if !owner_up {
            return true;
        }
        // Asked a few times: the owner may be slow to answer right after its restart.
        for _ in 0..5 {
            let deadline = Instant::now() + self.config.peer_timeout;
            match self
                .peers
                .request(owner, PeerMessage::Locate { session_id: id }, deadline)
                .await
            {
                // A backup copy there of another member's, of no newer generation than
                // the copy here: a copy another round placed on the new process, which
                // says nothing of the owner's own (taken as "it has it", the copy here
                // was never taken over, and once that member gave its claim up nobody
                // had the session: simulation seed 3547 with four nodes and
                // `SESSYNC_SIM_REPLICAS=2`). Of a newer generation, the session went on
                // past the copy here: nothing to take over.
                Ok(PeerMessage::Located {
                    role: sessync_proto::Role::Backup,
                    addr,
                    generation: Some(theirs),
                    ..
                }) if addr != owner => {
                    return self
                        .backup_generation(&id, owner)
                        .is_some_and(|ours| theirs <= ours)
                }
                // The owner (a new process there, or the old one back) knows it.
                Ok(PeerMessage::Located { .. }) => return false,
                Ok(PeerMessage::NotFound { .. }) => return true,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        !self.alive(owner).await
    }

    /// Whether another of `members` owns `id`, whose copy here is the gone `owner`'s (each
    /// is asked LOCATE).
    ///
    /// A member owning a claim of the very generation of the copy here is a rival that may
    /// still give its claim up to this very copy (a survey naming this copy's owner as
    /// newer): not settled, so the copy is looked at again next tick. (An owner of an older
    /// generation is a stale one, which an idle session may keep for good: settled, as
    /// before, rather than asked about every second until the copy expires.) Taken as settled,
    /// the copy was never taken over once that claim yielded, and the session was readable
    /// nowhere (simulation seed 3547 with four nodes and `SESSYNC_SIM_REPLICAS=2`). A
    /// pointer at the gone owner itself is no owner either (the owner's new process lost
    /// what it was handed), unless it was handed on under a newer generation than the
    /// copy here.
    async fn owned_elsewhere(
        &self,
        owner: SocketAddr,
        id: SessionId,
        members: &[SocketAddr],
    ) -> OwnedElsewhere {
        let others: Vec<SocketAddr> = members.iter().copied().filter(|m| *m != self.advertise).collect();
        let replies = futures_util::future::join_all(others.iter().map(|&m| {
            self.peers.request(
                m,
                PeerMessage::Locate { session_id: id },
                Instant::now() + self.config.peer_timeout,
            )
        }))
        .await;
        let ours = self.backup_generation(&id, owner);
        let mut found = OwnedElsewhere::Nobody;
        for r in &replies {
            if let Ok(PeerMessage::Located {
                role,
                generation,
                addr,
                ..
            }) = r
            {
                match role {
                    sessync_proto::Role::Owner if ours.is_some_and(|ours| *generation == Some(ours)) => {
                        found = OwnedElsewhere::Rival
                    }
                    // A pointer at the gone owner itself, handed on under no newer
                    // generation than the copy here: it leads to the process that lost
                    // the session, not to an owner (a newer one says the session went on
                    // past this copy, to a copy the owner placed on its other holders).
                    sessync_proto::Role::HandedOver
                        if *addr == owner
                            && ours.is_some_and(|ours| generation.is_some_and(|g| g <= ours)) => {}
                    sessync_proto::Role::Owner | sessync_proto::Role::HandedOver => {
                        return OwnedElsewhere::Settled
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// The generation of the backup copy of `id` held here from `owner`, if one is.
    fn backup_generation(&self, id: &SessionId, owner: SocketAddr) -> Option<u64> {
        match self.table.locate_generation(id, self.advertise, now_ms()) {
            Some((sessync_proto::Role::Backup, o, g)) if o == owner => Some(g),
            _ => None,
        }
    }

    /// Takes over the copy of `id` held here from `owner`, unless another member owns the
    /// session by now (a request or another holder took it over). Whether that is settled:
    /// false when the copy here is still `owner`'s and nobody was found owning it.
    async fn adopt_one(&self, owner: SocketAddr, id: SessionId, members: &[SocketAddr]) -> bool {
        match self.owned_elsewhere(owner, id, members).await {
            OwnedElsewhere::Settled => return true,
            OwnedElsewhere::Rival => return false,
            OwnedElsewhere::Nobody => {}
        }
        // Still a backup copy of that owner's (not, say, a session this node handed to it
        // meanwhile, whose COPY_ACK is on the way).
        if !self.table.holds_backup_from(&id, owner) {
            return true;
        }
        match self.failover(id, owner, &[]).await {
            Some(Ok(_)) => {
                self.elastic.repaired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(session = %id, %owner, "took over a copy whose owner is gone");
            }
            other => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no backup had it".into(),
                };
                tracing::debug!(session = %id, %owner, %why, "a copy whose owner is gone was not taken over");
            }
        }
        !self.table.holds_backup_from(&id, owner)
    }
}
