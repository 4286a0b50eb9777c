//! Speaking to a node's peer port as one of its members: the test dials with the cluster
//! secret and completes the real handshake, then sends requests as that member would
//! (tests/yield_mid_round.rs, tests/take_back.rs).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use sessync_proto::{Dialler, FrameCodec, Message, PeerMessage};
use tokio::time::timeout;

use super::{keys, WAIT};

/// An authenticated peer connection the test speaks on.
pub type MemberLink = tokio_util::codec::Framed<tokio::net::TcpStream, FrameCodec>;

/// Dials `node`'s peer port as the member `advertised` (node id `node_id`) and completes
/// the handshake.
pub async fn dial_as_member(node: SocketAddr, node_id: [u8; 16], advertised: SocketAddr) -> MemberLink {
    let stream = timeout(WAIT, tokio::net::TcpStream::connect(node))
        .await
        .unwrap()
        .unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new(1 << 20));
    let (dialler, hello) = Dialler::start(keys(), node_id, advertised);
    framed.send((1, hello)).await.unwrap();
    let challenge = read_reply(&mut framed).await;
    let (_, proof) = dialler.handle_challenge(challenge).unwrap();
    framed.send((2, proof)).await.unwrap();
    assert_eq!(read_reply(&mut framed).await, PeerMessage::AuthOk);
    framed
}

/// Sends `msg` on `link` as request `request_id` and returns the answer, within [`WAIT`].
pub async fn ask(link: &mut MemberLink, request_id: u64, msg: PeerMessage) -> PeerMessage {
    link.send((request_id, msg)).await.unwrap();
    read_reply(link).await
}

/// Dials `node` as the member `advertised` (process `node_id`), asks it for session `id`
/// with COPY and returns the transfer it was handed the session under (panics on any
/// other answer).
pub async fn take_handover(
    node: SocketAddr,
    node_id: [u8; 16],
    advertised: SocketAddr,
    id: sessync_proto::SessionId,
) -> u64 {
    let mut link = dial_as_member(node, node_id, advertised).await;
    let copy = PeerMessage::Copy {
        session_id: id,
        last_transfer: 0,
    };
    match ask(&mut link, 3, copy).await {
        PeerMessage::CopyData { transfer, .. } => transfer,
        other => panic!("the node did not hand the session over: {other:?}"),
    }
}

/// The next message on a member link, within [`WAIT`].
pub async fn read_reply(link: &mut MemberLink) -> PeerMessage {
    let frame = timeout(WAIT, link.next())
        .await
        .expect("the node answers")
        .expect("the connection stays open")
        .unwrap();
    PeerMessage::decode_frame(&frame, &Default::default()).unwrap()
}

/// What a member holding nothing of the session answers: NOT_FOUND to LOCATE, COPY and
/// PROMOTE (a new process, say), OK to the rest (it takes copies as a holder).
pub fn empty_member_answer(m: &PeerMessage) -> PeerMessage {
    match m {
        PeerMessage::Locate { session_id }
        | PeerMessage::Copy { session_id, .. }
        | PeerMessage::Promote { session_id, .. } => PeerMessage::NotFound {
            session_id: *session_id,
        },
        _ => PeerMessage::Ok,
    }
}

/// What a giver still handing the session to `node` answers: LOCATED role 3 naming
/// `node` at `located_at`; to PROMOTE naming `node` as the failed owner, its copy
/// (`cart` = `cart`) handed again under `transfer`, after setting `rehanded`; MOVED to
/// `node` for any other COPY or PROMOTE; OK to the rest.
pub fn giver_handing_to(
    node: SocketAddr,
    m: &PeerMessage,
    located_at: u64,
    transfer: u64,
    cart: &'static [u8],
    rehanded: &std::sync::atomic::AtomicBool,
) -> PeerMessage {
    match m {
        PeerMessage::Locate { session_id } => PeerMessage::Located {
            session_id: *session_id,
            role: sessync_proto::Role::HandedOver,
            addr: node,
            generation: Some(located_at),
        },
        PeerMessage::Promote {
            session_id,
            failed_owner,
            ..
        } if *failed_owner == node => {
            rehanded.store(true, std::sync::atomic::Ordering::SeqCst);
            PeerMessage::CopyData {
                transfer,
                holders: Vec::new(),
                record: super::record_with_cart(*session_id, cart),
            }
        }
        PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
            PeerMessage::Moved {
                session_id: *session_id,
                owner: node,
            }
        }
        _ => PeerMessage::Ok,
    }
}
