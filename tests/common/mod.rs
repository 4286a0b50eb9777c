//! Shared test helpers: nodes in-process or as child processes, on OS-chosen ports.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sessync_client::{Client, ClientConfig};
use sessync_proto::Keyring;
use sessync_server::{NodeConfig, NodeHandle};

/// The secret every test cluster shares.
pub const SECRET: &[u8] = b"test-cluster-secret-0123456789ab";

/// Every network wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn keys() -> Keyring {
    Keyring::single(SECRET).unwrap()
}

pub fn config() -> NodeConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    NodeConfig::new(any, any, keys())
}

/// An in-process node with `--replicas 1` whose peers are `peers` (fake ones, usually),
/// with a short peer timeout so that a silent fake costs little.
pub async fn replicating_node(peers: Vec<SocketAddr>) -> NodeHandle {
    replicating_node_with(peers, Duration::from_millis(600), config().read_lease).await
}

/// [`replicating_node`] with this peer timeout and read lease: tests whose fake members
/// stay silent or make the node wait out a lease keep both short.
pub async fn replicating_node_with(
    peers: Vec<SocketAddr>,
    peer_timeout: Duration,
    read_lease: Duration,
) -> NodeHandle {
    let mut cfg = config();
    cfg.replicas = 1;
    cfg.peers = peers;
    cfg.peer_timeout = peer_timeout;
    cfg.read_lease = read_lease;
    sessync_server::start(cfg).await.unwrap()
}

/// [`replicating_node_with`] as the tests beside fake members use it: a peer timeout of
/// 300 ms and a read lease of 100 ms.
pub async fn replicating_node_beside_fakes(peers: Vec<SocketAddr>) -> NodeHandle {
    replicating_node_with(peers, Duration::from_millis(300), Duration::from_millis(100)).await
}

/// A client of the node at `addr`, a session it created there (`cart` = `mine`), and the
/// session's id.
pub async fn create_mine(addr: SocketAddr) -> (Client, sessync_client::Session, sessync_proto::SessionId) {
    let c = client(addr).await;
    let s = tokio::time::timeout(WAIT, c.create(attrs(&[("cart", "mine")])))
        .await
        .expect("the CREATE must end")
        .expect("the session is created, its copy on a member");
    let id = sessync_proto::Token::verify(&s.token, &keys())
        .unwrap()
        .session_id;
    (c, s, id)
}

/// Writes `cart` = `refused` to the session `token` names and asserts that the write was
/// not acknowledged (its holder refused it in a newer owner's name: the node gives the
/// session up and keeps its own state as a kept copy).
pub async fn assert_write_refused(c: &Client, token: &str) {
    let write = tokio::time::timeout(WAIT, c.set(token).put("cart", "refused").send())
        .await
        .expect("the SET must end");
    assert!(
        write.is_err(),
        "a write refused in a newer owner's name was acknowledged: {write:?}"
    );
}

/// Starts `n` in-process nodes sharing the secret.
pub async fn cluster(n: usize) -> Vec<NodeHandle> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(sessync_server::start(config()).await.unwrap());
    }
    v
}

pub async fn client(addr: SocketAddr) -> Client {
    tokio::time::timeout(WAIT, Client::connect(addr, ClientConfig::default()))
        .await
        .unwrap()
        .unwrap()
}

pub async fn stop(nodes: Vec<NodeHandle>) {
    for n in nodes {
        assert!(n.shutdown(WAIT).await, "node did not shut down in time");
    }
}

/// A `sessync node` child process; killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub client: SocketAddr,
    pub peer: SocketAddr,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sessync node` on OS-chosen client and peer ports, logging at `log`, its stdout piped
/// (for [`wait_ready`]); add flags, set stderr and spawn.
pub fn node_command(log: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sessync"));
    c.args([
        "node",
        "--client",
        "127.0.0.1:0",
        "--peer",
        "127.0.0.1:0",
        "--log",
        log,
    ])
    .stdout(Stdio::piped());
    c
}

/// Starts `sessync node` with the given extra flags on OS-chosen ports and waits (bounded)
/// for its `ready client=.. peer=..` line.
pub fn spawn_node(extra: &[&str]) -> NodeProcess {
    let mut child = node_command("warn")
        .args(extra)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sessync node");
    let (client, peer) = wait_ready(&mut child);
    NodeProcess { child, client, peer }
}

/// Waits (bounded) for a started `sessync node`'s `ready ...` line on its piped stdout,
/// and returns it (the rest of stdout is drained in the background).
pub fn ready_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx.recv_timeout(WAIT).expect("node printed no ready line in time")
}

/// A port free on every one of `ips` now (for TCP, and for UDP too when `udp`), for a node process a
/// test must start at an address known in advance (peers name it, a restart reuses it).
/// Taken from below the kernel's ephemeral range (`ip_local_port_range`), at random:
/// a port the OS handed out for `bind(0)` and then freed could be given to any outgoing
/// connection or `bind(0)` of a test running in parallel before the node bound it, and
/// the node then failed to start ("address already in use": tests/drain.rs, seen three
/// times in CI-like runs). Never the same port twice in one test process.
pub fn reserve_port(ips: &[std::net::IpAddr], udp: bool) -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(0);
    // All bound at once (and released together), as a node binds them.
    let free = |port: u16| {
        let held: Vec<_> = ips
            .iter()
            .map(|ip| {
                let tcp = std::net::TcpListener::bind((*ip, port)).ok();
                let udp = if udp {
                    std::net::UdpSocket::bind((*ip, port)).ok().map(|_| ())
                } else {
                    Some(())
                };
                tcp.zip(udp)
            })
            .collect();
        held.iter().all(Option::is_some)
    };
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = if ephemeral_low > 12_000 {
            rng.gen_range(ephemeral_low - 10_000..ephemeral_low)
        } else {
            let l = std::net::TcpListener::bind((ips[0], 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) && free(port) {
            handed.push(port);
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A session record with no attributes, created and last used at `at_ms`: what a test
/// playing a peer sends in REPLICATE or COPY_DATA.
pub fn empty_record(
    id: sessync_proto::SessionId,
    at_ms: u64,
    idle_ttl_ms: u64,
) -> sessync_proto::SessionRecord {
    sessync_proto::SessionRecord {
        id,
        meta: sessync_proto::SessionMeta {
            version: 1,
            created_ms: at_ms,
            last_access_ms: at_ms,
            idle_ttl_ms,
            absolute_deadline_ms: 0,
        },
        attributes: Default::default(),
    }
}

/// [`empty_record`] (created now, 60 s idle limit) holding one attribute, `cart` =
/// `value`: a copy a fake peer hands over whose contents the test checks were served.
pub fn record_with_cart(id: sessync_proto::SessionId, value: &'static [u8]) -> sessync_proto::SessionRecord {
    let mut record = empty_record(id, sessync_server::clock::now_ms(), 60_000);
    let attrs = [("cart".to_string(), bytes::Bytes::from_static(value))]
        .into_iter()
        .collect();
    record.attributes = sessync_proto::PackedAttributes::pack(&attrs);
    record
}

/// A fake giver (as node `node_id`): it answers COPY with its copy of the session (no
/// attributes) handed over under `transfer` with these `holders`, and OK to the rest.
pub async fn scripted_giver(node_id: [u8; 16], transfer: u64, holders: Vec<SocketAddr>) -> SocketAddr {
    use sessync_proto::PeerMessage;
    scripted_peer(
        node_id,
        std::sync::Arc::new(move |m: &PeerMessage| match m {
            PeerMessage::Copy { session_id, .. } => Some(PeerMessage::CopyData {
                transfer,
                holders: holders.clone(),
                record: empty_record(*session_id, sessync_server::clock::now_ms(), 60_000),
            }),
            _ => Some(PeerMessage::Ok),
        }),
    )
    .await
}

/// The `cart` attribute a served session carries, if any.
pub fn cart(s: &sessync_client::Session) -> Option<&[u8]> {
    s.attributes.get("cart").map(|v| &v[..])
}

/// Asserts that `s` was served with `cart` = `want`, from the copy `from` names.
pub fn assert_served_with_cart(s: &sessync_client::Session, want: &[u8], from: &str) {
    assert_eq!(cart(s), Some(want), "served from {from}: {:?}", s.attributes);
}

/// The address a `ready` line gives for `key` (`client=`, `peer=`, `http=`).
pub fn ready_field(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|p| p.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
        .parse()
        .unwrap()
}

/// Waits (bounded) for a started `sessync node`'s `ready client=.. peer=..` line on its
/// piped stdout, and returns those addresses.
pub fn wait_ready(child: &mut Child) -> (SocketAddr, SocketAddr) {
    let line = ready_line(child);
    (ready_field(&line, "client="), ready_field(&line, "peer="))
}

/// Attributes from string pairs.
pub fn attrs(pairs: &[(&str, &str)]) -> sessync_client::Attributes {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                sessync_client::Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

/// One counter of a STATS reply.
pub fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap()
}

/// Writes the shared secret to a temp file for child processes.
pub fn secret_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("secret");
    std::fs::write(&p, SECRET).unwrap();
    p
}

/// A fresh temporary directory under the target dir.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sessync-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub mod certs;
pub mod claims;
pub mod member;
pub mod raw_peer;

/// `SESSYNC_SIM_LOG=debug` (or any tracing filter) prints the simulated nodes' logs of a
/// replay (tests/simulation.rs, tests/handover_model.rs).
/// Log lines of a simulation carry its virtual time (ms since the run began), so two runs
/// of one seed compare line by line.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "t={:>7}ms",
            sessync_server::clock::now_ms().saturating_sub(1_800_000_000_000)
        )
    }
}

pub fn init_sim_log() {
    if let Ok(filter) = std::env::var("SESSYNC_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
}

/// A loopback address the OS just handed out and that nothing listens on now: a peer
/// that is gone (a dead owner, a backup node that is never there).
pub fn nowhere() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A signed token for session `id` that names `owner` (a peer address) and `backups`.
pub fn token_for(
    id: sessync_proto::SessionId,
    generation: u64,
    owner: std::net::SocketAddr,
    backups: Vec<std::net::SocketAddr>,
) -> String {
    sessync_proto::Token {
        session_id: id,
        generation,
        owner,
        backups,
    }
    .sign(&keys())
}

/// What a scripted peer does with a request: `Some(reply)`, or `None` (never answers).
pub type PeerScript =
    std::sync::Arc<dyn Fn(&sessync_proto::PeerMessage) -> Option<sessync_proto::PeerMessage> + Send + Sync>;

/// [`PeerScript`] whose answer may take time (a holder that answers late).
pub type AsyncPeerScript = std::sync::Arc<
    dyn Fn(
            sessync_proto::PeerMessage,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<sessync_proto::PeerMessage>> + Send>>
        + Send
        + Sync,
>;

/// A fake peer on an OS-chosen port: it completes the real secret handshake (as node
/// `node_id`), answers PING (every peer must answer liveness probes), and answers every
/// other request as `script` says.
pub async fn scripted_peer(node_id: [u8; 16], script: PeerScript) -> SocketAddr {
    scripted_peer_async(node_id, answered_at_once(script)).await
}

/// `script` as an [`AsyncPeerScript`] whose answers are ready at once.
fn answered_at_once(script: PeerScript) -> AsyncPeerScript {
    std::sync::Arc::new(move |m| {
        let answer = script(&m);
        Box::pin(async move { answer })
    })
}

/// Two fake members (node ids 7 and 8) answering from one shared state, for tests whose
/// fake peers name each other: `first` and `second` answer for each. Their addresses, in
/// that order (the caller records them in `members` before the node under test starts).
pub async fn scripted_pair<M: Send + Sync + 'static>(
    members: &std::sync::Arc<M>,
    first: fn(&M, &sessync_proto::PeerMessage) -> Option<sessync_proto::PeerMessage>,
    second: fn(&M, &sessync_proto::PeerMessage) -> Option<sessync_proto::PeerMessage>,
) -> (SocketAddr, SocketAddr) {
    let answering =
        |answer: fn(&M, &sessync_proto::PeerMessage) -> Option<sessync_proto::PeerMessage>| -> PeerScript {
            let members = members.clone();
            std::sync::Arc::new(move |m| answer(&members, m))
        };
    (
        scripted_peer([7; 16], answering(first)).await,
        scripted_peer([8; 16], answering(second)).await,
    )
}

/// A fake peer's side of an accepted connection: completes the real secret handshake as
/// node `node_id` advertising `addr`; `None` when the dialler went away first.
pub async fn accept_peer(
    s: tokio::net::TcpStream,
    node_id: [u8; 16],
    addr: SocketAddr,
) -> Option<tokio_util::codec::Framed<tokio::net::TcpStream, sessync_proto::FrameCodec>> {
    use futures_util::{SinkExt, StreamExt};
    use sessync_proto::{Acceptor, FrameCodec, PeerMessage};
    let mut framed = tokio_util::codec::Framed::new(s, FrameCodec::new(1 << 20));
    let Some(Ok(f)) = framed.next().await else {
        return None;
    };
    let (id, hello) = (f.request_id, read_peer(f));
    let (acceptor, challenge) = Acceptor::handle_hello(keys(), node_id, addr, hello).unwrap();
    framed.send((id, challenge)).await.unwrap();
    let Some(Ok(f)) = framed.next().await else {
        return None;
    };
    let (id, proof) = (f.request_id, read_peer(f));
    acceptor.handle_proof(proof).unwrap();
    framed.send((id, PeerMessage::AuthOk)).await.unwrap();
    Some(framed)
}

/// The next request the node sends a fake peer on `framed`, with its request id; `None`
/// once the connection ends or `restarted` changes (the fake process it belonged to is
/// gone).
pub async fn next_peer_request<T>(
    framed: &mut tokio_util::codec::Framed<tokio::net::TcpStream, sessync_proto::FrameCodec>,
    restarted: &mut tokio::sync::watch::Receiver<T>,
) -> Option<(u64, sessync_proto::PeerMessage)> {
    use futures_util::StreamExt;
    let f = tokio::select! {
        _ = restarted.changed() => return None,
        f = framed.next() => f,
    };
    let f = f?.ok()?;
    Some((f.request_id, read_peer(f)))
}

/// What a node of a release before FEATURES answers it (protocol.md 9.3, 2.5): ERROR
/// `UNKNOWN_OPCODE`, before it closes the connection.
pub fn older_release_refusal() -> sessync_proto::PeerMessage {
    let err = sessync_proto::ErrorReply::new(sessync_proto::ErrorCode::UnknownOpcode, "not a peer request");
    sessync_proto::PeerMessage::Error(err)
}

/// A frame from the node, decoded as a peer message (a fake peer's reading).
pub fn read_peer(f: sessync_proto::Frame) -> sessync_proto::PeerMessage {
    use sessync_proto::Message;
    sessync_proto::PeerMessage::decode_frame(&f, &Default::default()).unwrap()
}

/// [`scripted_peer`] with answers that may take time: one connection's requests are
/// answered in order, each after its script's future ends. It answers FEATURES as a node
/// of a release before FEATURES does.
pub async fn scripted_peer_async(node_id: [u8; 16], script: AsyncPeerScript) -> SocketAddr {
    serve_scripted(node_id, script, None).await
}

/// [`scripted_peer`] as a node of this release: it answers FEATURES with every feature
/// (protocol.md 9.3), so the node's link to it uses them all.
pub async fn scripted_peer_of_this_release(node_id: [u8; 16], script: PeerScript) -> SocketAddr {
    serve_scripted(
        node_id,
        answered_at_once(script),
        Some(sessync_proto::peer_feature::ALL),
    )
    .await
}

/// The fake peer behind [`scripted_peer_async`] and [`scripted_peer_of_this_release`]:
/// `features` is its answer to FEATURES, `None` for a release that predates it.
async fn serve_scripted(node_id: [u8; 16], script: AsyncPeerScript, features: Option<u64>) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use sessync_proto::PeerMessage;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let Some(mut framed) = accept_peer(s, node_id, addr).await else {
                    return;
                };
                while let Some(Ok(f)) = framed.next().await {
                    let (id, msg) = (f.request_id, read_peer(f));
                    let answer = match (msg, features) {
                        (PeerMessage::Ping(n), _) => Some(PeerMessage::Pong(n)),
                        (PeerMessage::Features(_), Some(ours)) => Some(PeerMessage::FeaturesAre(ours)),
                        // As a node that predates FEATURES (protocol.md 9.3): the node
                        // dials again without asking.
                        (PeerMessage::Features(_), None) => {
                            let _ = framed.send((id, older_release_refusal())).await;
                            return;
                        }
                        (msg, _) => script(msg).await,
                    };
                    if let Some(answer) = answer {
                        if framed.send((id, answer)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A fake member's LOCATE answer: it holds a backup copy of `session_id` from `owner`,
/// of `generation` (what most tests' fake peers say to point a node at an owner).
pub fn located_backup(
    session_id: sessync_proto::SessionId,
    owner: SocketAddr,
    generation: u64,
) -> sessync_proto::PeerMessage {
    sessync_proto::PeerMessage::Located {
        session_id,
        role: sessync_proto::Role::Backup,
        addr: owner,
        generation: Some(generation),
    }
}
