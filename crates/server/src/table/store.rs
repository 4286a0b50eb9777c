//! How the table lays sessions out in memory (issue 15): one 8-byte slot per entry, and
//! one allocation per live session holding its id, metadata and packed attributes.
//!
//! A top-level shard ([`ShardMap`]) is [`INNER`] `RwLock`s, each over two hashbrown
//! [`HashTable`]s of thin pointers: `live` (every `Entry::Live`, the common case, kept
//! compact) and `other` (every other state, boxed as the [`Entry`] the handover and backup
//! code works with). An id is in at most one of the two. A live session is a
//! [`LiveNode`]: a triomphe `ThinArc` of a [`LiveHead`] (id, times, version, generation:
//! 56 bytes, 72 with the reference count and the slice length) followed by a slice
//! holding the absolute deadline and the backups, if any (one byte 0 without either), and
//! the packed attributes with varint lengths (`compact.rs`), all in one allocation behind
//! an 8-byte slot. Why: a
//! DashMap slot was 112 bytes (key + 96-byte entry) and hashbrown tables run 44-87% full,
//! so the slot alone cost 130-250 bytes per session, plus a second allocation (with its
//! own reference counts) for the attributes.
//!
//! Readers (GET, TOUCH) take the inner *read* lock, find the node, bump its atomic access
//! time and write its attributes straight into the reply frame (`view.rs`), or copy them
//! out for the callers that keep them. Writers take the inner
//! write lock and replace the node. The handover and backup steps see an [`Entry`] through
//! [`RefMut`] (`get_mut`, `entry`): a live node is materialized as `Entry::Live` while the
//! write lock is held and written back when changed; other states are used in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use sessync_proto::{PackedAttributes, SessionId, SessionMeta};
use triomphe::ThinArc;

use super::capacity::Candidates;
use super::compact::{self, SliceWriter};
use super::{Entry, Live, Served, SESSION_OVERHEAD};

/// Inner locks per top-level shard (16 x 8 = 128 in all, DashMap's count on 2 cores).
pub(super) const INNER: usize = 8;

/// The hash of an id: ids are uniformly random and only nodes make them (tokens are
/// verified before their id is used), so the first 8 bytes are a good hash as they are.
pub(super) fn hash(id: &SessionId) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = id.0;
    u64::from_le_bytes([a, b, c, d, e, f, g, h])
}

/// The fixed part of a live session's allocation.
pub(super) struct LiveHead {
    id: SessionId,
    /// Bumped under the read lock by GET and TOUCH.
    last_access_ms: AtomicU64,
    version: u64,
    created_ms: u64,
    idle_ttl_ms: u64,
    /// The handover generation (see `Live::received`).
    received: u64,
}

/// The extras byte's flag for an absolute deadline stored after it; the low bits count
/// the backups.
const HAS_DEADLINE: u8 = 0x80;
/// At most this many backups are kept in a node's extras (`--replicas` is far smaller).
const MAX_BACKUPS: usize = (HAS_DEADLINE - 1) as usize;

/// The slice after the header starts with what only some sessions need: one byte
/// counting the backups (the low 7 bits) and flagging an absolute deadline
/// ([`HAS_DEADLINE`]); the deadline (8 bytes, only when not 0: sessions have none unless
/// CREATE or the node's configuration asks for one); each backup's address (7 bytes for
/// IPv4, 27 for IPv6); and the access time the backups last got (8 bytes, only with
/// backups). The compact attributes follow. In the slice and not in the header or behind
/// a pointer: a session with neither costs one byte for both (issue 15: the 8 bytes of a
/// deadline field are 3% of a 100-byte session).
fn put_extra(
    out: &mut SliceWriter<'_>,
    absolute_deadline_ms: u64,
    backups: &[SocketAddr],
    replicated_access_ms: u64,
) {
    let backups = &backups[..backups.len().min(MAX_BACKUPS)];
    let flag = if absolute_deadline_ms == 0 {
        0
    } else {
        HAS_DEADLINE
    };
    out.put(&[backups.len() as u8 | flag]);
    if absolute_deadline_ms != 0 {
        out.put(&absolute_deadline_ms.to_be_bytes());
    }
    for b in backups {
        match b {
            SocketAddr::V4(a) => {
                out.put(&[4]);
                out.put(&a.ip().octets());
                out.put(&a.port().to_be_bytes());
            }
            SocketAddr::V6(a) => {
                out.put(&[6]);
                out.put(&a.ip().octets());
                out.put(&a.port().to_be_bytes());
                out.put(&a.flowinfo().to_be_bytes());
                out.put(&a.scope_id().to_be_bytes());
            }
        }
    }
    if !backups.is_empty() {
        out.put(&replicated_access_ms.to_be_bytes());
    }
}

/// The bytes [`put_extra`] writes.
fn extra_len(absolute_deadline_ms: u64, backups: &[SocketAddr]) -> usize {
    let backups = &backups[..backups.len().min(MAX_BACKUPS)];
    let addrs: usize = backups.iter().map(|b| if b.is_ipv4() { 7 } else { 27 }).sum();
    let replicated = if backups.is_empty() { 0 } else { 8 };
    let deadline = if absolute_deadline_ms == 0 { 0 } else { 8 };
    1 + deadline + addrs + replicated
}

/// The absolute deadline [`put_extra`] wrote (0 for none), read in place.
fn get_deadline(slice: &[u8]) -> u64 {
    match slice.split_first() {
        Some((&flags, rest)) if flags & HAS_DEADLINE != 0 => rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes),
        _ => 0,
    }
}

/// Reads what [`put_extra`] wrote: the backups, the access time they got (if any
/// backups) and the rest of the slice (the compact attributes); the deadline is skipped
/// ([`get_deadline`] reads it). Stops at a defect.
fn get_extra(slice: &[u8]) -> (Vec<SocketAddr>, Option<u64>, &[u8]) {
    fn take<'a>(s: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (a, b) = (s.get(..n)?, s.get(n..)?);
        *s = b;
        Some(a)
    }
    fn be<const N: usize>(s: &mut &[u8]) -> Option<[u8; N]> {
        take(s, N)?.try_into().ok()
    }
    let Some((&flags, mut rest)) = slice.split_first() else {
        return (Vec::new(), None, slice);
    };
    if flags & HAS_DEADLINE != 0 {
        rest = rest.get(8..).unwrap_or_default();
    }
    let count = flags & !HAS_DEADLINE;
    if count == 0 {
        return (Vec::new(), None, rest);
    }
    let mut backups = Vec::with_capacity(usize::from(count));
    let mut read = || -> Option<SocketAddr> {
        let [tag] = be::<1>(&mut rest)?;
        Some(if tag == 4 {
            let ip = std::net::Ipv4Addr::from(be::<4>(&mut rest)?);
            SocketAddr::from((ip, u16::from_be_bytes(be::<2>(&mut rest)?)))
        } else {
            let ip = std::net::Ipv6Addr::from(be::<16>(&mut rest)?);
            let port = u16::from_be_bytes(be::<2>(&mut rest)?);
            let flow = u32::from_be_bytes(be::<4>(&mut rest)?);
            let scope = u32::from_be_bytes(be::<4>(&mut rest)?);
            SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, flow, scope))
        })
    };
    for _ in 0..count {
        match read() {
            Some(a) => backups.push(a),
            None => return (backups, None, &[]),
        }
    }
    let replicated = be::<8>(&mut rest).map(u64::from_be_bytes);
    (backups, replicated, rest)
}

/// Writes a node's slice in place through `write`, if this is the node's only handle
/// (it always is: the table never shares one); `false` when it could not.
fn write_in_place(node: &mut ThinArc<LiveHead, u8>, write: impl FnOnce(&mut [u8])) -> bool {
    node.with_arc_mut(|arc| triomphe::Arc::get_mut(arc).map(|hs| write(hs.slice_mut())))
        .is_some()
}

/// A live session: one allocation (reference count, [`LiveHead`], length, extras,
/// compact attributes) behind an 8-byte pointer. Never shared: the table holds the only handle.
pub(super) struct LiveNode(ThinArc<LiveHead, u8>);

impl LiveNode {
    /// A node from its parts.
    pub(super) fn new(
        id: SessionId,
        meta: &SessionMeta,
        received: u64,
        attrs: &PackedAttributes,
        backups: &[SocketAddr],
        replicated_access_ms: u64,
    ) -> LiveNode {
        let len = extra_len(meta.absolute_deadline_ms, backups) + compact::compact_len(attrs);
        let head = || LiveHead {
            id,
            last_access_ms: AtomicU64::new(meta.last_access_ms),
            version: meta.version,
            created_ms: meta.created_ms,
            idle_ttl_ms: meta.idle_ttl_ms,
            received,
        };
        // One allocation of the exact size, written in place (issue 15: a buffer built
        // aside and copied in was a second large allocation and copy per install and SET).
        let mut node = ThinArc::from_header_and_iter(head(), std::iter::repeat_n(0u8, len));
        let write = |slice: &mut [u8]| {
            let mut w = SliceWriter::new(slice);
            put_extra(&mut w, meta.absolute_deadline_ms, backups, replicated_access_ms);
            compact::compact_to(&mut w, attrs);
            debug_assert_eq!(w.written(), len, "a live node's slice is sized exactly");
        };
        // The node was just made, so the handle is unique and this always writes.
        if !write_in_place(&mut node, write) {
            let mut slice = vec![0u8; len];
            write(&mut slice);
            node = ThinArc::from_header_and_slice(head(), &slice);
        }
        LiveNode(node)
    }

    /// The node of a materialized live session.
    pub(super) fn from_live(id: SessionId, l: &Live) -> LiveNode {
        LiveNode::new(
            id,
            &l.meta(),
            l.received,
            &l.attrs,
            &l.backups,
            l.meta.last_access_ms,
        )
    }

    /// The same session with other attributes and version (a SET).
    pub(super) fn with_attrs(&self, attrs: &PackedAttributes, version: u64, now: u64) -> LiveNode {
        let h = self.head();
        let meta = SessionMeta {
            version,
            last_access_ms: self.last_access().max(now),
            ..self.meta()
        };
        let (backups, replicated, _) = get_extra(&self.0.slice);
        LiveNode::new(
            h.id,
            &meta,
            h.received,
            attrs,
            &backups,
            replicated.unwrap_or(meta.last_access_ms),
        )
    }

    fn head(&self) -> &LiveHead {
        &self.0.header.header
    }

    /// The session id.
    pub(super) fn id(&self) -> &SessionId {
        &self.head().id
    }

    /// A copy of the packed attributes (stored in the compact form, `compact.rs`).
    pub(super) fn packed(&self) -> PackedAttributes {
        compact::expand(self.compact_attrs())
    }

    /// The compact attributes: the slice after the extras.
    fn compact_attrs(&self) -> &[u8] {
        match self.0.slice.split_first() {
            // No backups and no deadline (the common case): one byte to skip.
            Some((0, rest)) => rest,
            _ => get_extra(&self.0.slice).2,
        }
    }

    /// Appends the attributes (all, or those named) in wire form, straight from the
    /// compact bytes (`compact::write_wire`).
    pub(super) fn write_attrs(&self, names: &[String], out: &mut bytes::BytesMut) -> u16 {
        compact::write_wire(self.compact_attrs(), names, out)
    }

    /// The session's handover generation here (see `Live::received`).
    pub(super) fn received(&self) -> u64 {
        self.head().received
    }

    /// The length of the packed attributes (their wire form, what is charged).
    pub(super) fn packed_len(&self) -> usize {
        compact::wire_len(self.compact_attrs())
    }

    /// The live access time.
    pub(super) fn last_access(&self) -> u64 {
        self.head().last_access_ms.load(Ordering::Relaxed)
    }

    /// Records an access (GET, TOUCH, SET): never moves the time back.
    pub(super) fn access(&self, now: u64) {
        self.head().last_access_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// The meta with the live access time.
    pub(super) fn meta(&self) -> SessionMeta {
        let h = self.head();
        SessionMeta {
            version: h.version,
            created_ms: h.created_ms,
            last_access_ms: self.last_access(),
            idle_ttl_ms: h.idle_ttl_ms,
            absolute_deadline_ms: get_deadline(&self.0.slice),
        }
    }

    /// The current version.
    pub(super) fn version(&self) -> u64 {
        self.head().version
    }

    /// When the session expires if nothing touches it again.
    pub(super) fn expires_at_ms(&self) -> u64 {
        self.meta().expires_at_ms()
    }

    /// Whether it has expired at `now`.
    pub(super) fn expired(&self, now: u64) -> bool {
        now >= self.expires_at_ms()
    }

    /// What it is charged against the memory limit (as `Live::charge`).
    pub(super) fn charge(&self) -> usize {
        SESSION_OVERHEAD + self.packed_len()
    }

    /// Records that the current access time is being sent to the backups (a snapshot for
    /// REPLICATE), in place: only the 8 bytes of the extras change, so the node is not
    /// rebuilt. Returns the time it replaces, to be put back if the round turns out to
    /// renew no read lease ([`LiveNode::replicated_back`]). Without backups there is
    /// nothing to record (nothing lags): `None`.
    pub(super) fn note_replicated(&mut self) -> Option<u64> {
        let before = self.replicated()?;
        self.set_replicated(self.last_access());
        Some(before)
    }

    /// Puts back the access time the backups had before a round (`before`) if the one
    /// that round recorded (`sent`) is still there.
    pub(super) fn replicated_back(&mut self, sent: u64, before: u64) {
        if self.replicated() == Some(sent) {
            self.set_replicated(before);
        }
    }

    /// The access time the backups last got (`None` without backups).
    fn replicated(&self) -> Option<u64> {
        let (backups, replicated, _) = get_extra(&self.0.slice);
        replicated.filter(|_| !backups.is_empty())
    }

    /// Writes the access time the backups got, in place when it can (it always can: the
    /// table holds the only handle).
    fn set_replicated(&mut self, at: u64) {
        let (backups, replicated, rest) = get_extra(&self.0.slice);
        if backups.is_empty() || replicated.is_none() {
            return;
        }
        let field = self.0.slice.len() - rest.len() - 8;
        let written = write_in_place(&mut self.0, |slice| {
            if let Some(bytes) = slice.get_mut(field..field + 8) {
                bytes.copy_from_slice(&at.to_be_bytes());
            }
        });
        if !written {
            let h = self.head();
            let (id, meta, received) = (h.id, self.meta(), h.received);
            *self = LiveNode::new(id, &meta, received, &self.packed(), &backups, at);
        }
    }

    /// The nodes holding backup copies (empty without replication; no allocation then).
    pub(super) fn backup_addrs(&self) -> Vec<SocketAddr> {
        match self.0.slice.first() {
            Some(&flags) if flags & !HAS_DEADLINE != 0 => get_extra(&self.0.slice).0,
            _ => Vec::new(),
        }
    }

    /// The backups, and the access time they last got. Without backups nothing lags:
    /// that time is the live one.
    fn backups(&self) -> (Box<[SocketAddr]>, u64) {
        let (backups, replicated, _) = get_extra(&self.0.slice);
        (backups.into(), replicated.unwrap_or_else(|| self.last_access()))
    }

    /// A snapshot for a reply, with these attributes.
    pub(super) fn served(&self, attrs: PackedAttributes) -> Served {
        let (backups, replicated_access_ms) = self.backups();
        Served {
            meta: self.meta(),
            attrs,
            generation: self.head().received,
            backups,
            replicated_access_ms,
        }
    }

    /// The session as the handover and backup code sees it (copies the attributes).
    pub(super) fn to_live(&self) -> Live {
        let (backups, replicated) = self.backups();
        let meta = SessionMeta {
            last_access_ms: replicated,
            ..self.meta()
        };
        Live {
            meta,
            received: self.head().received,
            last_access_ms: AtomicU64::new(self.last_access()),
            attrs: self.packed(),
            backups,
        }
    }
}

/// Any entry that is not live, with its id.
pub(super) struct Other {
    id: SessionId,
    entry: Entry,
}

/// One inner lock's tables.
#[derive(Default)]
pub(super) struct Inner {
    /// Live sessions.
    pub(super) live: HashTable<LiveNode>,
    /// Everything else (handovers, backup copies, tombstones).
    pub(super) other: HashTable<Box<Other>>,
}

impl Inner {
    /// The live session `id`, if that is what is held.
    pub(super) fn find_live(&self, id: &SessionId) -> Option<&LiveNode> {
        self.live.find(hash(id), |n| n.id() == id)
    }

    /// The live session `id`, to be replaced.
    pub(super) fn find_live_mut(&mut self, id: &SessionId) -> Option<&mut LiveNode> {
        self.live.find_mut(hash(id), |n| n.id() == id)
    }

    /// The non-live entry `id`, if that is what is held.
    pub(super) fn find_other(&self, id: &SessionId) -> Option<&Entry> {
        self.other.find(hash(id), |o| o.id == *id).map(|o| &o.entry)
    }

    /// Whether anything is held under `id`.
    pub(super) fn contains(&self, id: &SessionId) -> bool {
        self.find_live(id).is_some() || self.find_other(id).is_some()
    }

    /// Removes the live session `id`.
    pub(super) fn remove_live(&mut self, id: &SessionId) -> Option<LiveNode> {
        let e = self.live.find_entry(hash(id), |n| n.id() == id).ok()?;
        Some(e.remove().0)
    }

    /// Adds a live node (nothing may be held under its id).
    pub(super) fn insert_live(&mut self, node: LiveNode) {
        self.live.insert_unique(hash(node.id()), node, |n| hash(n.id()));
    }

    /// Adds `entry` under `id` in the table its state belongs to (nothing may be held
    /// under `id`).
    pub(super) fn insert(&mut self, id: SessionId, entry: Entry) {
        match entry {
            Entry::Live(l) => self.insert_live(LiveNode::from_live(id, &l)),
            entry => {
                self.other
                    .insert_unique(hash(&id), Box::new(Other { id, entry }), |o| hash(&o.id));
            }
        }
    }

    /// The live sessions held.
    pub(super) fn iter_live(&self) -> impl Iterator<Item = &LiveNode> {
        self.live.iter()
    }

    /// The other entries held, with their ids.
    pub(super) fn iter_other(&self) -> impl Iterator<Item = (&SessionId, &Entry)> {
        self.other.iter().map(|o| (&o.id, &o.entry))
    }

    /// Visits every entry; `keep_live` / `keep_other` return whether it stays.
    pub(super) fn retain(
        &mut self,
        mut keep_live: impl FnMut(&LiveNode) -> bool,
        mut keep_other: impl FnMut(&Entry) -> bool,
    ) {
        self.live.retain(|n| keep_live(n));
        self.other.retain(|o| keep_other(&o.entry));
    }
}

/// One top-level shard's storage. See the module docs.
pub(super) struct ShardMap {
    inner: Box<[RwLock<Inner>]>,
    /// Eviction candidates (see `capacity.rs`).
    pub(super) candidates: Candidates,
}

impl Default for ShardMap {
    fn default() -> ShardMap {
        ShardMap {
            inner: (0..INNER).map(|_| RwLock::default()).collect(),
            candidates: Candidates::default(),
        }
    }
}

/// Where a [`RefMut`]'s entry is kept while it is borrowed.
enum Held {
    /// A live node, materialized (written back only when changed).
    Live { entry: Entry, changed: bool },
    /// A non-live entry, taken out of its table (put back on drop).
    Other(Box<Other>),
    /// Put back already.
    Done,
}

/// Exclusive access to one entry (the inner write lock is held). A live session is
/// handed out as `Entry::Live`; whatever the entry becomes is stored back in the right
/// table when this is dropped.
pub(super) struct RefMut<'a> {
    guard: RwLockWriteGuard<'a, Inner>,
    id: SessionId,
    held: Held,
    candidates: &'a Candidates,
}

/// What a [`RefMut`] with nothing held shows (never seen: `Done` is set on drop only).
static NOTHING: Entry = Entry::Destroyed { until_ms: 0 };

impl RefMut<'_> {
    /// The entry.
    pub(super) fn value(&self) -> &Entry {
        match &self.held {
            Held::Live { entry, .. } => entry,
            Held::Other(o) => &o.entry,
            Held::Done => &NOTHING,
        }
    }

    /// The entry, to change.
    pub(super) fn value_mut(&mut self) -> &mut Entry {
        if matches!(self.held, Held::Done) {
            self.held = Held::Live {
                entry: Entry::Destroyed { until_ms: 0 },
                changed: false,
            };
        }
        match &mut self.held {
            Held::Live { entry, changed } => {
                *changed = true;
                entry
            }
            Held::Other(o) => &mut o.entry,
            Held::Done => unreachable_done(),
        }
    }

    /// DashMap's name for [`RefMut::value`] on an occupied entry.
    pub(super) fn get(&self) -> &Entry {
        self.value()
    }

    /// DashMap's name for [`RefMut::value_mut`] on an occupied entry.
    pub(super) fn get_mut(&mut self) -> &mut Entry {
        self.value_mut()
    }
}

/// The `Done` arm of [`RefMut::value_mut`], which is replaced just before the match.
#[allow(clippy::panic)]
fn unreachable_done() -> ! {
    panic!("RefMut used after it was put back")
}

impl Drop for RefMut<'_> {
    fn drop(&mut self) {
        let id = self.id;
        let mut became_live = None;
        match std::mem::replace(&mut self.held, Held::Done) {
            Held::Done | Held::Live { changed: false, .. } => {}
            Held::Live {
                entry: Entry::Live(l),
                changed: true,
            } => {
                let node = LiveNode::from_live(id, &l);
                became_live = Some(node.expires_at_ms());
                match self.guard.find_live_mut(&id) {
                    Some(slot) => *slot = node,
                    None => self.guard.insert_live(node),
                }
            }
            Held::Live { entry, changed: true } => {
                self.guard.remove_live(&id);
                self.guard.insert(id, entry);
            }
            Held::Other(o) => match &o.entry {
                Entry::Live(l) => {
                    let node = LiveNode::from_live(id, l);
                    became_live = Some(node.expires_at_ms());
                    self.guard.insert_live(node);
                }
                _ => {
                    self.guard.other.insert_unique(hash(&id), o, |o| hash(&o.id));
                }
            },
        }
        if let Some(deadline) = became_live {
            self.candidates.note(id, deadline);
        }
    }
}

/// A vacant entry (the inner write lock is held).
pub(super) struct VacantEntry<'a> {
    guard: RwLockWriteGuard<'a, Inner>,
    id: SessionId,
    candidates: &'a Candidates,
}

impl VacantEntry<'_> {
    /// Stores `entry`.
    pub(super) fn insert(mut self, entry: Entry) {
        let deadline = match &entry {
            Entry::Live(l) => Some(l.meta().expires_at_ms()),
            _ => None,
        };
        self.guard.insert(self.id, entry);
        if let Some(d) = deadline {
            self.candidates.note(self.id, d);
        }
    }
}

/// An entry, present or not, under the inner write lock (DashMap's `Entry` shape).
pub(super) enum MapEntry<'a> {
    /// Nothing held under the id.
    Vacant(VacantEntry<'a>),
    /// Something held.
    Occupied(RefMut<'a>),
}

/// Shared access to one entry (the inner read lock is held); a live session is
/// materialized (its attributes copied).
pub(super) struct Ref<'a> {
    guard: RwLockReadGuard<'a, Inner>,
    id: SessionId,
    live: Option<Entry>,
}

impl Ref<'_> {
    /// The entry.
    pub(super) fn value(&self) -> &Entry {
        match &self.live {
            Some(e) => e,
            None => self.guard.find_other(&self.id).unwrap_or(&NOTHING),
        }
    }
}

impl ShardMap {
    fn lock(&self, id: &SessionId) -> &RwLock<Inner> {
        // Byte 14: independent of the top-level shard's byte (15) and the hash (0..8).
        &self.inner[usize::from(id.0[14]) & (INNER - 1)]
    }

    /// The inner read lock that `id` falls under.
    pub(super) fn read(&self, id: &SessionId) -> RwLockReadGuard<'_, Inner> {
        self.lock(id).read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The inner write lock that `id` falls under.
    pub(super) fn write(&self, id: &SessionId) -> RwLockWriteGuard<'_, Inner> {
        self.lock(id).write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The inner locks, in order (for the sweeper and eviction scans).
    pub(super) fn inners(&self) -> impl Iterator<Item = &RwLock<Inner>> {
        self.inner.iter()
    }

    /// Shared access to the entry under `id`, if any.
    pub(super) fn get(&self, id: &SessionId) -> Option<Ref<'_>> {
        let guard = self.read(id);
        let live = guard.find_live(id).map(|n| Entry::Live(n.to_live()));
        if live.is_none() && guard.find_other(id).is_none() {
            return None;
        }
        Some(Ref { guard, id: *id, live })
    }

    /// Exclusive access to the entry under `id`, if any.
    pub(super) fn get_mut(&self, id: &SessionId) -> Option<RefMut<'_>> {
        match self.entry(*id) {
            MapEntry::Occupied(r) => Some(r),
            MapEntry::Vacant(_) => None,
        }
    }

    /// The entry under `id`, present or not, under the write lock.
    pub(super) fn entry(&self, id: SessionId) -> MapEntry<'_> {
        let mut guard = self.write(&id);
        let candidates = &self.candidates;
        if let Some(n) = guard.find_live(&id) {
            let entry = Entry::Live(n.to_live());
            return MapEntry::Occupied(RefMut {
                guard,
                id,
                held: Held::Live {
                    entry,
                    changed: false,
                },
                candidates,
            });
        }
        match guard.other.find_entry(hash(&id), |o| o.id == id) {
            Ok(e) => {
                let (o, _) = e.remove();
                MapEntry::Occupied(RefMut {
                    guard,
                    id,
                    held: Held::Other(o),
                    candidates,
                })
            }
            Err(_) => MapEntry::Vacant(VacantEntry {
                guard,
                id,
                candidates,
            }),
        }
    }
}
