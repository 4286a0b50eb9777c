//! `sessync-bench`: load generator for sessync, run side by side with Redis and a raw
//! loopback echo baseline in the same process and the same run, reported as ratios.
//!
//! ```text
//! sessync-bench load   --scenario local,move [--nodes A,B,C | --spawn 3]
//!                      [--against-redis ADDR] [--connections 50] [--depth 16] ...
//! sessync-bench memory --sessions 1000000 --size 1024 --attrs 8 [--against-redis ADDR]
//! sessync-bench delay-proxy --listen ADDR --to ADDR [--delay 0.5ms]
//! ```
//!
//! Every target is driven by the same client: `connections` tokio tasks, each a tight
//! pipelined loop over its own TCP connection (write `depth` requests, read `depth`
//! replies), speaking each server's wire format directly (the sessync-proto framing, RESP,
//! or the echo framing) with the same minimal reply parsing. See BENCHMARKS.md.

mod delay;
mod load;
mod memory;
mod plot;
mod report;
mod servers;
mod tls;
mod wire;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::load::{Mix, Scenario, Target, Timing, Workload};
use crate::report::Report;

/// Load generator for sessync, side by side with Redis and a loopback echo baseline.
#[derive(Parser, Debug)]
#[command(name = "sessync-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Throughput and latency of one or more scenarios.
    Load(Box<LoadArgs>),
    /// Memory per session: a sessync node process against Redis.
    Memory(memory::MemoryArgs),
    /// A TCP proxy that delays each direction's bytes (a link with a real round trip).
    DelayProxy(delay::DelayArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum RedisMode {
    /// A hash per session: HGETALL (+ EXPIRE) to read, HSET + EXPIRE to write.
    Hash,
    /// A string per session: GET to read, SET .. EX to write the whole value.
    String,
}

/// Flags of `sessync-bench load`.
#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Scenarios to run, comma-separated, each in every repetition.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "local")]
    scenario: Vec<Scenario>,
    /// Client addresses of running sessync nodes, comma-separated, in node order.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// Without --nodes: start this many sessync nodes in this process.
    #[arg(long, default_value_t = 3)]
    spawn: usize,
    /// Worker threads of the in-process nodes' runtime (all nodes share it).
    #[arg(long, default_value_t = 2)]
    node_threads: usize,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Also run the same request mix against this Redis.
    #[arg(long)]
    against_redis: Option<SocketAddr>,
    /// Also run the sessync scenarios against a second set of running nodes (client
    /// addresses, comma-separated), e.g. the same cluster with `--replicas 1`; reported
    /// as ratios to the `--nodes` run, per repetition.
    #[arg(long, value_delimiter = ',', requires = "nodes")]
    against_nodes: Vec<SocketAddr>,
    /// The label of the `--against-nodes` rows and ratios.
    #[arg(long, default_value = "sessync-b")]
    against_label: String,
    /// How sessions are stored in Redis (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "hash,string")]
    redis_mode: Vec<RedisMode>,
    /// FLUSHALL the Redis before each Redis run (use a scratch instance).
    #[arg(long)]
    redis_flush: bool,
    /// Hash reads are HGETALL only, without the EXPIRE that refreshes the idle TTL.
    #[arg(long)]
    no_redis_touch: bool,
    /// Skip the loopback echo baseline.
    #[arg(long)]
    no_echo: bool,
    /// Worker threads of the echo server's runtime.
    #[arg(long, default_value_t = 2)]
    echo_threads: usize,
    /// Concurrent connections (workers). In `move` and `sticky-90` each worker holds one
    /// connection to every node and uses them in turn.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Pipelining depth: requests written before the replies are read.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Sessions made before measuring (split among the connections).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Bytes of attribute values per session.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Attributes per session.
    #[arg(long, default_value_t = 8)]
    attrs: usize,
    /// Percent of SETs (of one attribute) in `mixed`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    write_pct: u32,
    /// Measured time per target and scenario.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop a run after this many measured requests (or at --duration, whichever is first).
    #[arg(long)]
    requests: Option<u64>,
    /// Unmeasured time before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Repetitions; ratios are computed per repetition and their median reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Split each repetition's --duration (and --warmup) into this many slices, running the
    /// targets in turn slice by slice, so that background load on a shared machine falls
    /// on every target alike. A target's slices are merged into one sample.
    #[arg(long, default_value_t = 1)]
    slices: usize,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON document to this file (the table is still printed), and next
    /// to it, with the extension `.svg`, a plot of every row's latency CDF and throughput.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Connect to the sessync nodes (given with --nodes) over TLS, trusting this CA (PEM);
    /// Redis and echo stay plain.
    #[arg(long, requires = "nodes")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the nodes' certificates must carry.
    #[arg(long, default_value = "127.0.0.1")]
    tls_server_name: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => run_load(*args),
        Command::Memory(args) => servers::runtime("client", 2).and_then(|rt| rt.block_on(memory::run(args))),
        Command::DelayProxy(args) => delay::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn progress_bar(args: &LoadArgs) -> ProgressBar {
    if args.json || args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.depth > 0,
        "--connections and --depth must be positive"
    );
    if let Some(ca) = &args.tls_ca {
        tls::use_tls(ca, &args.tls_server_name)?;
    }
    // Servers first, each on a runtime of its own (never dropped inside another runtime).
    let cluster = if args.nodes.is_empty() {
        let max = (args.sessions * 4).max(1_000_000);
        Some(servers::InProcessCluster::start(
            args.spawn.max(1),
            args.node_threads,
            max,
        )?)
    } else {
        None
    };
    let nodes = match &cluster {
        Some(c) => c.client_addrs.clone(),
        None => args.nodes.clone(),
    };
    let echo = if args.no_echo {
        None
    } else {
        Some(servers::Echo::start(args.echo_threads)?)
    };
    let rt = servers::runtime("client", args.client_threads)?;
    let result = rt.block_on(load_all(&args, nodes, echo.as_ref().map(|e| e.addr)));
    drop(rt);
    if let Some(c) = cluster {
        c.stop();
    }
    result
}

async fn load_all(args: &LoadArgs, nodes: Vec<SocketAddr>, echo: Option<SocketAddr>) -> anyhow::Result<()> {
    let timing = Timing {
        warmup: args.warmup,
        duration: args.duration,
        requests: args.requests,
    };
    let workload = |scenario: Scenario| Workload {
        scenario,
        connections: args.connections,
        depth: args.depth,
        sessions: args.sessions,
        size: args.size,
        attrs: args.attrs,
        write_pct: args.write_pct,
        ttl_secs: 1800,
        redis_touch: !args.no_redis_touch,
    };
    let mut scenarios = args.scenario.clone();
    scenarios.dedup();
    let mut mixes: Vec<(Mix, Scenario)> = Vec::new();
    for s in &scenarios {
        if !mixes.iter().any(|(m, _)| *m == s.mix()) {
            mixes.push((s.mix(), *s));
        }
    }
    let pb = progress_bar(args);
    let mut report = Report::default();
    let echo_case = scenarios.first().map(|s| s.name());
    let touch = if args.no_redis_touch { "" } else { " + EXPIRE" };
    // Every job of a repetition, in the order they run within a slice.
    let mut jobs: Vec<Job> = Vec::new();
    for s in &scenarios {
        let what = match s {
            Scenario::Local | Scenario::Move | Scenario::Sticky90 => "GET",
            Scenario::Mixed => "GET/SET",
            Scenario::Create => "CREATE",
        };
        jobs.push(Job {
            kind: JobKind::Sessync,
            scenario: *s,
            case: s.name(),
            what: format!("{what}, {} node(s)", nodes.len()),
        });
        if !args.against_nodes.is_empty() {
            jobs.push(Job {
                kind: JobKind::SessyncB,
                scenario: *s,
                case: s.name(),
                what: format!("{what}, {} node(s)", args.against_nodes.len()),
            });
        }
    }
    if let (Some(_), Some(case)) = (echo, echo_case) {
        jobs.push(Job {
            kind: JobKind::Echo,
            scenario: scenarios[0],
            case,
            what: String::new(),
        });
    }
    if args.against_redis.is_some() {
        for (mix, s) in &mixes {
            for mode in &args.redis_mode {
                let what = match (mode, mix) {
                    (RedisMode::Hash, Mix::Read) => format!("HGETALL{touch}"),
                    (RedisMode::Hash, Mix::Mixed) => format!("HGETALL{touch} / HSET + EXPIRE"),
                    (RedisMode::Hash, Mix::Create) => "HSET (all) + EXPIRE".into(),
                    (RedisMode::String, Mix::Read) => "GET".into(),
                    (RedisMode::String, Mix::Mixed) => "GET / SET EX".into(),
                    (RedisMode::String, Mix::Create) => "SET EX".into(),
                };
                jobs.push(Job {
                    kind: JobKind::Redis(*mode),
                    scenario: *s,
                    case: mix.name(),
                    what,
                });
            }
        }
    }
    let slices = args.slices.max(1);
    let slice_timing = Timing {
        warmup: timing.warmup / slices as u32,
        duration: timing.duration / slices as u32,
        requests: timing.requests.map(|n| n.div_ceil(slices as u64)),
    };
    // The echo baseline uses the frame sizes of the first sessync scenario's first slice.
    let mut echo_sizes: Option<(usize, usize)> = None;
    for rep in 0..args.repeat.max(1) {
        let mut samples: Vec<Option<load::Sample>> = jobs.iter().map(|_| None).collect();
        for slice in 0..slices {
            pb.set_prefix(format!(
                "run {}/{} slice {}/{slices}",
                rep + 1,
                args.repeat.max(1),
                slice + 1
            ));
            for (i, job) in jobs.iter().enumerate() {
                let target = match job.kind {
                    JobKind::Sessync => Target::Sessync(nodes.clone()),
                    JobKind::SessyncB => Target::Sessync(args.against_nodes.clone()),
                    JobKind::Echo => {
                        let (req_len, reply_len) = echo_sizes.context("no sessync run to size the echo")?;
                        Target::Echo {
                            addr: echo.context("no echo server")?,
                            req_len,
                            reply_len,
                        }
                    }
                    JobKind::Redis(mode) => {
                        let addr = args.against_redis.context("no redis")?;
                        if args.redis_flush {
                            redis_flushall(addr).await?;
                        }
                        match mode {
                            RedisMode::Hash => Target::RedisHash(addr),
                            RedisMode::String => Target::RedisString(addr),
                        }
                    }
                };
                let label = target.label();
                let sample = load::run(target, &workload(job.scenario), slice_timing, &pb)
                    .await
                    .with_context(|| format!("{label} {}", job.case))?;
                if job.kind == JobKind::Sessync {
                    echo_sizes.get_or_insert((
                        sample.req_bytes.round() as usize,
                        sample.reply_bytes.round() as usize,
                    ));
                }
                match &mut samples[i] {
                    Some(acc) => acc.merge(sample)?,
                    slot => *slot = Some(sample),
                }
            }
        }
        for (job, sample) in jobs.iter().zip(samples) {
            let Some(sample) = sample else { continue };
            let what = match job.kind {
                JobKind::Echo => format!("{:.0} B out, {:.0} B back", sample.req_bytes, sample.reply_bytes),
                _ => job.what.clone(),
            };
            let label = match job.kind {
                JobKind::Sessync => "sessync",
                JobKind::SessyncB => args.against_label.as_str(),
                JobKind::Echo => "echo",
                JobKind::Redis(RedisMode::Hash) => "redis-hash",
                JobKind::Redis(RedisMode::String) => "redis-string",
            };
            report.add(label, job.case, &what, &sample);
        }
    }
    pb.finish_and_clear();
    let mut ratios = report.ratios(&scenarios, echo_case);
    if !args.against_nodes.is_empty() {
        ratios.extend(report.against(&scenarios, &args.against_label));
    }
    let config = json!({
        "scenarios": scenarios,
        "nodes": nodes.len(),
        "connections": args.connections,
        "depth": args.depth,
        "sessions": args.sessions,
        "size": args.size,
        "attrs": args.attrs,
        "write_pct": args.write_pct,
        "duration_secs": args.duration.as_secs_f64(),
        "warmup_secs": args.warmup.as_secs_f64(),
        "requests": args.requests,
        "repeat": args.repeat,
        "slices": args.slices,
        "redis": args.against_redis.map(|a| a.to_string()),
        "redis_touch": !args.no_redis_touch,
    });
    let doc = serde_json::to_string_pretty(&report.json(config, &ratios))?;
    let header = format!(
        "sessync-bench: {} conn(s) x pipeline {}, {} B in {} attrs, {} session(s), {} node(s), {:?} per run",
        args.connections,
        args.depth,
        args.size,
        args.attrs,
        args.sessions,
        nodes.len(),
        args.duration
    );
    if let Some(path) = &args.json_out {
        std::fs::write(path, &doc).with_context(|| format!("writing {}", path.display()))?;
        let title = format!("{header}, {} repetition(s)", args.repeat.max(1));
        report.plot(&path.with_extension("svg"), &title)?;
    }
    if args.json {
        println!("{doc}");
    } else {
        report.print(&header, &ratios);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Sessync,
    /// The `--against-nodes` cluster.
    SessyncB,
    Echo,
    Redis(RedisMode),
}

/// One target on one scenario, run once per slice of every repetition.
struct Job {
    kind: JobKind,
    scenario: Scenario,
    case: &'static str,
    what: String,
}

async fn redis_flushall(addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(load::IO_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .context("connecting to redis timed out")??;
    let mut out = bytes::BytesMut::new();
    wire::resp_cmd(&mut out, &[b"FLUSHALL"]);
    s.write_all(&out).await?;
    let mut input = bytes::BytesMut::new();
    loop {
        if let Some(o) = wire::resp_reply(&mut input)? {
            anyhow::ensure!(o == wire::Outcome::Ok(None), "FLUSHALL failed: {o:?}");
            return Ok(());
        }
        let n = tokio::time::timeout(load::IO_TIMEOUT, s.read_buf(&mut input)).await??;
        anyhow::ensure!(n > 0, "redis closed the connection");
    }
}
