//! Late-copy fences: what a DROP for a copy this node does not hold leaves behind
//! (protocol.md 12.2). The DROP may have overtaken the REPLICATE it retires (one whose
//! reply was lost, so its owner counted this node a holder, sent on an older connection or
//! delayed in flight), and that copy must be refused when it lands, or a failover could
//! later promote a destroyed or rotated-away id (simulation seeds 39 and 51). The fence
//! names its owner: another owner's copy of the same generation is a different lineage
//! (the DROP of a lineage that ended names the next generation, 17.2), and it is kept
//! beside the entry, not in it, because the entry may be another owner's live copy that
//! must stay (seed 39: an older copy of another owner's was held when the DROP came).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sessync_proto::SessionId;

/// How long a late-copy fence lasts: longer than a REPLICATE can be delayed in flight
/// behind its DROP (a peer timeout of a few seconds, a paused receiver reading its socket
/// late), short enough that the fences cost nothing lasting.
pub(super) const LATE_COPY_FENCE_MS: u64 = 60_000;

/// Most fences one shard keeps. Past it the oldest goes first: a node told to drop more
/// copies than that within a minute (DROPs come from authenticated peers only) keeps its
/// memory bounded and loses only the oldest fences' protection.
const MAX_PER_SHARD: usize = 16_384;

/// One shard's late-copy fences.
#[derive(Default)]
pub(super) struct LateFences {
    /// How many are held: checked without the lock on every REPLICATE.
    len: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (session, owner) -> (highest generation refused, until when).
    fences: HashMap<(SessionId, SocketAddr), (u64, u64)>,
    /// The same keys in the order they were set (so by deadline: every fence lasts as
    /// long), for expiry and the bound.
    order: VecDeque<(u64, SessionId, SocketAddr)>,
}

impl LateFences {
    /// Refuses `owner`'s copies of `id` of `generation` or older for a while.
    pub(super) fn add(&self, id: SessionId, owner: SocketAddr, generation: u64, now: u64) {
        let until = now + LATE_COPY_FENCE_MS;
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        g.expire(now);
        while g.order.len() >= MAX_PER_SHARD {
            g.pop_oldest();
        }
        let slot = g.fences.entry((id, owner)).or_insert((generation, until));
        slot.0 = slot.0.max(generation);
        slot.1 = until;
        g.order.push_back((until, id, owner));
        self.len.store(g.fences.len(), Ordering::Relaxed);
    }

    /// Whether `owner`'s copy of `id` under `generation` is a late copy fenced here.
    pub(super) fn refuses(&self, id: &SessionId, owner: SocketAddr, generation: u64, now: u64) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Ok(g) = self.inner.lock() else {
            return false;
        };
        g.fences
            .get(&(*id, owner))
            .is_some_and(|&(fenced, until)| now < until && generation <= fenced)
    }
}

impl Inner {
    fn expire(&mut self, now: u64) {
        while self.order.front().is_some_and(|&(until, ..)| until <= now) {
            self.pop_oldest();
        }
    }

    /// Removes the oldest entry of the order, and its fence unless it was set again since.
    fn pop_oldest(&mut self) {
        if let Some((until, id, owner)) = self.order.pop_front() {
            if self.fences.get(&(id, owner)).is_some_and(|&(_, u)| u == until) {
                self.fences.remove(&(id, owner));
            }
        }
    }
}
