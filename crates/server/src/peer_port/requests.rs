//! What the peer port answers: one function per authenticated peer request
//! ([`handle`]), the same one the simulation's network calls, and the helpers of the
//! backup requests (REPLICATE, REPLICATE_CLAIM, DROP, RETIRE, COPY_ACK).

use sessync_proto::{
    peer_feature, ClaimBase, ErrorCode, ErrorReply, PeerIdentity, PeerMessage, SessionRecord,
};

use crate::clock::now_ms;
use crate::node::SharedNode;
use crate::stats::Stats;
use crate::table::{writer_tag, CopyOutcome, Dropped, Replicated, RivalBase};

/// Answers one request from an authenticated peer; `None` for a message that is not a
/// peer request (the connection is then closed).
pub(crate) fn handle(node: &SharedNode, peer: &PeerIdentity, msg: PeerMessage) -> Option<PeerMessage> {
    let now = now_ms();
    // MOVED, counted: the answer of every refusal that names the owner to ask instead.
    let moved = |session_id, owner| {
        Stats::bump(&node.stats.moved);
        PeerMessage::Moved { session_id, owner }
    };
    let copy = |session_id, last_transfer, failed_owner: Option<std::net::SocketAddr>| match node
        .table
        .hand_over(&session_id, *peer, last_transfer, failed_owner, now)
    {
        CopyOutcome::Data {
            transfer,
            holders,
            record,
        } => {
            Stats::bump(&node.stats.copies_served);
            if failed_owner.is_some() {
                Stats::bump(&node.stats.backups_promoted);
            }
            PeerMessage::CopyData {
                transfer,
                holders,
                record,
            }
        }
        CopyOutcome::Moved(owner) => moved(session_id, owner),
        CopyOutcome::NotFound => PeerMessage::NotFound { session_id },
    };
    Some(match msg {
        PeerMessage::Ping(n) => PeerMessage::Pong(n),
        // A request of a process that another one replaced at its address since: it
        // crashed after sending it, and its link delivered it late (a paused receiver, a
        // delay). A COPY or PROMOTE answered would hand the session to a process that is
        // gone; a COPY_REFUSED would make this node retire the copy it is handing over,
        // though the copy refused in its favour died with that process (simulation seed
        // 3301 with crashes). Its REPLICATE is stored only where it supersedes no other
        // owner's copy (`Table::replicate_in_from`); its COPY_ACK, DROP and RETIRE are
        // taken as any other (what it placed on its holders stands), and LOCATE is
        // answered (protocol.md 12.2 step 7).
        m @ (PeerMessage::Copy { .. } | PeerMessage::Promote { .. } | PeerMessage::CopyRefused { .. })
            if node.peers.processes.replaced(peer) =>
        {
            tracing::debug!(from = %peer.advertised, request = %format!("{m:?}").chars().take(60).collect::<String>(), "refused: the sender's process was replaced at its address");
            PeerMessage::Error(ErrorReply::new(
                ErrorCode::BackupUnavailable,
                "the process that sent this request was replaced at its address",
            ))
        }
        // A claim its holders have not confirmed, or a session with a holder that
        // restarted, is not handed on: answered as while a copy is placed (LOCATE says
        // owner, so the asker asks again; protocol.md 12.2 step 6), and placed again in
        // the background until the members' word confirms or supersedes it.
        PeerMessage::Copy { session_id, .. } if node.holders_unsettled(&session_id) => {
            tracing::debug!(session = %session_id, asker = %peer.advertised, "COPY waits: this node's holders of the session are not settled yet");
            node.settle_holders_in_background(session_id);
            PeerMessage::NotFound { session_id }
        }
        // PROMOTE too, when this node owns the session: it is answered as the owner it is
        // (MOVED here, so the asker asks by COPY, which waits as above). Handed on under
        // PROMOTE, a claim of a stale backup copy that no holder had confirmed went on at
        // the asker, acknowledged an append there, and lost it to the rival claim of the
        // newer copy that the survey would have found (simulation seed 23791 with
        // crashes).
        PeerMessage::Promote { session_id, .. } if node.holders_unsettled(&session_id) => {
            tracing::debug!(session = %session_id, asker = %peer.advertised, "PROMOTE of a session owned here with holders not settled yet: answered as its owner");
            node.settle_holders_in_background(session_id);
            moved(session_id, node.advertise)
        }
        // A COPY is handed over, unless it comes from the owner this node's lost failover
        // took the session from: the copy here is superseded then, the session's newest
        // state is at the backup still handing it here. That handover is completed first
        // (protocol.md 12.3, "A failover whose answer was lost"), and the asker asks again.
        PeerMessage::Copy {
            session_id,
            last_transfer,
        } => match node.lost_failover_from(&session_id, peer.advertised) {
            Some(giver) => {
                node.complete_lost_failover_in_background(session_id, giver);
                PeerMessage::NotFound { session_id }
            }
            None => copy(session_id, last_transfer, None),
        },
        // The owner's process that wrote the copy held here still REPLICATEs here: it is
        // alive and owns the session; the asker cannot reach it, which is no reason to make
        // a second owner (simulation seed 121, without crashes: a paused node's PROMOTE
        // took a copy the live owner had just written to).
        PeerMessage::Promote {
            session_id,
            failed_owner,
            ..
        } if failed_owner != peer.advertised && node.owner_wrote_lately(&session_id, failed_owner, now) => {
            tracing::debug!(session = %session_id, %failed_owner, asker = %peer.advertised, "PROMOTE refused: the process of the owner that wrote this copy still REPLICATEs here");
            moved(session_id, failed_owner)
        }
        // A kept copy (this node's own older state) for an asker that knew a newer
        // generation: only once the failed owner said it holds nothing newer
        // (`node/kept_copies.rs`; simulation seed 5934 without crashes).
        PeerMessage::Promote {
            session_id,
            last_transfer,
            failed_owner,
        } if failed_owner != peer.advertised
            && node.kept_copy_withheld(&session_id, failed_owner, last_transfer, now) =>
        {
            tracing::debug!(session = %session_id, %failed_owner, asker = %peer.advertised, "PROMOTE refused: the kept copy here is older than the asker's, and the failed owner has not said it holds nothing newer");
            moved(session_id, failed_owner)
        }
        // The failed owner's read lease on the copy held here may still run: alive and cut
        // off, it may serve reads of its copy without asking anyone until then, so no
        // claim of this copy may acknowledge anything yet (protocol.md 12.3 step 2;
        // simulation seed 745 without crashes: a destroyed session read back there).
        PeerMessage::Promote {
            session_id,
            failed_owner,
            ..
        } if failed_owner != peer.advertised
            && node
                .old_owner_lease_ends(&session_id, failed_owner, now)
                .is_some() =>
        {
            tracing::debug!(session = %session_id, %failed_owner, asker = %peer.advertised, "PROMOTE refused: the failed owner's read lease on this copy has not ended");
            Stats::bump(&node.stats.claims_waited_for_lease);
            // The asker asks again shortly; a probe may by then have found the owner gone.
            node.probe_failed_owner(failed_owner);
            PeerMessage::Moved {
                session_id,
                owner: failed_owner,
            }
        }
        // A copy handed to the failed owner, whose holder restarted since: not handed on
        // until the members say nobody installed it (`node/holder_restarts.rs`; simulation
        // seed 1681 with crashes).
        PeerMessage::Promote {
            session_id,
            failed_owner,
            ..
        } if node.handover_unsure(&session_id, failed_owner, peer.advertised) => {
            tracing::debug!(session = %session_id, %failed_owner, asker = %peer.advertised, "PROMOTE refused: a holder of the session restarted since it was handed to the failed owner");
            moved(session_id, failed_owner)
        }
        // A copy handed to the failed owner is handed on to the asker only once that
        // receiver is known not to hold it (`node/rehand.rs`; simulation seed 17 359 with
        // crashes).
        PeerMessage::Promote {
            session_id,
            failed_owner,
            ..
        } if node.rehand_withheld(&session_id, failed_owner, *peer, now) => moved(session_id, failed_owner),
        PeerMessage::Promote {
            session_id,
            last_transfer,
            failed_owner,
        } => copy(session_id, last_transfer, Some(failed_owner)),
        PeerMessage::CopyAck { session_id, transfer } => {
            copy_acknowledged(node, peer, session_id, transfer, now);
            PeerMessage::Ok
        }
        // Each as if it came alone, in order (protocol.md 10, COPY_ACKS).
        PeerMessage::CopyAcks { acks } => {
            let folded = acks.len() as u64;
            node.stats
                .copy_acks_folded
                .fetch_add(folded, std::sync::atomic::Ordering::Relaxed);
            for (session_id, transfer) in acks {
                copy_acknowledged(node, peer, session_id, transfer, now);
            }
            PeerMessage::Ok
        }
        // What this node understands beyond the base protocol (protocol.md 9.3).
        PeerMessage::Features(_) => PeerMessage::FeaturesAre(peer_feature::ALL),
        PeerMessage::CopyRefused { session_id, transfer } => {
            // A COPY_ACK held back here stays held: the copy it would retire at this
            // node's giver is now the newest one this node knows was placed.
            if let Some(old) = node.table.refuse_handover(&session_id, *peer, transfer, now) {
                node.spawn_drop_backups(session_id, old);
            }
            PeerMessage::Ok
        }
        // Leaving, lookups and repair (node/drain.rs): a leaving node takes no new copy.
        m if m
            .replicated_record()
            .is_some_and(|record| node.refuses_new_copy(peer, &record.id)) =>
        {
            node.elastic_request(peer, m)
        }
        m @ (PeerMessage::Take { .. }
        | PeerMessage::Release { .. }
        | PeerMessage::Locate { .. }
        | PeerMessage::Epoch) => node.elastic_request(peer, m),
        PeerMessage::Replicate { generation, record } => {
            replicate_here(node, peer, generation, &record, None, now)
        }
        PeerMessage::ReplicateClaim {
            generation,
            base,
            record,
        } => replicate_here(node, peer, generation, &record, Some(base), now),
        PeerMessage::Drop {
            session_id,
            generation,
        } => end_backup(node, peer, session_id, generation, now, false),
        PeerMessage::Retire {
            session_id,
            generation,
        } => end_backup(node, peer, session_id, generation, now, true),
        _ => return None,
    })
}

/// COPY_ACK of `session_id`'s handover `transfer` to `peer`: the handover ends, the old
/// lineage's backups go, and a COPY_ACK held back here for the session may go too.
fn copy_acknowledged(
    node: &SharedNode,
    peer: &PeerIdentity,
    session_id: sessync_proto::SessionId,
    transfer: u64,
    now: u64,
) {
    if let Some(old) = node.table.ack_handover(&session_id, *peer, transfer, now) {
        node.spawn_drop_backups(session_id, old);
        // Its next owner has it: a COPY_ACK held back here may go too.
        node.release_held_ack(session_id);
    }
}

/// DROP (`retire` false) or RETIRE from `peer`: the table's step, and the answer: OK, or
/// MOVED to the newer owner (this node, for the unspecified address).
fn end_backup(
    node: &crate::Node,
    peer: &PeerIdentity,
    session_id: sessync_proto::SessionId,
    generation: u64,
    now: u64,
    retire: bool,
) -> PeerMessage {
    let (ended, what) = if retire {
        let r = node
            .table
            .retire_backup(&session_id, peer.advertised, generation, now);
        (r, "RETIRE")
    } else {
        let d = node
            .table
            .drop_backup(&session_id, peer.advertised, generation, now);
        (d, "DROP")
    };
    tracing::debug!(session = %session_id, from = %peer.advertised, generation, ?ended, "{what}");
    match ended {
        Dropped::Fenced | Dropped::Kept | Dropped::NotHeld => PeerMessage::Ok,
        Dropped::Newer(owner) => PeerMessage::Moved {
            session_id,
            owner: if owner.ip().is_unspecified() {
                node.advertise
            } else {
                owner
            },
        },
    }
}

/// REPLICATE and REPLICATE_CLAIM: stores the copy as a backup (protocol.md 12). A claim
/// whose `base` is a copy of the generation this node owns live, and may have
/// acknowledged writes under, but not this process's own copy is of a rival lineage of
/// that generation: refused, naming this node (12.4). A live copy here that acknowledged
/// nothing (a claim or a move installed without its confirmations) yields as before:
/// the rival may hold what was acknowledged (simulation seed 26328 without crashes: a
/// move installed unconfirmed refused the claim of a sibling that had acknowledged an
/// append).
fn replicate_here(
    node: &SharedNode,
    peer: &PeerIdentity,
    generation: u64,
    record: &SessionRecord,
    base: Option<ClaimBase>,
    now: u64,
) -> PeerMessage {
    let rival_base = base
        .filter(|b| b.owner != node.advertise || (b.writer != 0 && b.writer != writer_tag(&node.node_id)))
        .filter(|b| !node.acknowledged_nothing_here(&record.id, b.generation))
        .map(|base| RivalBase {
            base,
            writer_now: node
                .peers
                .processes
                .node_id_at(base.owner)
                .map(|id| writer_tag(&id)),
            here: base.owner == node.advertise,
        });
    let sender_gone = node.peers.processes.replaced(peer);
    // A process that is gone no longer REPLICATEs here, whatever its late
    // messages say (the PROMOTE refusal above counts only a live one).
    if !sender_gone {
        node.heard_from_owner(peer, now);
    }
    match node
        .table
        .replicate_in_from(*peer, generation, record, now, sender_gone, rival_base)
    {
        Replicated::Stored(old) => {
            if let Some(old) = old {
                node.spawn_drop_backups(record.id, old);
            }
            PeerMessage::Ok
        }
        Replicated::Ignored => PeerMessage::Ok,
        Replicated::Moved(owner) => PeerMessage::Moved {
            session_id: record.id,
            owner,
        },
        Replicated::OwnedHere => node.answer_rival_copy(peer, generation, record),
        Replicated::RivalLineage => {
            tracing::info!(session = %record.id, claimer = %peer.advertised, generation, "refused a claim of a rival lineage of the generation owned here");
            PeerMessage::Moved {
                session_id: record.id,
                owner: node.advertise,
            }
        }
        Replicated::Destroyed => PeerMessage::NotFound {
            session_id: record.id,
        },
        Replicated::Capacity => PeerMessage::Error(ErrorReply::new(
            ErrorCode::Capacity,
            "no room for a backup copy at this node",
        )),
    }
}
