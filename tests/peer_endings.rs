//! How copies end at a peer, over real sockets (protocol.md 10, 12.2 and 12.4): RETIRE
//! leaves a tombstone at a backup, DROP a fence, and COPY_REFUSED ends a handover at its
//! giver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw_peer::{ask, authenticated};
use common::*;
use sessync_proto::{PeerMessage, SessionId};

/// A backup told RETIRE by the owner of its copy keeps a tombstone: LOCATE answers
/// "destroyed", and no copy of that session is stored again, from that owner or any
/// other (what lets the end of a session outlive a crash of its owner). A DROP leaves a
/// fence instead, which a newer generation passes. Checked: with RETIRE handled as DROP,
/// the tombstone assertions fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_leaves_a_tombstone_where_drop_leaves_a_fence() {
    let nodes = cluster(1).await;
    let mut owner = authenticated(nodes[0].peer_addr()).await;
    let record = |id| empty_record(id, sessync_server::clock::now_ms(), 60_000);
    let (retired, dropped) = (SessionId::random(), SessionId::random());
    for id in [retired, dropped] {
        let stored = ask(
            &mut owner,
            PeerMessage::Replicate {
                generation: 1,
                record: record(id),
            },
        )
        .await;
        assert_eq!(stored, PeerMessage::Ok);
    }
    let end = ask(
        &mut owner,
        PeerMessage::Retire {
            session_id: retired,
            generation: 1,
        },
    )
    .await;
    assert_eq!(end, PeerMessage::Ok);
    let end = ask(
        &mut owner,
        PeerMessage::Drop {
            session_id: dropped,
            generation: 1,
        },
    )
    .await;
    assert_eq!(end, PeerMessage::Ok);

    // The retired session: a tombstone, to LOCATE and to any later copy.
    match ask(&mut owner, PeerMessage::Locate { session_id: retired }).await {
        PeerMessage::Located { role, .. } => assert_eq!(role, sessync_proto::Role::Destroyed),
        other => panic!("LOCATE of a retired session: {other:?}"),
    }
    let again = ask(
        &mut owner,
        PeerMessage::Replicate {
            generation: 2,
            record: record(retired),
        },
    )
    .await;
    assert_eq!(again, PeerMessage::NotFound { session_id: retired });
    let mut other = authenticated(nodes[0].peer_addr()).await;
    let rival = ask(
        &mut other,
        PeerMessage::Replicate {
            generation: 5,
            record: record(retired),
        },
    )
    .await;
    assert_eq!(rival, PeerMessage::NotFound { session_id: retired });

    // The dropped one: a fence, which the next generation passes.
    let located = ask(&mut owner, PeerMessage::Locate { session_id: dropped }).await;
    assert!(
        !matches!(
            located,
            PeerMessage::Located {
                role: sessync_proto::Role::Destroyed,
                ..
            }
        ),
        "a DROP left a tombstone: {located:?}"
    );
    let next = ask(
        &mut owner,
        PeerMessage::Replicate {
            generation: 2,
            record: record(dropped),
        },
    )
    .await;
    assert_eq!(next, PeerMessage::Ok);
    stop(nodes).await;
}

/// A receiver that did not install a handed-over copy answers COPY_REFUSED (protocol.md
/// 10 and 12.4): the giver ends the handover as on COPY_ACK (it forwards to the receiver
/// and hands nothing out again), it does not keep offering its copy. Checked: with
/// COPY_REFUSED answered OK but ignored, a COPY asked again gets the copy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_refused_ends_the_handover_at_the_giver() {
    let nodes = cluster(1).await;
    let c = client(nodes[0].client_addr()).await;
    let s = c.create(attrs(&[("cart", "1")])).await.unwrap();
    let id = sessync_proto::Token::verify(&s.token, &keys())
        .unwrap()
        .session_id;
    let mut taker = authenticated(nodes[0].peer_addr()).await;
    let transfer = match ask(
        &mut taker,
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 0,
        },
    )
    .await
    {
        PeerMessage::CopyData { transfer, .. } => transfer,
        other => panic!("COPY of a live session: {other:?}"),
    };
    let refused = ask(
        &mut taker,
        PeerMessage::CopyRefused {
            session_id: id,
            transfer,
        },
    )
    .await;
    assert_eq!(refused, PeerMessage::Ok);
    // Handed on: LOCATE names the taker, and a COPY asked again is pointed at it.
    match ask(&mut taker, PeerMessage::Locate { session_id: id }).await {
        PeerMessage::Located { role, addr, .. } => {
            assert_eq!(role, sessync_proto::Role::HandedOver);
            assert_eq!(addr, "127.0.0.1:9".parse().unwrap());
        }
        other => panic!("LOCATE after COPY_REFUSED: {other:?}"),
    }
    let again = ask(
        &mut taker,
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 0,
        },
    )
    .await;
    assert!(
        matches!(again, PeerMessage::Moved { .. }),
        "the refused copy was offered again: {again:?}"
    );
    stop(nodes).await;
}
