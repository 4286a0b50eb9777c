//! Rival copies of one generation met through a holder (protocol.md 12.4), over real
//! sockets: a moved copy being placed that a holder refuses with MOVED naming a rival of
//! its generation keeps the session when that rival promised in the same round to yield
//! (VERSION_CONFLICT) and went silent, and gives it up when the rival made no such promise
//! and still owns the generation when asked. The holder, rival and giver are fake peers
//! that complete the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::raw_peer::authenticated_as;
use common::*;
use sessync_proto::{ErrorCode, ErrorReply, PeerMessage, Role, SessionId};
use tokio::time::timeout;

/// The generation the giver hands the copy over under.
const GENERATION: u64 = 5;

/// A node with `--replicas 1` fetches a session from a fake giver whose copy's holders
/// are a fake holder and a fake rival. The holder answers the copy's REPLICATE late, with
/// MOVED naming the rival; the rival answers it with VERSION_CONFLICT when `promises`
/// (a rival claim of the generation in the middle of its round, which yields once it is
/// over) and OK otherwise, and answers LOCATE once as the owner of the generation, then
/// not at all when `then_silent` (its answers lost), or always as the owner. Returns
/// whether the GET was served and whether the node owns the session.
async fn moved_copy_meets_rival_through_holder(promises: bool, then_silent: bool) -> (bool, bool) {
    let id = SessionId::random();
    let locates = Arc::new(AtomicUsize::new(0));
    let rival = scripted_peer(
        [0xee; 16],
        Arc::new(move |m: &PeerMessage| match m {
            PeerMessage::Replicate { .. } if promises => Some(PeerMessage::Error(ErrorReply::new(
                ErrorCode::VersionConflict,
                "this node's rival copy of the generation yields to yours once its round is over; send it again",
            ))),
            PeerMessage::Locate { session_id } => {
                let first = locates.fetch_add(1, Ordering::SeqCst) == 0;
                (first || !then_silent).then_some(PeerMessage::Located {
                    session_id: *session_id,
                    role: Role::Owner,
                    addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                    generation: Some(GENERATION),
                })
            }
            _ => Some(PeerMessage::Ok),
        }),
    )
    .await;
    // Late: the rival's answer to the same round comes first, as in seed 15021.
    let holder = scripted_peer_async(
        [7; 16],
        Arc::new(move |m: PeerMessage| {
            Box::pin(async move {
                match m {
                    PeerMessage::Replicate { record, .. } => {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        Some(PeerMessage::Moved {
                            session_id: record.id,
                            owner: rival,
                        })
                    }
                    PeerMessage::Locate { session_id } => Some(PeerMessage::NotFound { session_id }),
                    _ => Some(PeerMessage::Ok),
                }
            })
        }),
    )
    .await;
    let giver = scripted_giver([8; 16], GENERATION, vec![holder, rival]).await;
    let node = replicating_node(vec![giver, holder, rival]).await;
    let c = client(node.client_addr()).await;
    let got = timeout(WAIT, c.get(&token_for(id, GENERATION - 1, giver, vec![holder])))
        .await
        .expect("the GET must end");
    let mut raw = authenticated_as(node.peer_addr(), nowhere(), [9; 16]).await;
    let owned = matches!(
        timeout(
            WAIT,
            common::raw_peer::ask(&mut raw, PeerMessage::Locate { session_id: id })
        )
        .await
        .expect("LOCATE is answered"),
        PeerMessage::Located {
            role: Role::Owner,
            ..
        }
    );
    stop(vec![node]).await;
    (got.is_ok(), owned)
}

/// The rival promised to yield (VERSION_CONFLICT) and went silent after saying once that
/// it owns the generation: the moved copy is installed, served and owned here, the holder
/// counted as one that did not confirm. Given up, the rival yielded a moment later and
/// only fences were left (simulation seed 15021 without crashes). Checked: without the
/// rule, the GET is not served here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_being_placed_keeps_the_session_from_a_silent_rival_that_promised_to_yield() {
    let (served, owned) = moved_copy_meets_rival_through_holder(true, true).await;
    assert!(served, "the moved copy is installed and served");
    assert!(owned, "the node owns the session");
}

/// A rival that made no such promise and still owns the generation at every ask wins:
/// the moved copy ends not owned here (given up at the bound, as before this rule; kept
/// by it, the survey a contested copy runs finds the rival and gives it up). Kept beside
/// such a rival, a live copy served reads without an append the rival had acknowledged
/// (simulation seed 3594 with crashes, with a first version of the rule that did not ask
/// for the promise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_being_placed_gives_up_to_a_rival_that_keeps_its_generation() {
    let (_, owned) = moved_copy_meets_rival_through_holder(false, false).await;
    assert!(!owned, "the node gave the session up to the rival");
}
