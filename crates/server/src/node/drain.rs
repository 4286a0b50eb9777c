//! Graceful leave (protocol.md 17): a leaving node hands every session it owns to other
//! members by *pull* (TAKE: the member COPYs each one through the ordinary handover, so
//! the fencing rules of sections 11 and 12 apply unchanged), and asks the owners of the
//! backup copies it holds to replace it (RELEASE: the owner places a new copy, then DROPs
//! this one, so a holder is never replaced silently). Also the member's side of both, and
//! the state and counters the drain, the lookup and the repair share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use sessync_proto::Role;

use super::*;
use tokio::sync::watch;

/// Session ids per TAKE or RELEASE message.
const BATCH: usize = 512;
/// Sessions a member fetches at once for TAKEs, and holders it replaces at once for
/// RELEASEs (each a peer round trip or two).
const PARALLEL: usize = 32;
/// How often the leaving node looks at what it still holds.
const DRAIN_TICK: Duration = Duration::from_millis(50);
/// Sessions offered to one member (TAKE) and not yet pulled, at most: a few batches, so
/// that the member always has work and nothing waits long enough to be offered again.
const OUTSTANDING: usize = 4 * BATCH;
/// A member that refused or did not answer a TAKE is not sent another for this long.
const BAD_TARGET_PAUSE: Duration = Duration::from_secs(2);
/// A drain with no member to hand anything to gives up after this long.
const NO_MEMBER_GRACE: Duration = Duration::from_secs(2);
/// The default bound on a drain (fits Kubernetes' default 30 s grace period).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How a drain ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions still owned here (or whose handover was not acknowledged) at the end.
    pub sessions_left: usize,
    /// Backup copies still held here at the end (their owners did not replace this node).
    pub backups_left: usize,
    /// Requests' fetches still under way at the end: each may yet bring its session here,
    /// after the node stopped (the giver then keeps a handover to a stopped node, until
    /// it takes its copy back, protocol.md 12.3).
    pub fetches_left: usize,
    /// Sessions handed over (acknowledged handovers during the drain).
    pub handed_over: u64,
    /// Backup copies whose owner replaced this node.
    pub released: u64,
    /// How long the drain took.
    pub elapsed: Duration,
    /// Whether it ended because of `--drain-timeout` (or because no member could take
    /// anything).
    pub timed_out: bool,
}

impl DrainReport {
    /// Whether everything was handed over.
    pub fn complete(&self) -> bool {
        self.sessions_left == 0 && self.backups_left == 0 && self.fetches_left == 0
    }
}

/// A peer's process as last seen (EPOCH): see `repair.rs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    /// Its node id (a new one: it restarted, empty).
    pub(super) node_id: [u8; 16],
    /// When it last answered.
    pub(super) at: Instant,
}

/// State of leaving, lookups and repair, kept in [`Node`].
pub(crate) struct Elastic {
    /// A drain was started (once per process).
    started: AtomicBool,
    /// This node is leaving: it takes no new backup copies and no TAKE.
    pub(super) draining: AtomicBool,
    /// The last phase of a drain: requests that would bring a session here (or create one)
    /// are refused with SHUTTING_DOWN, so that what was handed over stays handed over.
    pub(super) closing: AtomicBool,
    /// `--drain-timeout`, in ms.
    timeout_ms: AtomicU64,
    /// The drain's outcome, once it ended.
    outcome: watch::Sender<Option<DrainReport>>,
    /// Sessions, backup copies and fetches under way left at the last look (0 when not
    /// draining).
    left: AtomicU64,
    /// Sessions this node took over for a leaving member (TAKE).
    pub(super) taken: AtomicU64,
    /// Holders replaced here for a leaving member (RELEASE).
    pub(super) holders_replaced: AtomicU64,
    /// Lookups among members (token owner and backups did not know the session).
    pub(super) lookups: AtomicU64,
    /// Lookups that found the session.
    pub(super) lookups_found: AtomicU64,
    /// At most this many lookups at once (each asks every member).
    pub(super) lookup_slots: tokio::sync::Semaphore,
    /// Sessions given new backup copies by the repair.
    pub(super) repaired: AtomicU64,
    /// Sessions with fewer live backup copies than `replicas`, at the last repair scan.
    pub(super) under_replicated: AtomicU64,
    /// Since when (wall clock ms) some session has been under-replicated (0: none is).
    pub(super) under_replicated_since_ms: AtomicU64,
    /// Every peer's process as last seen.
    pub(super) seen: Mutex<HashMap<SocketAddr, Seen>>,
    /// Members that announced they are leaving (TAKE or RELEASE from them), with the node
    /// id of the leaving process: not a drain target, a backup candidate or a lookup
    /// target until another process answers at that address.
    pub(super) leaving: Mutex<HashMap<SocketAddr, [u8; 16]>>,
}

impl Default for Elastic {
    fn default() -> Self {
        Elastic {
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            timeout_ms: AtomicU64::new(DEFAULT_DRAIN_TIMEOUT.as_millis() as u64),
            outcome: watch::channel(None).0,
            left: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            holders_replaced: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            lookups_found: AtomicU64::new(0),
            lookup_slots: tokio::sync::Semaphore::new(64),
            repaired: AtomicU64::new(0),
            under_replicated: AtomicU64::new(0),
            under_replicated_since_ms: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            leaving: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `members` in rendezvous order of `id` (highest hash first): every node ranks them the
/// same way, and sessions spread evenly.
pub(super) fn ranked(id: &SessionId, members: &[SocketAddr]) -> Vec<SocketAddr> {
    use std::hash::{Hash, Hasher};
    let mut order: Vec<(u64, SocketAddr)> = members
        .iter()
        .map(|p| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.0.hash(&mut h);
            p.hash(&mut h);
            (h.finish(), *p)
        })
        .collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.0));
    order.into_iter().map(|(_, a)| a).collect()
}

impl Node {
    /// The members this node may hand sessions to, place copies on and ask in a lookup:
    /// the cluster's peers whose links look reachable, without this node and without
    /// members that announced they are leaving. The one place that decides it: the
    /// membership view replaces it when it lands.
    pub(crate) fn live_members(&self) -> Vec<SocketAddr> {
        let leaving = lock(&self.elastic.leaving);
        self.cluster_peers()
            .iter()
            .copied()
            .filter(|p| *p != self.advertise && !leaving.contains_key(p) && self.peers.reachable(*p))
            .collect()
    }

    /// Whether `peer` announced that it is leaving (and no new process answers there yet):
    /// it is not counted as a backup node a write can have.
    pub(crate) fn is_leaving(&self, peer: SocketAddr) -> bool {
        lock(&self.elastic.leaving).contains_key(&peer)
    }

    /// How long this process has been running.
    pub(super) fn uptime(&self) -> Duration {
        self.stats
            .about
            .get()
            .map_or(Duration::ZERO, |a| a.started.elapsed())
    }

    /// Sets the bound on a drain (`--drain-timeout`).
    pub fn set_drain_timeout(&self, timeout: Duration) {
        self.elastic.timeout_ms.store(
            timeout.as_millis().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Starts the drain (once; later calls join the one under way) and waits for it to
    /// end. The node keeps serving meanwhile; stop it afterwards.
    pub async fn drain(self: &Arc<Self>) -> DrainReport {
        if !self.elastic.started.swap(true, Ordering::SeqCst) {
            let node = self.clone();
            // Not tracked by the shutdown tracker: its starter waits for its report
            // (`drain_ended`), and `sessync node` shuts down only after that (or on a
            // second signal, when stopping at once is what was asked).
            crate::clock::spawn_keeping_clock(async move {
                let report = node.run_drain().await;
                node.elastic.outcome.send_replace(Some(report));
            });
        }
        self.drain_ended().await
    }

    /// Waits until a drain (started by [`Node::drain`] or a DRAIN request) has ended.
    pub async fn drain_ended(&self) -> DrainReport {
        let mut rx = self.elastic.outcome.subscribe();
        let report = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match report {
            Some(r) => r,
            // The sender lives in the node, which outlives this call.
            None => std::future::pending().await,
        }
    }

    /// The drain's counters for STATS.
    pub(super) fn elastic_stats(&self) -> Vec<(String, u64)> {
        let e = &self.elastic;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let since = g(&e.under_replicated_since_ms);
        vec![
            ("draining".into(), u64::from(e.draining.load(Ordering::Relaxed))),
            ("drain_left".into(), g(&e.left)),
            ("drain_taken".into(), g(&e.taken)),
            ("drain_holders_replaced".into(), g(&e.holders_replaced)),
            ("lookups".into(), g(&e.lookups)),
            ("lookups_found".into(), g(&e.lookups_found)),
            ("repaired".into(), g(&e.repaired)),
            ("under_replicated".into(), g(&e.under_replicated)),
            (
                "under_replicated_for_ms".into(),
                if since == 0 {
                    0
                } else {
                    now_ms().saturating_sub(since)
                },
            ),
        ]
    }

    /// The drain itself: hand over, look again, until nothing is left or time is up.
    async fn run_drain(self: &Arc<Self>) -> DrainReport {
        // The members learn by gossip that this node is leaving, so they stop choosing it
        // as a backup node.
        if let Some(m) = self.membership() {
            if let Err(e) = m.announce_leaving().await {
                tracing::warn!("drain: could not announce the leave to the members: {e}");
            }
        }
        let started = Instant::now();
        let timeout = Duration::from_millis(self.elastic.timeout_ms.load(Ordering::Relaxed));
        let deadline = started + timeout;
        self.elastic.draining.store(true, Ordering::SeqCst);
        let at_start = self.table.stats();
        let served_at_start = self.stats.copies_served.load(Ordering::Relaxed);
        tracing::info!(
            sessions = at_start.sessions,
            backups = at_start.backups,
            ?timeout,
            "draining: handing every session and backup copy to other members"
        );
        // Per session: when it was last offered, and how often (the n-th offer goes to the
        // n-th member in its rendezvous order).
        let mut offered: HashMap<SessionId, (Instant, usize, Option<SocketAddr>)> = HashMap::new();
        let mut released: HashMap<SessionId, (Instant, usize)> = HashMap::new();
        let mut bad: HashMap<SocketAddr, Instant> = HashMap::new();
        let resend = self.config.peer_timeout * 3;
        let mut last_log = Instant::now();
        let mut released_count = 0u64;
        let mut timed_out = false;
        let mut alone_since: Option<Instant> = None;
        let mut first_pass: std::collections::HashSet<SessionId> =
            self.table.owned_ids(now_ms(), usize::MAX).into_iter().collect();
        let (owned_left, backups_left, fetches_left) = loop {
            let now = Instant::now();
            let owned: std::collections::HashSet<SessionId> =
                self.table.owned_ids(now_ms(), usize::MAX).into_iter().collect();
            let backups = self.table.backups_by_owner(now_ms());
            let held: usize = backups.values().map(Vec::len).sum();
            // Handovers not yet acknowledged count as live in the table's counter. So
            // does a request's fetch under way: it began before the door closed and may
            // still bring its session here (a giver that hands a session to a node that
            // has stopped keeps a handover nobody takes; seen in tests/elastic.rs
            // `scaling_3_to_5_to_2_by_a_dns_name_loses_nothing`).
            let pending = self.table.stats().sessions;
            let fetching = self.fetches_under_way();
            self.elastic
                .left
                .store((pending + held + fetching) as u64, Ordering::Relaxed);
            if pending == 0 && held == 0 && fetching == 0 {
                // Once more after closing the door: a request let in just before it may
                // have brought a session here.
                if self.elastic.closing.swap(true, Ordering::SeqCst) {
                    break (0, 0, 0);
                }
                tracing::info!(
                    "drain: everything handed over; refusing requests that would bring sessions back"
                );
                tokio::time::sleep(DRAIN_TICK * 2).await;
                continue;
            }
            if now >= deadline {
                timed_out = true;
                break (pending, held, fetching);
            }
            // The first phase ends when every session owned at the start has been handed
            // over once (or at half the timeout): until then requests that need a session
            // from elsewhere still bring it here (and it is handed on again); from then on
            // they are refused, or requests through this node would keep pulling sessions
            // here and the drain would never end.
            first_pass.retain(|id| owned.contains(id));
            let half = now.duration_since(started) >= timeout / 2;
            if (first_pass.is_empty() || half) && !self.elastic.closing.swap(true, Ordering::SeqCst) {
                tracing::info!(
                    left = pending + held,
                    "drain: every session handed over once; refusing requests that would bring sessions here"
                );
            }
            if now.duration_since(last_log) >= Duration::from_secs(1) {
                last_log = now;
                tracing::info!(sessions_left = pending, backups_left = held, fetches_left = fetching, elapsed = ?now.duration_since(started), "drain: progress");
            }
            bad.retain(|_, until| *until > now);
            let members: Vec<SocketAddr> = self
                .live_members()
                .into_iter()
                .filter(|m| !bad.contains_key(m))
                .collect();
            if members.is_empty() {
                // No member to hand anything to (a cluster of one, or every other member
                // gone or leaving too): waiting longer would only delay the stop.
                let since = *alone_since.get_or_insert(now);
                let alone = self.cluster_peers().iter().all(|p| *p == self.advertise);
                if alone || now.duration_since(since) >= NO_MEMBER_GRACE {
                    tracing::warn!("drain: no live member to hand sessions to");
                    timed_out = true;
                    break (pending, held, fetching);
                }
                tokio::time::sleep(DRAIN_TICK * 4).await;
                continue;
            }
            alone_since = None;
            // Sessions: TAKE, grouped by target, at most OUTSTANDING per member offered and
            // not yet gone from here: a member pulls them PARALLEL at a time per TAKE, and
            // offering a whole table at once left most of it unpulled when the resend time
            // came, so it was offered again to the next member, which then pulled each one
            // from the first (100 000 sessions took over 20 s; see BENCHMARKS.md).
            let mut outstanding: HashMap<SocketAddr, usize> = HashMap::new();
            for id in &owned {
                if let Some((at, n, Some(t))) = offered.get(id) {
                    if *n > 0 && now.duration_since(*at) < resend {
                        *outstanding.entry(*t).or_default() += 1;
                    }
                }
            }
            let mut by_target: HashMap<SocketAddr, Vec<SessionId>> = HashMap::new();
            let mut full = members
                .iter()
                .filter(|m| outstanding.get(m).copied().unwrap_or(0) >= OUTSTANDING)
                .count();
            for id in owned {
                if full >= members.len() {
                    break;
                }
                let e = offered.entry(id).or_insert((now, 0, None));
                if e.1 > 0 && now.duration_since(e.0) < resend {
                    continue;
                }
                let order = ranked(&id, &members);
                let target = order[e.1 % order.len()];
                let n = outstanding.entry(target).or_default();
                if *n >= OUTSTANDING {
                    continue;
                }
                *n += 1;
                if *n == OUTSTANDING {
                    full += 1;
                }
                *e = (now, e.1 + 1, Some(target));
                by_target.entry(target).or_default().push(id);
            }
            let sends = by_target.iter().flat_map(|(target, ids)| {
                ids.chunks(BATCH).map(move |chunk| {
                    let msg = PeerMessage::Take { ids: chunk.to_vec() };
                    async move {
                        let r = self
                            .peers
                            .request(*target, msg, Instant::now() + self.config.peer_timeout)
                            .await;
                        (*target, chunk, r)
                    }
                })
            });
            for (target, chunk, reply) in futures_util::future::join_all(sends).await {
                if !matches!(reply, Ok(PeerMessage::Ok)) {
                    tracing::info!(%target, sessions = chunk.len(), "drain: a member did not accept TAKE ({reply:?}); offering them to the next");
                    let pause = match &reply {
                        // It is leaving too: not a target for the rest of this drain.
                        Ok(PeerMessage::Error(e)) if e.code == ErrorCode::ShuttingDown => timeout,
                        _ => BAD_TARGET_PAUSE,
                    };
                    bad.insert(target, Instant::now() + pause);
                    for id in chunk {
                        // Offered again at once, to the next member in its order.
                        if let Some(e) = offered.get_mut(id) {
                            e.0 = now - resend;
                        }
                    }
                }
            }
            // Backup copies: RELEASE, to their owners.
            if held <= 3 {
                tracing::debug!(?backups, "drain: the backup copies left");
            }
            for (owner, ids) in backups {
                let ids: Vec<SessionId> = ids
                    .into_iter()
                    .filter(|id| {
                        let e = released.entry(*id).or_insert((now, 0));
                        if e.1 > 0 && now.duration_since(e.0) < resend {
                            return false;
                        }
                        *e = (now, e.1 + 1);
                        true
                    })
                    .collect();
                for chunk in ids.chunks(BATCH) {
                    released_count += self.release(owner, chunk).await;
                }
            }
            tokio::time::sleep(DRAIN_TICK).await;
        };
        let report = DrainReport {
            sessions_left: owned_left,
            backups_left,
            fetches_left,
            handed_over: self
                .stats
                .copies_served
                .load(Ordering::Relaxed)
                .saturating_sub(served_at_start),
            released: released_count,
            elapsed: started.elapsed(),
            timed_out,
        };
        self.elastic.left.store(
            (owned_left + backups_left + fetches_left) as u64,
            Ordering::Relaxed,
        );
        if report.complete() {
            tracing::info!(handed_over = report.handed_over, elapsed = ?report.elapsed, "drain complete: every session and backup copy is with another member");
        } else {
            let sample: Vec<String> = self
                .table
                .owned_ids(now_ms(), 10)
                .iter()
                .map(|id| id.to_string())
                .collect();
            tracing::error!(
                sessions_left = owned_left,
                backups_left,
                fetches_left,
                elapsed = ?report.elapsed,
                ?sample,
                "drain incomplete: these were not handed over and are lost when this node stops (unless a backup elsewhere has them)"
            );
        }
        report
    }

    /// Asks `owner` to replace this node as the holder of `ids`' backup copies. Copies
    /// the owner has no entry for at all (it restarted since, so ours may be the only
    /// copy) are claimed here as a failover would (the owner is gone), and then handed
    /// over like any owned session. An owner that cannot be reached is probed; when it is
    /// gone, the copies are claimed the same way. Returns how many the owner took on.
    async fn release(self: &Arc<Self>, owner: SocketAddr, ids: &[SessionId]) -> u64 {
        let reply = self
            .peers
            .request(
                owner,
                PeerMessage::Release { ids: ids.to_vec() },
                Instant::now() + self.config.peer_timeout,
            )
            .await;
        let orphans: Vec<SessionId> = match reply {
            Ok(PeerMessage::Ids { ids: absent }) => absent.into_iter().filter(|a| ids.contains(a)).collect(),
            other => {
                tracing::info!(%owner, copies = ids.len(), "drain: owner did not take RELEASE: {other:?}");
                if self.alive(owner).await {
                    return 0;
                }
                ids.to_vec()
            }
        };
        let taken = (ids.len() - orphans.len()) as u64;
        if !orphans.is_empty() {
            tracing::info!(%owner, copies = orphans.len(), "drain: the owner of these backup copies is gone; taking them over to hand them on");
            futures_util::stream::iter(orphans)
                .for_each_concurrent(PARALLEL, |id| async move {
                    let _ = self.failover(id, owner, &[]).await;
                })
                .await;
        }
        taken
    }

    /// Whether a REPLICATE from `owner` must be refused because this node is leaving: it
    /// takes no copy of a session it holds none of (the owner then places it elsewhere),
    /// but keeps confirming the copies it holds until their owner has replaced it
    /// (RELEASE), from whichever owner: a new owner places its copy on every holder of
    /// the previous one (protocol.md 12.4), and a refused holder would keep the previous
    /// owner's copy, which that owner can no longer release.
    pub(crate) fn refuses_new_copy(&self, _owner: &sessync_proto::PeerIdentity, id: &SessionId) -> bool {
        self.elastic.draining.load(Ordering::Relaxed) && !self.table.holds_backup(id)
    }

    /// Remembers that `peer` announced it is leaving.
    fn note_leaving(&self, peer: &sessync_proto::PeerIdentity) {
        lock(&self.elastic.leaving).insert(peer.advertised, peer.node_id);
        self.release_held_acks_to(peer.advertised);
    }

    /// Answers the peer requests of leaving, lookup and repair (TAKE, RELEASE, LOCATE,
    /// EPOCH) and refuses a new backup copy while leaving; the work TAKE and RELEASE ask
    /// for runs in the background, bounded.
    pub(crate) fn elastic_request(
        self: &Arc<Self>,
        peer: &sessync_proto::PeerIdentity,
        msg: PeerMessage,
    ) -> PeerMessage {
        match msg {
            PeerMessage::Take { ids } => {
                self.note_leaving(peer);
                if self.elastic.draining.load(Ordering::Relaxed) {
                    return PeerMessage::Error(ErrorReply::new(
                        ErrorCode::ShuttingDown,
                        "this node is leaving too; it takes no sessions",
                    ));
                }
                let node = self.clone();
                let from = peer.advertised;
                // Not tracked: each take is an ordinary handover bounded by the peer
                // timeout, and one cut short by a shutdown leaves the session with the
                // leaver (it hands it on again, or a lookup finds it).
                crate::clock::spawn_keeping_clock(async move {
                    futures_util::stream::iter(ids)
                        .for_each_concurrent(PARALLEL, |id| {
                            let node = &node;
                            async move {
                                // The ordinary handover (COPY, COPY_DATA, protect, install,
                                // COPY_ACK): nothing here bypasses its rules.
                                let (r, _) = node.copy_chain(id, from, false, &[]).await;
                                if r == Ok(Fetched::Installed) {
                                    node.elastic.taken.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        })
                        .await;
                });
                PeerMessage::Ok
            }
            PeerMessage::Release { ids } => {
                self.note_leaving(peer);
                let absent: Vec<SessionId> = ids.iter().copied().filter(|id| !self.table.knows(id)).collect();
                let node = self.clone();
                let leaver = peer.advertised;
                // Not tracked: each replacement is a REPLICATE round and a DROP bounded
                // by the peer timeout; one cut short leaves the leaver a holder (12.2).
                crate::clock::spawn_keeping_clock(async move {
                    futures_util::stream::iter(ids)
                        .for_each_concurrent(PARALLEL, |id| {
                            let node = &node;
                            async move { node.replace_holder(id, leaver).await }
                        })
                        .await;
                });
                PeerMessage::Ids { ids: absent }
            }
            PeerMessage::Locate { session_id } => match self.locate_generation(&session_id) {
                Some((role, addr, generation)) => PeerMessage::Located {
                    session_id,
                    role,
                    addr,
                    generation: Some(generation),
                },
                None => PeerMessage::NotFound { session_id },
            },
            PeerMessage::Epoch => PeerMessage::EpochIs {
                node_id: self.node_id,
                uptime_ms: self.uptime().as_millis().min(u128::from(u64::MAX)) as u64,
            },
            PeerMessage::Replicate { .. } | PeerMessage::ReplicateClaim { .. } => {
                PeerMessage::Error(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "this node is leaving the cluster; it takes no new backup copies",
                ))
            }
            _ => PeerMessage::Error(ErrorReply::new(ErrorCode::UnknownOpcode, "not a peer request")),
        }
    }

    /// What LOCATE answers for `id`: the table's entry ([`Table::locate_generation`]);
    /// but a copy handed over here and still being placed on its holders is this node's
    /// under its transfer id, when the table knows nothing newer: no entry, or a pointer
    /// from an older handover (what the giver reads as "never took it over", 12.3 step 1).
    fn locate_generation(&self, id: &SessionId) -> Option<(Role, SocketAddr, u64)> {
        let found = self.table.locate_generation(id, self.advertise, now_ms());
        let Some(transfer) = self.receiving.get(id).map(|t| *t) else {
            return found;
        };
        match found {
            None => Some((Role::Owner, self.advertise, transfer)),
            Some((Role::HandedOver, _, g)) if g < transfer => Some((Role::Owner, self.advertise, transfer)),
            found => found,
        }
    }

    /// The owner's side of RELEASE: `leaver` holds a backup copy of `id` and is leaving.
    /// Under the session's replication stripe (so no write's REPLICATE interleaves), new
    /// copies go to live members until the session has `replicas` holders besides the
    /// leaver; then the leaver is told to DROP its copy (it keeps a fence), and only when
    /// it confirmed is it removed from the holders. A leaver that cannot be told stays a
    /// holder (fencing: it may still hold a promotable copy).
    async fn replace_holder(&self, id: SessionId, leaver: SocketAddr) {
        let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
        let _one_at_a_time = self.replication_locks[stripe].lock().await;
        let Some(snap) = self.table.snapshot(&id, now_ms()) else {
            // This node's lineage of the session ended since the leaver's copy was made
            // (handed on, superseded, destroyed): the copy is one the current owner does
            // not count on (its copies name it as their owner, and a DROP from here
            // leaves those alone). Without this the copy would wait for the session to
            // come back here, and a busy session moving between other members kept
            // drains from finishing.
            if let Some(generation) = self.table.lineage_ended_at(&id, now_ms()) {
                let drop = PeerMessage::Drop {
                    session_id: id,
                    generation,
                };
                let deadline = Instant::now() + self.config.peer_timeout;
                if let Ok(PeerMessage::Ok) = self.peers.request(leaver, drop, deadline).await {
                    self.elastic.holders_replaced.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        };
        // The leaver may be missing from the holders already (a write's round leaves out
        // nodes no longer among the cluster's peers, and membership stops counting a
        // leaving member): it still holds this owner's copy, which is dropped all the same.
        let want = usize::from(self.config.replicas);
        let mut holders: Vec<SocketAddr> = snap.backups.iter().copied().filter(|b| *b != leaver).collect();
        let mut confirmed = holders.len();
        let members: Vec<SocketAddr> = self
            .live_members()
            .into_iter()
            .filter(|m| *m != leaver && !holders.contains(m))
            .collect();
        let deadline = Instant::now() + self.config.peer_timeout * 2;
        for c in ranked(&id, &members) {
            if confirmed >= want || Instant::now() >= deadline {
                break;
            }
            let msg = PeerMessage::Replicate {
                generation: snap.generation,
                record: snap.record.clone(),
            };
            match self.peers.request(c, msg, deadline).await {
                Ok(PeerMessage::Ok) => {
                    Stats::bump(&self.stats.replicated);
                    holders.push(c);
                    confirmed += 1;
                }
                // It may have stored the copy: it is a holder from now on.
                Err(LinkError::Lost) => holders.push(c),
                // A newer owner exists: the next write finds out and gives the session
                // up; nothing is changed here.
                Ok(PeerMessage::Moved { .. }) => return,
                other => tracing::debug!(session = %id, candidate = %c, "new backup refused: {other:?}"),
            }
        }
        if confirmed < want {
            tracing::warn!(session = %id, %leaver, confirmed, "a leaving member's backup copy could not be replaced by enough copies elsewhere");
        }
        let dropped = matches!(
            self.peers
                .request(
                    leaver,
                    PeerMessage::Drop {
                        session_id: id,
                        generation: snap.generation,
                    },
                    Instant::now() + self.config.peer_timeout,
                )
                .await,
            Ok(PeerMessage::Ok)
        );
        if !dropped {
            holders.push(leaver);
        } else {
            self.elastic.holders_replaced.fetch_add(1, Ordering::Relaxed);
        }
        self.table.set_backups(&id, snap.generation, &holders);
    }

    /// The gate of a drain's last phase: requests that would bring a session here or
    /// create one (a CREATE, or a session request that needs another node: `Mode::Full`)
    /// are refused with SHUTTING_DOWN (retryable, at another node). `None`: go on.
    pub(super) fn drain_gate(
        &self,
        request_id: u64,
        req: &Request,
        mode: Mode,
        out: &mut BytesMut,
    ) -> Option<After> {
        if !self.elastic.closing.load(Ordering::Relaxed) {
            return None;
        }
        let refuse = match req {
            Request::Create { .. } => true,
            Request::Get { .. }
            | Request::Set { .. }
            | Request::Touch { .. }
            | Request::Rotate { .. }
            | Request::Destroy { .. } => mode == Mode::Full,
            _ => false,
        };
        refuse.then(|| {
            self.error(
                request_id,
                ErrorCode::ShuttingDown,
                "this node is leaving the cluster; send the request to another node",
                out,
            )
        })
    }

    /// DRAIN (client port): starts the drain (or joins the one under way) and answers when
    /// it ended: DONE when everything was handed over, SHUTTING_DOWN saying what was left
    /// otherwise.
    pub(super) async fn drain_request(&self, at: Reply, out: &mut BytesMut) -> After {
        if at.mode == Mode::LocalOnly {
            return After::Defer;
        }
        let Some(node) = self.stats.about.get().and_then(|a| a.node.upgrade()) else {
            return self.error(at.request_id, ErrorCode::Internal, "the node is not running", out);
        };
        tracing::info!("DRAIN requested on the client port");
        let report = node.drain().await;
        if report.complete() {
            Response::Done.encode_frame(at.request_id, out);
            After::Continue
        } else {
            self.error(
                at.request_id,
                ErrorCode::ShuttingDown,
                format!(
                    "drain incomplete after {:?}: {} sessions and {} backup copies were not handed over, {} fetches still under way",
                    report.elapsed, report.sessions_left, report.backups_left, report.fetches_left
                ),
                out,
            )
        }
    }
}
