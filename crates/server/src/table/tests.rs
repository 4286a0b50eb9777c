//! Table unit tests: the lifecycle, expiry, capacity and layout. The handover and backup
//! steps are in `handover_tests.rs`.

use super::*;
use bytes::Bytes;

pub(super) fn table(max_sessions: usize, evict: EvictPolicy) -> Table {
    Table::new(TableConfig {
        max_sessions,
        max_memory: usize::MAX,
        max_attributes: 8,
        max_session_bytes: 1 << 20,
        evict,
    })
}

pub(super) fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

#[test]
fn lifecycle_versions_and_tombstones() {
    let t = table(10, EvictPolicy::Reject);
    let (id, s) = t.create(&attrs(&[("u", "alice")]), 1000, 0, 100).unwrap();
    assert_eq!(s.meta.version, 1);
    let s = t
        .set(&id, Some(1), &attrs(&[("cart", "3")]), &["u".into()], 110)
        .unwrap();
    assert_eq!(s.meta.version, 2);
    assert_eq!(
        t.set(&id, Some(1), &attrs(&[]), &[], 111).unwrap_err(),
        Miss::VersionConflict { current: 2 }
    );
    assert_eq!(
        t.get(&id, &[], 120).unwrap().attrs.unpack(),
        attrs(&[("cart", "3")])
    );
    let (new_id, _) = t.rotate(&id, 130).unwrap();
    assert_eq!(t.get(&id, &[], 131).unwrap_err(), Miss::NotFound);
    assert_eq!(t.get(&new_id, &[], 131).unwrap().meta.version, 3);
    t.destroy(&new_id, 140).unwrap();
    assert_eq!(
        t.set(&new_id, None, &attrs(&[("x", "y")]), &[], 141).unwrap_err(),
        Miss::NotFound
    );
    let st = t.stats();
    assert_eq!((st.sessions, st.tombstones), (0, 2));
}

#[test]
fn expiry_is_immediate_and_sweep_reclaims() {
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[]), 1000, 0, 0).unwrap();
    t.touch(&id, 900).unwrap();
    assert!(t.get(&id, &[], 1899).is_ok());
    assert_eq!(t.get(&id, &[], 2899).unwrap_err(), Miss::NotFound);
    assert_eq!(t.get(&SessionId::random(), &[], 2899).unwrap_err(), Miss::Absent);
    let (abs, _) = t.create(&attrs(&[]), 1000, 500, 0).unwrap();
    assert_eq!(t.get(&abs, &[], 500).unwrap_err(), Miss::NotFound);
    let removed: usize = (0..SHARDS).map(|i| t.sweep_shard(i, 5000)).sum();
    assert_eq!(removed, 2);
    assert_eq!(t.stats().sessions, 0);
    assert_eq!(t.stats().bytes, 0);
}

#[test]
fn capacity_reject_and_evict() {
    let t = table(2, EvictPolicy::Reject);
    t.create(&attrs(&[]), 1000, 0, 0).unwrap();
    t.create(&attrs(&[]), 1000, 0, 0).unwrap();
    assert_eq!(t.create(&attrs(&[]), 1000, 0, 0).unwrap_err(), Miss::Capacity);

    let t = table(2, EvictPolicy::SoonestExpiry);
    let (soon, _) = t.create(&attrs(&[]), 10, 0, 0).unwrap();
    let (late, _) = t.create(&attrs(&[]), 10_000, 0, 0).unwrap();
    let (third, _) = t.create(&attrs(&[]), 10_000, 0, 1).unwrap();
    assert_eq!(t.get(&soon, &[], 2).unwrap_err(), Miss::NotFound);
    assert!(t.get(&late, &[], 2).is_ok());
    assert!(t.get(&third, &[], 2).is_ok());
    assert_eq!(t.stats().evicted, 1);
}

/// `--evict soonest-expiry` evicts in deadline order (issue 15: the sampling it replaced
/// let 216 of the 500 oldest sessions survive while it evicted 21 of the 500 newest).
/// 2 000 sessions fill the table, created 1 ms apart with one idle TTL (so deadlines
/// follow creation), every other one of the 1 000 oldest is read later (its deadline moves
/// past everyone's), then 1 000 more are created: exactly the 1 000 soonest deadlines must
/// go, i.e. the 500 untouched of the oldest 1 000 and the next 500, in that order.
#[test]
fn soonest_expiry_evicts_in_deadline_order() {
    let n = 2000;
    let ttl = 1_000_000;
    let t = table(n, EvictPolicy::SoonestExpiry);
    let ids: Vec<SessionId> = (0..n)
        .map(|i| t.create(&attrs(&[("k", "v")]), ttl, 0, i as u64).unwrap().0)
        .collect();
    let now = n as u64 + 10;
    for id in ids[..1000].iter().step_by(2) {
        t.touch(id, now).unwrap();
    }
    // Each session's deadline: its last access plus the TTL.
    let mut order: Vec<(u64, usize)> = (0..n)
        .map(|i| {
            let last_access = if i < 1000 && i % 2 == 0 { now } else { i as u64 };
            (last_access + ttl, i)
        })
        .collect();
    order.sort();
    let doomed: std::collections::HashSet<usize> = order[..1000].iter().map(|&(_, i)| i).collect();
    let mut evicted_each = Vec::new();
    let newcomers: Vec<SessionId> = (0..1000u64)
        .map(|i| {
            let before = t.stats().evicted;
            let id = t.create(&attrs(&[("k", "v")]), ttl, 0, now + 1 + i).unwrap().0;
            evicted_each.push(t.stats().evicted - before);
            id
        })
        .collect();
    assert!(evicted_each.iter().all(|&e| e == 1), "one eviction per create");
    let probe = now + 2000;
    let mut wrong = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let gone = t.get(id, &[], probe).is_err();
        if gone != doomed.contains(&i) {
            wrong.push(i);
        }
    }
    assert!(wrong.is_empty(), "evicted out of deadline order: {wrong:?}");
    for id in &newcomers {
        assert!(t.get(id, &[], probe).is_ok());
    }
    let st = t.stats();
    assert_eq!((st.sessions, st.evicted), (n, 1000));
}

/// Eviction order within one shard's candidates, across rescans, and for a session that
/// joins after a scan with a sooner deadline than everything scanned (a short TTL):
/// it is the next to go.
#[test]
fn soonest_expiry_takes_a_newcomer_with_a_sooner_deadline_first() {
    let t = table(300, EvictPolicy::SoonestExpiry);
    for i in 0..300u64 {
        t.create(&attrs(&[]), 10_000 + i, 0, 0).unwrap();
    }
    // The first eviction scans; the evicted one is the soonest (TTL 10 000).
    t.create(&attrs(&[]), 50_000, 0, 1).unwrap();
    assert_eq!(t.stats().evicted, 1);
    // A session rotated in keeps its deadline; one created with a short TTL joins the
    // candidates at once.
    let (short, _) = t.create(&attrs(&[]), 5, 0, 2).unwrap();
    assert_eq!(t.stats().evicted, 2);
    t.create(&attrs(&[]), 50_000, 0, 3).unwrap();
    assert_eq!(
        t.get(&short, &[], 4).unwrap_err(),
        Miss::NotFound,
        "the newcomer due soonest goes first"
    );
    assert_eq!(t.stats().evicted, 3);
    let held: usize = t.shards.iter().map(|s| s.map.candidates.len()).sum();
    assert!(held <= 16 * 64, "candidates stay bounded: {held}");
    // A shard scanned while nearly empty (every newcomer is due before its cutoff) holds
    // at most twice what its scan kept, however many sessions join it afterwards.
    let t = table(100_000, EvictPolicy::SoonestExpiry);
    t.create(&attrs(&[]), 10, 0, 0).unwrap();
    assert!(t.evict_one(1));
    let mut soonest = Vec::new();
    for i in 0..20_000u64 {
        let (id, _) = t.create(&attrs(&[]), 1000 + i, 0, 2).unwrap();
        if i == 0 {
            soonest.push(id);
        }
    }
    for s in t.shards.iter() {
        assert!(s.map.candidates.len() <= 2 * 64, "{}", s.map.candidates.len());
    }
    // Eviction still takes the soonest: TTL 1000 at time 2.
    assert!(t.evict_one(3));
    assert_eq!(t.get(&soonest[0], &[], 4).unwrap_err(), Miss::NotFound);
    assert_eq!(t.stats().evicted, 2);
    assert_eq!(t.stats().sessions, 19_999);
}

/// The layout (issue 15): a slot is one pointer, and a live session's fixed part is one
/// allocation header of 72 bytes (reference count, id, times, version, generation,
/// length), then one byte of extras without backups or absolute deadline, so a session
/// costs its packed attributes plus well under `SESSION_OVERHEAD`.
#[test]
fn a_live_session_is_one_thin_pointer_and_one_allocation() {
    assert_eq!(std::mem::size_of::<store::LiveNode>(), 8);
    assert_eq!(std::mem::size_of::<Box<store::Other>>(), 8);
    assert_eq!(std::mem::size_of::<store::LiveHead>(), 56);
    // Replication state moves with the session through every step.
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[("a", "1")]), 1000, 0, 0).unwrap();
    let b = SocketAddr::from(([127, 0, 0, 1], 9));
    let snap = t.snapshot(&id, 5).unwrap();
    t.set_backups(&id, snap.generation, &[b]);
    t.get(&id, &[], 20).unwrap();
    let s = t.set(&id, None, &attrs(&[("b", "2")]), &[], 30).unwrap();
    assert_eq!(&*s.backups, &[b]);
    assert_eq!(s.meta.version, 2);
    let s = t.get(&id, &["b".into()], 40).unwrap();
    assert_eq!(s.attrs.unpack(), attrs(&[("b", "2")]));
    assert_eq!(s.meta.last_access_ms, 40);
    assert!(
        s.replicated_access_ms <= 20,
        "the backups got an older access time"
    );
    let snap = t.snapshot(&id, 50).unwrap();
    assert_eq!(snap.record.meta.last_access_ms, 40);
    assert_eq!(&*snap.backups, &[b]);
    assert_eq!(t.get(&id, &[], 50).unwrap().replicated_access_ms, 40);
    assert_eq!(
        t.stats().bytes,
        SESSION_OVERHEAD + snap.record.attributes.encoded_len()
    );
    // Backups of either family round-trip through the node's slice, with the attributes.
    let v6: SocketAddr = "[fe80::1%7]:7001".parse().unwrap();
    let v6 = match v6 {
        SocketAddr::V6(mut a) => {
            a.set_flowinfo(0x1234);
            SocketAddr::V6(a)
        }
        v4 => v4,
    };
    t.set_backups(&id, snap.generation, &[b, v6]);
    let s = t.get(&id, &[], 60).unwrap();
    assert_eq!(&*s.backups, &[b, v6]);
    assert_eq!(s.attrs.unpack(), attrs(&[("a", "1"), ("b", "2")]));
    assert_eq!(s.replicated_access_ms, 40);
    t.set_backups(&id, snap.generation, &[]);
    assert!(t.get(&id, &[], 61).unwrap().backups.is_empty());
}

/// An absolute deadline lives in the node's extras (flagged in the backup count's byte,
/// stored only when not 0): it survives every rewrite of the node, with and without
/// backups, and still ends the session.
#[test]
fn an_absolute_deadline_moves_with_the_session_through_every_step() {
    let t = table(10, EvictPolicy::Reject);
    let (id, created) = t.create(&attrs(&[("a", "1")]), 1000, 500, 0).unwrap();
    assert_eq!(created.meta.absolute_deadline_ms, 500);
    let deadline = |t: &Table, now| t.get(&id, &[], now).unwrap().meta.absolute_deadline_ms;
    assert_eq!(deadline(&t, 10), 500);
    let b = SocketAddr::from(([127, 0, 0, 1], 9));
    let v6: SocketAddr = "[fe80::1%7]:7001".parse().unwrap();
    let snap = t.snapshot(&id, 20).unwrap();
    assert_eq!(snap.record.meta.absolute_deadline_ms, 500);
    t.set_backups(&id, snap.generation, &[b, v6]);
    let s = t.set(&id, None, &attrs(&[("b", "2")]), &[], 30).unwrap();
    assert_eq!(&*s.backups, &[b, v6]);
    assert_eq!(s.meta.absolute_deadline_ms, 500);
    assert_eq!(s.meta.idle_ttl_ms, 1000);
    // A REPLICATE snapshot records the access time it sends (the SET's, 30) in place,
    // in the extras behind the deadline.
    let snap = t.snapshot(&id, 40).unwrap();
    assert_eq!(snap.record.meta.absolute_deadline_ms, 500);
    let s = t.get(&id, &["b".into()], 41).unwrap();
    assert_eq!(s.replicated_access_ms, 30);
    assert_eq!(s.meta.absolute_deadline_ms, 500);
    assert_eq!(s.attrs.unpack(), attrs(&[("b", "2")]));
    assert_eq!(&*s.backups, &[b, v6]);
    t.set_backups(&id, snap.generation, &[]);
    assert_eq!(deadline(&t, 50), 500);
    assert!(t.get(&id, &[], 50).unwrap().backups.is_empty());
    // The deadline still ends it, however recent the access.
    assert_eq!(t.get(&id, &[], 500).unwrap_err(), Miss::NotFound);
    // And a session without one has none (0), as before.
    let (other, _) = t.create(&attrs(&[("a", "1")]), 1000, 0, 0).unwrap();
    assert_eq!(t.get(&other, &[], 10).unwrap().meta.absolute_deadline_ms, 0);
}

#[test]
fn get_with_writes_what_get_returns_and_misses_alike() {
    let t = table(10, EvictPolicy::Reject);
    let a = attrs(&[("u", "alice"), ("cart", "3"), ("big", &"x".repeat(300))]);
    let (id, _) = t.create(&a, 1000, 0, 100).unwrap();
    for names in [
        vec![],
        vec!["cart".to_string(), "nope".into()],
        vec!["nope".into()],
    ] {
        let want = t.get(&id, &names, 200).unwrap();
        let mut out = bytes::BytesMut::new();
        let (served, meta) = t
            .get_with(&id, 300, |v| {
                v.write_attributes(&names, &mut out);
                (v.served(), v.meta())
            })
            .unwrap();
        assert_eq!(&out[..], want.attrs.as_bytes(), "{names:?}");
        // The access is recorded like a GET's.
        assert_eq!(meta.last_access_ms, 300);
        assert_eq!(served.meta, meta);
        assert_eq!(
            (served.generation, &served.backups),
            (want.generation, &want.backups)
        );
    }
    // Misses are the same as GET's: absent, expired, destroyed.
    let other = SessionId::random();
    assert_eq!(t.get_with(&other, 300, |_| ()).unwrap_err(), Miss::Absent);
    assert_eq!(t.get_with(&id, 5000, |_| ()).unwrap_err(), Miss::NotFound);
    t.destroy(&id, 400).unwrap();
    assert_eq!(t.get_with(&id, 401, |_| ()).unwrap_err(), Miss::NotFound);
}

#[test]
fn a_snapshot_records_the_access_time_it_sends_in_place() {
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[("u", "alice")]), 10_000, 0, 100).unwrap();
    let holder = SocketAddr::from(([127, 0, 0, 1], 9));
    t.set_backups(&id, 0, &[holder]);
    t.touch(&id, 500).unwrap();
    // The backups last got the creation time: a read sees them lag.
    let s = t.get(&id, &[], 600).unwrap();
    assert_eq!((s.replicated_access_ms, &s.backups[..]), (100, &[holder][..]));
    let snap = t.snapshot(&id, 650).unwrap();
    assert_eq!(snap.record.meta.last_access_ms, 600);
    assert_eq!(snap.record.attributes.unpack(), attrs(&[("u", "alice")]));
    assert_eq!(&snap.backups[..], &[holder][..]);
    // Recorded: the next read sees the time that was sent.
    let s = t.get(&id, &[], 700).unwrap();
    assert_eq!(s.replicated_access_ms, 600);
    assert_eq!(s.attrs.unpack(), attrs(&[("u", "alice")]));
    // Unchanged backups are not rewritten; changed ones are.
    t.set_backups(&id, 0, &[holder]);
    t.set_backups(&id, 1, &[]);
    assert_eq!(&t.get(&id, &[], 710).unwrap().backups[..], &[holder][..]);
    t.set_backups(&id, 0, &[]);
    assert!(t.get(&id, &[], 720).unwrap().backups.is_empty());
}

/// A round that renews no read lease puts back the access time the backups had before
/// its snapshot, only while no later round recorded its own and only for the generation
/// snapped.
#[test]
fn a_round_that_renews_nothing_puts_the_access_time_back() {
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[("u", "alice")]), 10_000, 0, 100).unwrap();
    let holder = SocketAddr::from(([127, 0, 0, 1], 9));
    t.set_backups(&id, 0, &[holder]);
    t.touch(&id, 500).unwrap();
    let snap = t.snapshot(&id, 510).unwrap();
    assert_eq!(
        (snap.record.meta.last_access_ms, snap.replicated_before),
        (500, Some(100))
    );
    assert_eq!(t.get(&id, &[], 520).unwrap().replicated_access_ms, 500);
    t.read_lease_not_renewed(&id, &snap);
    assert_eq!(t.get(&id, &[], 530).unwrap().replicated_access_ms, 100);
    // A later round recorded its own: left alone.
    let first = t.snapshot(&id, 540).unwrap();
    assert_eq!(first.record.meta.last_access_ms, 530);
    t.touch(&id, 560).unwrap();
    let latest = t.snapshot(&id, 570).unwrap();
    t.read_lease_not_renewed(&id, &first);
    assert_eq!(t.get(&id, &[], 580).unwrap().replicated_access_ms, 560);
    // Another generation's snapshot changes nothing.
    let mut other = latest.clone();
    other.generation += 1;
    t.read_lease_not_renewed(&id, &other);
    assert_eq!(t.get(&id, &[], 590).unwrap().replicated_access_ms, 560);
}
