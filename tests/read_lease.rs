//! The read lease (protocol.md 12.5), over real node processes: an owner paused (SIGSTOP)
//! while its sessions are taken over elsewhere must not serve its old copies to readers
//! once it runs again and its lease has lapsed.
//! - A session destroyed at its new owner answers SESSION_NOT_FOUND at the old owner, to
//!   the token the old owner signed (before the lease, the old owner served its copy until
//!   the session expired: the simulation's seeds 27 and 271 found it).
//! - A session written at its new owner is read at the old owner with the new value.
//! - On a quiet cluster, a read (GET or TOUCH) past the lease renews it once;
//!   `--read-lease 0s` never.
//! - A failover claim waits out the failed owner's lease on the copy it claims (12.3): a
//!   local claim waits for it, a PROMOTE is refused until it ended, and the asker asks
//!   again meanwhile (in-process node, fake peers: the owner is a test playing a peer).
//! - A read past the lease beside a silent holder is not held up by it, yet hears another
//!   holder's tombstone (12.5; in-process node, fake holders).
//! - A backup counts the owner's round placing the state it holds already as a write
//!   (12.3): the lease a claim waits out is not older than the one that round renewed
//!   (in-process node, fake members).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault;

use std::time::{Duration, Instant};

use common::raw_peer::{ask, authenticated, authenticated_as};
use common::*;
use fault::*;
use sessync_client::{Client, ClientError, ErrorCode};
use tokio::time::timeout;

/// Longer than the read lease (2 s), so the old owner's lease has lapsed for certain.
const PAST_THE_LEASE: Duration = Duration::from_millis(2500);

/// Reads `token` through `clients` in turn until one serves it (the owner is paused, so
/// the first tries may fail while the cluster finds it gone); returns the new token.
async fn take_over(clients: &[&Client], token: &str, dir: &std::path::Path) -> String {
    let deadline = Instant::now() + WAIT * 3;
    for c in clients.iter().cycle() {
        let got = timeout(WAIT, c.get(token)).await;
        if let Ok(Ok(s)) = got {
            return s.token;
        }
        assert!(
            Instant::now() < deadline,
            "no node took over the paused owner's session: {got:?}; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("`cycle` of a non-empty list never ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_does_not_serve_sessions_taken_over_meanwhile_once_its_lease_lapsed() {
    let dir = temp_dir("read-lease");
    let secret = secret_file(&dir);
    let nodes = start_nodes(3, 1, secret.to_str().unwrap(), &dir);
    let clients = connect_all(&nodes).await;
    let (c0, c1, c2) = (&clients[0], &clients[1], &clients[2]);
    let doomed = timeout(WAIT, c0.create(attrs(&[("x", "1")])))
        .await
        .unwrap()
        .unwrap()
        .token;
    let written = timeout(WAIT, c0.create(attrs(&[("x", "1")])))
        .await
        .unwrap()
        .unwrap()
        .token;

    nodes[0].pause(true);
    let doomed_now = take_over(&[c1, c2], &doomed, &dir).await;
    let written_now = take_over(&[c1, c2], &written, &dir).await;
    // Destroyed and written at their new owners (through whichever node answers).
    let deadline = Instant::now() + WAIT;
    loop {
        let destroyed = timeout(WAIT, c1.destroy(&doomed_now)).await.unwrap();
        let set = timeout(WAIT, c1.set(&written_now).put("x", "2").send())
            .await
            .unwrap();
        match (&destroyed, &set) {
            (Ok(()), Ok(_)) => break,
            // Already done by the previous try, whose reply was an error.
            (
                Err(ClientError::Server {
                    code: ErrorCode::SessionNotFound,
                    ..
                }),
                _,
            ) if set.is_ok() => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "destroy {destroyed:?}, set {set:?}; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes[0].pause(false);
    tokio::time::sleep(PAST_THE_LEASE).await;

    // The old owner, asked with the tokens it signed itself.
    match timeout(WAIT, c0.get(&doomed)).await.unwrap() {
        Err(ClientError::Server {
            code: ErrorCode::SessionNotFound,
            ..
        }) => {}
        other => panic!(
            "a session destroyed elsewhere was answered {other:?} by its old owner; logs in {}",
            dir.display()
        ),
    }
    let s = timeout(WAIT, c0.get(&written)).await.unwrap().unwrap();
    assert_eq!(
        s.attributes.get("x").map(|v| v.as_ref()),
        Some(&b"2"[..]),
        "the old owner served its own copy, not the newer owner's; logs in {}",
        dir.display()
    );
    let st = timeout(WAIT, c0.stats()).await.unwrap().unwrap();
    assert!(stat(&st, "read_lease_rounds") >= 2, "{st:?}");
}

/// Reads (GET, then TOUCH) of a session neither written nor moved for longer than the
/// lease, at its owner: with the default lease the first read past it runs one
/// replication round, and with `--read-lease 0s` none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_the_lease_renews_it_unless_the_lease_is_off() {
    for (flags, renewals) in [(&[][..], true), (&["--read-lease", "0s"][..], false)] {
        let dir = temp_dir("read-lease-knob");
        let secret = secret_file(&dir);
        let nodes = start_nodes_with(2, 1, secret.to_str().unwrap(), &dir, flags);
        let c0 = connect(nodes[0].client).await;
        let token = timeout(WAIT, c0.create(attrs(&[("x", "1")])))
            .await
            .unwrap()
            .unwrap()
            .token;
        tokio::time::sleep(PAST_THE_LEASE).await;
        for _ in 0..3 {
            let s = timeout(WAIT, c0.get(&token)).await.unwrap().unwrap();
            assert_eq!(s.attributes.get("x").map(|v| v.as_ref()), Some(&b"1"[..]));
        }
        // TOUCH is a read too.
        tokio::time::sleep(PAST_THE_LEASE).await;
        for _ in 0..2 {
            timeout(WAIT, c0.touch(&token)).await.unwrap().unwrap();
        }
        let st = timeout(WAIT, c0.stats()).await.unwrap().unwrap();
        // The first GET and the first TOUCH renew the lease; the others are within it.
        let expected = 2 * u64::from(renewals);
        assert_eq!(
            stat(&st, "read_lease_rounds"),
            expected,
            "flags {flags:?}: {st:?}"
        );
    }
}

/// A node with `--replicas 1` and a 1 s read lease holding a backup copy of session `id`
/// that a fake owner (advertising `owner`, a dead address once this returns) REPLICATEd
/// just now; the owner's connection is closed, so only the lease can hold a claim up.
/// Returns the node and when the copy was sent.
async fn node_with_a_fresh_backup_copy(
    id: sessync_proto::SessionId,
    owner: std::net::SocketAddr,
    lease: Duration,
) -> (sessync_server::NodeHandle, Instant) {
    let mut cfg = config();
    cfg.replicas = 1;
    cfg.read_lease = lease;
    cfg.peer_timeout = Duration::from_millis(300);
    let node = sessync_server::start(cfg).await.unwrap();
    let mut fake_owner = authenticated_as(node.peer_addr(), owner, [5; 16]).await;
    let sent = Instant::now();
    let copy = sessync_proto::PeerMessage::Replicate {
        generation: 1,
        record: empty_record(id, sessync_server::clock::now_ms(), 60_000),
    };
    assert_eq!(ask(&mut fake_owner, copy).await, sessync_proto::PeerMessage::Ok);
    drop(fake_owner);
    (node, sent)
}

/// The read lease of [`node_with_a_fresh_backup_copy`].
const LEASE: Duration = Duration::from_secs(1);

/// An owner that is alive but cut off, as far as a dialler can tell: its address accepts
/// TCP connections (the kernel's backlog) and never says a word, so dials to it time out
/// instead of being refused. Keep the listener for as long as the owner should look so.
fn silent_owner() -> (std::net::TcpListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A PROMOTE naming the owner failed is refused with MOVED to it while the owner's read
/// lease on the copy may still run (it was written less than a lease ago), although the
/// owner's connection is gone: alive and cut off, the owner may serve reads of its copy
/// without asking anyone until then, and a claim that acknowledged a DESTROY meanwhile let
/// a destroyed session be read back there (simulation seed 745 without crashes). After the
/// lease the copy is handed over. Checked: with the rule off, the first PROMOTE gets the
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_waits_out_the_failed_owners_read_lease() {
    let (_listening, owner) = silent_owner();
    let id = sessync_proto::SessionId::random();
    let (node, sent) = node_with_a_fresh_backup_copy(id, owner, LEASE).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let promote = sessync_proto::PeerMessage::Promote {
        session_id: id,
        last_transfer: 0,
        failed_owner: owner,
    };
    let mut asker = authenticated(node.peer_addr()).await;
    let early = ask(&mut asker, promote.clone()).await;
    assert!(
        sent.elapsed() < LEASE,
        "the machine was too slow to ask within the lease"
    );
    assert_eq!(
        early,
        sessync_proto::PeerMessage::Moved {
            session_id: id,
            owner
        },
        "the owner's lease may still run"
    );
    let c = client(node.client_addr()).await;
    let st = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&st, "claims_waited_for_lease"), 1, "{st:?}");
    tokio::time::sleep((sent + LEASE + Duration::from_millis(100)).saturating_duration_since(Instant::now()))
        .await;
    let late = ask(&mut asker, promote).await;
    assert!(
        matches!(&late, sessync_proto::PeerMessage::CopyData { record, .. } if record.id == id),
        "past the lease the copy is handed over: {late:?}"
    );
    stop(vec![node]).await;
}

/// A request at the backup with a token naming the silent owner and this node as its
/// backup claims the copy here, but only once the owner's read lease on it has ended: the
/// GET is answered no sooner than a lease after the owner's REPLICATE. Checked: with the
/// wait off, it is answered within about a peer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_claim_waits_out_the_failed_owners_read_lease() {
    let (_listening, owner) = silent_owner();
    let id = sessync_proto::SessionId::random();
    let (node, sent) = node_with_a_fresh_backup_copy(id, owner, LEASE).await;
    let c = client(node.client_addr()).await;
    let token = token_for(id, 1, owner, vec![node.peer_addr()]);
    let got = timeout(WAIT, c.get(&token)).await.unwrap();
    let waited = sent.elapsed();
    let s = got.expect("the backup copy is taken over");
    assert_ne!(s.token, token, "served under a new token naming this node");
    assert!(
        waited >= LEASE - Duration::from_millis(20),
        "claimed {waited:?} after the owner's last REPLICATE, within its {LEASE:?} lease"
    );
    let st = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&st, "claims_waited_for_lease"), 1, "{st:?}");
    assert_eq!(stat(&st, "promotions"), 1, "{st:?}");
    stop(vec![node]).await;
}

/// The asker's side of the PROMOTE refusal: a backup that answers MOVED to the failed
/// owner (its copy is younger than that owner's read lease) is asked again until the lease
/// has passed, so the request waits and is served instead of failing. The backup is a
/// fake peer that refuses for its first 300 ms, then hands its copy over. Checked: without
/// the asking again, the GET fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asker_refused_for_the_lease_asks_again() {
    use sessync_proto::PeerMessage;
    let (id, owner) = (sessync_proto::SessionId::random(), nowhere());
    let began = Instant::now();
    let script = move |m: &PeerMessage| {
        Some(match m {
            PeerMessage::Promote { session_id, .. } if began.elapsed() < Duration::from_millis(300) => {
                PeerMessage::Moved {
                    session_id: *session_id,
                    owner,
                }
            }
            PeerMessage::Promote { session_id, .. } => PeerMessage::CopyData {
                transfer: 2,
                holders: vec![],
                record: empty_record(*session_id, sessync_server::clock::now_ms(), 60_000),
            },
            _ => PeerMessage::Ok,
        })
    };
    let backup = scripted_peer([6; 16], std::sync::Arc::new(script)).await;
    let mut cfg = config();
    cfg.replicas = 1;
    cfg.read_lease = LEASE;
    cfg.peer_timeout = Duration::from_millis(300);
    cfg.peers = vec![backup];
    let node = sessync_server::start(cfg).await.unwrap();
    let c = client(node.client_addr()).await;
    let token = token_for(id, 1, owner, vec![backup]);
    let got = timeout(WAIT, c.get(&token)).await.unwrap();
    assert!(got.is_ok(), "served once the backup hands its copy over: {got:?}");
    let st = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&st, "promotions"), 1, "{st:?}");
    stop(vec![node]).await;
}

/// An owner whose address refuses connections is gone (no process listens there, so none
/// serves reads under a lease): the claim does not wait. The lease is long (30 s), so a
/// GET answered within it was not held up by it. Checked: without the refused-dial
/// evidence, the GET waits the lease out and times out here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_does_not_wait_for_an_owner_whose_address_refuses_connections() {
    let (id, owner) = (sessync_proto::SessionId::random(), nowhere());
    let lease = Duration::from_secs(30);
    let (node, sent) = node_with_a_fresh_backup_copy(id, owner, lease).await;
    let c = client(node.client_addr()).await;
    let token = token_for(id, 1, owner, vec![node.peer_addr()]);
    let got = timeout(WAIT, c.get(&token)).await;
    assert!(
        matches!(&got, Ok(Ok(_))),
        "taken over without waiting out the lease: {got:?}"
    );
    assert!(sent.elapsed() < lease);
    let st = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&st, "promotions"), 1, "{st:?}");
    stop(vec![node]).await;
}

/// A read whose lease lapsed while one of the session's two holders is silent is not held
/// up for a peer timeout by it, but does hear the other holder: when that one has the
/// session's tombstone (a newer owner destroyed it), the read answers SESSION_NOT_FOUND
/// instead of the old copy (simulation seed 492 without crashes: a destroyed session read
/// back at its old owner). Both holders are fake peers; the silent one stops answering
/// after the session's creation. Checked: with the read served at once for a silent holder
/// (the rule before), the GET returns the session.
/// A node with the read lease [`LEASE`], every one of `holders` a backup (`--replicas` as
/// many) and this peer timeout, a client of it, and the token of a session (`x` = `1`)
/// created there.
async fn created_beside(
    holders: Vec<std::net::SocketAddr>,
    peer_timeout: Duration,
) -> (sessync_server::NodeHandle, Client, String) {
    let mut cfg = config();
    cfg.replicas = u8::try_from(holders.len()).unwrap();
    cfg.read_lease = LEASE;
    cfg.peer_timeout = peer_timeout;
    cfg.peers = holders;
    let node = sessync_server::start(cfg).await.unwrap();
    let c = client(node.client_addr()).await;
    let token = timeout(WAIT, c.create(attrs(&[("x", "1")])))
        .await
        .unwrap()
        .unwrap()
        .token;
    (node, c, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_beside_a_silent_holder_still_hears_a_tombstone() {
    use sessync_proto::PeerMessage;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    // 0: stores copies; 1: silent; 2: answers with the session's tombstone.
    const STORES: u8 = 0;
    const SILENT: u8 = 1;
    const TOMBSTONE: u8 = 2;
    let holder = |mode: Arc<AtomicU8>| {
        Arc::new(move |m: &PeerMessage| match (mode.load(Ordering::SeqCst), m) {
            (SILENT, _) => None,
            (TOMBSTONE, PeerMessage::Replicate { record, .. }) => Some(PeerMessage::NotFound {
                session_id: record.id,
            }),
            (_, PeerMessage::Epoch) => Some(PeerMessage::EpochIs {
                node_id: [7; 16],
                uptime_ms: 0,
            }),
            _ => Some(PeerMessage::Ok),
        }) as PeerScript
    };
    let (silent_mode, other_mode) = (Arc::new(AtomicU8::new(STORES)), Arc::new(AtomicU8::new(STORES)));
    let silent = scripted_peer([8; 16], holder(silent_mode.clone())).await;
    let other = scripted_peer([9; 16], holder(other_mode.clone())).await;
    let peer_timeout = Duration::from_millis(1500);
    let (node, c, token) = created_beside(vec![silent, other], peer_timeout).await;
    silent_mode.store(SILENT, Ordering::SeqCst);
    // Past the lease: this read's renewal waits out the silent holder (it was not known
    // silent yet) and is served; the holder is known silent from then on.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    timeout(WAIT, c.get(&token)).await.unwrap().unwrap();
    // The other holder now has the session's tombstone; past the lease again (and within
    // a peer timeout of the silence found, and three leases of the last round).
    other_mode.store(TOMBSTONE, Ordering::SeqCst);
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let began = Instant::now();
    let got = timeout(WAIT, c.get(&token)).await.unwrap();
    let took = began.elapsed();
    assert!(
        matches!(
            &got,
            Err(ClientError::Server {
                code: ErrorCode::SessionNotFound,
                ..
            })
        ),
        "a session whose holder has its tombstone was answered {got:?}"
    );
    assert!(
        took < peer_timeout,
        "the read waited {took:?} for the silent holder (peer timeout {peer_timeout:?})"
    );
    stop(vec![node]).await;
}

/// An owner's round placing the state its backup holds already renews the lease that
/// backup waits out before claiming (protocol.md 12.3): the node under test holds an
/// owner's backup copy, finds the owner silent to its COPY and waits out the owner's read
/// lease; meanwhile the owner, alive, REPLICATEs the same state again (a round placing it
/// anew, or renewing its lease: answered OK, "held", which the owner counts as a
/// confirmation). The node does not claim, and the owner's next write is still stored
/// there. Left at the first write, the wait ended with the older lease, the node claimed
/// the copy while the owner, cut off, went on serving it, and a destroyed session came
/// back there (simulation seed 42844 with crashes). The owner is a fake member silent to
/// COPY; its REPLICATEs are the test, dialling the node's peer port as the owner.
/// Checked: without the rule, the node claims the copy after the first lease and refuses
/// that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_placing_the_held_state_again_renews_the_owners_lease() {
    use common::member::dial_as_member;
    use sessync_proto::{PeerMessage, SessionId};
    use std::sync::Arc;
    use tokio::sync::Notify;
    // The owner's generation; a lease long enough for its second round to land in the wait.
    const OWNED: u64 = 3;
    const OWNER_LEASE: Duration = Duration::from_millis(2_000);
    let asked = Arc::new(Notify::new());
    let seen = asked.clone();
    let owner = scripted_peer(
        [7; 16],
        Arc::new(move |m| match m {
            // Cut off from the node's requests, not from its own rounds.
            PeerMessage::Copy { .. } => {
                seen.notify_one();
                None
            }
            PeerMessage::Locate { .. } | PeerMessage::Promote { .. } => None,
            _ => Some(PeerMessage::Ok),
        }),
    )
    .await;
    let node = replicating_node_with(vec![owner], Duration::from_millis(300), OWNER_LEASE).await;
    let id = SessionId::random();
    let mut link = dial_as_member(node.peer_addr(), [7; 16], owner).await;
    let placed = record_with_cart(id, b"owned");
    let replicate = |record: sessync_proto::SessionRecord| PeerMessage::Replicate {
        generation: OWNED,
        record,
    };
    assert_eq!(
        common::member::ask(&mut link, 1, replicate(placed.clone())).await,
        PeerMessage::Ok
    );

    let c = client(node.client_addr()).await;
    let token = token_for(id, OWNED, owner, vec![node.peer_addr()]);
    let get = tokio::spawn(async move { timeout(WAIT, c.get(&token)).await });
    timeout(WAIT, asked.notified())
        .await
        .expect("the node asks the owner");
    // The COPY times out after 300 ms; the wait runs until a lease after the first
    // REPLICATE. The owner's round placing the same state lands inside it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        common::member::ask(&mut link, 2, replicate(placed.clone())).await,
        PeerMessage::Ok,
        "the same state is held already"
    );
    let _ = get.await.expect("the GET task ends").expect("the GET must end");

    let mut next = placed;
    next.meta.version += 1;
    assert_eq!(
        common::member::ask(&mut link, 3, replicate(next)).await,
        PeerMessage::Ok,
        "the node is still the owner's backup: it did not claim the copy"
    );
    stop(vec![node]).await;
}

/// A holder for [`created_beside`] that stores every copy until `silent` is set, and from
/// then on answers nothing (paused, or every message to it lost).
fn holder_until_silent(silent: std::sync::Arc<std::sync::atomic::AtomicBool>) -> PeerScript {
    use sessync_proto::PeerMessage;
    std::sync::Arc::new(move |m: &PeerMessage| {
        if silent.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some(match m {
            PeerMessage::Epoch => PeerMessage::EpochIs {
                node_id: [7; 16],
                uptime_ms: 0,
            },
            _ => PeerMessage::Ok,
        })
    })
}

/// A copy whose last round began more than three leases ago (what a node paused or cut
/// off for long holds) is not served when no node answers its renewal round: any holder
/// may have claimed the session meanwhile and destroyed it (simulation seed 49365 with
/// crashes: the renewal after a 22 s pause lost both its REPLICATEs, and a destroyed
/// session was read back). Such a round renews nothing, so a retry runs a round again
/// and is refused again; once the holder answers, the read is served. Checked: without
/// the refusal the first read is served; with it but with the round renewing the lease
/// (the rule before), the second is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_copy_no_node_answered_for_is_not_served() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let silent = Arc::new(AtomicBool::new(false));
    let holder = scripted_peer([7; 16], holder_until_silent(silent.clone())).await;
    let (node, c, token) = created_beside(vec![holder], Duration::from_millis(300)).await;
    silent.store(true, Ordering::SeqCst);
    tokio::time::sleep(LEASE * 3 + Duration::from_millis(200)).await;
    for _ in 0..2 {
        let got = timeout(WAIT, c.get(&token)).await.unwrap();
        assert!(
            matches!(
                &got,
                Err(ClientError::Server {
                    code: ErrorCode::OwnerUnreachable,
                    ..
                })
            ),
            "an old copy no node answered for was answered {got:?}"
        );
    }
    silent.store(false, Ordering::SeqCst);
    let s = timeout(WAIT, c.get(&token)).await.unwrap().unwrap();
    assert_eq!(s.attributes.get("x").map(|v| v.as_ref()), Some(&b"1"[..]));
    let st = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&st, "read_lease_refusals"), 2, "{st:?}");
    stop(vec![node]).await;
}
