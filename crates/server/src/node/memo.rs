//! Small per-session memories of rare events (a COPY that got no reply, a COPY_ACK held
//! back), kept off the hot path: written only when the rare event happens, and read
//! where a cheap "is anything remembered at all" check comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sessync_proto::SessionId;

/// Most entries kept: past this, entries older than the memo's age limit go, and if it is
/// still full, all of them; [`SessionMemo::insert`] hands them back.
const CAPACITY: usize = 4096;

/// One value per session, bounded in count and (when full) in age.
pub(super) struct SessionMemo<V> {
    entries: Mutex<HashMap<SessionId, (V, u64)>>,
    /// How many entries there are, read without the lock.
    len: AtomicUsize,
    /// Entries older than this (ms) are the first to go when the memo is full.
    max_age_ms: u64,
}

impl<V: Clone> SessionMemo<V> {
    /// An empty memo whose entries may be dropped once older than `max_age_ms`.
    pub(super) fn new(max_age_ms: u64) -> Self {
        SessionMemo {
            entries: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            max_age_ms,
        }
    }

    /// Remembers `value` for `id` at `now_ms`. Returns what it forgot to make room (the
    /// oldest entries, or all of them) and the value it replaced for `id`, so that a user
    /// for whom a forgotten entry is a duty (a COPY_ACK to send) can still do it.
    pub(super) fn insert(&self, id: SessionId, value: V, now_ms: u64) -> Vec<(SessionId, V)> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut forgotten = Vec::new();
        if map.len() >= CAPACITY {
            let old: Vec<SessionId> = map
                .iter()
                .filter(|(_, (_, at))| now_ms.saturating_sub(*at) >= self.max_age_ms)
                .map(|(id, _)| *id)
                .collect();
            for old in old {
                forgotten.extend(map.remove(&old).map(|(v, _)| (old, v)));
            }
            if map.len() >= CAPACITY {
                forgotten.extend(map.drain().map(|(id, (v, _))| (id, v)));
            }
        }
        forgotten.extend(map.insert(id, (value, now_ms)).map(|(v, _)| (id, v)));
        self.len.store(map.len(), Ordering::Relaxed);
        forgotten
    }

    /// What is remembered for `id`; kept.
    pub(super) fn get(&self, id: &SessionId) -> Option<V> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).map(|(v, _)| v.clone())
    }

    /// Every entry whose value `pick` chooses, forgotten here.
    pub(super) fn take_all(&self, mut pick: impl FnMut(&V) -> bool) -> Vec<(SessionId, V)> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<SessionId> = map
            .iter()
            .filter(|(_, (v, _))| pick(v))
            .map(|(id, _)| *id)
            .collect();
        let taken = ids
            .into_iter()
            .filter_map(|id| map.remove(&id).map(|(v, _)| (id, v)))
            .collect();
        self.len.store(map.len(), Ordering::Relaxed);
        taken
    }

    /// What is remembered for `id`, forgotten here.
    pub(super) fn take(&self, id: &SessionId) -> Option<V> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let taken = map.remove(id).map(|(v, _)| v);
        self.len.store(map.len(), Ordering::Relaxed);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memo_forgets_old_entries_first_and_take_forgets_one() {
        let memo = SessionMemo::new(1000);
        let ids: Vec<SessionId> = (0..CAPACITY).map(|_| SessionId::random()).collect();
        for (i, id) in ids.iter().enumerate() {
            // The first half is old by the time the memo is full.
            let at = if i < CAPACITY / 2 { 0 } else { 5000 };
            assert!(memo.insert(*id, i, at).is_empty());
        }
        let newest = SessionId::random();
        let forgotten = memo.insert(newest, 7, 5000);
        assert_eq!(forgotten.len(), CAPACITY / 2, "the old half is handed back");
        assert!(forgotten.iter().all(|(_, v)| *v < CAPACITY / 2));
        assert_eq!(
            memo.insert(newest, 8, 5000),
            vec![(newest, 7)],
            "a replaced value too"
        );
        assert_eq!(memo.take(&newest), Some(8));
        let _ = memo.insert(newest, 7, 5000);
        assert_eq!(
            memo.get(&ids[0]),
            None,
            "an old entry went when the memo was full"
        );
        assert_eq!(
            memo.get(&ids[CAPACITY - 1]),
            Some(CAPACITY - 1),
            "a recent one stayed"
        );
        assert_eq!(memo.take(&newest), Some(7));
        assert_eq!(memo.get(&newest), None, "taken is forgotten");
        assert_eq!(memo.take(&newest), None);
        let odd = memo.take_all(|v| v % 2 == 1);
        assert!(!odd.is_empty() && odd.iter().all(|(id, v)| v % 2 == 1 && memo.get(id).is_none()));
        assert!(memo.get(&ids[CAPACITY - 2]).is_some(), "the others stay");
    }
}
