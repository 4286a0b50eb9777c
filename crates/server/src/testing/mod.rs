//! The deterministic simulation (feature `testing`): the node's real cross-node logic
//! (`Node::handle`, the fetch and failover, replication, the peer handler and the table)
//! runs over a simulated network ([`net`]) and a virtual clock, on one thread, driven by
//! one seed. Faults: message delay, loss, duplication and reordering; full and partial
//! partitions and their heals; process pauses of any length; a crash and restart. A
//! workload of compare-and-set appends, reads that move sessions, rotations and
//! destructions runs meanwhile, and [`simulate`] checks the promises afterwards (see
//! [`Report::violations`]).
//!
//! Why this and not a sans-IO rewrite or turmoil: the logic under test is the production
//! code itself, unchanged; the simulation replaces only what crosses process boundaries
//! (peer requests, in `peer_link::Peers`, and the wall clock, in `clock`). Each node reads
//! the virtual clock through an offset of its own, drawn from the seed within
//! [`MAX_CLOCK_SKEW`] (protocol.md section 1): a task-local that the simulation sets on
//! every task of a node and `clock::spawn_keeping_clock` carries into the tasks a node
//! spawns. What it does not model: clock drift (offsets are fixed), a paused process's own
//! timers (its IO is held, its timers run), and the TCP and TLS layers (tested over
//! sockets).
//!
//! Replay: a violation names its seed; `simulate(seed, ..)` runs the same schedule again
//! (session ids come from the seed too, on the simulation's thread).
//!
//! From bytes: [`simulate_bytes`] runs the [`Schedule`] a byte string stands for (seed,
//! cluster, workload, weather, and each fault with its time), so that a fuzzer explores
//! the simulator (the `handover` target, fuzz/); every byte string is a valid schedule
//! and the same bytes replay the same run.

mod net;
mod schedule;
mod workload;

pub use net::{Traffic, Weather};
pub use schedule::{Fault, FaultKind, Schedule, DELAY_US, DUP, FAULT_LEN, HEADER_LEN, LOSS, SPIKE};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_proto::Keyring;
use tokio::time::{sleep, Duration, Instant};

use crate::clock::sim::{on_clock, on_clock_sync};
use crate::config::NodeConfig;
use crate::node::Node;
use net::{Net, NetHandle, NetState, Slot};

/// What one simulation runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Backups per session.
    pub replicas: u8,
    /// Sessions appended to by compare-and-set, one writer each.
    pub writers: usize,
    /// Sessions read through random nodes (moving them).
    pub readers: usize,
    /// Readers that chase the writers' sessions through random nodes (so that moves race
    /// the writes, rotations and destructions).
    pub chasers: usize,
    /// Whether every writer destroys its session at the end (else one in four does).
    pub destroy_all: bool,
    /// How long faults are injected (virtual time), before everything heals.
    pub chaos: Duration,
    /// Whether a node may crash (and restart empty) once.
    pub crash: bool,
    /// Whether processes may be paused.
    pub pauses: bool,
    /// Whether the network loses, duplicates and delays messages (besides cuts).
    pub weather: bool,
    /// Whether to inject faults at all (without: a quiet cluster, which must promote
    /// nothing and report nothing missing).
    pub faults: bool,
    /// The largest difference between two nodes' clocks: each node's clock is off the
    /// simulation's by an offset drawn from the seed within half of this either way
    /// (protocol.md section 1 allows up to [`MAX_CLOCK_SKEW`] between nodes).
    pub skew: Duration,
}

/// The clock skew between two nodes that protocol.md section 1 allows, and the simulation
/// draws within by default.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_millis(100);

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            replicas: 1,
            writers: 6,
            readers: 4,
            chasers: 0,
            destroy_all: false,
            chaos: Duration::from_secs(8),
            crash: true,
            pauses: true,
            weather: true,
            faults: true,
            skew: MAX_CLOCK_SKEW,
        }
    }
}

/// What a simulation saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed, to replay it.
    pub seed: u64,
    /// Appends acknowledged.
    pub acked: usize,
    /// Writes whose outcome the client could not know.
    pub unknown: usize,
    /// The faults injected, in order (for a failure report).
    pub events: Vec<String>,
    /// Broken promises; empty when all held.
    pub violations: Vec<String>,
    /// Promotions counted by the nodes (for the quiet-cluster check).
    pub promotions: u64,
    /// The nodes' counters at the end (STATS names), summed over the processes running
    /// then (a crashed process's counts are gone with it).
    pub stats: BTreeMap<String, u64>,
    /// What the network did.
    pub traffic: Traffic,
}

impl Report {
    /// A node counter summed over the nodes (0 when no node counts it).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.get(name).copied().unwrap_or(0)
    }
}

/// Where the faults and the weather come from.
enum Plan<'a> {
    /// Drawn from the seed ([`simulate`]).
    Drawn,
    /// Set by a schedule ([`simulate_schedule`]).
    Scripted(Weather, &'a [Fault]),
}

/// Runs one simulation, faults and weather drawn from the seed. Deterministic for a seed.
pub fn simulate(seed: u64, opts: &SimOptions) -> Report {
    simulate_plan(seed, opts, Plan::Drawn)
}

/// Runs the schedule a byte string stands for ([`Schedule::decode`]; every byte string
/// is one). Deterministic for the bytes; a fuzz target's whole body.
pub fn simulate_bytes(data: &[u8]) -> Report {
    simulate_schedule(&Schedule::decode(data))
}

/// Runs a schedule: its seed drives the network's randomness and the clients, its
/// weather and faults are as written. [`Report::events`] starts with the schedule.
pub fn simulate_schedule(schedule: &Schedule) -> Report {
    let mut report = simulate_plan(
        u64::from(schedule.seed),
        &schedule.options(),
        Plan::Scripted(schedule.weather, &schedule.faults),
    );
    report.events.insert(0, format!("{schedule:?}"));
    report
}

fn simulate_plan(seed: u64, opts: &SimOptions, plan: Plan<'_>) -> Report {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Report {
                seed,
                violations: vec![format!("no runtime: {e}")],
                ..Report::default()
            }
        }
    };
    let report = rt.block_on(async {
        crate::clock::sim::set(1_800_000_000_000);
        sessync_proto::sim_ids::seed(seed);
        run(seed, opts, plan).await
    });
    crate::clock::sim::clear();
    sessync_proto::sim_ids::clear();
    drop(rt);
    report
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 99, 0, i as u8 + 1], 7800))
}

fn keys() -> Keyring {
    Keyring::single(b"simulated-cluster-secret-0123456789").unwrap_or_else(|_| unreachable!())
}

fn config(i: usize, opts: &SimOptions) -> NodeConfig {
    let mut c = NodeConfig::new(
        SocketAddr::from(([10, 99, 0, i as u8 + 1], 7700)),
        addr(i),
        keys(),
    );
    c.peers = (0..opts.nodes).map(addr).collect();
    c.replicas = opts.replicas;
    c.peer_timeout = Duration::from_millis(500);
    c
}

/// Starts the node process for host `i` on the simulated network, with the background
/// tasks `start` would run (late replies come through the network itself), on the host's
/// clock (`clock` ms off the simulation's).
fn boot(
    net: &Arc<Net>,
    i: usize,
    opts: &SimOptions,
    clock: i64,
) -> (Arc<Node>, Vec<tokio::task::JoinHandle<()>>) {
    let (orphans, _) = tokio::sync::mpsc::channel(1);
    let (refresh_tx, mut refresh_rx) = tokio::sync::mpsc::channel(crate::REFRESH_QUEUE);
    let node = Arc::new(on_clock_sync(clock, || {
        Node::new(config(i, opts), addr(i), orphans, refresh_tx)
    }));
    node.peers.use_sim(Arc::new(NetHandle(net.clone())));
    let mut tasks = Vec::new();
    let n = node.clone();
    tasks.push(tokio::spawn(on_clock(clock, async move {
        while let Some(id) = refresh_rx.recv().await {
            n.refresh_backups(id);
        }
    })));
    // The repair (a holder that restarted empty is sent its copies again, after a check
    // that the session was not destroyed meanwhile; orphaned copies are taken over), as
    // `start` runs it. The task holds its own shutdown sender: it is aborted with the
    // others when the node crashes or the run ends.
    let (stop, shutdown) = crate::shutdown::Shutdown::new();
    let n = node.clone();
    tasks.push(tokio::spawn(on_clock(clock, async move {
        let _stop = stop;
        crate::node::repair_loop(n, shutdown).await;
    })));
    let n = node.clone();
    tasks.push(tokio::spawn(on_clock(clock, async move {
        let mut shard = 0;
        loop {
            sleep(Duration::from_millis(100)).await;
            n.table.sweep_shard(shard, crate::clock::now_ms());
            shard = (shard + 1) % crate::table::SHARDS;
        }
    })));
    (node, tasks)
}

async fn run(seed: u64, opts: &SimOptions, plan: Plan<'_>) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let weather = Weather {
        loss: [0.0, 0.0, 0.01, 0.05][rng.gen_range(0..4)],
        dup: [0.0, 0.02][rng.gen_range(0..2)],
        max_delay: Duration::from_micros([200, 2_000, 20_000][rng.gen_range(0..3)]),
        spike: [0.0, 0.001, 0.01][rng.gen_range(0..3)],
    };
    let weather = if let Plan::Scripted(w, _) = plan {
        w
    } else if opts.faults && opts.weather {
        weather
    } else {
        Weather {
            loss: 0.0,
            dup: 0.0,
            max_delay: Duration::from_micros(500),
            spike: 0.0,
        }
    };
    let net = Arc::new(Net {
        state: Mutex::new(NetState {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            slots: Vec::new(),
            cuts: Default::default(),
            weather,
            traffic: Traffic::default(),
        }),
    });
    // Each host's clock, drawn apart from the faults so that they stay what they were.
    let mut clocks = StdRng::seed_from_u64(seed ^ 0xc10c);
    let half = (opts.skew.as_millis() / 2) as i64;
    for i in 0..opts.nodes {
        let clock = clocks.gen_range(-half..=half);
        let (node, tasks) = boot(&net, i, opts, clock);
        net.lock().slots.push(Slot {
            clock,
            addr: addr(i),
            node,
            alive: true,
            paused_until: None,
            incarnation: 0,
            tasks,
        });
    }
    let mut report = Report {
        seed,
        events: vec![
            format!("{weather:?}"),
            format!(
                "clocks off by {:?} ms",
                net.lock().slots.iter().map(|s| s.clock).collect::<Vec<_>>()
            ),
        ],
        ..Report::default()
    };
    let work = workload::Workload::start(&net, opts, seed).await;
    let work = match work {
        Ok(w) => w,
        Err(why) => {
            report.violations.push(why);
            net.lock().slots.clear();
            return report;
        }
    };
    let started = Instant::now();
    if let Plan::Scripted(_, faults) = plan {
        for f in faults {
            sleep(f.after).await;
            let what = apply(&net, f.what, opts).await;
            report.events.push(format!("{:?}: {what}", started.elapsed()));
        }
        tokio::time::sleep_until(started + opts.chaos).await;
        heal(&net).await;
        report.events.push(format!("{:?}: healed", started.elapsed()));
    } else if opts.faults {
        let mut crashed = !opts.crash;
        while started.elapsed() < opts.chaos {
            sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
            let fault = match draw(&mut rng, opts, &mut crashed) {
                Some(f) => apply(&net, f, opts).await,
                None => "nothing".to_string(),
            };
            report.events.push(format!("{:?}: {fault}", started.elapsed()));
        }
        heal(&net).await;
        report.events.push(format!("{:?}: healed", started.elapsed()));
    } else {
        sleep(opts.chaos).await;
    }
    // Let the workload run on a healed network, then stop it and check.
    sleep(Duration::from_secs(2)).await;
    work.finish(&net, &mut report).await;
    let slots: Vec<Arc<Node>> = net.lock().slots.iter().map(|s| s.node.clone()).collect();
    for n in slots {
        for (k, v) in n.stats.snapshot() {
            *report.stats.entry(k).or_default() += v;
        }
    }
    report.promotions = report.stat("promotions");
    report.traffic = net.lock().traffic;
    for s in net.lock().slots.iter_mut() {
        for t in s.tasks.drain(..) {
            t.abort();
        }
    }
    // Each node's peer links hold the network, which holds the nodes: without this the
    // nodes (and their tables) of every seed stayed in memory, ~230 KB a seed (11 GB
    // after 50 000 seeds).
    net.lock().slots.clear();
    report
}

/// One fault drawn from the seed: a cut between two hosts, an isolated host, a pause, or
/// (once per run, so that no more than `replicas` nodes lose their memory) a crash and
/// restart; `None` for nothing. Each heals by itself within seconds.
fn draw(rng: &mut StdRng, opts: &SimOptions, crashed: &mut bool) -> Option<FaultKind> {
    let n = opts.nodes;
    let a = rng.gen_range(0..n);
    let b = (a + rng.gen_range(1..n)) % n;
    let hold = Duration::from_millis(rng.gen_range(200..6000));
    match rng.gen_range(0..10) {
        0..=2 => Some(FaultKind::Cut { a, b, hold }),
        3..=4 => Some(FaultKind::Isolate { a, hold }),
        5..=7 if opts.pauses => {
            // Pauses of any length: sometimes far past the peer timeout and the client's.
            let length = if rng.gen_bool(0.3) {
                Duration::from_millis(rng.gen_range(5_000..25_000))
            } else {
                hold
            };
            Some(FaultKind::Pause { a, length })
        }
        _ if !*crashed => {
            *crashed = true;
            let down = Duration::from_millis(rng.gen_range(50..2000));
            Some(FaultKind::Crash { a, down })
        }
        _ => None,
    }
}

/// Injects one fault (a crash waits out its downtime); returns what it did, for the report.
async fn apply(net: &Arc<Net>, fault: FaultKind, opts: &SimOptions) -> String {
    match fault {
        FaultKind::Cut { a, b, hold } => {
            net.lock().cuts.insert((a.min(b), a.max(b)));
            let net = net.clone();
            tokio::spawn(async move {
                sleep(hold).await;
                net.lock().cuts.remove(&(a.min(b), a.max(b)));
            });
            format!("cut {a}-{b} for {hold:?}")
        }
        FaultKind::Isolate { a, hold } => {
            let pairs: Vec<(usize, usize)> = (0..opts.nodes)
                .filter(|&x| x != a)
                .map(|x| (a.min(x), a.max(x)))
                .collect();
            net.lock().cuts.extend(pairs.iter().copied());
            let net = net.clone();
            tokio::spawn(async move {
                sleep(hold).await;
                let mut st = net.lock();
                for p in &pairs {
                    st.cuts.remove(p);
                }
            });
            format!("isolate {a} for {hold:?}")
        }
        FaultKind::Pause { a, length } => {
            let until = Instant::now() + length;
            let mut st = net.lock();
            let slot = &mut st.slots[a];
            slot.paused_until = Some(slot.paused_until.map_or(until, |u| u.max(until)));
            format!("pause {a} for {length:?}")
        }
        FaultKind::Crash { a, down } => {
            crash(net, &[a], down, opts).await;
            format!("crash {a}, restarted after {down:?}")
        }
        FaultKind::CrashAll { down, .. } => {
            let all: Vec<usize> = (0..opts.nodes).collect();
            crash(net, &all, down, opts).await;
            format!("crash every node, restarted after {down:?}")
        }
    }
}

/// Crashes the processes of `hosts` at once and restarts them (empty) after `down`.
async fn crash(net: &Arc<Net>, hosts: &[usize], down: Duration, opts: &SimOptions) {
    {
        let mut st = net.lock();
        for &a in hosts {
            let slot = &mut st.slots[a];
            slot.alive = false;
            slot.paused_until = None;
            for t in slot.tasks.drain(..) {
                t.abort();
            }
        }
        // The dead process's connections close (its kernel sends FIN or RST): every peer
        // not cut off from it sees its connection end, as the peer port does.
        for &a in hosts {
            for (b, peer) in st.slots.iter().enumerate() {
                if b != a && !st.cuts.contains(&(a.min(b), a.max(b))) {
                    peer.node.forget_owner_heard(addr(a));
                }
            }
        }
    }
    sleep(down).await;
    for &a in hosts {
        let clock = net.lock().slots[a].clock;
        let (node, tasks) = boot(net, a, opts, clock);
        let mut st = net.lock();
        let slot = &mut st.slots[a];
        slot.node = node;
        slot.tasks = tasks;
        slot.alive = true;
        slot.incarnation += 1;
    }
}

/// Ends every fault: cuts healed, paused processes resumed.
async fn heal(net: &Arc<Net>) {
    let mut st = net.lock();
    st.cuts.clear();
    for s in st.slots.iter_mut() {
        s.paused_until = None;
    }
}
