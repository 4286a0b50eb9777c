//! A node holding a claim that never acknowledged a write, and the LOCATE polls that
//! watch it (tests/rival_copies.rs, tests/rival_gave_up.rs); the backup copy of a gone
//! owner that a failover claims (tests/unsettled_claim.rs, tests/holder_restart.rs).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sessync_proto::{PeerMessage, Role, SessionId};
use tokio::time::timeout;

use super::raw_peer::{ask, authenticated_as, Raw};
use super::*;

/// A node with `--replicas 1` that took session `id` over from a dead owner under
/// PROMOTE at a fake backup, while neither fake member answered its REPLICATEs: its copy
/// is installed with no confirmation, so it never acknowledged a write. Returns the node,
/// the generation it owns the session under, and how many DROPs the members got.
pub async fn never_acknowledged_claim(id: SessionId) -> (sessync_server::NodeHandle, u64, Arc<AtomicUsize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    let refuse = {
        let drops = drops.clone();
        move |m: &PeerMessage| -> Option<PeerMessage> {
            match m {
                PeerMessage::Promote { session_id, .. } => Some(copy_under_promote(*session_id)),
                // No answer: the claim counts them as holders that may have its copy.
                PeerMessage::Replicate { .. } => None,
                PeerMessage::Locate { session_id } => Some(PeerMessage::NotFound {
                    session_id: *session_id,
                }),
                PeerMessage::Drop { .. } => {
                    drops.fetch_add(1, Ordering::SeqCst);
                    Some(PeerMessage::Ok)
                }
                _ => Some(PeerMessage::Ok),
            }
        }
    };
    let backup = scripted_peer([7; 16], Arc::new(refuse.clone())).await;
    let member = scripted_peer([8; 16], Arc::new(refuse)).await;
    let node = replicating_node(vec![backup, member]).await;
    let c = client(node.client_addr()).await;
    timeout(WAIT, c.get(&token_for(id, 0, nowhere(), vec![backup])))
        .await
        .unwrap()
        .expect("the backup's copy is taken over");
    let stats = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&stats, "promotions"), 1, "{stats:?}");
    let mut raw = authenticated_as(node.peer_addr(), nowhere(), [9; 16]).await;
    let generation = match locate(&mut raw, id).await {
        PeerMessage::Located {
            role: Role::Owner,
            generation: Some(g),
            ..
        } => g,
        other => panic!("the node owns the claimed session: {other:?}"),
    };
    (node, generation, drops)
}

/// A fake backup's answer to PROMOTE: its copy of `id`, handed over under transfer 1.
pub fn copy_under_promote(id: SessionId) -> PeerMessage {
    PeerMessage::CopyData {
        transfer: 1,
        holders: Vec::new(),
        record: empty_record(id, sessync_server::clock::now_ms(), 60_000),
    }
}

pub async fn locate(raw: &mut Raw, id: SessionId) -> PeerMessage {
    timeout(WAIT, ask(raw, PeerMessage::Locate { session_id: id }))
        .await
        .expect("LOCATE is answered")
}

/// Asks LOCATE until the node answers that it holds a backup copy of `owner`'s.
pub async fn until_backup_of(raw: &mut Raw, id: SessionId, owner: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = locate(raw, id).await;
        if matches!(answer, PeerMessage::Located { role: Role::Backup, addr, .. } if addr == owner) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not yield to {owner}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the rival of [`claim_met_by_rival`] does when the claim's REPLICATE of `id` under
/// `generation` reaches it: given a raw link to the claiming node (dialled as the rival,
/// node id 8), its acts there and its answer to the REPLICATE.
pub type RivalAct = Arc<
    dyn Fn(Raw, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = PeerMessage> + Send>>
        + Send
        + Sync,
>;

/// A node with `--replicas 1` claims session `id` from a fake backup (node id 7, which
/// hands its copy under PROMOTE and does not confirm the claim) and places the claim on a
/// fake rival (node id 8), which acts as `act` says. Returns the node and what a GET with
/// a token naming a dead owner and that backup was answered.
pub async fn claim_met_by_rival(
    id: SessionId,
    act: RivalAct,
) -> (
    sessync_server::NodeHandle,
    Result<sessync_client::Session, sessync_client::ClientError>,
) {
    let node_addr: Arc<std::sync::OnceLock<SocketAddr>> = Arc::default();
    let rival_addr: Arc<std::sync::OnceLock<SocketAddr>> = Arc::default();
    let backup = scripted_peer(
        [7; 16],
        Arc::new(|m: &PeerMessage| match m {
            PeerMessage::Promote { session_id, .. } => Some(copy_under_promote(*session_id)),
            PeerMessage::Replicate { .. } => None,
            PeerMessage::Locate { session_id } => Some(PeerMessage::NotFound {
                session_id: *session_id,
            }),
            _ => Some(PeerMessage::Ok),
        }),
    )
    .await;
    let rival = {
        let (node_addr, rival_addr) = (node_addr.clone(), rival_addr.clone());
        scripted_peer_async(
            [8; 16],
            Arc::new(move |m: PeerMessage| {
                let (node_addr, rival_addr, act) = (node_addr.clone(), rival_addr.clone(), act.clone());
                Box::pin(async move {
                    match m {
                        PeerMessage::Replicate { generation, record } if record.id == id => {
                            let (node, me) = (*node_addr.get().unwrap(), *rival_addr.get().unwrap());
                            Some(act(authenticated_as(node, me, [8; 16]).await, generation).await)
                        }
                        PeerMessage::Locate { session_id } => Some(PeerMessage::NotFound { session_id }),
                        _ => Some(PeerMessage::Ok),
                    }
                })
            }),
        )
        .await
    };
    rival_addr.set(rival).unwrap();
    let node = replicating_node(vec![backup, rival]).await;
    node_addr.set(node.peer_addr()).unwrap();
    let c = client(node.client_addr()).await;
    let got = timeout(WAIT, c.get(&token_for(id, 0, nowhere(), vec![backup])))
        .await
        .unwrap();
    (node, got)
}

/// A REPLICATE of an empty copy of `id` under `generation` at `version`.
pub fn replicate(id: SessionId, generation: u64, version: u64) -> PeerMessage {
    let mut record = empty_record(id, sessync_server::clock::now_ms(), 60_000);
    record.meta.version = version;
    PeerMessage::Replicate { generation, record }
}

/// Places generation 1 of session `id` (`cart` = `claimed`) as a backup copy on the node
/// whose peer port is `node`, from an owner at an address nothing listens on (a gone
/// owner): the copy a failover at that node claims. Returns the owner's address.
pub async fn backup_copy_of_a_gone_owner(node: SocketAddr, id: SessionId) -> SocketAddr {
    let owner = nowhere();
    let mut as_owner = authenticated_as(node, owner, [5; 16]).await;
    let placed = PeerMessage::Replicate {
        generation: 1,
        record: record_with_cart(id, b"claimed"),
    };
    assert_eq!(
        timeout(WAIT, ask(&mut as_owner, placed)).await.unwrap(),
        PeerMessage::Ok
    );
    owner
}
