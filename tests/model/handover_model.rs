//! A deterministic model of the COPY handover: three simulated nodes, each with a real
//! `Table` (the giver's side) and real `Fetch` state machines (the asker's side), joined by
//! a network that the operation list drives: messages are delivered in any order, lost,
//! delivered twice, links break and fetches time out (their replies then arrive late and
//! are installed as orphans, as the node's `late_replies` task does).
//!
//! After every operation it checks the handover's safety promises (protocol.md 11):
//! - at most one node serves a session (`Table::get` succeeds at one node at most);
//! - a destroyed session is served nowhere, ever again;
//! - the node that serves a session has every acknowledged write: its version and data
//!   are those of the last write a node acknowledged, so versions never go backwards, a
//!   compare-and-set on the acknowledged version succeeds and one on an older version fails.
//!
//! Shared through `#[path]` by the `handover` fuzz target (`fuzz/fuzz_targets/handover.rs`)
//! and `tests/handover_model.rs` (corpus replay and seeded random lists). Operation lists
//! come from bytes through [`decode`] (three bytes per operation, every byte string is a
//! valid list), so a fuzz input and a corpus file mean the same run in both.
//!
//! What the model leaves out: time (sessions never expire here), node restarts, and the
//! pause before re-asking a node that does not have the session yet (`AskLater` is asked
//! at once; the pause only spaces the attempts out).

// Each includer uses a different part (the fuzz target only `decode` and `run`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::Bytes;
use sessync_proto::{
    Attributes, PackedAttributes, PeerIdentity, PeerMessage, SessionId, SessionMeta, SessionRecord,
};
use sessync_server::handover::{Fetch, Step};
use sessync_server::table::{CopyOutcome, EvictPolicy, Miss, Served, Table, TableConfig};

/// Nodes in the simulated cluster.
pub(crate) const NODES: usize = 3;
/// Sessions a run creates at most.
pub(crate) const SESSIONS: usize = 3;
/// Operations a run executes at most (longer inputs are cut).
pub(crate) const MAX_OPS: usize = 1024;
/// Messages in flight at most; a send beyond this is lost.
const MAX_IN_FLIGHT: usize = 64;
/// Tokens a client remembers per session (it may present any of them, stale ones too).
const MAX_TOKENS: usize = 4;
/// The node's default hop limit.
const MAX_HOPS: u8 = 3;
/// The model's clock never moves: sessions do not expire here (expiry has its own tests).
const NOW: u64 = 1_000_000;
const TTL: u64 = 1 << 40;

/// What a client request does once the node owns the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// GET: must see the last acknowledged write.
    Get,
    /// SET without a condition: must land on top of the last acknowledged write.
    Set,
    /// SET if the version is the acknowledged one: must succeed.
    CasCurrent,
    /// SET if the version is the one before: must conflict.
    CasStale,
    /// DESTROY: the session must never be served again.
    Destroy,
}

const KINDS: [Kind; 5] = [
    Kind::Get,
    Kind::Set,
    Kind::CasCurrent,
    Kind::CasStale,
    Kind::Destroy,
];

/// One step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// CREATE at `node`.
    Create { node: u8 },
    /// A client request at `node` for the `session`-th session created, presenting the
    /// `token`-th token the client was given for it (a stale one, perhaps).
    Request {
        node: u8,
        session: u8,
        token: u8,
        kind: Kind,
    },
    /// Delivers in-flight message number `msg` (modulo the number in flight).
    Deliver { msg: u8 },
    /// Loses it.
    Drop { msg: u8 },
    /// Keeps a copy of it in flight, so it arrives twice (a resent COPY_DATA or COPY_ACK).
    Duplicate { msg: u8 },
    /// The fetch of `session` at `node` stops waiting for its reply. If the link broke,
    /// everything in flight on it is lost and the fetch may ask again; otherwise the fetch
    /// timed out and fails, and its reply, if one comes, is an orphan.
    Lose { node: u8, session: u8, link_broke: bool },
}

/// Bytes per encoded operation.
pub(crate) const OP_LEN: usize = 3;

/// The operation list a byte string stands for: three bytes per operation, a trailing
/// partial operation ignored. Total: every byte string decodes.
pub(crate) fn decode(data: &[u8]) -> Vec<Op> {
    data.chunks_exact(OP_LEN)
        .take(MAX_OPS)
        .map(|c| {
            let (tag, a, b) = (c[0], c[1], c[2]);
            let node = a % NODES as u8;
            let session = (a / NODES as u8) % SESSIONS as u8;
            match tag % 8 {
                0 => Op::Create { node },
                1 | 2 => Op::Request {
                    node,
                    session,
                    token: b % MAX_TOKENS as u8,
                    kind: KINDS[usize::from(b / MAX_TOKENS as u8) % KINDS.len()],
                },
                3..=5 => Op::Deliver { msg: a },
                6 if b & 1 == 0 => Op::Drop { msg: a },
                6 => Op::Duplicate { msg: a },
                _ => Op::Lose {
                    node,
                    session,
                    link_broke: b & 1 == 1,
                },
            }
        })
        .collect()
}

/// The bytes [`decode`] turns into `ops` (for operations within the model's ranges).
pub(crate) fn encode(ops: &[Op]) -> Vec<u8> {
    let place = |node: u8, session: u8| node % NODES as u8 + NODES as u8 * (session % SESSIONS as u8);
    ops.iter()
        .flat_map(|op| match *op {
            Op::Create { node } => [0, node % NODES as u8, 0],
            Op::Request {
                node,
                session,
                token,
                kind,
            } => {
                let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0) as u8;
                [
                    1,
                    place(node, session),
                    token % MAX_TOKENS as u8 + MAX_TOKENS as u8 * k,
                ]
            }
            Op::Deliver { msg } => [3, msg, 0],
            Op::Drop { msg } => [6, msg, 0],
            Op::Duplicate { msg } => [6, msg, 1],
            Op::Lose {
                node,
                session,
                link_broke,
            } => [7, place(node, session), u8::from(link_broke)],
        })
        .collect()
}

/// How often the interesting transitions happened in a run (so tests can show the model
/// reaches them, rather than passing by never getting anywhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Requests served (by the owner, possibly after a copy).
    pub(crate) served: u64,
    /// Writes acknowledged.
    pub(crate) acked_writes: u64,
    /// COPY answered with COPY_DATA.
    pub(crate) handed_over: u64,
    /// COPY answered with MOVED.
    pub(crate) moved: u64,
    /// COPY answered with NOT_FOUND.
    pub(crate) not_found: u64,
    /// COPY_DATA installed by the fetch that asked for it.
    pub(crate) installed: u64,
    /// COPY_DATA that arrived after its fetch gave up, installed anyway.
    pub(crate) orphans_installed: u64,
    /// COPY_DATA not installed (a newer copy or a tombstone won).
    pub(crate) refused: u64,
    /// COPY_ACK that moved a giver on to Forwarded.
    pub(crate) acks_applied: u64,
    /// Requests that failed (not found, unreachable, too many hops, ...).
    pub(crate) failed: u64,
    /// Sessions destroyed.
    pub(crate) destroyed: u64,
    /// Times the known stale-reinstall bug would have struck (see `Model::strict`).
    pub(crate) known_stale_reinstall: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.served += o.served;
        self.acked_writes += o.acked_writes;
        self.handed_over += o.handed_over;
        self.moved += o.moved;
        self.not_found += o.not_found;
        self.installed += o.installed;
        self.orphans_installed += o.orphans_installed;
        self.refused += o.refused;
        self.acks_applied += o.acks_applied;
        self.failed += o.failed;
        self.destroyed += o.destroyed;
        self.known_stale_reinstall += o.known_stale_reinstall;
    }
}

/// Runs `ops` on a fresh cluster; `Err` describes the first broken promise, with the
/// operations that led to it.
pub(crate) fn run(ops: &[Op]) -> Result<Counts, String> {
    run_with(Model::new(), ops)
}

/// [`run`] on a given model (e.g. one with `strict` set).
pub(crate) fn run_with(mut m: Model, ops: &[Op]) -> Result<Counts, String> {
    for (i, op) in ops.iter().take(MAX_OPS).enumerate() {
        m.log.push(format!("#{i} {op:?}"));
        let step = m.apply(*op).and_then(|()| m.check());
        if let Err(e) = step {
            let keep = if std::env::var_os("HANDOVER_MODEL_FULL_LOG").is_some() {
                usize::MAX
            } else {
                60
            };
            let from = m.log.len().saturating_sub(keep);
            return Err(format!(
                "{e}\n  after operation #{i} of {}; last events:\n    {}",
                ops.len(),
                m.log[from..].join("\n    ")
            ));
        }
    }
    Ok(m.counts)
}

struct Node {
    addr: SocketAddr,
    who: PeerIdentity,
    table: Table,
}

struct Session {
    id: SessionId,
    /// The nodes named by the tokens the client was given, oldest first.
    tokens: Vec<usize>,
    /// Version and value (attribute `n`) of the last acknowledged write.
    acked: (u64, u64),
    destroyed: bool,
}

#[derive(Debug, Clone)]
enum Msg {
    Copy {
        from: usize,
        to: usize,
        s: usize,
        last: u64,
        attempt: u64,
    },
    Reply {
        from: usize,
        to: usize,
        s: usize,
        reply: PeerMessage,
        attempt: u64,
    },
    Ack {
        from: usize,
        to: usize,
        s: usize,
        transfer: u64,
    },
}

impl Msg {
    /// Whether the message travels on the link `dialler` opened to `acceptor` (requests
    /// one way, replies the other).
    fn on_link(&self, dialler: usize, acceptor: usize) -> bool {
        match *self {
            Msg::Copy { from, to, .. } | Msg::Ack { from, to, .. } => from == dialler && to == acceptor,
            Msg::Reply { from, to, .. } => from == acceptor && to == dialler,
        }
    }
}

/// A client request waiting at a node, as `Node::on_session` runs it.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    kind: Kind,
    /// The node its token names.
    token_owner: usize,
    /// Fetches this request has started or joined (bounded by the hop limit).
    fetches: u8,
}

/// A fetch in progress (single flight: one per node and session).
struct Fetching {
    fetch: Fetch,
    /// The COPY whose reply it waits for: attempt number and the node asked.
    waiting_on: Option<(u64, usize)>,
    waiters: Vec<Waiter>,
}

/// How a fetch ended, for the requests that waited on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Installed,
    PointsHere,
    Failed,
}

pub(crate) struct Model {
    nodes: Vec<Node>,
    sessions: Vec<Session>,
    net: Vec<Msg>,
    fetches: BTreeMap<(usize, usize), Fetching>,
    next_attempt: u64,
    next_value: u64,
    counts: Counts,
    log: Vec<String>,
    /// Copies each node installed: (node, session, transfer id).
    installed: BTreeSet<(usize, usize, u64)>,
    /// Whether a COPY_DATA that a node has installed before reaches `Table::install` again
    /// (a resend after a timed-out fetch, or a reply delayed on a stalled link). The table
    /// then overwrites its HandingOver or Forwarded entry with that old copy: a second
    /// owner with old data, acknowledged writes undone (found by this model; reported, not
    /// fixed here: crates/server belongs to another change). With `strict` off the model
    /// keeps such a copy away from the table, as the suggested fix would (refuse a transfer
    /// id this node has already installed), and counts it, so that the rest of the
    /// handover keeps being checked. Set it to see the bug.
    pub(crate) strict: bool,
}

fn attrs(n: u64) -> Attributes {
    let mut a = Attributes::new();
    a.insert("n".into(), Bytes::from(n.to_string()));
    a
}

impl Model {
    pub(crate) fn new() -> Model {
        let config = TableConfig {
            max_sessions: 1000,
            max_memory: 1 << 30,
            max_attributes: 16,
            max_session_bytes: 1 << 20,
            evict: EvictPolicy::Reject,
        };
        let nodes = (0..NODES)
            .map(|i| {
                let addr = SocketAddr::from(([10, 0, 0, 1 + i as u8], 7401));
                Node {
                    addr,
                    who: PeerIdentity {
                        node_id: [0x11 * (1 + i as u8); 16],
                        advertised: addr,
                    },
                    table: Table::new(config.clone()),
                }
            })
            .collect();
        Model {
            nodes,
            sessions: Vec::new(),
            net: Vec::new(),
            fetches: BTreeMap::new(),
            next_attempt: 1,
            next_value: 1,
            counts: Counts::default(),
            log: Vec::new(),
            installed: BTreeSet::new(),
            strict: false,
        }
    }

    fn index(&self, addr: SocketAddr) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.addr == addr)
            .ok_or_else(|| format!("an address no node has: {addr}"))
    }

    fn send(&mut self, msg: Msg) {
        if self.net.len() < MAX_IN_FLIGHT {
            self.log.push(format!("  send {msg:?}"));
            self.net.push(msg);
        } else {
            self.log.push(format!("  lost (network full) {msg:?}"));
        }
    }

    pub(crate) fn apply(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Create { node } => {
                if self.sessions.len() < SESSIONS {
                    let j = usize::from(node) % NODES;
                    let (id, served) = self.nodes[j]
                        .table
                        .create(&attrs(0), TTL, 0, NOW)
                        .map_err(|m| format!("CREATE refused: {m:?}"))?;
                    self.log.push(format!("  created {id} at node {j}"));
                    self.sessions.push(Session {
                        id,
                        tokens: vec![j],
                        acked: (served.meta.version, 0),
                        destroyed: false,
                    });
                }
                Ok(())
            }
            Op::Request {
                node,
                session,
                token,
                kind,
            } => {
                let s = usize::from(session);
                let Some(sess) = self.sessions.get(s) else {
                    return Ok(());
                };
                let token_owner = sess.tokens[usize::from(token) % sess.tokens.len()];
                let w = Waiter {
                    kind,
                    token_owner,
                    fetches: 0,
                };
                self.serve(usize::from(node) % NODES, s, w, false)
            }
            Op::Deliver { msg } => {
                if self.net.is_empty() {
                    return Ok(());
                }
                let m = self.net.remove(usize::from(msg) % self.net.len());
                self.deliver(m)
            }
            Op::Drop { msg } => {
                if !self.net.is_empty() {
                    let m = self.net.remove(usize::from(msg) % self.net.len());
                    self.log.push(format!("  dropped {m:?}"));
                }
                Ok(())
            }
            Op::Duplicate { msg } => {
                if !self.net.is_empty() {
                    let m = self.net[usize::from(msg) % self.net.len()].clone();
                    self.send(m);
                }
                Ok(())
            }
            Op::Lose {
                node,
                session,
                link_broke,
            } => {
                let key = (usize::from(node) % NODES, usize::from(session));
                let Some(f) = self.fetches.get_mut(&key) else {
                    return Ok(());
                };
                let Some((_, target)) = f.waiting_on.take() else {
                    return Ok(());
                };
                if link_broke {
                    let step = f.fetch.handle_lost(self.nodes[target].addr);
                    let before = self.net.len();
                    self.net.retain(|m| !m.on_link(key.0, target));
                    self.log.push(format!(
                        "  link {} -> {target} broke: {} in flight lost; {step:?}",
                        key.0,
                        before - self.net.len()
                    ));
                    self.step(key.0, key.1, step)
                } else {
                    self.log.push("  timed out".into());
                    self.finish(key.0, key.1, Ended::Failed)
                }
            }
        }
    }

    /// One turn of `Node::on_session`'s loop for a request at node `j`: serve it from the
    /// table, or start (or join) a fetch. `after_local`: the last fetch ended with the
    /// chain of owners pointing here, so an absent entry now means the session is gone.
    fn serve(&mut self, j: usize, s: usize, mut w: Waiter, after_local: bool) -> Result<(), String> {
        let (to, forwarded) = match self.run_kind(j, s, w.kind)? {
            Ok(()) => {
                self.counts.served += 1;
                let tokens = &mut self.sessions[s].tokens;
                if w.token_owner != j && !tokens.contains(&j) && tokens.len() < MAX_TOKENS {
                    tokens.push(j); // the reply carried a token naming j
                }
                return Ok(());
            }
            Err(Miss::Moved(to)) => (self.index(to)?, true),
            Err(Miss::Absent) if !after_local && w.token_owner != j => (w.token_owner, false),
            Err(m) => {
                self.log.push(format!("  request at {j} failed: {m:?}"));
                self.counts.failed += 1;
                return Ok(());
            }
        };
        if w.fetches >= MAX_HOPS {
            self.log.push(format!("  request at {j} failed: too many hops"));
            self.counts.failed += 1;
            return Ok(());
        }
        w.fetches += 1;
        if let Some(f) = self.fetches.get_mut(&(j, s)) {
            f.waiters.push(w);
            return Ok(());
        }
        let id = self.sessions[s].id;
        let (fetch, step) = Fetch::new(id, self.nodes[j].addr, self.nodes[to].addr, forwarded, MAX_HOPS);
        self.log.push(format!("  node {j} fetches from {to}: {step:?}"));
        self.fetches.insert(
            (j, s),
            Fetching {
                fetch,
                waiting_on: None,
                waiters: vec![w],
            },
        );
        self.step(j, s, step)
    }

    /// Runs a request's operation on node `j`'s table. `Ok(Err(miss))`: the table does not
    /// serve it; `Err`: a broken promise.
    fn run_kind(&mut self, j: usize, s: usize, kind: Kind) -> Result<Result<(), Miss>, String> {
        let table = &self.nodes[j].table;
        let (id, version) = (self.sessions[s].id, self.sessions[s].acked.0);
        let write = |if_version: Option<u64>, n: u64| table.set(&id, if_version, &attrs(n), &[], NOW);
        let result = match kind {
            Kind::Get => table.get(&id, &[], NOW).map(|served| Some((served, None))),
            Kind::Set => write(None, self.next_value).map(|served| Some((served, Some(self.next_value)))),
            Kind::CasCurrent => match write(Some(version), self.next_value) {
                Err(Miss::VersionConflict { current }) => {
                    return Err(format!(
                        "node {j} refused a CAS on the acknowledged version {version} of session {s}: \
                         it is at version {current} (an acknowledged write is missing or undone)"
                    ))
                }
                r => r.map(|served| Some((served, Some(self.next_value)))),
            },
            Kind::CasStale => match write(Some(version.wrapping_sub(1)), self.next_value) {
                Ok(served) => {
                    return Err(format!(
                        "node {j} accepted a CAS on version {} of session {s}, older than the \
                         acknowledged {version}; now at {}",
                        version.wrapping_sub(1),
                        served.meta.version
                    ))
                }
                Err(Miss::VersionConflict { current }) if current == version => Ok(None),
                Err(Miss::VersionConflict { current }) => {
                    return Err(format!(
                        "node {j} serves session {s} at version {current}, but the last \
                         acknowledged write made version {version}"
                    ))
                }
                Err(m) => Err(m),
            },
            Kind::Destroy => table.destroy(&id, NOW).map(|_| None),
        };
        let outcome = match result {
            Ok(o) => o,
            Err(m) => return Ok(Err(m)),
        };
        if self.sessions[s].destroyed {
            return Err(format!(
                "node {j} served session {s} after it was destroyed ({kind:?})"
            ));
        }
        match outcome {
            Some((served, None)) => self.check_served(j, s, &served)?,
            Some((served, Some(n))) => {
                if served.meta.version != version + 1 {
                    return Err(format!(
                        "a write at node {j} made version {} of session {s}, but the last \
                         acknowledged write made {version}: it was applied to other data",
                        served.meta.version
                    ));
                }
                self.log.push(format!(
                    "  node {j} acknowledged write v{} n={n}",
                    served.meta.version
                ));
                self.sessions[s].acked = (served.meta.version, n);
                self.next_value += 1;
                self.counts.acked_writes += 1;
            }
            None if kind == Kind::Destroy => {
                self.log.push(format!("  node {j} destroyed session {s}"));
                self.sessions[s].destroyed = true;
                self.counts.destroyed += 1;
            }
            None => {}
        }
        Ok(Ok(()))
    }

    /// A served snapshot must be the last acknowledged write.
    fn check_served(&self, j: usize, s: usize, served: &Served) -> Result<(), String> {
        let (version, value) = self.sessions[s].acked;
        let n = served
            .attrs
            .iter()
            .find(|(k, _)| *k == "n")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        if served.meta.version != version || n.as_deref() != Some(value.to_string().as_str()) {
            return Err(format!(
                "node {j} serves session {s} at version {} with n={n:?}, but the last \
                 acknowledged write made version {version} with n={value}",
                served.meta.version
            ));
        }
        Ok(())
    }

    fn step(&mut self, j: usize, s: usize, step: Step) -> Result<(), String> {
        match step {
            Step::Ask(to) | Step::AskLater(to) => {
                let to = self.index(to)?;
                let attempt = self.next_attempt;
                self.next_attempt += 1;
                let last = self.nodes[j].table.last_received(&self.sessions[s].id);
                if let Some(f) = self.fetches.get_mut(&(j, s)) {
                    f.waiting_on = Some((attempt, to));
                }
                self.send(Msg::Copy {
                    from: j,
                    to,
                    s,
                    last,
                    attempt,
                });
                Ok(())
            }
            Step::Install {
                from,
                transfer,
                record,
                ..
            } => {
                let from = self.index(from)?;
                self.counts.installed += 1;
                self.install_copy(j, from, s, transfer, &record);
                self.finish(j, s, Ended::Installed)
            }
            Step::Local => self.finish(j, s, Ended::PointsHere),
            Step::Fail(code, why) => {
                self.log.push(format!("  fetch at {j} failed: {code} {why}"));
                self.finish(j, s, Ended::Failed)
            }
        }
    }

    /// `Node::install_copy`: install (a newer copy or a tombstone may win) and acknowledge
    /// either way.
    fn install_copy(&mut self, j: usize, from: usize, s: usize, transfer: u64, record: &SessionRecord) {
        let again = !self.installed.insert((j, s, transfer));
        let moved_on = matches!(self.nodes[j].table.get(&record.id, &[], NOW), Err(Miss::Moved(_)));
        if again && moved_on && !self.strict {
            // KNOWN BUG (see `Model::strict`): this node installed this very copy before
            // and the session has moved on since; `Table::install` would bring it back.
            self.counts.known_stale_reinstall += 1;
            self.log.push(format!(
                "  node {j} skipped a copy it had installed before (known bug)"
            ));
            self.send(Msg::Ack {
                from: j,
                to: from,
                s,
                transfer,
            });
            return;
        }
        match self.nodes[j].table.install(record, transfer, NOW) {
            Ok(_) => self.log.push(format!(
                "  node {j} installed v{} from {from} (transfer {transfer:x})",
                record.meta.version
            )),
            Err(m) => {
                self.counts.refused += 1;
                self.log
                    .push(format!("  node {j} refused the copy from {from}: {m:?}"));
            }
        }
        self.send(Msg::Ack {
            from: j,
            to: from,
            s,
            transfer,
        });
    }

    /// The fetch at `j` ended: every request that waited on it goes on as `on_session` does.
    fn finish(&mut self, j: usize, s: usize, how: Ended) -> Result<(), String> {
        let Some(f) = self.fetches.remove(&(j, s)) else {
            return Ok(());
        };
        for w in f.waiters {
            match how {
                Ended::Failed => self.counts.failed += 1,
                Ended::Installed => self.serve(j, s, w, false)?,
                Ended::PointsHere => self.serve(j, s, w, true)?,
            }
        }
        Ok(())
    }

    fn deliver(&mut self, m: Msg) -> Result<(), String> {
        self.log.push(format!("  deliver {m:?}"));
        match m {
            Msg::Copy {
                from,
                to,
                s,
                last,
                attempt,
            } => {
                let id = self.sessions[s].id;
                let reply = match self.nodes[to]
                    .table
                    .hand_over(&id, self.nodes[from].who, last, None, NOW)
                {
                    CopyOutcome::Data {
                        transfer,
                        holders,
                        record,
                    } => {
                        self.counts.handed_over += 1;
                        PeerMessage::CopyData {
                            transfer,
                            holders,
                            record,
                        }
                    }
                    CopyOutcome::Moved(owner) => {
                        self.counts.moved += 1;
                        PeerMessage::Moved {
                            session_id: id,
                            owner,
                        }
                    }
                    CopyOutcome::NotFound => {
                        self.counts.not_found += 1;
                        PeerMessage::NotFound { session_id: id }
                    }
                };
                self.send(Msg::Reply {
                    from: to,
                    to: from,
                    s,
                    reply,
                    attempt,
                });
                Ok(())
            }
            Msg::Reply {
                from,
                to,
                s,
                reply,
                attempt,
            } => {
                let from_addr = self.nodes[from].addr;
                match self.fetches.get_mut(&(to, s)) {
                    Some(f) if f.waiting_on == Some((attempt, from)) => {
                        f.waiting_on = None;
                        let step = f.fetch.handle_reply(from_addr, reply);
                        self.log.push(format!("  fetch at {to}: {step:?}"));
                        self.step(to, s, step)
                    }
                    // Nobody waits for it any more: a COPY_DATA is installed all the same
                    // (the giver has handed the session over), anything else is dropped.
                    _ => {
                        if let PeerMessage::CopyData { transfer, record, .. } = reply {
                            self.counts.orphans_installed += 1;
                            self.install_copy(to, from, s, transfer, &record);
                        }
                        Ok(())
                    }
                }
            }
            Msg::Ack {
                from,
                to,
                s,
                transfer,
            } => {
                let id = self.sessions[s].id;
                if self.nodes[to]
                    .table
                    .ack_handover(&id, self.nodes[from].who, transfer, NOW)
                    .is_some()
                {
                    self.counts.acks_applied += 1;
                }
                Ok(())
            }
        }
    }

    /// The promises, checked across all nodes.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (s, sess) in self.sessions.iter().enumerate() {
            let servers: Vec<(usize, Served)> = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(j, n)| n.table.get(&sess.id, &[], NOW).ok().map(|served| (j, served)))
                .collect();
            if servers.len() > 1 {
                let at: Vec<String> = servers
                    .iter()
                    .map(|(j, sv)| format!("node {j} at v{}", sv.meta.version))
                    .collect();
                return Err(format!(
                    "session {s} has {} owners: {}",
                    servers.len(),
                    at.join(", ")
                ));
            }
            if let Some((j, served)) = servers.first() {
                if sess.destroyed {
                    return Err(format!("session {s} was destroyed but node {j} serves it"));
                }
                self.check_served(*j, s, served)?;
            }
        }
        for (j, n) in self.nodes.iter().enumerate() {
            let st = n.table.stats();
            if st.sessions > self.sessions.len() || st.tombstones > self.sessions.len() || st.bytes > 1 << 30
            {
                return Err(format!("node {j}'s table counters are off: {st:?}"));
            }
        }
        Ok(())
    }

    /// Installs `record` at node `j` behind the protocol's back (tests use this to show the
    /// checks catch a second owner).
    pub(crate) fn force_install(&self, j: usize, s: usize) -> Result<(), Miss> {
        let record = SessionRecord {
            id: self.sessions[s].id,
            meta: SessionMeta {
                version: self.sessions[s].acked.0,
                created_ms: NOW,
                last_access_ms: NOW,
                idle_ttl_ms: TTL,
                absolute_deadline_ms: 0,
            },
            attributes: PackedAttributes::pack(&attrs(self.sessions[s].acked.1)),
        };
        self.nodes[j].table.install(&record, 99, NOW).map(drop)
    }
}
