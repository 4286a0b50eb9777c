//! Repair (protocol.md 13.4): when a member that holds backup copies of this node's
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
                if let Ok(PeerMessage::EpochIs { node_id }) = r {
                    if seen.get(&p).is_some_and(|s| s.node_id != node_id) {
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
