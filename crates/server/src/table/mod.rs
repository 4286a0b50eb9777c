//! The session table: session id -> session or tombstone.
//!
//! Why this shape: ids are random 128-bit values, so the table is split into
//! [`SHARDS`] top-level shards by one id byte, each split again into RwLocks over
//! hashbrown tables of 8-byte slots, one allocation per live session (`store.rs` says
//! why: memory, issue 15). Reads take an inner *read* lock only: the last-access time is
//! an atomic, so GET and TOUCH never need a write lock. Each top-level shard keeps its own
//! counters, and the sweeper visits one shard per tick, so reclaiming expired sessions is
//! incremental and holds any one lock for a bounded time (one inner lock at a time).
//! Expiry itself is checked on every access, so an expired session is invisible at once,
//! whether or not it was swept yet.
//!
//! Tombstones: DESTROY and ROTATE leave `Destroyed` (so a slow request cannot bring the
//! session back), a handover leaves `Forwarded` (so stale tokens learn where it went).
//! Both live until the deadline the session itself would have had, and both count against
//! the memory limit.

mod backup;
mod capacity;
mod compact;
mod drain;
mod handover;
mod late_fence;
mod store;
mod view;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use backup::{Dropped, OldBackups, Replicated, RivalBase};
pub use handover::CopyOutcome;
use sessync_proto::{Attributes, PackedAttributes, PeerIdentity, SessionId, SessionMeta, SessionRecord};
use store::{LiveNode, MapEntry, ShardMap};
// Named by benches and tests (feature `testing`); the node only infers them.
#[allow(unused_imports)]
pub use backup::Snapshot;
#[allow(unused_imports)]
pub use handover::{Claimed, HandoverUnderWay};
#[allow(unused_imports)]
pub use view::SessionView;

/// Number of top-level shards (a power of two).
pub const SHARDS: usize = 16;
/// Bytes charged per live session on top of its packed attributes (their wire length):
/// the allocation's header (72 bytes: reference count, id, times, version, generation,
/// length), allocator rounding and the table slot, rounded up; the attributes are stored
/// in fewer bytes than charged (`compact.rs`). An estimate, used for `--max-memory`.
pub const SESSION_OVERHEAD: usize = 128;
/// Bytes charged per tombstone.
pub const TOMBSTONE_OVERHEAD: usize = 64;

/// A live session as the handover and backup steps see it. In the table a live session is
/// stored compactly (`store::LiveNode`); this is its materialized form while those steps
/// hold the entry, and the form kept inside a handover or backup copy.
#[derive(Debug)]
pub struct Live {
    /// The meta; its `last_access_ms` is the access time last sent to the backups (the
    /// live one is the atomic below).
    meta: SessionMeta,
    /// The session's handover generation here: the transfer id of the COPY_DATA (or
    /// promotion) that brought it (0: created here). For a backup copy, the owner's.
    received: u64,
    /// Updated under a read lock by GET and TOUCH.
    last_access_ms: AtomicU64,
    attrs: PackedAttributes,
    /// The nodes holding backup copies (empty without replication). Boxed slice: no
    /// allocation when empty, 16 bytes.
    backups: Box<[SocketAddr]>,
}

impl Live {
    fn meta(&self) -> SessionMeta {
        SessionMeta {
            last_access_ms: self.last_access_ms.load(Ordering::Relaxed),
            ..self.meta
        }
    }

    fn expired(&self, now: u64) -> bool {
        now >= self.meta().expires_at_ms()
    }

    fn charge(&self) -> usize {
        SESSION_OVERHEAD + self.attrs.encoded_len()
    }

    fn record(&self, id: &SessionId) -> SessionRecord {
        SessionRecord {
            id: *id,
            meta: self.meta(),
            attributes: self.attrs.clone(),
        }
    }

    fn from_record(record: &SessionRecord, received: u64) -> Live {
        Live {
            meta: record.meta,
            received,
            last_access_ms: AtomicU64::new(record.meta.last_access_ms),
            attrs: record.attributes.clone(),
            backups: Box::default(),
        }
    }
}

/// A handover in progress: see [`Entry::HandingOver`].
#[derive(Debug)]
pub struct HandingOver {
    /// The node the session was handed to.
    pub to: SocketAddr,
    /// That node's id from the handshake: a restarted process at the same address is a
    /// different node and must never be sent this (possibly stale) copy.
    pub to_node: [u8; 16],
    /// The session as handed over (with the backups it had here).
    live: Live,
    /// This handover's transfer id.
    pub transfer: u64,
    /// When this handover to `to` began here (Unix ms): a receiver whose process is known
    /// gone since then serves nothing of it any more (`node/rehand.rs`).
    pub handed_ms: u64,
    /// This node's own claim ([`Table::promote_local`]), replicating before it installs:
    /// nothing was acknowledged under it yet, so it may lose a tie with another claim of
    /// the same generation (protocol.md 12.2).
    pub claim: bool,
}

/// A backup copy of a session another node owns: see [`Entry::Backup`].
#[derive(Debug)]
pub struct BackupCopy {
    /// The owner that sent it (its advertised peer address).
    pub owner: SocketAddr,
    /// The copy; its `received` is the owner's generation.
    live: Live,
    /// This node's own copy, kept when it gave the session up to `owner`, a rival owner of
    /// its generation ([`Table::lose_ownership`]); `received` is one below that generation,
    /// so a claim from it never outranks the winner's copies. Kept rather than dropped:
    /// three rivals that each yielded to another at once left only forwarding pointers and
    /// no copy (simulation seed 47 with `SESSYNC_SIM_NO_CRASH`).
    pub kept: bool,
    /// Stored when this node gave its own claim of the generation up to `owner`'s rival
    /// claim ([`Table::yield_to_rival`], [`Table::mark_yielded_to`]), or by `owner`'s
    /// REPLICATE over such a copy or over this node's kept copy below `owner` (the same
    /// yield, seen again): if `owner` abandons its
    /// claim too (its DROP), this copy is kept below it rather than fenced. Fenced, two
    /// claims that each gave up on the other left no copy anywhere (simulation seed 27722
    /// without crashes: a paused claimer woke to the rival's late REPLICATE and yielded to
    /// it, and the rival's DROP, sent when it had given up, came next).
    pub yielded_to: bool,
    /// Which of `owner`'s processes stored this copy here ([`writer_tag`] of its node id;
    /// 0 for a copy this node kept of its own state): a REPLICATE from another process at
    /// `owner`'s address replaces it whatever the versions ([`Table::replicate_in_from`]).
    pub writer: u32,
    /// When `owner`'s REPLICATE last stored this copy here (Unix ms), or, for a copy kept
    /// by [`Table::lose_ownership`], when this node learned that `owner` holds a newer one
    /// (0 for other kept copies): the evidence that `owner` was alive and holding this
    /// session lately, which a PROMOTE naming it failed must not override (protocol.md
    /// 12.3 step 2).
    pub written_ms: u64,
}

/// A process's node id (random per process start, protocol.md 11.1) cut to 32 bits for
/// [`BackupCopy::writer`], which fits it beside the copy's flags at no cost in memory: two
/// processes of one address share a tag once in 2^32 restarts, and their copies are then
/// compared by version as one process's are.
pub fn writer_tag(node_id: &[u8; 16]) -> u32 {
    u32::from_le_bytes([node_id[0], node_id[1], node_id[2], node_id[3]]) | 1
}

/// One slot of the table. The rare, large states are boxed so that a live session's slot
/// stays small.
#[derive(Debug)]
pub enum Entry {
    /// This node owns the session.
    Live(Live),
    /// This node answered a COPY (or PROMOTE) from `to` with this data and waits for its
    /// COPY_ACK. The data is kept so that a retried COPY from `to` (its reply was lost)
    /// gets it again; anyone else is told MOVED. Never served here, never taken back.
    HandingOver(Box<HandingOver>),
    /// A backup copy of a session `owner` owns: never served here; handed over (promoted)
    /// only to a node that reports `owner` gone.
    Backup(Box<BackupCopy>),
    /// This node handed the session to `to`; kept until the session's own deadline.
    Forwarded {
        /// The new owner's peer address.
        to: SocketAddr,
        /// When the tombstone may go.
        until_ms: u64,
        /// The transfer id with which this node had received the session (0: created here);
        /// `to` holds generation `received + 1` or newer. A node that yielded to an owner
        /// with a colliding claim (same generation) keeps one less, so that owner's copies
        /// still count as newer here.
        received: u64,
        /// Whether `to` installed the copy as its live session (COPY_ACK, not COPY_REFUSED):
        /// only then did a write applied here before the handover live on. `received`
        /// alone cannot say so for a session created here: one less than 0 is 0.
        placed: bool,
    },
    /// This node held a backup copy from `owner` under `generation` and was told (DROP)
    /// that the session moved on or ended: a *fence*. Copies of `generation` or older are
    /// refused from now on (a paused or cut-off owner cannot get a write accepted here),
    /// and requests are pointed at `owner`, which knows where the session went. Kept until
    /// the session's own deadline. (A DROP for a copy not held leaves a late-copy fence
    /// beside the entry instead: `late_fence.rs`.)
    Fenced {
        /// The owner whose copy this node held.
        owner: SocketAddr,
        /// The highest generation this node refuses.
        generation: u64,
        /// When the fence may go.
        until_ms: u64,
    },
    /// Destroyed or rotated away; kept until the session's own deadline.
    Destroyed {
        /// When the tombstone may go.
        until_ms: u64,
    },
}

impl Entry {
    fn charge(&self) -> usize {
        match self {
            Entry::Live(l) => l.charge(),
            Entry::HandingOver(h) => l_charge_boxed(&h.live),
            Entry::Backup(b) => l_charge_boxed(&b.live),
            _ => TOMBSTONE_OVERHEAD,
        }
    }

    /// Whether the entry may be reclaimed at `now`.
    fn dead(&self, now: u64) -> bool {
        match self {
            Entry::Live(l) => l.expired(now),
            Entry::HandingOver(h) => h.live.expired(now),
            Entry::Backup(b) => b.live.expired(now),
            Entry::Forwarded { until_ms, .. }
            | Entry::Fenced { until_ms, .. }
            | Entry::Destroyed { until_ms } => now >= *until_ms,
        }
    }

    /// The handover generation this entry remembers (what a COPY's `last_transfer` says,
    /// and what an incoming copy must exceed).
    fn known_generation(&self) -> u64 {
        match self {
            Entry::Live(l) => l.received,
            Entry::HandingOver(h) => h.live.received,
            Entry::Backup(b) => b.live.received,
            Entry::Forwarded { received, .. } => *received,
            Entry::Fenced { generation, .. } => *generation,
            Entry::Destroyed { .. } => 0,
        }
    }
}

/// A boxed state's charge: the session plus the box.
fn l_charge_boxed(l: &Live) -> usize {
    l.charge() + std::mem::size_of::<HandingOver>().max(std::mem::size_of::<BackupCopy>())
}

/// What an installed copy becomes: see [`Table::install_as`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing<'a> {
    /// A live session owned here, with these backups.
    Owner(&'a [SocketAddr]),
    /// A forwarding tombstone to this newer owner.
    Superseded(SocketAddr),
    /// A tombstone: a holder of the session had it destroyed or rotated away, so the copy
    /// is of a lineage that ended.
    Destroyed,
}

/// What to do when a CREATE would pass the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictPolicy {
    /// Refuse the CREATE with CAPACITY.
    Reject,
    /// Evict live sessions in deadline order, the soonest first, until it fits (exact but
    /// for what `capacity.rs` names: a session touched or moved in during a scan).
    SoonestExpiry,
}

/// The table's limits.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Most live sessions.
    pub max_sessions: usize,
    /// Most bytes charged (sessions and tombstones, see [`SESSION_OVERHEAD`]).
    pub max_memory: usize,
    /// Most attributes per session.
    pub max_attributes: usize,
    /// Most bytes of packed attributes per session, so that a whole session always fits
    /// in one reply frame.
    pub max_session_bytes: usize,
    /// What happens at the limit.
    pub evict: EvictPolicy,
}

/// Why a table operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No entry at all: never here, or expired and reclaimed. If a token names another
    /// owner, that owner is the one to ask.
    Absent,
    /// Destroyed, rotated away, evicted or expired here: gone for good, never fetched again.
    NotFound,
    /// Handed over to another node.
    Moved(SocketAddr),
    /// A conditional write's version did not match; nothing changed.
    VersionConflict {
        /// The session's current version.
        current: u64,
    },
    /// The write would pass the attribute count limit; nothing changed.
    TooManyAttributes,
    /// The session would be larger than one frame can carry; nothing changed.
    TooLarge,
    /// The table is full and does not evict (or nothing could be evicted).
    Capacity,
}

/// A snapshot of a served session.
#[derive(Debug, Clone)]
pub struct Served {
    /// Version, times and deadlines after the operation.
    pub meta: SessionMeta,
    /// Attributes (all, or a selection, or none, per operation).
    pub attrs: PackedAttributes,
    /// The session's handover generation here.
    pub generation: u64,
    /// The session's backups (what the reply's token must name).
    pub backups: Box<[SocketAddr]>,
    /// The access time the backups last got: reads refresh them when it lags.
    pub replicated_access_ms: u64,
}

impl Served {
    /// How far the backups' access time lags the live one (ms): what the read lease and
    /// the backups' access-time refresh measure.
    pub fn replication_lag_ms(&self) -> u64 {
        self.meta.last_access_ms.saturating_sub(self.replicated_access_ms)
    }
}

#[derive(Default)]
struct ShardStats {
    live: AtomicUsize,
    backups: AtomicUsize,
    tombstones: AtomicUsize,
    bytes: AtomicUsize,
}

struct Shard {
    map: ShardMap,
    stats: ShardStats,
    /// Fences for copies not held here (see `late_fence.rs`).
    late: late_fence::LateFences,
}

/// Counters the table keeps, summed over shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live sessions (some may have expired but not been swept yet).
    pub sessions: usize,
    /// Backup copies of sessions other nodes own.
    pub backups: usize,
    /// Tombstones.
    pub tombstones: usize,
    /// Bytes charged against `max_memory`.
    pub bytes: usize,
    /// Sessions evicted to make room.
    pub evicted: u64,
    /// Entries reclaimed by the sweeper or on access after expiry.
    pub reclaimed: u64,
}

/// The session table. See the module docs for the design.
pub struct Table {
    shards: Box<[Shard]>,
    config: TableConfig,
    evicted: AtomicU64,
    reclaimed: AtomicU64,
}

impl Table {
    /// An empty table.
    pub fn new(config: TableConfig) -> Table {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: ShardMap::default(),
                stats: ShardStats::default(),
                late: late_fence::LateFences::default(),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Table {
            shards,
            config,
            evicted: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &SessionId) -> &Shard {
        // Byte 15: independent of the bytes the map hashes on (0..8).
        &self.shards[usize::from(id.0[15]) & (SHARDS - 1)]
    }

    /// Counters summed over shards.
    pub fn stats(&self) -> TableStats {
        let mut s = TableStats {
            evicted: self.evicted.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            ..TableStats::default()
        };
        for sh in self.shards.iter() {
            s.sessions += sh.stats.live.load(Ordering::Relaxed);
            s.backups += sh.stats.backups.load(Ordering::Relaxed);
            s.tombstones += sh.stats.tombstones.load(Ordering::Relaxed);
            s.bytes += sh.stats.bytes.load(Ordering::Relaxed);
        }
        s
    }

    fn counter<'a>(shard: &'a Shard, e: &Entry) -> &'a AtomicUsize {
        match e {
            Entry::Live(_) | Entry::HandingOver(_) => &shard.stats.live,
            Entry::Backup(_) => &shard.stats.backups,
            _ => &shard.stats.tombstones,
        }
    }

    fn account_add(&self, shard: &Shard, e: &Entry) {
        shard.stats.bytes.fetch_add(e.charge(), Ordering::Relaxed);
        Self::counter(shard, e).fetch_add(1, Ordering::Relaxed);
    }

    fn account_remove(&self, shard: &Shard, e: &Entry) {
        shard.stats.bytes.fetch_sub(e.charge(), Ordering::Relaxed);
        Self::counter(shard, e).fetch_sub(1, Ordering::Relaxed);
    }

    fn account_live_add(&self, shard: &Shard, n: &LiveNode) {
        shard.stats.bytes.fetch_add(n.charge(), Ordering::Relaxed);
        shard.stats.live.fetch_add(1, Ordering::Relaxed);
    }

    fn account_live_remove(&self, shard: &Shard, n: &LiveNode) {
        shard.stats.bytes.fetch_sub(n.charge(), Ordering::Relaxed);
        shard.stats.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Stores a new live session (created here: generation 0, no backups) under a fresh
    /// random id; returns the id.
    fn insert_new(&self, meta: &SessionMeta, attrs: &PackedAttributes) -> SessionId {
        loop {
            let id = SessionId::random();
            let shard = self.shard(&id);
            let mut g = shard.map.write(&id);
            // A collision of 128-bit random ids does not happen in practice; if it ever
            // does, a fresh id is drawn rather than touching the existing entry.
            if g.contains(&id) {
                continue;
            }
            let node = LiveNode::new(id, meta, 0, attrs, &[], meta.last_access_ms);
            self.account_live_add(shard, &node);
            let deadline = node.expires_at_ms();
            g.insert_live(node);
            drop(g);
            shard.map.candidates.note(id, deadline);
            return id;
        }
    }

    /// Rebuilds the entry behind `slot` from its old value (moved out, so a live session
    /// changes state without a copy), keeping the counters right.
    fn transform(&self, shard: &Shard, slot: &mut Entry, f: impl FnOnce(Entry) -> Entry) {
        let old = std::mem::replace(slot, Entry::Destroyed { until_ms: 0 });
        self.account_remove(shard, &old);
        let new = f(old);
        self.account_add(shard, &new);
        *slot = new;
    }

    /// Replaces the entry behind `slot` with `new`, keeping the counters right.
    fn replace(&self, shard: &Shard, slot: &mut Entry, new: Entry) -> Entry {
        self.account_remove(shard, slot);
        self.account_add(shard, &new);
        std::mem::replace(slot, new)
    }

    /// Creates a session with a fresh random id.
    pub fn create(
        &self,
        attrs: &Attributes,
        idle_ttl_ms: u64,
        absolute_deadline_ms: u64,
        now: u64,
    ) -> Result<(SessionId, Served), Miss> {
        if attrs.len() > self.config.max_attributes {
            return Err(Miss::TooManyAttributes);
        }
        let packed = PackedAttributes::pack(attrs);
        if packed.encoded_len() > self.config.max_session_bytes {
            return Err(Miss::TooLarge);
        }
        self.reserve(SESSION_OVERHEAD + packed.encoded_len(), now)?;
        let meta = SessionMeta {
            version: 1,
            created_ms: now,
            last_access_ms: now,
            idle_ttl_ms,
            absolute_deadline_ms,
        };
        let id = self.insert_new(&meta, &packed);
        let served = Served {
            meta,
            attrs: packed,
            generation: 0,
            backups: Box::default(),
            replicated_access_ms: now,
        };
        Ok((id, served))
    }

    /// Looks up a live session without touching it.
    fn miss_for(e: &Entry) -> Miss {
        match e {
            Entry::Forwarded { to, .. } => Miss::Moved(*to),
            Entry::Fenced { owner, .. } => Miss::Moved(*owner),
            Entry::HandingOver(h) => Miss::Moved(h.to),
            // Not ours: its owner (as far as we know) is the one to ask.
            Entry::Backup(b) => Miss::Moved(b.owner),
            _ => Miss::NotFound,
        }
    }

    /// Reads a session (all attributes, or only `names` when not empty) and refreshes its
    /// idle deadline. Takes a read lock only; the attributes are copied out under it. The
    /// node serves GET with [`Table::get_with`] (no copy); this owned form is for tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn get(&self, id: &SessionId, names: &[String], now: u64) -> Result<Served, Miss> {
        let g = self.shard(id).map.read(id);
        let Some(n) = g.find_live(id) else {
            return Err(g.find_other(id).map_or(Miss::Absent, Self::miss_for));
        };
        if n.expired(now) {
            return Err(Miss::NotFound);
        }
        n.access(now);
        let all = n.packed();
        let attrs = if names.is_empty() { all } else { all.select(names) };
        Ok(n.served(attrs))
    }

    /// Refreshes the idle deadline. Takes a read lock only.
    pub fn touch(&self, id: &SessionId, now: u64) -> Result<Served, Miss> {
        let g = self.shard(id).map.read(id);
        let Some(n) = g.find_live(id) else {
            return Err(g.find_other(id).map_or(Miss::Absent, Self::miss_for));
        };
        if n.expired(now) {
            return Err(Miss::NotFound);
        }
        n.access(now);
        Ok(n.served(PackedAttributes::default()))
    }

    /// Applies puts and deletes atomically, if the version matches; bumps the version.
    pub fn set(
        &self,
        id: &SessionId,
        if_version: Option<u64>,
        puts: &Attributes,
        deletes: &[String],
        now: u64,
    ) -> Result<Served, Miss> {
        let shard = self.shard(id);
        let mut g = shard.map.write(id);
        let Some(n) = g.find_live_mut(id) else {
            return Err(g.find_other(id).map_or(Miss::Absent, Self::miss_for));
        };
        if n.expired(now) {
            return Err(Miss::NotFound);
        }
        let version = n.version();
        if let Some(v) = if_version {
            if v != version {
                return Err(Miss::VersionConflict { current: version });
            }
        }
        let attrs = n
            .packed()
            .apply(puts, deletes, self.config.max_attributes)
            .ok_or(Miss::TooManyAttributes)?;
        let old = n.packed_len();
        let new = attrs.encoded_len();
        if new > self.config.max_session_bytes {
            return Err(Miss::TooLarge);
        }
        if new > old {
            // Growth is checked against the memory limit; a write never evicts others.
            let s = self.stats();
            if s.bytes + (new - old) > self.config.max_memory {
                return Err(Miss::Capacity);
            }
            shard.stats.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            shard.stats.bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
        *n = n.with_attrs(&attrs, version + 1, now);
        Ok(n.served(PackedAttributes::default()))
    }

    /// Replaces a live session with a `Destroyed` tombstone that lasts as long as the session
    /// could have; returns the session's last state.
    pub fn destroy(&self, id: &SessionId, now: u64) -> Result<Served, Miss> {
        let shard = self.shard(id);
        let mut g = shard.map.write(id);
        let served = match g.find_live(id) {
            Some(n) if !n.expired(now) => n.served(n.packed()),
            Some(_) => return Err(Miss::NotFound),
            None => return Err(g.find_other(id).map_or(Miss::Absent, Self::miss_for)),
        };
        if let Some(n) = g.remove_live(id) {
            self.account_live_remove(shard, &n);
        }
        let t = Entry::Destroyed {
            until_ms: served.meta.expires_at_ms().max(now + 1),
        };
        self.account_add(shard, &t);
        g.insert(*id, t);
        Ok(served)
    }

    /// Whether the copy of `id` here is a backup of `owner`'s that a REPLICATE from it
    /// stored at `since_ms` or later, or a kept copy given up to it at `since_ms` or later.
    pub fn backup_written_since(&self, id: &SessionId, owner: SocketAddr, since_ms: u64) -> bool {
        let g = self.shard(id).map.read(id);
        matches!(g.find_other(id), Some(Entry::Backup(b)) if b.owner == owner && b.written_ms >= since_ms)
    }

    /// [`Table::destroy`] for a live copy here older than `generation` only: a copy this
    /// node kept serving while the session moved on (a pause, a partition), whose newer
    /// lineage was destroyed or rotated away meanwhile. Left live, it would answer the id
    /// again. Whether it was tombstoned.
    pub fn destroy_superseded(&self, id: &SessionId, generation: u64, now: u64) -> bool {
        let shard = self.shard(id);
        let mut g = shard.map.write(id);
        let until_ms = match g.find_live(id) {
            Some(n) if !n.expired(now) && n.received() < generation => n.expires_at_ms().max(now + 1),
            _ => return false,
        };
        if let Some(n) = g.remove_live(id) {
            self.account_live_remove(shard, &n);
        }
        let t = Entry::Destroyed { until_ms };
        self.account_add(shard, &t);
        g.insert(*id, t);
        true
    }

    /// Gives a session a new id, keeping data and deadlines; the old id becomes a
    /// `Destroyed` tombstone at once. Bumps the version. Never refused for capacity: the
    /// number of sessions stays the same and only a tombstone is added, and a login (the
    /// usual reason to rotate) must not fail or lose the session at a full node.
    /// The returned `Served` carries the *old* id's backups and generation (for DROP);
    /// the new id starts with none.
    pub fn rotate(&self, id: &SessionId, now: u64) -> Result<(SessionId, Served), Miss> {
        let mut served = self.destroy(id, now)?;
        served.meta.version += 1;
        served.meta.last_access_ms = now;
        let new_id = self.insert_new(&served.meta, &served.attrs);
        Ok((new_id, served))
    }

    /// The entry for `id`, in words (for failure reports of the simulation).
    #[cfg(feature = "testing")]
    pub fn describe(&self, id: &SessionId) -> String {
        match self.shard(id).map.get(id) {
            None => "absent".into(),
            Some(r) => match r.value() {
                Entry::Live(l) => format!(
                    "live gen {} v{} backups {:?}",
                    l.received, l.meta.version, l.backups
                ),
                Entry::HandingOver(h) => format!(
                    "handing over to {} transfer {} (gen {} v{})",
                    h.to, h.transfer, h.live.received, h.live.meta.version
                ),
                Entry::Backup(b) => format!(
                    "backup of {} gen {} v{}",
                    b.owner, b.live.received, b.live.meta.version
                ),
                Entry::Forwarded { to, received, .. } => format!("forwarded to {to} (had gen {received})"),
                Entry::Fenced {
                    owner, generation, ..
                } => format!("fenced: {owner} gen <= {generation}"),
                Entry::Destroyed { .. } => "destroyed".into(),
            },
        }
    }

    /// Reclaims dead entries (expired sessions, tombstones past their deadline) in one
    /// top-level shard; returns how many. Holds one inner lock at a time.
    pub fn sweep_shard(&self, index: usize, now: u64) -> usize {
        let shard = &self.shards[index & (SHARDS - 1)];
        let (mut live, mut other) = (0, 0);
        for lock in shard.map.inners() {
            let mut g = lock.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.retain(
                |n| {
                    let dead = n.expired(now);
                    if dead {
                        self.account_live_remove(shard, n);
                        live += 1;
                    }
                    !dead
                },
                |e| {
                    let dead = e.dead(now);
                    if dead {
                        self.account_remove(shard, e);
                        other += 1;
                    }
                    !dead
                },
            );
        }
        let removed = live + other;
        self.reclaimed.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }
}

#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod tests;
