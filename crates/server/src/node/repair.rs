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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
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

/// Runs the repair until shutdown (spawned by `start`).
pub(crate) async fn repair_loop(node: Arc<Node>, mut shutdown: Shutdown) {
    let since = Instant::now();
    let mut queue: VecDeque<SessionId> = VecDeque::new();
    let mut queued: HashSet<SessionId> = HashSet::new();
    loop {
        // First a tick's wait: members started together may not listen yet, and a failed
        // dial would make the link back off when the first writes need it.
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        node.repair_tick(since, &mut queue, &mut queued).await;
    }
}

impl Node {
    async fn repair_tick(
        &self,
        since: Instant,
        queue: &mut VecDeque<SessionId>,
        queued: &mut HashSet<SessionId>,
    ) {
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
        // Copies this node holds of sessions whose owner restarted (or stays unreachable):
        // nobody owns them any more unless a request took them over.
        let gone_owners: Vec<SocketAddr> = restarted
            .iter()
            .copied()
            .chain(down.iter().copied().filter(|d| !self.elastic_orphan_checked(*d)))
            .collect();
        if !gone_owners.is_empty() {
            let held = self.table.backups_by_owner(now_ms());
            for owner in gone_owners {
                if let Some(ids) = held.get(&owner) {
                    tracing::warn!(%owner, copies = ids.len(), "the owner of backup copies held here is gone; taking over those nobody else has");
                    let ids: Vec<SessionId> = ids.iter().take(PER_TICK * 10).copied().collect();
                    self.adopt_orphans(owner, ids).await;
                }
            }
        }
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
            self.table.under_replicated(&down, want, now_ms(), PER_TICK)
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
        let repaired = std::sync::atomic::AtomicU64::new(0);
        futures_util::stream::iter(batch)
            .for_each_concurrent(PARALLEL, |id| {
                let repaired = &repaired;
                async move {
                    if let Replication::Done(b) = self.replicate(id, &[]).await {
                        if b.confirmed.len() >= want {
                            repaired.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .await;
        let done = repaired.load(Ordering::Relaxed);
        self.elastic.repaired.fetch_add(done, Ordering::Relaxed);
        tracing::info!(tried = n, repaired = done, "repair round");
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
    async fn adopt_orphans(&self, owner: SocketAddr, ids: Vec<SessionId>) {
        let mut members = self.lookup_members();
        members.push(self.advertise);
        futures_util::stream::iter(ids)
            .for_each_concurrent(PARALLEL, |id| {
                let members = &members;
                async move {
                    // Asked a few times: the link to a restarted owner may still be
                    // backing off from when it was down.
                    let mut answered = false;
                    for _ in 0..5 {
                        let deadline = Instant::now() + self.config.peer_timeout;
                        match self
                            .peers
                            .request(owner, PeerMessage::Locate { session_id: id }, deadline)
                            .await
                        {
                            // The owner (a new process there, or the old one back) knows it.
                            Ok(PeerMessage::Located { .. }) => return,
                            Ok(PeerMessage::NotFound { .. }) => {
                                answered = true;
                                break;
                            }
                            _ => tokio::time::sleep(Duration::from_millis(300)).await,
                        }
                    }
                    if !answered && self.alive(owner).await {
                        return;
                    }
                    let rank = super::drain::ranked(&id, members)
                        .iter()
                        .position(|m| *m == self.advertise)
                        .unwrap_or(0);
                    tokio::time::sleep(ADOPT_STAGGER * rank as u32).await;
                    // Owned elsewhere by now (a request or another holder took it over)?
                    let others: Vec<SocketAddr> = members.iter().copied().filter(|m| *m != self.advertise).collect();
                    let replies = futures_util::future::join_all(others.iter().map(|&m| {
                        self.peers.request(
                            m,
                            PeerMessage::Locate { session_id: id },
                            Instant::now() + self.config.peer_timeout,
                        )
                    }))
                    .await;
                    let owned = replies.iter().any(|r| {
                        matches!(r, Ok(PeerMessage::Located { role, .. }) if *role == sessync_proto::Role::Owner || *role == sessync_proto::Role::HandedOver)
                    });
                    if owned {
                        return;
                    }
                    // Still a backup copy of that owner's (not, say, a session this node
                    // handed to it meanwhile, whose COPY_ACK is on the way).
                    if !self.table.holds_backup_from(&id, owner) {
                        return;
                    }
                    if let Some(Ok(_)) = self.failover(id, owner, &[]).await {
                        self.elastic.repaired.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(session = %id, %owner, "took over a copy whose owner is gone");
                    }
                }
            })
            .await;
    }
}
