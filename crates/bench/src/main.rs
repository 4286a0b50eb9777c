//! `sessync-bench`: load generator for sessync, run side by side with Redis and a raw
//! loopback echo baseline in the same process and the same run, reported as ratios.
//!
//! ```text
//! sessync-bench load   --scenario local,move [--nodes A,B,C | --spawn 3]
//!                      [--against-redis ADDR] [--connections 50] [--depth 16] ...
//! sessync-bench memory --sessions 1000000 --size 1024 --attrs 8 [--against-redis ADDR]
//! ```
//!
//! Every target is driven by the same client: `connections` tokio tasks, each a tight
//! pipelined loop over its own TCP connection (write `depth` requests, read `depth`
//! replies), speaking each server's wire format directly (the sessync-proto framing, RESP,
//! or the echo framing) with the same minimal reply parsing. See BENCHMARKS.md.

mod load;
mod memory;
mod report;
mod servers;
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
    Load(LoadArgs),
    /// Memory per session: a sessync node process against Redis.
    Memory(memory::MemoryArgs),
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
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => run_load(args),
        Command::Memory(args) => servers::runtime("client", 2).and_then(|rt| rt.block_on(memory::run(args))),
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
    for rep in 0..args.repeat.max(1) {
        pb.set_prefix(format!("run {}/{}", rep + 1, args.repeat.max(1)));
        let mut echo_sizes = None;
        for s in &scenarios {
            let sample = load::run(Target::Sessync(nodes.clone()), &workload(*s), timing, &pb)
                .await
                .with_context(|| format!("sessync {}", s.name()))?;
            echo_sizes.get_or_insert((
                sample.req_bytes.round() as usize,
                sample.reply_bytes.round() as usize,
            ));
            let what = match s {
                Scenario::Local | Scenario::Move | Scenario::Sticky90 => "GET",
                Scenario::Mixed => "GET/SET",
                Scenario::Create => "CREATE",
            };
            report.add(
                "sessync",
                s.name(),
                &format!("{what}, {} node(s)", nodes.len()),
                &sample,
            );
        }
        if let (Some(addr), Some((req_len, reply_len)), Some(case)) = (echo, echo_sizes, echo_case) {
            let target = Target::Echo {
                addr,
                req_len,
                reply_len,
            };
            let sample = load::run(target, &workload(scenarios[0]), timing, &pb)
                .await
                .context("echo")?;
            report.add(
                "echo",
                case,
                &format!("{req_len} B out, {reply_len} B back"),
                &sample,
            );
        }
        if let Some(addr) = args.against_redis {
            for (mix, s) in &mixes {
                for mode in &args.redis_mode {
                    if args.redis_flush {
                        redis_flushall(addr).await?;
                    }
                    let (target, what) = match (mode, mix) {
                        (RedisMode::Hash, Mix::Read) => (Target::RedisHash(addr), format!("HGETALL{touch}")),
                        (RedisMode::Hash, Mix::Mixed) => {
                            (Target::RedisHash(addr), format!("HGETALL{touch} / HSET + EXPIRE"))
                        }
                        (RedisMode::Hash, Mix::Create) => {
                            (Target::RedisHash(addr), "HSET (all) + EXPIRE".into())
                        }
                        (RedisMode::String, Mix::Read) => (Target::RedisString(addr), "GET".into()),
                        (RedisMode::String, Mix::Mixed) => (Target::RedisString(addr), "GET / SET EX".into()),
                        (RedisMode::String, Mix::Create) => (Target::RedisString(addr), "SET EX".into()),
                    };
                    let label = target.label();
                    let sample = load::run(target, &workload(*s), timing, &pb)
                        .await
                        .with_context(|| format!("{label} {}", mix.name()))?;
                    report.add(label, mix.name(), &what, &sample);
                }
            }
        }
    }
    pb.finish_and_clear();
    let ratios = report.ratios(&scenarios, echo_case);
    if args.json {
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
            "redis": args.against_redis.map(|a| a.to_string()),
            "redis_touch": !args.no_redis_touch,
        });
        println!("{}", serde_json::to_string_pretty(&report.json(config, &ratios))?);
    } else {
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
        report.print(&header, &ratios);
    }
    Ok(())
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
