//! Backup replicas over real sockets, with in-process nodes: a dead owner's sessions are
//! served from their backups, two nodes racing to promote one session end with one owner,
//! a move hands the backups over, and the refuse/degrade policies. The chaos test with
//! killed processes is in tests/chaos.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sessync_client::{Client, ClientError, ErrorCode};
use sessync_proto::Token;
use sessync_server::{BackupPolicy, NodeConfig, NodeHandle};
use tokio::time::timeout;

/// Starts a node on OS-chosen ports that keeps `replicas` backups.
async fn start_node(replicas: u8, tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let mut c = config();
    c.replicas = replicas;
    c.peer_timeout = Duration::from_millis(500);
    tweak(&mut c);
    sessync_server::start(c).await.unwrap()
}

/// `n` nodes that know each other's peer addresses and keep `replicas` backups (the peer
/// lists are set once every node is bound, so no port is chosen ahead).
async fn replicated_cluster(n: usize, replicas: u8) -> (Vec<NodeHandle>, Vec<SocketAddr>) {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(start_node(replicas, |_| {}).await);
    }
    let peers: Vec<SocketAddr> = nodes.iter().map(|n| n.peer_addr()).collect();
    for n in &nodes {
        n.node().set_peers(peers.clone());
    }
    (nodes, peers)
}

async fn stats(c: &Client) -> Vec<(String, u64)> {
    timeout(WAIT, c.stats()).await.unwrap().unwrap()
}

fn backups_of(token: &str) -> Vec<SocketAddr> {
    Token::verify(token, &keys()).unwrap().backups
}

fn owner_of(token: &str) -> SocketAddr {
    Token::verify(token, &keys()).unwrap().owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_sessions_are_served_from_their_backups_with_every_acknowledged_write() {
    let (mut nodes, peers) = replicated_cluster(3, 1).await;
    let clients = [
        client(nodes[0].client_addr()).await,
        client(nodes[1].client_addr()).await,
        client(nodes[2].client_addr()).await,
    ];
    // Sessions owned by node 0, each written a few times there.
    let mut tokens = Vec::new();
    for i in 0..20 {
        let s = timeout(WAIT, clients[0].create(attrs(&[("n", "0")])))
            .await
            .unwrap()
            .unwrap();
        let backups = backups_of(&s.token);
        assert_eq!(backups.len(), 1, "one backup named in the token");
        assert_ne!(backups[0], peers[0], "never its own backup");
        let mut token = s.token;
        for n in 1..=3 {
            let r = timeout(
                WAIT,
                clients[0]
                    .set(&token)
                    .put("n", n.to_string())
                    .put("i", i.to_string())
                    .send(),
            )
            .await
            .unwrap()
            .unwrap();
            token = r.token;
        }
        tokens.push(token);
    }
    let s0 = stats(&clients[0]).await;
    assert_eq!(stat(&s0, "replicated"), 80, "every write reached its backup");
    let backups_held =
        stat(&stats(&clients[1]).await, "backups") + stat(&stats(&clients[2]).await, "backups");
    assert_eq!(backups_held, 20);

    // The owner goes away.
    let dead = nodes.remove(0);
    assert!(dead.shutdown(WAIT).await);

    for (i, token) in tokens.iter().enumerate() {
        let via = &clients[1 + i % 2];
        let s = timeout(WAIT, via.get(token)).await.unwrap().unwrap();
        assert_eq!(s.get("n").unwrap(), "3", "the last acknowledged write survived");
        assert_eq!(s.get("i").unwrap(), i.to_string().as_str());
        // Taken over from a backup: a claim, so the version jumps past 4 (protocol.md 12.3:
        // the branch counts in a range of its own, so no stale compare-and-set can match).
        assert!(s.meta.version > 4, "version {}", s.meta.version);
        assert!(s.token_changed);
        assert_ne!(owner_of(&s.token), peers[0]);
        // The new owner has a new backup (the only other live node).
        let backups = backups_of(&s.token);
        assert_eq!(backups.len(), 1);
        assert!(!backups.contains(&peers[0]) && !backups.contains(&owner_of(&s.token)));
        // And it is writable there.
        let w = timeout(
            WAIT,
            via.set(&s.token).put("n", "4").if_version(s.meta.version).send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(w.meta.version, s.meta.version + 1);
    }
    let promotions =
        stat(&stats(&clients[1]).await, "promotions") + stat(&stats(&clients[2]).await, "promotions");
    assert_eq!(promotions, 20, "each session was taken over from a backup once");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_to_promote_one_session_end_with_one_owner() {
    // Owner A may only use X as backup, so X holds every copy; B and C race to take the
    // sessions over after A dies.
    let (mut nodes, all) = replicated_cluster(4, 1).await;
    let x = all[1];
    nodes[0].node().set_peers(vec![x]);
    let node_c = nodes.pop().unwrap();
    let node_b = nodes.pop().unwrap();
    let node_x = nodes.pop().unwrap();
    let node_a = nodes.pop().unwrap();
    let (ca, cx, cb, cc) = (
        client(node_a.client_addr()).await,
        client(node_x.client_addr()).await,
        client(node_b.client_addr()).await,
        client(node_c.client_addr()).await,
    );
    let mut tokens = Vec::new();
    for _ in 0..10 {
        let s = timeout(WAIT, ca.create(attrs(&[("count", "0")])))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(backups_of(&s.token), vec![x]);
        tokens.push(s.token);
    }
    assert!(node_a.shutdown(WAIT).await);

    for token in &tokens {
        // Both at once, each a compare-and-set increment from what it read. A session that
        // two nodes keep taking from each other can run out of hops (TOO_MANY_HOPS, a 4xx:
        // retry later; nothing was applied).
        let inc = |c: Client, token: String| async move {
            for _ in 0..50 {
                let s = match timeout(WAIT, c.get(&token)).await.unwrap() {
                    Ok(s) => s,
                    Err(ClientError::Server {
                        code: ErrorCode::TooManyHops,
                        ..
                    }) => continue,
                    Err(e) => panic!("read failed: {e}"),
                };
                let n: u64 = std::str::from_utf8(s.get("count").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                match timeout(
                    WAIT,
                    c.set(&s.token)
                        .put("count", (n + 1).to_string())
                        .if_version(s.meta.version)
                        .send(),
                )
                .await
                .unwrap()
                {
                    Ok(w) => return w.token,
                    Err(ClientError::Server {
                        code: ErrorCode::VersionConflict | ErrorCode::TooManyHops,
                        ..
                    }) => continue,
                    Err(e) => panic!("increment failed: {e}"),
                }
            }
            panic!("no increment in 50 tries");
        };
        let (tb, tc) = tokio::join!(inc(cb.clone(), token.clone()), inc(cc.clone(), token.clone()));
        // Both increments landed on one session: neither was lost to a second owner.
        let final_b = timeout(WAIT, cb.get(&tb)).await.unwrap().unwrap();
        assert_eq!(final_b.get("count").unwrap(), "2", "both increments, on one copy");
        let final_c = timeout(WAIT, cc.get(&tc)).await.unwrap().unwrap();
        assert_eq!(final_c.get("count").unwrap(), "2");
    }
    // X handed each copy over exactly once; B and C took over ten sessions between them.
    let sx = stats(&cx).await;
    assert_eq!(stat(&sx, "backups_promoted"), 10, "one promotion per session");
    let promotions = stat(&stats(&cb).await, "promotions") + stat(&stats(&cc).await, "promotions");
    assert_eq!(promotions, 10);
    stop(vec![node_x, node_b, node_c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_gives_the_session_new_backups_and_the_old_ones_drop_their_copies() {
    let (mut nodes, peers) = replicated_cluster(3, 1).await;
    let c0 = client(nodes[0].client_addr()).await;
    let c1 = client(nodes[1].client_addr()).await;
    let c2 = client(nodes[2].client_addr()).await;
    let mut token = timeout(WAIT, c0.create(attrs(&[("k", "v")])))
        .await
        .unwrap()
        .unwrap()
        .token;
    // Round-robin: every access moves the session.
    for round in 0..9 {
        let via = [&c1, &c2, &c0][round % 3];
        let s = timeout(WAIT, via.get(&token)).await.unwrap().unwrap();
        token = s.token;
        assert_eq!(owner_of(&token), peers[(round + 1) % 3]);
        assert_eq!(backups_of(&token).len(), 1);
    }
    // Exactly one backup copy is left in the cluster once the DROPs have landed.
    let mut held = 0;
    for _ in 0..100 {
        held = 0;
        for c in [&c0, &c1, &c2] {
            held += stat(&stats(c).await, "backups");
        }
        if held == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 1, "old backups dropped their copies");
    // The owner dies: its backup still has the session.
    let owner = owner_of(&token);
    let i = peers.iter().position(|p| *p == owner).unwrap();
    let dead = nodes.remove(i);
    assert!(dead.shutdown(WAIT).await);
    let survivor = client(nodes[0].client_addr()).await;
    let s = timeout(WAIT, survivor.get(&token)).await.unwrap().unwrap();
    assert_eq!(s.get("k").unwrap(), "v");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reachable_backups_writes_are_refused_or_degraded_as_configured() {
    // The only peer listed is an address where nothing listens.
    let nowhere = nowhere();
    let strict = start_node(1, |c| c.peers = vec![nowhere]).await;
    let c = client(strict.client_addr()).await;
    for _ in 0..2 {
        match timeout(WAIT, c.create(attrs(&[]))).await.unwrap() {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BackupUnavailable),
            other => panic!("expected BACKUP_UNAVAILABLE, got {other:?}"),
        }
    }
    let s = stats(&c).await;
    assert_eq!(stat(&s, "sessions"), 0, "nothing was created");
    assert_eq!(stat(&s, "backup_unavailable"), 2);
    assert_eq!(
        stat(&s, "under_replicated_writes"),
        0,
        "a refused write is not an under-replicated one (that counter is degrade's)"
    );

    let lenient = start_node(1, |c| {
        c.peers = vec![nowhere];
        c.backup_policy = BackupPolicy::Degrade;
    })
    .await;
    let c = client(lenient.client_addr()).await;
    let s = timeout(WAIT, c.create(attrs(&[("a", "1")])))
        .await
        .unwrap()
        .unwrap();
    assert!(
        backups_of(&s.token).is_empty(),
        "the token names no backup it does not have"
    );
    let w = timeout(WAIT, c.set(&s.token).put("a", "2").send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.meta.version, 2);
    assert_eq!(stat(&stats(&c).await, "under_replicated_writes"), 2);
    stop(vec![strict, lenient]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_and_rotate_remove_the_backup_copies() {
    let (mut nodes, peers) = replicated_cluster(2, 1).await;
    let n1 = nodes.pop().unwrap();
    let n0 = nodes.pop().unwrap();
    let c0 = client(n0.client_addr()).await;
    let c1 = client(n1.client_addr()).await;
    let s = timeout(WAIT, c0.create(attrs(&[("u", "alice")])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stat(&stats(&c1).await, "backups"), 1);
    let r = timeout(WAIT, c0.rotate(&s.token)).await.unwrap().unwrap();
    assert_eq!(backups_of(&r.token), vec![peers[1]]);
    assert_eq!(
        stat(&stats(&c1).await, "backups"),
        1,
        "the old id's copy went, the new id's came"
    );
    timeout(WAIT, c0.destroy(&r.token)).await.unwrap().unwrap();
    assert_eq!(stat(&stats(&c1).await, "backups"), 0);
    // The owner dies: neither id comes back from a backup.
    assert!(n0.shutdown(WAIT).await);
    for t in [&s.token, &r.token] {
        match timeout(WAIT, c1.get(t)).await.unwrap() {
            Err(ClientError::Server { code, .. }) => {
                assert!(
                    matches!(code, ErrorCode::OwnerUnreachable | ErrorCode::SessionNotFound),
                    "{code}"
                )
            }
            other => panic!("a destroyed or rotated-away session came back: {other:?}"),
        }
    }
    stop(vec![n1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_backup_dies_mid_write_is_indeterminate_not_success() {
    let (mut nodes, peers) = replicated_cluster(2, 1).await;
    let backup = nodes.pop().unwrap();
    let owner = nodes.pop().unwrap();
    let c = client(owner.client_addr()).await;
    let s = timeout(WAIT, c.create(attrs(&[("n", "1")])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backups_of(&s.token), vec![peers[1]]);
    // The backup goes away; the owner's link to it still looks up, so the write is
    // applied, and then no backup confirms it.
    assert!(backup.shutdown(WAIT).await);
    match timeout(WAIT, c.set(&s.token).put("n", "2").send()).await.unwrap() {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Indeterminate),
        other => panic!("a write no backup has was reported as {other:?}"),
    }
    // Applied at the owner, as INDETERMINATE says it may be.
    let now = timeout(WAIT, c.get(&s.token)).await.unwrap().unwrap();
    assert_eq!(now.get("n").unwrap(), "2");
    let st = stats(&c).await;
    assert_eq!(stat(&st, "indeterminate"), 1);
    // Once the owner's link knows the backup is gone (the next dial fails and backs
    // off), writes are refused up front and change nothing. Until then they are applied
    // and answered INDETERMINATE, never success.
    let mut applied = 2;
    let mut refused = false;
    for n in 3..10 {
        match timeout(WAIT, c.set(&s.token).put("n", n.to_string()).send())
            .await
            .unwrap()
        {
            Err(ClientError::Server {
                code: ErrorCode::BackupUnavailable,
                ..
            }) => {
                refused = true;
                break;
            }
            Err(ClientError::Server {
                code: ErrorCode::Indeterminate,
                ..
            }) => applied = n,
            other => panic!("a write no backup has was reported as {other:?}"),
        }
    }
    assert!(refused, "writes were never refused with the only backup gone");
    let now = timeout(WAIT, c.get(&s.token)).await.unwrap().unwrap();
    assert_eq!(now.get("n").unwrap(), applied.to_string().as_str());
    stop(vec![owner]).await;
}

/// Two claims of one generation, each placed on the other's claimer and on a third holder
/// (protocol.md 12.3, "A claim refused on behalf of a node that does not own S"): a holder
/// that took this claim's copy in the same round gave its own claim up to it, so a MOVED
/// naming that holder elsewhere comes from the abandoned claim, and the claim is placed
/// one generation higher instead of yielding too (simulation seed 3296 without crashes:
/// both claims yielded and no copy was left). Fake peers: the backup handing its copy
/// over under PROMOTE, the rival (takes every copy, locates itself as a backup of this
/// node), and a third holder that holds the rival's copy of generation 1. Checked: without
/// the rule, the GET fails and nothing is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_rival_yielded_to_it_climbs_past_the_rivals_copy() {
    use sessync_proto::{PeerMessage, SessionId};
    use std::sync::{Arc, Mutex};
    let dead = nowhere();
    let id = SessionId::random();
    let node_addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let rival = {
        let node_addr = node_addr.clone();
        scripted_peer(
            [0xff; 16],
            Arc::new(move |m: &PeerMessage| {
                Some(match m {
                    PeerMessage::Locate { session_id } => match *node_addr.lock().unwrap() {
                        Some(addr) => located_backup(*session_id, addr, 1),
                        None => PeerMessage::NotFound {
                            session_id: *session_id,
                        },
                    },
                    _ => PeerMessage::Ok,
                })
            }),
        )
        .await
    };
    let third_generations = Arc::new(Mutex::new(Vec::new()));
    let third = {
        let seen = third_generations.clone();
        scripted_peer(
            [2; 16],
            Arc::new(move |m: &PeerMessage| {
                Some(match m {
                    PeerMessage::Replicate { generation, record } => {
                        seen.lock().unwrap().push(*generation);
                        if *generation <= 1 {
                            PeerMessage::Moved {
                                session_id: record.id,
                                owner: rival,
                            }
                        } else {
                            PeerMessage::Ok
                        }
                    }
                    PeerMessage::Locate { session_id } => PeerMessage::NotFound {
                        session_id: *session_id,
                    },
                    _ => PeerMessage::Ok,
                })
            }),
        )
        .await
    };
    let backup = scripted_peer(
        [3; 16],
        Arc::new(move |m: &PeerMessage| {
            Some(match m {
                PeerMessage::Promote { session_id, .. } if *session_id == id => PeerMessage::CopyData {
                    transfer: 1,
                    holders: vec![rival, third],
                    record: empty_record(id, sessync_server::clock::now_ms(), 60_000),
                },
                PeerMessage::Locate { session_id } => PeerMessage::NotFound {
                    session_id: *session_id,
                },
                _ => PeerMessage::Ok,
            })
        }),
    )
    .await;
    let mut cfg = config();
    cfg.replicas = 1;
    cfg.peers = vec![backup, rival, third];
    cfg.peer_timeout = Duration::from_millis(600);
    let node = sessync_server::start(cfg).await.unwrap();
    *node_addr.lock().unwrap() = Some(node.peer_addr());
    let c = client(node.client_addr()).await;
    let token = token_for(id, 0, dead, vec![backup]);
    let got = timeout(WAIT, c.get(&token)).await.unwrap();
    assert!(got.is_ok(), "the claim yielded too: {got:?}");
    let seen = third_generations.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&1), "{seen:?}");
    assert!(seen.contains(&2), "placed one generation higher: {seen:?}");
    stop(vec![node]).await;
}

/// A write applied to a copy that a newer copy replaced before the write's replication
/// round (protocol.md 12.2 step 2): the round that follows replicates the newer copy,
/// which lacks the write, so it says nothing about the write, and the write is not
/// acknowledged (simulation seed 2352 without crashes: a paused owner's stale copy took
/// a write while a fetch for a newer token installed the newer owner's copy over it; the
/// install's round then acknowledged the write, which was lost). Fake peers: the backup,
/// whose answer to the fetched copy's REPLICATE takes 600 ms (so the install holds the
/// session's replication while the write waits for it), and the newer owner, which hands
/// its copy over. Checked: without the rule the SET is acknowledged and the read lacks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_copy_replaced_before_its_round_is_not_acknowledged() {
    use sessync_proto::PeerMessage;
    use std::sync::Arc;
    let backup = scripted_peer_async(
        [3; 16],
        Arc::new(|m: PeerMessage| {
            Box::pin(async move {
                Some(match m {
                    PeerMessage::Replicate { generation, .. } if generation > 0 => {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        PeerMessage::Ok
                    }
                    PeerMessage::Locate { session_id } => PeerMessage::NotFound { session_id },
                    _ => PeerMessage::Ok,
                })
            })
        }),
    )
    .await;
    let newer = scripted_peer(
        [4; 16],
        Arc::new(move |m: &PeerMessage| {
            Some(match m {
                PeerMessage::Copy { session_id, .. } => PeerMessage::CopyData {
                    transfer: 5,
                    holders: vec![backup],
                    record: empty_record(*session_id, sessync_server::clock::now_ms(), 60_000),
                },
                _ => PeerMessage::Ok,
            })
        }),
    )
    .await;
    let node = start_node(1, |c| {
        c.peers = vec![backup];
        c.peer_timeout = Duration::from_millis(2_000);
    })
    .await;
    let (c, reader) = (client(node.client_addr()).await, client(node.client_addr()).await);
    let s = timeout(WAIT, c.create(attrs(&[("cart", "0")])))
        .await
        .unwrap()
        .unwrap();
    let id = Token::verify(&s.token, &keys()).unwrap().session_id;
    let newer_token = token_for(id, 4, newer, vec![backup]);
    let fetch = tokio::spawn(async move { timeout(WAIT, reader.get(&newer_token)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let write = timeout(WAIT, c.set(&s.token).put("cart", "1".to_string()).send())
        .await
        .unwrap();
    let fetched = fetch
        .await
        .unwrap()
        .expect("the newer copy is fetched and installed");
    assert_eq!(fetched.get("cart"), None, "the newer owner's copy");
    assert!(
        matches!(
            write,
            Err(ClientError::Server {
                code: ErrorCode::Indeterminate,
                ..
            })
        ),
        "a write its copy lost before its round was reported as {write:?}"
    );
    stop(vec![node]).await;
}
