//! The session table's concurrent map, chosen by this benchmark (issue 4).
//!
//! Our access pattern: uniformly random 128-bit session ids; 90% reads that update an
//! atomic last-access time and clone the packed attributes (a GET), 10% writes that
//! replace the attributes and bump the version under the entry's exclusive access (a SET);
//! 2 threads (this machine's cores); a prefilled map of `SESSYNC_BENCH_ENTRIES` entries
//! (default 1 000 000). Every map uses the table's own `IdHasher` and the same value type,
//! so only the map differs:
//!
//! - `dashmap`: what `crates/server/src/table.rs` uses (one `DashMap`, here unsharded);
//! - `papaya`: lock-free; a write is `update`, which allocates a new value (its design);
//! - `scc`: `scc::HashMap`, `read` and `update` in place;
//! - `rwlock-sharded`: 64 × `std::sync::RwLock<std::collections::HashMap>`.
//!
//! `sessync-table` runs the same pattern through `sessync_server::table::Table` itself
//! (`get` / `set` of one attribute / `touch`), which adds what the node really does per
//! request (expiry check, counters, building the new packed attributes on SET).
//!
//! One iteration is one operation on each of the 2 threads; criterion's "elements" rate is
//! operations per second over both threads. Run: `cargo bench --bench table`
//! (`SESSYNC_BENCH_ENTRIES=100000` for a shorter prefill).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dashmap::DashMap;
use sessync_proto::{Attributes, PackedAttributes, SessionId, SessionMeta};
use sessync_server::table::{EvictPolicy, IdHasher, Table, TableConfig};

type H = BuildHasherDefault<IdHasher>;

const THREADS: usize = 2;

fn entries() -> usize {
    std::env::var("SESSYNC_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// The value every map holds: the shape of the table's live entry.
struct Value {
    meta: SessionMeta,
    last_access_ms: AtomicU64,
    attrs: PackedAttributes,
}

impl Value {
    fn new(attrs: PackedAttributes) -> Value {
        Value {
            meta: SessionMeta {
                version: 1,
                idle_ttl_ms: 1_800_000,
                ..SessionMeta::default()
            },
            last_access_ms: AtomicU64::new(0),
            attrs,
        }
    }

    /// A GET's work on the entry: refresh the last access, take the attributes.
    fn read(&self, now: u64) -> PackedAttributes {
        self.last_access_ms.fetch_max(now, Ordering::Relaxed);
        self.attrs.clone()
    }

    /// A SET's work on the entry, in place.
    fn write(&mut self, attrs: PackedAttributes, now: u64) {
        self.attrs = attrs;
        self.meta.version += 1;
        self.last_access_ms.fetch_max(now, Ordering::Relaxed);
    }
}

fn small_attrs(i: u64) -> Attributes {
    let mut a = Attributes::new();
    a.insert("user".into(), Bytes::from(format!("user-{i}")));
    a.insert("csrf".into(), Bytes::from(format!("{i:032x}")));
    a
}

/// Each entry gets its own attribute buffer, as real sessions do.
fn packed(i: u64) -> PackedAttributes {
    PackedAttributes::pack(&small_attrs(i))
}

fn random_ids(n: usize, seed: u64) -> Vec<SessionId> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            let mut id = [0u8; 16];
            for chunk in id.chunks_mut(8) {
                x = splitmix(x);
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            SessionId(id)
        })
        .collect()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The operations a map must offer for the pattern.
trait SessionMap: Sync {
    fn insert(&self, id: SessionId, v: Value);
    fn read(&self, id: &SessionId, now: u64) -> Option<PackedAttributes>;
    fn write(&self, id: &SessionId, attrs: PackedAttributes, now: u64) -> bool;
}

impl SessionMap for DashMap<SessionId, Value, H> {
    fn insert(&self, id: SessionId, v: Value) {
        DashMap::insert(self, id, v);
    }
    fn read(&self, id: &SessionId, now: u64) -> Option<PackedAttributes> {
        self.get(id).map(|r| r.read(now))
    }
    fn write(&self, id: &SessionId, attrs: PackedAttributes, now: u64) -> bool {
        self.get_mut(id).map(|mut r| r.write(attrs, now)).is_some()
    }
}

impl SessionMap for papaya::HashMap<SessionId, Value, H> {
    fn insert(&self, id: SessionId, v: Value) {
        self.pin().insert(id, v);
    }
    fn read(&self, id: &SessionId, now: u64) -> Option<PackedAttributes> {
        self.pin().get(id).map(|v| v.read(now))
    }
    fn write(&self, id: &SessionId, attrs: PackedAttributes, now: u64) -> bool {
        self.pin()
            .update(*id, |old| Value {
                meta: SessionMeta {
                    version: old.meta.version + 1,
                    ..old.meta
                },
                last_access_ms: AtomicU64::new(old.last_access_ms.load(Ordering::Relaxed).max(now)),
                attrs: attrs.clone(),
            })
            .is_some()
    }
}

impl SessionMap for scc::HashMap<SessionId, Value, H> {
    fn insert(&self, id: SessionId, v: Value) {
        let _ = scc::HashMap::insert(self, id, v);
    }
    fn read(&self, id: &SessionId, now: u64) -> Option<PackedAttributes> {
        scc::HashMap::read(self, id, |_, v| v.read(now))
    }
    fn write(&self, id: &SessionId, attrs: PackedAttributes, now: u64) -> bool {
        self.update(id, |_, v| v.write(attrs, now)).is_some()
    }
}

/// 64 std RwLocks over std HashMaps, sharded by an id byte the hasher does not use.
struct RwLockSharded {
    shards: Vec<RwLock<HashMap<SessionId, Value, H>>>,
}

impl RwLockSharded {
    const SHARDS: usize = 64;

    fn new(capacity: usize) -> Self {
        RwLockSharded {
            shards: (0..Self::SHARDS)
                .map(|_| {
                    RwLock::new(HashMap::with_capacity_and_hasher(
                        capacity / Self::SHARDS,
                        H::default(),
                    ))
                })
                .collect(),
        }
    }

    fn shard(&self, id: &SessionId) -> &RwLock<HashMap<SessionId, Value, H>> {
        &self.shards[usize::from(id.0[15]) % Self::SHARDS]
    }
}

impl SessionMap for RwLockSharded {
    fn insert(&self, id: SessionId, v: Value) {
        self.shard(&id).write().unwrap().insert(id, v);
    }
    fn read(&self, id: &SessionId, now: u64) -> Option<PackedAttributes> {
        self.shard(id).read().unwrap().get(id).map(|v| v.read(now))
    }
    fn write(&self, id: &SessionId, attrs: PackedAttributes, now: u64) -> bool {
        self.shard(id)
            .write()
            .unwrap()
            .get_mut(id)
            .map(|v| v.write(attrs, now))
            .is_some()
    }
}

/// The real table behind the same trait: a read is `get` (all attributes), a write is
/// `set` of one attribute (which builds new packed attributes, as the node does).
struct TableMap {
    table: Table,
    put: Attributes,
}

impl SessionMap for TableMap {
    fn insert(&self, _id: SessionId, _v: Value) {
        unreachable!("the table makes its own ids")
    }
    fn read(&self, id: &SessionId, now: u64) -> Option<PackedAttributes> {
        self.table.get(id, &[], now).ok().map(|s| s.attrs)
    }
    fn write(&self, id: &SessionId, _attrs: PackedAttributes, now: u64) -> bool {
        self.table.set(id, None, &self.put, &[], now).is_ok()
    }
}

/// Runs `iters` operations on each of [`THREADS`] threads; returns the wall time.
fn run_pattern<M: SessionMap>(
    map: &M,
    ids: &[SessionId],
    iters: u64,
    fresh: &[PackedAttributes],
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let mut x = splitmix(0xABCD + t as u64 + iters);
                let mut misses = 0u64;
                for i in 0..iters {
                    x = splitmix(x);
                    let id = &ids[(x >> 32) as usize % ids.len()];
                    let now = 1_000 + i;
                    if x % 10 == 0 {
                        let attrs = fresh[(x as usize >> 8) % fresh.len()].clone();
                        misses += u64::from(!map.write(id, attrs, now));
                    } else {
                        match map.read(id, now) {
                            Some(a) => {
                                black_box(a);
                            }
                            None => misses += 1,
                        }
                    }
                }
                assert_eq!(misses, 0, "every id was inserted");
            });
        }
    });
    start.elapsed()
}

fn fill<M: SessionMap>(map: &M, ids: &[SessionId]) {
    for (i, id) in ids.iter().enumerate() {
        map.insert(*id, Value::new(packed(i as u64)));
    }
}

fn table(c: &mut Criterion) {
    let n = entries();
    let ids = random_ids(n, 42);
    // Writes put freshly built buffers, as a SET does; a pool of them keeps the
    // allocation out of the measured loop for every map alike.
    let fresh: Vec<PackedAttributes> = (0..1024).map(packed).collect();
    let mut g = c.benchmark_group(format!("table-{}k-entries-90r10w-{THREADS}threads", n / 1000));
    g.throughput(Throughput::Elements(THREADS as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));

    {
        let map: DashMap<SessionId, Value, H> = DashMap::with_capacity_and_hasher(n, H::default());
        fill(&map, &ids);
        g.bench_function("dashmap", |b| {
            b.iter_custom(|iters| run_pattern(&map, &ids, iters, &fresh))
        });
    }
    {
        let map: papaya::HashMap<SessionId, Value, H> =
            papaya::HashMap::with_capacity_and_hasher(n, H::default());
        fill(&map, &ids);
        g.bench_function("papaya", |b| {
            b.iter_custom(|iters| run_pattern(&map, &ids, iters, &fresh))
        });
    }
    {
        let map: scc::HashMap<SessionId, Value, H> = scc::HashMap::with_capacity_and_hasher(n, H::default());
        fill(&map, &ids);
        g.bench_function("scc", |b| {
            b.iter_custom(|iters| run_pattern(&map, &ids, iters, &fresh))
        });
    }
    {
        let map = RwLockSharded::new(n);
        fill(&map, &ids);
        g.bench_function("rwlock-sharded", |b| {
            b.iter_custom(|iters| run_pattern(&map, &ids, iters, &fresh))
        });
    }
    {
        let table = Table::new(TableConfig {
            max_sessions: usize::MAX,
            max_memory: usize::MAX,
            max_attributes: 1024,
            max_session_bytes: 1 << 20,
            evict: EvictPolicy::Reject,
        });
        let ids: Vec<SessionId> = (0..n as u64)
            .map(|i| table.create(&small_attrs(i), 1 << 40, 0, 0).unwrap().0)
            .collect();
        let mut put = Attributes::new();
        put.insert(
            "csrf".into(),
            Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
        );
        let map = TableMap { table, put };
        g.bench_function("sessync-table", |b| {
            b.iter_custom(|iters| run_pattern(&map, &ids, iters, &fresh))
        });
    }
    g.finish();
    // Keep the hasher type honest: every map above hashes with the table's IdHasher.
    black_box(H::default().hash_one(ids[0]));
}

criterion_group!(benches, table);
criterion_main!(benches);
