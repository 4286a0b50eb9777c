//! Memory per session: a `sessync node` child process filled with N sessions (its RSS
//! growth and its own STATS `bytes`), against Redis's `used_memory` growth for the same N
//! sessions stored as hashes (with EXPIRE), in the same run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use rand::RngCore;
use serde_json::json;
use sessync_proto::PackedAttributes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::{session_attributes, IO_TIMEOUT};
use crate::wire::{self, Outcome};

/// Flags of `sessync-bench memory`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct MemoryArgs {
    /// Sessions to store.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: usize,
    /// Bytes of attribute values per session.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Attributes per session.
    #[arg(long, default_value_t = 8)]
    attrs: usize,
    /// The `sessync` binary to run as the node (default: next to this binary).
    #[arg(long)]
    sessync_bin: Option<PathBuf>,
    /// Also store the sessions in this Redis (a hash per session plus EXPIRE).
    #[arg(long)]
    against_redis: Option<SocketAddr>,
    /// FLUSHALL the Redis before and after (use a scratch instance).
    #[arg(long)]
    redis_flush: bool,
    /// Connections used to fill each store.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection while filling.
    #[arg(long, default_value_t = 128)]
    depth: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON object to this file (the table is still printed).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// A child `sessync node`, killed when dropped.
struct NodeChild {
    child: Child,
    client: SocketAddr,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn default_sessync_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("sessync");
    anyhow::ensure!(
        bin.exists(),
        "no sessync binary at {} (build it, or pass --sessync-bin)",
        bin.display()
    );
    Ok(bin)
}

fn spawn_node(bin: &PathBuf, max_sessions: usize) -> anyhow::Result<NodeChild> {
    let mut child = Command::new(bin)
        .args([
            "node",
            "--client",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:0",
            "--log",
            // A node without a secret file warns that it generated one; that is expected.
            "error",
        ])
        .args(["--max-sessions", &max_sessions.to_string(), "--max-memory", "1T"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut node = NodeChild {
        child,
        client: "0.0.0.0:0".parse()?,
    };
    let line = rx
        .recv_timeout(IO_TIMEOUT)
        .context("the node did not print its ready line in time")?;
    let client = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("client="))
        .with_context(|| format!("unexpected first line from the node: {line:?}"))?;
    node.client = client.parse()?;
    Ok(node)
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Bound on one control command (STATS, INFO, FLUSHALL of a million keys, ...).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

type Parse = fn(&mut BytesMut) -> anyhow::Result<Option<Outcome>>;

/// Writes `out`, then reads `replies` replies with `parse`, failing on any error reply.
async fn exchange(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    input: &mut BytesMut,
    replies: usize,
    parse: Parse,
) -> anyhow::Result<()> {
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(out))
        .await
        .context("write timed out")??;
    out.clear();
    let mut got = 0;
    while got < replies {
        match parse(input)? {
            Some(Outcome::Ok(_)) => got += 1,
            Some(Outcome::Err(e)) => bail!("store refused a write: {e}"),
            None => {
                let n = tokio::time::timeout(IO_TIMEOUT, stream.read_buf(input))
                    .await
                    .context("read timed out")??;
                anyhow::ensure!(n > 0, "connection closed");
            }
        }
    }
    Ok(())
}

/// Fills a store: `n` sessions over `conns` connections, `depth` at a time.
/// `per` is the number of replies each encoded session gets.
async fn fill<F>(
    addr: SocketAddr,
    args: &MemoryArgs,
    n: usize,
    encode: F,
    per: usize,
    parse: Parse,
) -> anyhow::Result<()>
where
    F: Fn(&mut BytesMut, u64) + Clone + Send + 'static,
{
    let conns = args.connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let share = n / conns + usize::from(c < n % conns);
        let depth = args.depth.max(1);
        let encode = encode.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = connect(addr).await?;
            let (mut out, mut input) = (BytesMut::new(), BytesMut::new());
            let mut done = 0;
            let mut rid = 0u64;
            while done < share {
                let k = (share - done).min(depth);
                for _ in 0..k {
                    rid += 1;
                    encode(&mut out, rid);
                }
                exchange(&mut stream, &mut out, &mut input, k * per, parse).await?;
                done += k;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn sessync_stats(addr: SocketAddr) -> anyhow::Result<Vec<(String, u64)>> {
    let mut s = connect(addr).await?;
    let mut out = BytesMut::new();
    wire::sessync_stats(&mut out, 1);
    s.write_all(&out).await?;
    let mut input = BytesMut::new();
    loop {
        if let Some(c) = wire::sessync_stats_reply(&mut input)? {
            return Ok(c);
        }
        let n = tokio::time::timeout(CONTROL_TIMEOUT, s.read_buf(&mut input))
            .await
            .context("no STATS reply in time")??;
        anyhow::ensure!(n > 0, "connection closed");
    }
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

/// Sends one command and returns its reply as text (bulk string or status line).
async fn redis_text(s: &mut TcpStream, args: &[&[u8]]) -> anyhow::Result<String> {
    let mut out = BytesMut::new();
    wire::resp_cmd(&mut out, args);
    s.write_all(&out).await?;
    let mut input = BytesMut::new();
    loop {
        if let Some(t) = wire::resp_bulk_text(&mut input)? {
            return Ok(t);
        }
        let n = tokio::time::timeout(CONTROL_TIMEOUT, s.read_buf(&mut input))
            .await
            .with_context(|| format!("no reply to redis {} in time", String::from_utf8_lossy(args[0])))??;
        anyhow::ensure!(n > 0, "connection closed");
    }
}

async fn redis_used_memory(s: &mut TcpStream) -> anyhow::Result<u64> {
    let info = redis_text(s, &[b"INFO", b"memory"]).await?;
    wire::info_field(&info, "used_memory").context("no used_memory in INFO memory")
}

/// Runs the memory comparison and prints it.
pub(crate) async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let attrs = session_attributes(args.size, args.attrs);
    let payload: usize = attrs.iter().map(|(k, v)| k.len() + v.len()).sum();
    let packed = PackedAttributes::pack(&attrs);
    let n = args.sessions.max(1);
    let bin = match &args.sessync_bin {
        Some(b) => b.clone(),
        None => default_sessync_bin()?,
    };

    // sessync: a fresh node process, RSS before and after, and its own byte count.
    let node = spawn_node(&bin, n.saturating_mul(2))?;
    let pid = node.child.id();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss(pid)?;
    let started = std::time::Instant::now();
    let p = packed.clone();
    fill(
        node.client,
        &args,
        n,
        move |out, rid| wire::sessync_create(out, rid, &p),
        1,
        wire::sessync_reply,
    )
    .await?;
    let sessync_fill_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after = rss(pid)?;
    let stats = sessync_stats(node.client).await?;
    drop(node);
    anyhow::ensure!(
        stat(&stats, "sessions") as usize == n,
        "the node holds {} sessions, not {n}",
        stat(&stats, "sessions")
    );
    let rss_per = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    let stats_per = stat(&stats, "bytes") as f64 / n as f64;

    let mut redis = None;
    if let Some(addr) = args.against_redis {
        let mut s = connect(addr).await?;
        if args.redis_flush {
            redis_text(&mut s, &[b"FLUSHALL"]).await?;
        }
        let before = redis_used_memory(&mut s).await?;
        let pairs: Vec<(String, bytes::Bytes)> = attrs.clone().into_iter().collect();
        let started = std::time::Instant::now();
        let encode = move |out: &mut BytesMut, _rid: u64| {
            let mut id = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut id);
            let key: String = std::iter::once("sess:".to_string())
                .chain(id.iter().map(|b| format!("{b:02x}")))
                .collect();
            let mut cmd: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
            for (k, v) in &pairs {
                cmd.push(k.as_bytes());
                cmd.push(v);
            }
            wire::resp_cmd(out, &cmd);
            wire::resp_cmd(out, &[b"EXPIRE", key.as_bytes(), b"1800"]);
        };
        fill(addr, &args, n, encode, 2, wire::resp_reply).await?;
        let redis_fill_secs = started.elapsed().as_secs_f64();
        let after = redis_used_memory(&mut s).await?;
        let key = redis_text(&mut s, &[b"RANDOMKEY"]).await?;
        let encoding = redis_text(&mut s, &[b"OBJECT", b"ENCODING", key.as_bytes()]).await?;
        let rss_info = redis_text(&mut s, &[b"INFO", b"memory"]).await?;
        if args.redis_flush {
            redis_text(&mut s, &[b"FLUSHALL"]).await?;
        }
        redis = Some((
            (after.saturating_sub(before)) as f64 / n as f64,
            encoding.trim().to_string(),
            redis_fill_secs,
            wire::info_field(&rss_info, "used_memory_rss"),
        ));
    }

    let over = |per: f64| per - payload as f64;
    {
        let mut doc = json!({
            "sessions": n,
            "size": args.size,
            "attrs": args.attrs,
            "payload_bytes": payload,
            "sessync": {
                "rss_per_session": rss_per,
                "rss_overhead_per_session": over(rss_per),
                "stats_bytes_per_session": stats_per,
                "stats_overhead_per_session": over(stats_per),
                "fill_secs": sessync_fill_secs,
            },
        });
        if let Some((per, enc, secs, _)) = &redis {
            doc["redis"] = json!({
                "used_memory_per_session": per,
                "overhead_per_session": over(*per),
                "encoding": enc,
                "fill_secs": secs,
            });
            doc["ratios"] = json!({
                "rss_per_session": rss_per / per,
                "rss_overhead": over(rss_per) / over(*per),
            });
        }
        let text = serde_json::to_string_pretty(&doc)?;
        if let Some(path) = &args.json_out {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
        if args.json {
            println!("{text}");
            return Ok(());
        }
    }
    println!(
        "memory: {n} sessions, {} B in {} attributes ({payload} B of names and values per session)",
        args.size, args.attrs
    );
    println!("{:<34} {:>14} {:>18}", "", "B/session", "overhead B/session");
    println!(
        "{:<34} {:>14.1} {:>18.1}",
        "sessync node RSS growth",
        rss_per,
        over(rss_per)
    );
    println!(
        "{:<34} {:>14.1} {:>18.1}",
        "sessync STATS bytes (its estimate)",
        stats_per,
        over(stats_per)
    );
    if let Some((per, enc, _, _)) = &redis {
        println!(
            "{:<34} {:>14.1} {:>18.1}",
            format!("redis used_memory ({enc})"),
            per,
            over(*per)
        );
        println!();
        println!("sessync RSS / redis per session:   {:.2}x", rss_per / per);
        println!(
            "sessync RSS / redis overhead:      {:.2}x",
            over(rss_per) / over(*per)
        );
    }
    Ok(())
}
