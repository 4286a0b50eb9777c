//! Capacity: making room under `--max-sessions` / `--max-memory`, and eviction.
//!
//! `--evict soonest-expiry` evicts live sessions in deadline order (issue 15): each
//! top-level shard keeps [`Candidates`], the sessions of that shard with the soonest
//! deadlines (found by one scan of the shard), and an eviction takes the soonest head of
//! the 16 shards' candidates. The order is exact up to two approximations: a candidate is
//! checked when it is taken (a session touched since is put back under its new deadline,
//! or dropped if that is past the candidates' cutoff, to be found by the next scan), and
//! a session that joins a shard during that shard's scan can be missed by it (it is found
//! by the next one). Cost: a scan of `n` live sessions yields `max(64, n / 16)`
//! candidates, so an eviction visits at most 16 sessions on average (amortized), plus one
//! lock per shard to compare heads; no per-access work and no per-session memory (an
//! ordered index would need a write on every GET, which only takes a read lock).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::*;

/// Fewest candidates a scan keeps.
const MIN_CANDIDATES: usize = 64;
/// A scan keeps one candidate per this many live sessions (at least [`MIN_CANDIDATES`]):
/// the amortized number of sessions visited per eviction.
const SCAN_PER_CANDIDATE: usize = 16;

/// One shard's eviction candidates: every live session of the shard whose deadline is
/// below `cutoff` has an element here with a deadline no later than its own (deadlines
/// only grow), so the head is the shard's soonest (after the check when it is taken).
#[derive(Default)]
pub(super) struct Candidates {
    heap: Mutex<BinaryHeap<Reverse<(u64, SessionId)>>>,
    /// 0 until the first scan (nothing is noted before eviction is ever needed).
    cutoff: AtomicU64,
    /// Most candidates held: twice what the last scan kept. A newcomer past it lowers the
    /// cutoff to its deadline instead (the invariant holds: everything due sooner than
    /// the new cutoff is held), so a shard scanned while nearly empty does not collect
    /// every session created in it afterwards.
    limit: AtomicUsize,
}

impl Candidates {
    /// A live session joined the shard (created, rotated in, installed) with this
    /// deadline: it becomes a candidate if it is sooner than the cutoff.
    pub(super) fn note(&self, id: SessionId, deadline: u64) {
        if deadline < self.cutoff.load(Ordering::Relaxed) {
            let mut heap = self.lock();
            if heap.len() < self.limit.load(Ordering::Relaxed) {
                heap.push(Reverse((deadline, id)));
            } else {
                self.cutoff.fetch_min(deadline, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<(u64, SessionId)>>> {
        self.heap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The soonest candidate, if any.
    fn head(&self) -> Option<(u64, SessionId)> {
        self.lock().peek().map(|Reverse(c)| *c)
    }

    /// How many are held (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Table {
    /// Makes room for one more session of `bytes`, evicting if configured.
    pub(super) fn reserve(&self, bytes: usize, now: u64) -> Result<(), Miss> {
        let mut evictions = 0;
        loop {
            let s = self.stats();
            if s.sessions + s.backups < self.config.max_sessions && s.bytes + bytes <= self.config.max_memory
            {
                return Ok(());
            }
            if self.config.evict == EvictPolicy::Reject || evictions >= 64 || !self.evict_one(now) {
                return Err(Miss::Capacity);
            }
            evictions += 1;
        }
    }

    /// Scans one shard's live sessions and keeps the soonest as its candidates.
    fn rescan(&self, shard: &Shard) {
        let live = shard.stats.live.load(Ordering::Relaxed);
        let keep = MIN_CANDIDATES.max(live / SCAN_PER_CANDIDATE);
        // A max-heap of the `keep` soonest seen so far.
        let mut soonest: BinaryHeap<(u64, SessionId)> = BinaryHeap::with_capacity(keep + 1);
        for lock in shard.map.inners() {
            let g = lock.read().unwrap_or_else(PoisonError::into_inner);
            for n in g.live.iter() {
                let d = n.expires_at_ms();
                if soonest.len() < keep {
                    soonest.push((d, *n.id()));
                } else if soonest.peek().is_some_and(|&(max, _)| d < max) {
                    soonest.pop();
                    soonest.push((d, *n.id()));
                }
            }
        }
        // Sessions not kept are due no sooner than the latest kept one; if every session
        // was kept, any newcomer must be noted.
        let cutoff = if soonest.len() < keep {
            u64::MAX
        } else {
            soonest.peek().map_or(u64::MAX, |&(d, _)| d)
        };
        let c = &shard.map.candidates;
        let mut heap = c.lock();
        heap.extend(soonest.into_iter().map(Reverse));
        c.cutoff.store(cutoff, Ordering::Relaxed);
        c.limit.store(2 * keep, Ordering::Relaxed);
    }

    /// Evicts the live session with the soonest deadline (see the module docs for how
    /// exact that is). Returns whether one was evicted.
    pub(super) fn evict_one(&self, now: u64) -> bool {
        // Bounded: each round either evicts or discards a stale candidate.
        for _ in 0..(1 << 16) {
            let mut best: Option<(u64, SessionId)> = None;
            for shard in self.shards.iter() {
                let c = &shard.map.candidates;
                let mut head = c.head();
                if head.is_none() && shard.stats.live.load(Ordering::Relaxed) > 0 {
                    self.rescan(shard);
                    head = c.head();
                }
                if let Some(h) = head {
                    if best.is_none_or(|b| h < b) {
                        best = Some(h);
                    }
                }
            }
            let Some((deadline, id)) = best else { return false };
            let shard = self.shard(&id);
            let c = &shard.map.candidates;
            {
                let mut heap = c.lock();
                if heap.peek() != Some(&Reverse((deadline, id))) {
                    continue; // taken by a concurrent eviction
                }
                heap.pop();
            }
            let mut g = shard.map.write(&id);
            let current = match g.find_live(&id) {
                Some(n) => n.expires_at_ms(),
                None => continue, // gone or no longer live here
            };
            if current != deadline {
                // Touched since: it goes back under its new deadline if that is still
                // among the shard's soonest; otherwise the next scan finds it.
                drop(g);
                c.note(id, current);
                continue;
            }
            let Some(n) = g.remove_live(&id) else { continue };
            self.account_live_remove(shard, &n);
            // An evicted session leaves a tombstone like a destroyed one: a request still
            // in flight for it must not recreate it.
            if current > now {
                let t = Entry::Destroyed { until_ms: current };
                self.account_add(shard, &t);
                g.insert(id, t);
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}
