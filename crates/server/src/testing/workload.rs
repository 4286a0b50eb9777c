//! The simulation's clients and its checker: compare-and-set writers that keep a ledger of
//! what was acknowledged (as tests/chaos.rs's writers do over sockets), readers that move
//! sessions, rotations and destructions; then the promises, checked on a healed cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_proto::{Attributes, ErrorCode, Limits, Message, Request, Response, SessionReply};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Duration};

use super::net::Net;
use super::{Report, SimOptions};
use crate::node::{After, Mode};

/// How long a simulated client waits for a reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client request's outcome.
#[derive(Debug)]
enum Outcome {
    /// The node answered.
    Reply(Response),
    /// Refused before it reached the node (host down): nothing happened.
    NotSent,
    /// No answer (timeout, or the node crashed meanwhile): it may or may not have happened.
    Unknown,
}

/// Sends `req` to host `i` as an application beside it would, and waits for the reply.
async fn call(net: &Arc<Net>, i: usize, req: Request) -> Outcome {
    let what = format!("{req:?}").chars().take(60).collect::<String>();
    let outcome = send_and_wait(net, i, req).await;
    tracing::trace!(target: "sim", node = i, request = %what, outcome = %format!("{outcome:?}").chars().take(100).collect::<String>(), "call");
    outcome
}

async fn send_and_wait(net: &Arc<Net>, i: usize, req: Request) -> Outcome {
    let (node, incarnation, alive, clock) = {
        let st = net.lock();
        let s = &st.slots[i];
        (s.node.clone(), s.incarnation, s.alive, s.clock)
    };
    if !alive {
        return Outcome::NotSent;
    }
    // The request runs in a task of its own, as the client port runs a deferred request:
    // a client that gives up does not cancel the node's work halfway.
    let run_net = net.clone();
    let served = async move {
        let net = run_net;
        net.wait_running(i).await;
        let mut out = BytesMut::new();
        if node.handle(1, &req, true, Mode::LocalOnly, &mut out).await == After::Defer {
            out.clear();
            node.handle(1, &req, true, Mode::Full, &mut out).await;
        }
        // The reply leaves only if the process still runs.
        net.wait_running(i).await;
        out
    };
    let served = tokio::spawn(tracing::Instrument::instrument(
        crate::clock::sim::on_clock(clock, served),
        tracing::info_span!("node", i, inc = incarnation),
    ));
    let Ok(Ok(mut out)) = timeout(CLIENT_TIMEOUT, served).await else {
        return Outcome::Unknown;
    };
    {
        let st = net.lock();
        if st.slots[i].incarnation != incarnation || !st.slots[i].alive {
            return Outcome::Unknown;
        }
    }
    match sessync_proto::decode_frame(&mut out, u32::MAX) {
        Ok(Some(frame)) => match Response::decode_frame(&frame, &Limits::default()) {
            Ok(r) => Outcome::Reply(r),
            Err(_) => Outcome::Unknown,
        },
        _ => Outcome::Unknown,
    }
}

fn list_of(r: &SessionReply) -> Vec<u64> {
    r.attributes
        .get("list")
        .map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .filter(|x| !x.is_empty())
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What one writer saw.
#[derive(Debug, Default)]
struct Ledger {
    token: String,
    acked: Vec<u64>,
    acked_versions: Vec<u64>,
    unknown: Vec<u64>,
    /// Tokens that a ROTATE acknowledged as replaced: they must never work again.
    rotated_away: Vec<String>,
    /// A rotation whose outcome is unknown: the session's id may have changed under us.
    lost_track: bool,
    /// A DESTROY was acknowledged: the session must never come back.
    destroyed: bool,
    violations: Vec<String>,
}

/// The running workload.
pub(super) struct Workload {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<Ledger>>,
    readers: Vec<JoinHandle<String>>,
    chasers: Vec<JoinHandle<String>>,
}

async fn create(net: &Arc<Net>, i: usize, attrs: Attributes) -> Result<String, String> {
    for _ in 0..20 {
        if let Outcome::Reply(Response::Session(r)) = call(
            net,
            i,
            Request::Create {
                idle_ttl_ms: 0,
                max_lifetime_ms: 0,
                attributes: attrs.clone(),
            },
        )
        .await
        {
            return r.token.ok_or_else(|| "CREATE without a token".to_string());
        }
        sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no session could be created at node {i}"))
}

/// A reader: GETs the session through random nodes (following the token each reply
/// gives), pausing 1 to `max_pause_ms` ms between requests, until stopped; returns the
/// last token.
async fn roam(
    net: Arc<Net>,
    nodes: usize,
    mut token: String,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
    max_pause_ms: u64,
) -> String {
    while !stop.load(Ordering::Relaxed) {
        let i = rng.gen_range(0..nodes);
        let get = Request::Get {
            token: token.clone(),
            names: Vec::new(),
        };
        if let Outcome::Reply(Response::Session(s)) = call(&net, i, get).await {
            if let Some(t) = s.token {
                token = t;
            }
        }
        sleep(Duration::from_millis(rng.gen_range(1..max_pause_ms))).await;
    }
    token
}

impl Workload {
    pub(super) async fn start(net: &Arc<Net>, opts: &SimOptions, seed: u64) -> Result<Workload, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        let mut writer_tokens = Vec::new();
        for w in 0..opts.writers {
            let attrs: Attributes = [("list".to_string(), Bytes::new())].into_iter().collect();
            let token = create(net, w % opts.nodes, attrs).await?;
            writer_tokens.push(token.clone());
            let (net, stop) = (net.clone(), stop.clone());
            let (nodes, destroy_at_end) = (opts.nodes, opts.destroy_all || w % 4 == 3);
            writers.push(tokio::spawn(writer(
                net,
                nodes,
                token,
                seed * 7919 + w as u64,
                stop,
                destroy_at_end,
            )));
        }
        let mut readers = Vec::new();
        for r in 0..opts.readers {
            let attrs: Attributes = [("k".to_string(), Bytes::from_static(b"v"))]
                .into_iter()
                .collect();
            let token = create(net, r % opts.nodes, attrs).await?;
            let (net, stop, nodes) = (net.clone(), stop.clone(), opts.nodes);
            let rng = StdRng::seed_from_u64(seed * 104_729 + r as u64);
            readers.push(tokio::spawn(roam(net, nodes, token, rng, stop, 30)));
        }
        // Chasers read the writers' sessions (following the tokens they are given), so
        // that copies race the writer's own requests, its rotations and its DESTROY.
        let mut chasers = Vec::new();
        for c in 0..opts.chasers {
            let Some(token) = writer_tokens.get(c % writer_tokens.len().max(1)).cloned() else {
                break;
            };
            let (net, stop, nodes) = (net.clone(), stop.clone(), opts.nodes);
            let rng = StdRng::seed_from_u64(seed * 15_485_863 + c as u64);
            chasers.push(tokio::spawn(roam(net, nodes, token, rng, stop, 15)));
        }
        Ok(Workload {
            stop,
            writers,
            readers,
            chasers,
        })
    }

    /// Stops the clients and checks the promises on the (healed) cluster.
    pub(super) async fn finish(self, net: &Arc<Net>, report: &mut Report) {
        self.stop.store(true, Ordering::Relaxed);
        let mut ledgers = Vec::new();
        for w in self.writers {
            match w.await {
                Ok(l) => ledgers.push(l),
                Err(e) => report.violations.push(format!("a writer panicked: {e}")),
            }
        }
        for c in self.chasers {
            if let Err(e) = c.await {
                report.violations.push(format!("a chaser panicked: {e}"));
            }
        }
        let mut tokens = Vec::new();
        for r in self.readers {
            if let Ok(t) = r.await {
                tokens.push(t);
            }
        }
        let nodes = net.lock().slots.len();
        for (i, l) in ledgers.iter().enumerate() {
            report.acked += l.acked.len();
            report.unknown += l.unknown.len();
            let sid = where_is(net, &l.token);
            report
                .violations
                .extend(l.violations.iter().map(|v| format!("writer {i} ({sid}): {v}")));
            // A rotated-away id must never take a write again. (A superseded owner that is
            // still cut off may serve it to reads: reads are not fenced, protocol.md 12.6.)
            for old in &l.rotated_away {
                for n in 0..nodes {
                    let set = Request::Set {
                        token: old.clone(),
                        if_version: None,
                        puts: [("stale".to_string(), Bytes::from_static(b"1"))]
                            .into_iter()
                            .collect(),
                        deletes: Vec::new(),
                    };
                    if let Outcome::Reply(Response::Session(_)) = call(net, n, set).await {
                        report.violations.push(format!(
                            "writer {i} ({sid}): a rotated-away id took a write at node {n}: {}",
                            where_is(net, old)
                        ));
                    }
                }
            }
            if l.lost_track {
                continue;
            }
            let got = read(net, nodes, &l.token).await;
            if l.destroyed {
                if let Ok(Response::Session(_)) = got {
                    // A node that heard from none of the session's holders lately may
                    // still serve its old copy to reads, for a bounded time (protocol.md
                    // 12.5): the heal does not end that at once, since this node's round
                    // may have lost every message. Past the bound no node may serve it.
                    sleep(stale_read_bound(net)).await;
                    if let Ok(Response::Session(s)) = read(net, nodes, &l.token).await {
                        report.violations.push(format!(
                            "writer {i} ({}): a destroyed session came back at version {}, still read back after the stale-read bound",
                            where_is(net, &l.token),
                            s.meta.version
                        ));
                    }
                }
                continue;
            }
            match got {
                Ok(Response::Session(s)) => check_list(i, l, &list_of(&s), &where_is(net, &l.token), report),
                other => report.violations.push(format!(
                    "writer {i} ({sid}): its session is not readable after the heal: {other:?}"
                )),
            }
        }
        for (r, t) in tokens.iter().enumerate() {
            let got = read(net, nodes, t).await;
            if !matches!(got, Ok(Response::Session(_))) {
                report.violations.push(format!(
                    "reader {r} ({}): its session is not readable after the heal: {got:?}",
                    where_is(net, t)
                ));
            }
        }
    }
}

/// How long the checker leaves a session unread before it asks again whether a stale copy
/// is still served (protocol.md 12.5's bound): a copy whose last round began more than
/// three read leases ago is not served until a holder answers, so three leases, the round
/// a read then waits for (a peer timeout), and a peer timeout to spare (the clock skew a
/// moved copy's lease may carry is well inside it).
fn stale_read_bound(net: &Net) -> Duration {
    let st = net.lock();
    let Some(slot) = st.slots.first() else {
        return Duration::ZERO;
    };
    let c = &slot.node.config;
    c.read_lease * crate::node::STALE_READ_LEASES + c.peer_timeout * 2
}

/// Where a token's session is, node by node (for failure reports).
fn where_is(net: &Net, token: &str) -> String {
    sessync_proto::Token::verify(token, &super::keys())
        .map(|t| {
            let st = net.lock();
            let at: Vec<String> = st
                .slots
                .iter()
                .enumerate()
                .map(|(n, s)| format!("node {n}: {}", s.node.table.describe(&t.session_id)))
                .collect();
            format!("{} [{}] token owner {}", t.session_id, at.join("; "), t.owner)
        })
        .unwrap_or_default()
}

/// Reads a session through the nodes in turn until one answers with it (or a definite
/// SESSION_NOT_FOUND), within a bounded time.
async fn read(net: &Arc<Net>, nodes: usize, token: &str) -> Result<Response, String> {
    let mut last = String::new();
    for attempt in 0..24 {
        let req = Request::Get {
            token: token.to_string(),
            names: Vec::new(),
        };
        match call(net, attempt % nodes, req).await {
            Outcome::Reply(r @ Response::Session(_)) => return Ok(r),
            Outcome::Reply(Response::Error(e))
                if e.code == ErrorCode::SessionNotFound && attempt >= nodes =>
            {
                return Ok(Response::Error(e))
            }
            other => last = format!("{other:?}"),
        }
        sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// Every acknowledged append is present, in order; anything else present was of unknown
/// outcome.
fn check_list(i: usize, l: &Ledger, list: &[u64], at: &str, report: &mut Report) {
    if !list.windows(2).all(|w| w[0] < w[1]) {
        report
            .violations
            .push(format!("writer {i}: out of order {list:?}"));
    }
    let lost: Vec<u64> = l.acked.iter().copied().filter(|a| !list.contains(a)).collect();
    if !lost.is_empty() {
        report.violations.push(format!(
            "writer {i} ({at}): acknowledged appends lost: {lost:?} (list ends {:?})",
            &list[list.len().saturating_sub(5)..]
        ));
    }
    let stray: Vec<u64> = list
        .iter()
        .copied()
        .filter(|x| !l.acked.contains(x) && !l.unknown.contains(x))
        .collect();
    if !stray.is_empty() {
        report
            .violations
            .push(format!("writer {i}: present but refused: {stray:?}"));
    }
}

/// Appends 1, 2, 3, ... to one session by compare-and-set through random nodes; now and
/// then rotates its id; some destroy their session at the end.
async fn writer(
    net: Arc<Net>,
    nodes: usize,
    mut token: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    destroy_at_end: bool,
) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut l = Ledger::default();
    let mut next = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.gen_range(0..nodes);
        let get = Request::Get {
            token: token.clone(),
            names: Vec::new(),
        };
        let s = match call(&net, i, get).await {
            Outcome::Reply(Response::Session(s)) => s,
            _ => {
                sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if let Some(t) = &s.token {
            token = t.clone();
        }
        let mut list = list_of(&s);
        list.push(next);
        let joined = list.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        let set = Request::Set {
            token: token.clone(),
            if_version: Some(s.meta.version),
            puts: [("list".to_string(), Bytes::from(joined))].into_iter().collect(),
            deletes: Vec::new(),
        };
        let i = rng.gen_range(0..nodes);
        match call(&net, i, set).await {
            Outcome::Reply(Response::Session(w)) => {
                if l.acked_versions.contains(&s.meta.version) {
                    l.violations.push(format!(
                        "double acknowledgement: if_version {} accepted twice (the second at node {i})",
                        s.meta.version
                    ));
                }
                l.acked_versions.push(s.meta.version);
                if let Some(t) = w.token {
                    token = t;
                }
                tracing::debug!(target: "sim", append = next, node = i, if_version = s.meta.version, session = %sessync_proto::Token::verify(&token, &super::keys()).map(|t| t.session_id.to_string()).unwrap_or_default(), "acknowledged");
                l.acked.push(next);
                next += 1;
            }
            Outcome::Reply(Response::Error(e)) if e.code == ErrorCode::Indeterminate => {
                l.unknown.push(next);
                next += 1;
            }
            Outcome::Unknown => {
                l.unknown.push(next);
                next += 1;
            }
            _ => {}
        }
        if rng.gen_bool(0.02) {
            let i = rng.gen_range(0..nodes);
            match call(&net, i, Request::Rotate { token: token.clone() }).await {
                Outcome::Reply(Response::Session(r)) => match r.token {
                    Some(t) => {
                        let sid = |t: &str| {
                            sessync_proto::Token::verify(t, &super::keys())
                                .map(|t| t.session_id.to_string())
                                .unwrap_or_default()
                        };
                        tracing::debug!(target: "sim", from = %sid(&token), to = %sid(&t), node = i, version = r.meta.version, "rotated");
                        l.rotated_away.push(std::mem::replace(&mut token, t));
                    }
                    None => l.violations.push("ROTATE answered without a token".into()),
                },
                Outcome::Reply(Response::Error(e)) if e.code != ErrorCode::Indeterminate => {}
                Outcome::NotSent => {}
                _ => {
                    l.lost_track = true;
                    break;
                }
            }
        }
        sleep(Duration::from_millis(rng.gen_range(0..20))).await;
    }
    if destroy_at_end && !l.lost_track {
        for _ in 0..10 {
            let i = rng.gen_range(0..nodes);
            match call(&net, i, Request::Destroy { token: token.clone() }).await {
                Outcome::Reply(Response::Done) => {
                    tracing::debug!(target: "sim", node = i, token = %token, "destroyed");
                    l.destroyed = true;
                    break;
                }
                Outcome::Reply(Response::Error(e)) if e.code != ErrorCode::Indeterminate => {
                    sleep(Duration::from_millis(100)).await;
                }
                Outcome::NotSent => sleep(Duration::from_millis(100)).await,
                // Maybe destroyed: nothing can be checked either way.
                _ => {
                    l.lost_track = true;
                    break;
                }
            }
        }
    }
    l.token = token;
    l
}
