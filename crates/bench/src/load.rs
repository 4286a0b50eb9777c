//! The load loop: `connections` workers, each a tight pipelined loop (write `depth`
//! requests, read `depth` replies), the same loop for every target so that only the server
//! differs. Latency is measured per request, from the moment its batch is written to the
//! moment its reply is parsed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_proto::{Attributes, PackedAttributes};

use crate::wire::{self, Outcome};

mod conn;

use conn::{echo_in_order, resp_in_order, sessync_by_id, Conn, Parse, Pending, NO_SLOT};

/// Every network wait of the bench is bounded by this.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the requests of a scenario go, and which requests they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// GET, always at the node that owns the session.
    Local,
    /// GET, round-robin across the nodes: every access moves the session.
    Move,
    /// GET, 90% at the owner and 10% at another node (which takes the session over).
    #[value(name = "sticky-90")]
    #[serde(rename = "sticky-90")]
    Sticky90,
    /// CREATE of new sessions.
    Create,
    /// GET and SET at the owner, `--write-pct` percent SETs of one attribute.
    Mixed,
}

impl Scenario {
    /// The request mix, which is all that matters to a central store like Redis.
    pub(crate) fn mix(self) -> Mix {
        match self {
            Scenario::Local | Scenario::Move | Scenario::Sticky90 => Mix::Read,
            Scenario::Mixed => Mix::Mixed,
            Scenario::Create => Mix::Create,
        }
    }

    /// Whether requests go to nodes other than the session's owner.
    fn crosses_nodes(self) -> bool {
        matches!(self, Scenario::Move | Scenario::Sticky90)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Local => "local",
            Scenario::Move => "move",
            Scenario::Sticky90 => "sticky-90",
            Scenario::Create => "create",
            Scenario::Mixed => "mixed",
        }
    }
}

/// A request mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mix {
    /// Reads only.
    Read,
    /// Reads and writes.
    Mixed,
    /// Creates only.
    Create,
}

impl Mix {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mix::Read => "read",
            Mix::Mixed => "mixed",
            Mix::Create => "create",
        }
    }
}

/// The server a run talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// sessync nodes (client addresses), in node order.
    Sessync(Vec<SocketAddr>),
    /// Redis, a hash per session: HGETALL (+ EXPIRE), HSET + EXPIRE.
    RedisHash(SocketAddr),
    /// Redis, a string per session: GET, SET .. EX.
    RedisString(SocketAddr),
    /// The loopback echo baseline: requests and replies of these sizes in bytes.
    Echo {
        /// Where it listens.
        addr: SocketAddr,
        /// Bytes per request frame.
        req_len: usize,
        /// Bytes per reply frame.
        reply_len: usize,
    },
}

impl Target {
    /// A short label for tables.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Target::Sessync(_) => "sessync",
            Target::RedisHash(_) => "redis-hash",
            Target::RedisString(_) => "redis-string",
            Target::Echo { .. } => "echo",
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Target::Sessync(v) => v.clone(),
            Target::RedisHash(a) | Target::RedisString(a) | Target::Echo { addr: a, .. } => vec![*a],
        }
    }
}

/// What every run does, whatever the target.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Workload {
    /// The scenario.
    pub(crate) scenario: Scenario,
    /// Workers, each with its own connection (one per node for `move` and `sticky-90`).
    pub(crate) connections: usize,
    /// Requests written before the replies are read.
    pub(crate) depth: usize,
    /// Sessions made before measuring, split among the workers.
    pub(crate) sessions: usize,
    /// Bytes of attribute values per session.
    pub(crate) size: usize,
    /// Attributes per session.
    pub(crate) attrs: usize,
    /// Percent of SETs in `mixed`.
    pub(crate) write_pct: u32,
    /// Idle TTL in seconds that Redis's EXPIRE sets (sessync nodes use their own default).
    pub(crate) ttl_secs: u64,
    /// Whether a Redis hash read also sends EXPIRE (a session read refreshes the idle TTL,
    /// as a sessync GET does).
    pub(crate) redis_touch: bool,
}

impl Workload {
    /// The attributes of one session: `attr0..`, values filling `size` bytes.
    pub(crate) fn attributes(&self) -> Attributes {
        session_attributes(self.size, self.attrs)
    }
}

/// `n` attributes named `attr0..` whose values add up to `size` bytes.
pub(crate) fn session_attributes(size: usize, n: usize) -> Attributes {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            let len = size / n + usize::from(i < size % n);
            let value: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
            (format!("attr{i}"), Bytes::from(value))
        })
        .collect()
}

/// How long to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Unmeasured time before measuring.
    pub(crate) warmup: Duration,
    /// Measured time (an upper bound when `requests` is set).
    pub(crate) duration: Duration,
    /// Stop after this many measured requests.
    pub(crate) requests: Option<u64>,
}

/// One measured run.
pub(crate) struct Sample {
    /// Measured requests (a Redis hash request is two commands: HGETALL/HSET and EXPIRE).
    pub(crate) requests: u64,
    /// Seconds from the start of measuring to the last measured reply.
    pub(crate) elapsed: f64,
    /// Latency per request, nanoseconds.
    pub(crate) hist: Histogram<u64>,
    /// Failed requests by error name.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Average bytes written per request (all requests, warm-up included).
    pub(crate) req_bytes: f64,
    /// Average bytes read per request.
    pub(crate) reply_bytes: f64,
}

impl Sample {
    /// Adds another slice of the same target and workload.
    pub(crate) fn merge(&mut self, other: Sample) -> anyhow::Result<()> {
        let (a, b) = (self.requests.max(1) as f64, other.requests.max(1) as f64);
        self.req_bytes = (self.req_bytes * a + other.req_bytes * b) / (a + b);
        self.reply_bytes = (self.reply_bytes * a + other.reply_bytes * b) / (a + b);
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.hist.add(&other.hist)?;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        Ok(())
    }

    pub(crate) fn throughput(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.requests as f64 / self.elapsed
        } else {
            0.0
        }
    }

    /// A latency quantile in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// A session a worker uses: its sessync token (or Redis key) and the node that owns it.
struct Slot {
    key: String,
    owner: usize,
}

/// What every worker shares with the run.
struct Control {
    phase: AtomicU8,
    measured: AtomicU64,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Data the workers' requests carry, made once.
struct Payload {
    packed: PackedAttributes,
    /// (name, value) pairs for HSET and single-attribute SETs.
    pairs: Vec<(String, Bytes)>,
    /// The whole session as one string (Redis string mode).
    blob: Bytes,
    ttl: String,
}

struct Worker {
    id: usize,
    target: Target,
    wl: Arc<Workload>,
    payload: Arc<Payload>,
    /// Indexed by node; `None` where this worker never sends.
    conns: Vec<Option<Conn>>,
    home: usize,
    slots: Vec<Slot>,
    cursor: usize,
    rng: StdRng,
    rid: u64,
    created: u64,
    errors: BTreeMap<String, u64>,
    measured: u64,
    last_done: Option<Instant>,
    all_requests: u64,
}

/// The result of one worker.
struct WorkerReport {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    measured: u64,
    last_done: Option<Instant>,
    all_requests: u64,
    bytes_out: u64,
    bytes_in: u64,
}

impl Worker {
    async fn new(
        id: usize,
        target: Target,
        wl: Arc<Workload>,
        payload: Arc<Payload>,
    ) -> anyhow::Result<Worker> {
        let addrs = target.addrs();
        let home = id % addrs.len();
        let mut conns = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            let needed = i == home || (matches!(target, Target::Sessync(_)) && wl.scenario.crosses_nodes());
            conns.push(if needed {
                Some(Conn::open(*addr, matches!(target, Target::Sessync(_))).await?)
            } else {
                None
            });
        }
        Ok(Worker {
            id,
            target,
            wl,
            payload,
            conns,
            home,
            slots: Vec::new(),
            cursor: 0,
            rng: StdRng::seed_from_u64(0x5e55_1000 + id as u64),
            rid: 0,
            created: 0,
            errors: BTreeMap::new(),
            measured: 0,
            last_done: None,
            all_requests: 0,
        })
    }

    fn parse(&self) -> Parse {
        match self.target {
            Target::Sessync(_) => sessync_by_id,
            Target::RedisHash(_) | Target::RedisString(_) => resp_in_order,
            Target::Echo { .. } => echo_in_order,
        }
    }

    fn conn(&mut self, node: usize) -> anyhow::Result<&mut Conn> {
        self.conns
            .get_mut(node)
            .and_then(Option::as_mut)
            .context("no connection to that node")
    }

    /// Makes `n` sessions at the home node before measuring.
    async fn make_sessions(&mut self, n: usize) -> anyhow::Result<()> {
        let home = self.home;
        let mut made = 0;
        while made < n {
            let batch = (n - made).min(64);
            let keys: Vec<String> = (0..batch).map(|_| self.next_key()).collect();
            for key in &keys {
                self.encode_create(home, key)?;
            }
            let parse = self.parse();
            let conn = self.conn(home)?;
            conn.flush().await?;
            conn.read_replies(parse, Instant::now(), false).await?;
            let results = std::mem::take(&mut conn.results);
            for ((_, outcome), key) in results.into_iter().zip(keys) {
                match (outcome, &self.target) {
                    (Outcome::Ok(Some(token)), Target::Sessync(_)) => self.slots.push(Slot {
                        key: token,
                        owner: home,
                    }),
                    (Outcome::Ok(_), Target::Sessync(_)) => bail!("CREATE reply without a token"),
                    (Outcome::Ok(_), _) => self.slots.push(Slot { key, owner: home }),
                    (Outcome::Err(e), _) => bail!("making the sessions: {e}"),
                }
            }
            made += batch;
        }
        Ok(())
    }

    fn next_key(&mut self) -> String {
        self.created += 1;
        format!(
            "sess:{:08x}{:08x}:{}:{}",
            self.rng.gen::<u32>(),
            self.rng.gen::<u32>(),
            self.id,
            self.created
        )
    }

    fn encode_create(&mut self, node: usize, key: &str) -> anyhow::Result<()> {
        self.rid += 1;
        let rid = self.rid;
        let (target, payload, ttl) = (
            self.target.clone(),
            self.payload.clone(),
            self.payload.ttl.clone(),
        );
        let conn = self.conn(node)?;
        let replies = match target {
            Target::Sessync(_) => {
                wire::sessync_create(&mut conn.wbuf, rid, &payload.packed);
                1
            }
            Target::RedisHash(_) => {
                let mut args: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
                for (k, v) in &payload.pairs {
                    args.push(k.as_bytes());
                    args.push(v);
                }
                wire::resp_cmd(&mut conn.wbuf, &args);
                wire::resp_cmd(&mut conn.wbuf, &[b"EXPIRE", key.as_bytes(), ttl.as_bytes()]);
                2
            }
            Target::RedisString(_) => {
                wire::resp_cmd(
                    &mut conn.wbuf,
                    &[b"SET", key.as_bytes(), &payload.blob, b"EX", ttl.as_bytes()],
                );
                1
            }
            Target::Echo { .. } => bail!("the echo target makes no sessions"),
        };
        conn.pending.push(Pending {
            slot: NO_SLOT,
            replies,
            rid,
            done: false,
        });
        Ok(())
    }

    /// Encodes one request of the scenario's mix into the connection it goes to.
    fn encode_one(&mut self) -> anyhow::Result<()> {
        let scenario = self.wl.scenario;
        if let Target::Echo {
            req_len, reply_len, ..
        } = self.target
        {
            let conn = self.conn(self.home)?;
            wire::echo_request(&mut conn.wbuf, req_len, reply_len);
            conn.pending.push(Pending {
                slot: NO_SLOT,
                replies: 1,
                rid: 0,
                done: false,
            });
            return Ok(());
        }
        if scenario == Scenario::Create {
            let key = if matches!(self.target, Target::Sessync(_)) {
                String::new()
            } else {
                self.next_key()
            };
            return self.encode_create(self.home, &key);
        }
        let slot = self.cursor;
        self.cursor = (self.cursor + 1) % self.slots.len();
        let nodes = self.conns.len();
        let owner = self.slots[slot].owner;
        let node = match scenario {
            Scenario::Move => (owner + 1) % nodes,
            Scenario::Sticky90 if nodes > 1 && self.rng.gen_ratio(1, 10) => {
                (owner + 1 + self.rng.gen_range(0..nodes - 1)) % nodes
            }
            _ => owner,
        };
        let write = scenario == Scenario::Mixed && self.rng.gen_range(0..100) < self.wl.write_pct;
        let attr = self.rng.gen_range(0..self.payload.pairs.len());
        self.rid += 1;
        let rid = self.rid;
        let (target, payload, touch) = (self.target.clone(), self.payload.clone(), self.wl.redis_touch);
        let key = std::mem::take(&mut self.slots[slot].key);
        let conn = self.conn(node)?;
        let (name, value) = &payload.pairs[attr];
        let replies = match (target, write) {
            (Target::Sessync(_), false) => {
                wire::sessync_get(&mut conn.wbuf, rid, &key);
                1
            }
            (Target::Sessync(_), true) => {
                wire::sessync_set(&mut conn.wbuf, rid, &key, name, value);
                1
            }
            (Target::RedisHash(_), false) => {
                wire::resp_cmd(&mut conn.wbuf, &[b"HGETALL", key.as_bytes()]);
                if touch {
                    wire::resp_cmd(
                        &mut conn.wbuf,
                        &[b"EXPIRE", key.as_bytes(), payload.ttl.as_bytes()],
                    );
                    2
                } else {
                    1
                }
            }
            (Target::RedisHash(_), true) => {
                wire::resp_cmd(&mut conn.wbuf, &[b"HSET", key.as_bytes(), name.as_bytes(), value]);
                wire::resp_cmd(
                    &mut conn.wbuf,
                    &[b"EXPIRE", key.as_bytes(), payload.ttl.as_bytes()],
                );
                2
            }
            (Target::RedisString(_), false) => {
                wire::resp_cmd(&mut conn.wbuf, &[b"GET", key.as_bytes()]);
                1
            }
            (Target::RedisString(_), true) => {
                wire::resp_cmd(
                    &mut conn.wbuf,
                    &[
                        b"SET",
                        key.as_bytes(),
                        &payload.blob,
                        b"EX",
                        payload.ttl.as_bytes(),
                    ],
                );
                1
            }
            (Target::Echo { .. }, _) => unreachable!("handled above"),
        };
        conn.pending.push(Pending {
            slot,
            replies,
            rid,
            done: false,
        });
        self.slots[slot].key = key;
        Ok(())
    }

    /// One batch: encode `depth` requests, write them, read every reply.
    async fn batch(&mut self, record: bool) -> anyhow::Result<()> {
        for _ in 0..self.wl.depth {
            self.encode_one()?;
        }
        let parse = self.parse();
        let start = Instant::now();
        for c in self.conns.iter_mut().flatten() {
            c.flush().await?;
        }
        let mut busy = self.conns.iter_mut().flatten().filter(|c| !c.pending.is_empty());
        match (busy.next(), busy.next()) {
            (Some(one), None) => one.read_replies(parse, start, record).await?,
            (first, second) => {
                let all = first.into_iter().chain(second).chain(busy);
                futures_util::future::try_join_all(all.map(|c| c.read_replies(parse, start, record))).await?;
            }
        }
        let done = Instant::now();
        for node in 0..self.conns.len() {
            let Some(conn) = self.conns[node].as_mut() else {
                continue;
            };
            for (slot, outcome) in conn.results.drain(..) {
                match outcome {
                    Outcome::Ok(token) => {
                        if let (Some(token), Some(s)) = (token, self.slots.get_mut(slot)) {
                            // A new token: the session now lives at the node that answered.
                            s.key = token;
                            s.owner = node;
                        }
                    }
                    Outcome::Err(e) => *self.errors.entry(e).or_default() += 1,
                }
            }
        }
        self.all_requests += self.wl.depth as u64;
        if record {
            self.measured += self.wl.depth as u64;
            self.last_done = Some(done);
        }
        Ok(())
    }

    async fn run(mut self, ctl: Arc<Control>) -> anyhow::Result<WorkerReport> {
        // Bytes per request count the measured loop only, not the sessions made before it.
        for c in self.conns.iter_mut().flatten() {
            c.bytes_out = 0;
            c.bytes_in = 0;
        }
        loop {
            let phase = ctl.phase.load(Ordering::Relaxed);
            if phase == STOP {
                break;
            }
            let record = phase == MEASURE;
            self.batch(record).await?;
            if record {
                ctl.measured.fetch_add(self.wl.depth as u64, Ordering::Relaxed);
            }
        }
        let mut hist = new_hist();
        let (mut bytes_out, mut bytes_in) = (0, 0);
        for c in self.conns.iter().flatten() {
            hist.add(&c.hist)?;
            bytes_out += c.bytes_out;
            bytes_in += c.bytes_in;
        }
        Ok(WorkerReport {
            hist,
            errors: self.errors,
            measured: self.measured,
            last_done: self.last_done,
            all_requests: self.all_requests,
            bytes_out,
            bytes_in,
        })
    }
}

/// Runs one workload against one target: connect, make the sessions, warm up, measure.
pub(crate) async fn run(
    target: Target,
    wl: &Workload,
    timing: Timing,
    progress: &ProgressBar,
) -> anyhow::Result<Sample> {
    let wl = Arc::new(wl.clone());
    let attrs = wl.attributes();
    let blob: Vec<u8> = attrs.values().flat_map(|v| v.iter().copied()).collect();
    let payload = Arc::new(Payload {
        packed: PackedAttributes::pack(&attrs),
        pairs: attrs.into_iter().collect(),
        blob: Bytes::from(blob),
        ttl: wl.ttl_secs.to_string(),
    });
    let per_worker = (wl.sessions / wl.connections.max(1)).max(wl.depth).max(1);
    let mut workers = Vec::with_capacity(wl.connections);
    for id in 0..wl.connections.max(1) {
        workers.push(Worker::new(id, target.clone(), wl.clone(), payload.clone()).await?);
    }
    if wl.scenario != Scenario::Create && !matches!(target, Target::Echo { .. }) {
        progress.set_message(format!("{}: making sessions", target.label()));
        let made =
            futures_util::future::try_join_all(workers.iter_mut().map(|w| w.make_sessions(per_worker)));
        made.await
            .with_context(|| format!("{}: making sessions", target.label()))?;
    }

    let ctl = Arc::new(Control {
        phase: AtomicU8::new(WARMUP),
        measured: AtomicU64::new(0),
    });
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(ctl.clone())))
        .collect();
    progress.set_message(format!("{} {}: warming up", target.label(), wl.scenario.name()));
    tokio::time::sleep(timing.warmup).await;
    let t0 = Instant::now();
    ctl.phase.store(MEASURE, Ordering::Relaxed);
    progress.set_message(format!("{} {}", target.label(), wl.scenario.name()));
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let elapsed = t0.elapsed();
        let measured = ctl.measured.load(Ordering::Relaxed);
        match timing.requests {
            Some(n) => progress.set_position(measured.min(n) * 1000 / n.max(1)),
            None => {
                progress.set_position((elapsed.as_secs_f64() / timing.duration.as_secs_f64() * 1000.0) as u64)
            }
        }
        if elapsed >= timing.duration || timing.requests.is_some_and(|n| measured >= n) {
            break;
        }
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
    }
    ctl.phase.store(STOP, Ordering::Relaxed);

    let mut hist = new_hist();
    let mut errors = BTreeMap::new();
    let (mut requests, mut all, mut out, mut inn) = (0u64, 0u64, 0u64, 0u64);
    let mut end = t0;
    for t in tasks {
        let r = t.await.context("worker panicked")??;
        hist.add(&r.hist)?;
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        requests += r.measured;
        all += r.all_requests;
        out += r.bytes_out;
        inn += r.bytes_in;
        if let Some(d) = r.last_done {
            end = end.max(d);
        }
    }
    Ok(Sample {
        requests,
        elapsed: end.duration_since(t0).as_secs_f64(),
        hist,
        errors,
        req_bytes: out as f64 / all.max(1) as f64,
        reply_bytes: inn as f64 / all.max(1) as f64,
    })
}
