//! The `sessync` command: run a node, a local trial cluster, or talk to a node.

mod cli_members;
mod cli_session;
mod failure;
mod resolve;
mod secret;
mod trial_certs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sessync_server::{BackupPolicy, EvictPolicy, NodeConfig, Seed, TlsFiles};

/// Web sessions that follow the user across a cluster.
#[derive(Parser, Debug)]
#[command(name = "sessync", version, about)]
struct Cli {
    /// Log filter (e.g. info, debug, sessync_server=trace); RUST_LOG wins when set.
    #[arg(long, global = true, env = "SESSYNC_LOG", default_value = "info")]
    log: String,
    /// Log line format on stderr: text (colours only when stderr is a terminal) or json
    /// (one object per line).
    #[arg(
        long,
        global = true,
        env = "SESSYNC_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node.
    Node(Box<NodeArgs>),
    /// Talk to a node: create, read, write and end sessions.
    Session(cli_session::SessionArgs),
    /// Print a node's counters, uptime, version, node id, addresses and peer links.
    Stats(cli_session::StatsArgs),
    /// Make a node leave the cluster gracefully: it hands every session and backup copy to
    /// other members, then exits (exit 0 when everything was handed over).
    Drain(cli_session::DrainArgs),
    /// Check that a node answers (exit 0) on its client port: for exec probes and scripts.
    Ping(cli_session::PingArgs),
    /// Print a node's view of the cluster: each member's state, node id, addresses.
    Members(cli_members::MembersArgs),
    /// Start a local trial cluster in this process (Ctrl-C stops it).
    Cluster(ClusterArgs),
}

/// Flags of `sessync cluster`.
#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    nodes: u16,
    /// Node i serves clients on base+i, peers on base+100+i and HTTP (probes, metrics,
    /// status page) on base+200+i, all on 127.0.0.1.
    #[arg(long, default_value_t = 7700)]
    base_port: u16,
    /// Idle time to live of sessions.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    idle_ttl: Duration,
    /// Backup copies of each session (0, 1 or 2; at most nodes - 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    replicas: u8,
    /// TLS everywhere: generate a throw-away CA and node certificates (removed at exit);
    /// peer links use mutual TLS and the client ports TLS.
    #[arg(long)]
    tls: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum OnNoBackup {
    /// Refuse the write (BACKUP_UNAVAILABLE, or INDETERMINATE if a backup fails mid-write).
    Refuse,
    /// Accept the write with fewer copies (STATS under_replicated_writes counts them).
    Degrade,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Evict {
    /// CREATE fails with CAPACITY at the limit.
    Reject,
    /// Sessions closest to expiry are evicted to make room, soonest deadline first.
    SoonestExpiry,
}

/// Flags of `sessync node`; each can also be set through the SESSYNC_* variable named.
#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Address applications connect to (host:port; a host name is resolved at start).
    #[arg(long, env = "SESSYNC_CLIENT", default_value = "127.0.0.1:7700")]
    client: String,
    /// Address other nodes connect to (TCP for peer links, UDP for membership, same port).
    #[arg(long, env = "SESSYNC_PEER", default_value = "127.0.0.1:7800")]
    peer: String,
    /// Address of the HTTP port: /healthz, /readyz, /metrics and a status page at /.
    /// Off unless given.
    #[arg(long, env = "SESSYNC_HTTP")]
    http: Option<SocketAddr>,
    /// Peer address written into tokens and told to other members (when --peer is a
    /// wildcard or behind NAT); a host name is resolved at start.
    #[arg(long, env = "SESSYNC_ADVERTISE")]
    advertise: Option<String>,
    /// File holding the cluster secret (see README: one secret, key id 0, or `id=secret` lines, first is current).
    #[arg(long, env = "SESSYNC_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Idle time to live of sessions (e.g. 30m, 90s).
    #[arg(long, env = "SESSYNC_IDLE_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    idle_ttl: Duration,
    /// Absolute lifetime of sessions from creation (e.g. 12h); none by default.
    #[arg(long, env = "SESSYNC_MAX_LIFETIME", value_parser = humantime::parse_duration)]
    max_lifetime: Option<Duration>,
    /// Most live sessions.
    #[arg(long, env = "SESSYNC_MAX_SESSIONS", default_value_t = 1_000_000)]
    max_sessions: usize,
    /// Most bytes of session data and tombstones (e.g. 1G, 512M, 1048576).
    #[arg(long, env = "SESSYNC_MAX_MEMORY", default_value = "1G", value_parser = parse_bytes)]
    max_memory: usize,
    /// What CREATE does at the limits.
    #[arg(long, env = "SESSYNC_EVICT", value_enum, default_value = "reject")]
    evict: Evict,
    /// Password clients must send in HELLO.
    #[arg(long, env = "SESSYNC_PASSWORD")]
    password: Option<String>,
    /// Most client connections at once.
    #[arg(long, env = "SESSYNC_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Time allowed to complete a frame once started (and the first frame after connecting).
    #[arg(long, env = "SESSYNC_FRAME_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    frame_timeout: Duration,
    /// A client (or peer) that accepts none of its replies for this long is disconnected.
    #[arg(long, env = "SESSYNC_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    write_timeout: Duration,
    /// How long one COPY (or REPLICATE) waits on another node: OWNER_UNREACHABLE after one
    /// such wait without backups; with backups, after a probe and a failover attempt too
    /// (protocol.md 11.3).
    #[arg(long, env = "SESSYNC_PEER_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    peer_timeout: Duration,
    /// With backups: a read of a session not replicated for this long first asks its
    /// holders whether this node still owns it (protocol.md 12.5); a failover claims a
    /// backup copy only once it is this old (12.3). 0s turns both off.
    #[arg(long, env = "SESSYNC_READ_LEASE", default_value = "2s", value_parser = humantime::parse_duration)]
    read_lease: Duration,
    /// Seeds to join the cluster through, comma-separated: host:port (a name or an IP
    /// address) or dns:NAME:PORT (every A/AAAA record of NAME, re-resolved every 5 s).
    /// None: a cluster of one, which others may join.
    #[arg(long, env = "SESSYNC_JOIN", value_delimiter = ',', value_parser = parse_seed)]
    join: Vec<Seed>,
    /// The cluster's advertised peer addresses, comma-separated (this node's own may be
    /// listed): seeds, as --join, and the backup candidates until membership knows better.
    #[arg(long, env = "SESSYNC_PEERS", value_delimiter = ',', value_parser = parse_seed)]
    peers: Vec<Seed>,
    /// Backup copies of each session this node owns (0, 1 or 2).
    #[arg(long, env = "SESSYNC_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    replicas: u8,
    /// What a write does when fewer than --replicas backups can be had.
    #[arg(long, env = "SESSYNC_ON_NO_BACKUP", value_enum, default_value = "refuse")]
    on_no_backup: OnNoBackup,
    /// This node's certificate chain (PEM) for peer links; it must name the node's
    /// advertised IP address (subjectAltName). Re-read on SIGHUP and every 60 s.
    #[arg(long, env = "SESSYNC_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SESSYNC_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers' certificates must chain to it.
    #[arg(long, env = "SESSYNC_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS on peer links; default: required when --tls-cert is given, else off.
    #[arg(long, env = "SESSYNC_PEER_TLS", value_enum)]
    peer_tls: Option<PeerTls>,
    /// Certificate chain (PEM) for TLS on the client port (plain text without it).
    #[arg(long, env = "SESSYNC_CLIENT_TLS_CERT", requires = "client_tls_key")]
    client_tls_cert: Option<PathBuf>,
    /// The private key of --client-tls-cert (PEM).
    #[arg(long, env = "SESSYNC_CLIENT_TLS_KEY", requires = "client_tls_cert")]
    client_tls_key: Option<PathBuf>,
    /// CA (PEM) that clients' certificates must chain to: clients must then present one.
    #[arg(long, env = "SESSYNC_CLIENT_TLS_CA", requires = "client_tls_cert")]
    client_tls_ca: Option<PathBuf>,
    /// Longest wait imposed on an address after failed authentications (HELLO passwords,
    /// peer handshakes): it doubles from 1 ms per failure in a row up to this.
    #[arg(long, env = "SESSYNC_AUTH_BACKOFF_MAX", default_value = "2s", value_parser = humantime::parse_duration)]
    auth_backoff_max: Duration,
    /// Most connections from one IP address that have not authenticated yet.
    #[arg(long, env = "SESSYNC_MAX_UNAUTHENTICATED", default_value_t = 64)]
    max_unauthenticated: usize,
    /// On SIGTERM, Ctrl-C or `sessync drain`, how long the node may spend handing its
    /// sessions and backup copies to other members before it stops anyway (exit status 3
    /// when something was left). 0 stops at once without handing anything over.
    #[arg(long, env = "SESSYNC_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

/// Exit status of `sessync node` when its drain could not hand everything over within
/// --drain-timeout (what was left is logged).
const EX_DRAIN_INCOMPLETE: u8 = 3;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum PeerTls {
    /// Every peer link is mutual TLS 1.3; peers without a certificate from --tls-ca are refused.
    Required,
    /// Plain-text peer links (a private network or a tunnel).
    Off,
}

/// Parses a byte size: a number with an optional K, M, G or T suffix (powers of 1024).
/// A seed flag's value: `host:port` or `dns:NAME:PORT` (a usage error otherwise).
fn parse_seed(s: &str) -> Result<Seed, String> {
    Seed::parse(s).map_err(|e| e.to_string())
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = digits.trim().parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// Logs go to stderr: coloured only when stderr is a terminal (never into files or
/// pipes), or as JSON lines.
fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Registers for Ctrl-C and SIGTERM *now*, and returns a future that resolves on either.
/// Registering before the node says it is ready means a signal sent right after the
/// `ready` line is a graceful shutdown, not the default action (an abrupt exit).
#[cfg(unix)]
fn termination() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// SIGHUP: re-read the TLS files.
#[cfg(unix)]
fn reload_signal() -> Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

/// No SIGHUP here: the TLS files are re-read on the timer only.
#[cfg(not(unix))]
fn reload_signal() -> Result<NoSignal> {
    Ok(NoSignal)
}

/// A signal that never comes.
#[cfg(not(unix))]
struct NoSignal;

#[cfg(not(unix))]
impl NoSignal {
    async fn recv(&mut self) -> Option<()> {
        std::future::pending().await
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn termination() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn run_node(args: NodeArgs) -> Result<std::process::ExitCode> {
    let keys = match &args.secret_file {
        Some(path) => secret::load(path)?,
        None => {
            tracing::warn!(
                "no --secret-file: generated a random cluster secret; tokens die with this process and no other node can join"
            );
            secret::generate()
        }
    };
    let client = resolve::addr("--client", &args.client).await?;
    let peer = resolve::addr("--peer", &args.peer).await?;
    let advertise = match &args.advertise {
        Some(a) => Some(resolve::addr("--advertise", a).await?),
        None => None,
    };
    let mut config = NodeConfig::new(client, peer, keys);
    config.http_addr = args.http;
    config.advertise = advertise;
    config.idle_ttl = args.idle_ttl;
    config.max_lifetime = args.max_lifetime;
    config.max_sessions = args.max_sessions;
    config.max_memory = args.max_memory;
    config.evict = match args.evict {
        Evict::Reject => EvictPolicy::Reject,
        Evict::SoonestExpiry => EvictPolicy::SoonestExpiry,
    };
    config.password = args.password;
    config.max_connections = args.max_connections;
    config.frame_timeout = args.frame_timeout;
    config.write_timeout = args.write_timeout;
    config.peer_timeout = args.peer_timeout;
    config.read_lease = args.read_lease;
    let mut seeds = args.join.clone();
    seeds.extend(args.peers.iter().cloned());
    // --peers are the backup candidates until membership has a view (names that do not
    // resolve yet are left to membership).
    let static_peers = resolve::now(&args.peers).await;
    let me = advertise.unwrap_or(peer);
    let others = static_peers.iter().filter(|p| **p != me).count();
    if args.join.is_empty() && args.peers.len() == static_peers.len() && usize::from(args.replicas) > others {
        anyhow::bail!(
            "--replicas {} needs at least {} other node(s) in --peers (got {others}), or --join",
            args.replicas,
            args.replicas
        );
    }
    config.peers = static_peers;
    config.membership.seeds = seeds;
    config.replicas = args.replicas;
    config.backup_policy = match args.on_no_backup {
        OnNoBackup::Refuse => BackupPolicy::Refuse,
        OnNoBackup::Degrade => BackupPolicy::Degrade,
    };
    let peer_tls = args.peer_tls.unwrap_or(if args.tls_cert.is_some() {
        PeerTls::Required
    } else {
        PeerTls::Off
    });
    config.peer_tls = match (peer_tls, args.tls_cert, args.tls_key, args.tls_ca) {
        (PeerTls::Off, ..) => None,
        (PeerTls::Required, Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert,
            key,
            ca: Some(ca),
        }),
        (PeerTls::Required, ..) => {
            anyhow::bail!("--peer-tls required needs --tls-cert, --tls-key and --tls-ca")
        }
    };
    config.client_tls = match (args.client_tls_cert, args.client_tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            ca: args.client_tls_ca,
        }),
        _ => None,
    };
    config.auth_backoff_max = args.auth_backoff_max;
    config.max_unauthenticated_per_address = args.max_unauthenticated;
    let drain_timeout = args.drain_timeout;
    let stop = termination()?;
    let mut reload = reload_signal()?;
    let handle = sessync_server::start(config).await?;
    handle.node().set_drain_timeout(drain_timeout);
    let http = handle
        .http_addr()
        .map(|a| format!(" http={a}"))
        .unwrap_or_default();
    tracing::info!(
        client = %handle.client_addr(),
        peer = %handle.peer_addr(),
        advertise = %handle.node().advertise(),
        http = ?handle.http_addr(),
        "sessync node ready"
    );
    // One machine-readable line, so scripts and tests can use port 0.
    println!(
        "ready client={} peer={}{http}",
        handle.client_addr(),
        handle.peer_addr()
    );
    tokio::pin!(stop);
    let node = handle.node().clone();
    let mut drained = None;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            // A drain asked for on the client port (DRAIN) ended: stop.
            report = node.drain_ended() => {
                drained = Some(report);
                break;
            }
            _ = reload.recv() => {
                let results = handle.reload_tls();
                if results.is_empty() {
                    tracing::info!("SIGHUP: no TLS configured, nothing to reload");
                }
                for r in results {
                    match r {
                        Ok(sessync_server::Reload::Replaced { subject }) => {
                            tracing::info!("SIGHUP: TLS certificate replaced by {subject}; new connections use it")
                        }
                        Ok(sessync_server::Reload::Unchanged) => tracing::info!("SIGHUP: TLS files unchanged"),
                        Err(e) => tracing::warn!("SIGHUP: TLS files not reloaded (the certificate in use stays): {e}"),
                    }
                }
            }
        }
    }
    // Leave gracefully: hand every session and backup copy to other members first (the
    // node keeps serving meanwhile). A second SIGTERM or Ctrl-C stops at once.
    let report = match drained {
        Some(r) => Some(r),
        None if drain_timeout.is_zero() => None,
        None => {
            let second = termination()?;
            tokio::select! {
                r = node.drain() => Some(r),
                _ = second => {
                    tracing::warn!("second signal: stopping without finishing the drain");
                    let t = node.table_stats();
                    Some(sessync_server::DrainReport {
                        sessions_left: t.sessions,
                        backups_left: t.backups,
                        timed_out: true,
                        ..Default::default()
                    })
                }
            }
        }
    };
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let clean = handle.shutdown(Duration::from_secs(10)).await;
    if !clean {
        tracing::warn!("some connections did not finish within 10 s");
    }
    tracing::info!(clean, "stopped");
    Ok(match report {
        Some(r) if !r.complete() => std::process::ExitCode::from(EX_DRAIN_INCOMPLETE),
        _ => std::process::ExitCode::SUCCESS,
    })
}

async fn run_cluster(args: ClusterArgs) -> Result<()> {
    let stop = termination()?;
    let keys = secret::generate();
    if usize::from(args.replicas) >= usize::from(args.nodes) {
        anyhow::bail!(
            "--replicas {} needs more than {} node(s)",
            args.replicas,
            args.nodes
        );
    }
    let port = |offset: u16, i: u16| {
        args.base_port
            .checked_add(offset + i)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .context("--base-port too high for this many nodes")
    };
    let peers = (0..args.nodes)
        .map(|i| port(100, i))
        .collect::<Result<Vec<_>>>()?;
    let certs = if args.tls {
        Some(trial_certs::generate(usize::from(args.nodes)).context("generating certificates")?)
    } else {
        None
    };
    let mut handles = Vec::new();
    for i in 0..args.nodes {
        let mut config = NodeConfig::new(port(0, i)?, port(100, i)?, keys.clone());
        config.http_addr = Some(port(200, i)?);
        config.idle_ttl = args.idle_ttl;
        config.peers = peers.clone();
        config.membership.seeds = peers
            .iter()
            .map(|p| sessync_server::Seed::Host {
                host: p.ip().to_string(),
                port: p.port(),
            })
            .collect();
        config.replicas = args.replicas;
        if let Some(c) = &certs {
            let files = c.nodes[usize::from(i)].clone();
            config.peer_tls = Some(files.clone());
            config.client_tls = Some(TlsFiles { ca: None, ..files });
        }
        let handle = sessync_server::start(config)
            .await
            .with_context(|| format!("starting node {i}"))?;
        tracing::info!(
            node = i,
            client = %handle.client_addr(),
            peer = %handle.peer_addr(),
            http = ?handle.http_addr(),
            "node ready"
        );
        handles.push(handle);
    }
    // A node that dialled another before that one was listening backs off for a moment;
    // a write in that moment would be refused for want of backups. Wait (briefly) until
    // every node can meet --replicas, so the first command typed after this succeeds.
    let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while !handles.iter().all(|h| h.node().can_meet_replicas()) && tokio::time::Instant::now() < settle {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "sessync trial cluster: {} nodes sharing a generated secret, {} backup(s) per session",
        handles.len(),
        args.replicas
    );
    let tls_flag = match &certs {
        Some(c) => {
            println!(
                "TLS: mutual TLS 1.3 between nodes and TLS on the client ports, under a throw-away CA in {}",
                c.dir.display()
            );
            format!(" --tls-ca {}", c.ca.display())
        }
        None => String::new(),
    };
    for (i, h) in handles.iter().enumerate() {
        let http = h
            .http_addr()
            .map(|a| format!("  status http://{a}/"))
            .unwrap_or_default();
        println!(
            "  node {i}: clients {}  peers {}{http}",
            h.client_addr(),
            h.peer_addr()
        );
    }
    if let Some(a) = handles[0].http_addr() {
        println!("  probes: http://{a}/healthz  http://{a}/readyz  metrics: http://{a}/metrics");
    }
    let a = handles[0].client_addr();
    let b = handles[handles.len() - 1].client_addr();
    println!();
    println!("Try it (in another terminal, from this checkout; or `cargo install --path .` once and");
    println!("use `sessync` instead of `cargo run --release --`):");
    println!("  TOKEN=$(cargo run --release -q -- session create --node {a}{tls_flag} user=alice)");
    println!("  cargo run --release -q -- session get --node {b}{tls_flag} \"$TOKEN\"    # copied to the other node, new token printed");
    println!();
    println!("Ctrl-C stops every node.");
    stop.await;
    for (i, h) in handles.into_iter().enumerate() {
        let clean = h.shutdown(Duration::from_secs(5)).await;
        tracing::info!(node = i, clean, "node stopped");
    }
    drop(certs);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return std::process::ExitCode::SUCCESS;
            }
            if std::env::args().any(|a| a == "--json") {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                return failure::Failure::usage(first).report(true);
            }
            let _ = e.print();
            return std::process::ExitCode::from(failure::EX_USAGE);
        }
    };
    init_logging(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let client_command = |json: bool, r: Result<(), failure::Failure>| {
        Ok(match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(f) => f.report(json),
        })
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(*args).await,
            Command::Session(args) => {
                let json = args.json();
                client_command(json, cli_session::run_session(args).await)
            }
            Command::Stats(args) => {
                let json = args.conn.json;
                client_command(json, cli_session::run_stats(args).await)
            }
            Command::Drain(args) => {
                let json = args.conn.json;
                client_command(json, cli_session::run_drain(args).await)
            }
            Command::Ping(args) => {
                let json = args.conn.json;
                client_command(json, cli_session::run_ping(args).await)
            }
            Command::Members(args) => {
                let json = args.conn.json;
                client_command(json, cli_members::run_members(args).await)
            }
            Command::Cluster(args) => run_cluster(args).await.map(|_| std::process::ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("1X").is_err());
        assert!(parse_bytes("abc").is_err());
        assert!(parse_bytes("99999999999999999999T").is_err());
    }
}
