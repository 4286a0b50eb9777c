//! Capacity: making room under `--max-sessions` / `--max-memory`, and eviction.

use super::*;

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

    /// Evicts the soonest-to-expire live session of a sample (approximate, like Redis's
    /// volatile-ttl: an exact global order would cost a second index on every access).
    pub(super) fn evict_one(&self, now: u64) -> bool {
        let start = usize::from(SessionId::random().0[0]) & (SHARDS - 1);
        let mut best: Option<(u64, SessionId)> = None;
        let mut sampled = 0;
        'shards: for i in 0..SHARDS {
            let shard = &self.shards[(start + i) & (SHARDS - 1)];
            for r in shard.map.iter() {
                let deadline = match r.value() {
                    Entry::Live(l) => l.meta().expires_at_ms(),
                    _ => continue,
                };
                if best.is_none_or(|(d, _)| deadline < d) {
                    best = Some((deadline, *r.key()));
                }
                sampled += 1;
                if sampled >= EVICTION_SAMPLE {
                    break 'shards;
                }
            }
        }
        let Some((_, id)) = best else { return false };
        let shard = self.shard(&id);
        if let Some((_, e)) = shard.map.remove_if(&id, |_, e| matches!(e, Entry::Live(_))) {
            self.account_remove(shard, &e);
            // An evicted session leaves a tombstone like a destroyed one: a request still in
            // flight for it must not recreate it.
            let until_ms = match &e {
                Entry::Live(l) => l.meta().expires_at_ms(),
                _ => now,
            };
            if until_ms > now {
                let t = Entry::Destroyed { until_ms };
                self.account_add(shard, &t);
                shard.map.insert(id, t);
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}
