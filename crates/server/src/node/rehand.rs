//! A giver hands a copy on to a second receiver (a re-hand, protocol.md 12.4) only once the
//! first receiver is known not to hold it. PROMOTE naming the receiver failed used to be
//! enough: the re-hand keeps the handover's generation, so that if the first receiver is
//! alive after all, the two copies collide at the lineage's holders and only the first is
//! accepted. That collision needs a holder that took the first copy and still remembers
//! it, and the second receiver cannot be its own holder: simulation seed 17 359 with
//! crashes, the first receiver was paused with the copy on its way, the giver re-handed to
//! the lineage's only holder, which acknowledged an append and crashed; the first receiver
//! woke up, installed the same generation (placing it on that holder's new, empty process)
//! and handed it on over the append.
//! So the giver asks the receiver first (LOCATE), as its own take-back does
//! (`Node::promote_from_backups`): the copy is handed on when the receiver's process is
//! known gone since the handover began (a refused dial, or a new process answered there),
//! or the receiver answers that it has no entry, a pointer older than the handover, or a
//! backup copy more than one generation older (or one generation older that is this
//! node's own copy). A silent receiver, or one that owns or is placing the session, keeps the
//! copy here; the asker is answered MOVED to it and asks again.

use super::lookup::LocateAnswer;
use super::*;
use sessync_proto::{PeerIdentity, Role};

/// How long the receiver's answer counts (ms): the asker asks again about every 100 ms.
const ANSWER_COUNTS_MS: u64 = 1_000;

/// What this node last learned from the receiver of a handover it has under way.
#[derive(Clone, Copy)]
pub(super) struct RehandCheck {
    /// The receiver asked, and the handover's generation.
    to: SocketAddr,
    transfer: u64,
    /// When it was asked (Unix ms).
    asked_ms: u64,
    /// When it answered that it never took the copy over (Unix ms), if it did.
    never_took_ms: Option<u64>,
}

impl Node {
    /// Whether PROMOTE{`id`, failed owner `failed`} from `asker` must not re-hand the copy
    /// this node is handing to `failed` yet: `failed` may hold and serve it. Asks `failed`
    /// in the background when needed. `false` when this PROMOTE would not re-hand (no
    /// handover to `failed` under way, the asker is that receiver, or this node's own
    /// claim).
    pub(crate) fn rehand_withheld(
        self: &Arc<Self>,
        id: &SessionId,
        failed: SocketAddr,
        asker: PeerIdentity,
        now: u64,
    ) -> bool {
        let Some(h) = self.table.handover_under_way(id, now) else {
            return false;
        };
        // The receiver itself asks (its reply was lost), or its new process does (the old
        // one is gone): not a re-hand to a second live copy. (Whether the old one handed
        // on what it held is the table's question: a new process that names the
        // handover's generation is not re-handed the copy, `Table::hand_over`.)
        if h.to != failed || asker.advertised == h.to || h.to == self.advertise {
            return false;
        }
        if self.peers.processes.gone_since(h.to) > h.handed_ms {
            return false;
        }
        let last = self
            .rehand_checks
            .get(id)
            .filter(|c| c.to == h.to && c.transfer == h.transfer);
        if let Some(c) = last {
            if c.never_took_ms
                .is_some_and(|at| now.saturating_sub(at) < ANSWER_COUNTS_MS)
            {
                return false;
            }
            if now.saturating_sub(c.asked_ms) < ANSWER_COUNTS_MS / 10 {
                return true;
            }
        }
        let check = RehandCheck {
            to: h.to,
            transfer: h.transfer,
            asked_ms: now,
            never_took_ms: None,
        };
        self.rehand_checks.insert(*id, check, now);
        tracing::debug!(session = %id, receiver = %h.to, transfer = h.transfer, asker = %asker.advertised, "not re-handing before the receiver says it never took the copy over");
        let (node, id) = (self.clone(), *id);
        // Not tracked by the shutdown tracker: one request bounded by the peer timeout.
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            let answer = node.ask_locate(id, h.to).await;
            // A copy of this node's own, one generation below the handover: the
            // receiver's copy from before it (it was this node's holder), or the state
            // of its own claim kept when that claim yielded to this node (simulation
            // seed 35328 with crashes, under a build that refused reads past one lease,
            // ARCHITECTURE.md item 40: the receiver refused the late COPY_DATA for its
            // claim, then gave the claim up to this node, and the copy with an
            // acknowledged append stayed stuck here while another node took an older one
            // over). Had it installed the copy, it would not name this node, which owns
            // nothing newer while it hands over.
            let ours_before = matches!(&answer, Ok(PeerMessage::Located { session_id, role: Role::Backup, addr, generation: Some(g) })
                if *session_id == id && *addr == node.advertise && g.saturating_add(1) == h.transfer);
            let never_took = ours_before
                || match super::lookup::locate_answer(id, answer) {
                    LocateAnswer::NoEntry => true,
                    LocateAnswer::Entry(Role::HandedOver, Some(g)) => g < h.transfer,
                    // A backup copy more than one generation older than the handover: had the
                    // receiver installed the copy, it would hold the handover's generation,
                    // one less only as its own state kept when it yielded to a newer owner,
                    // and more as that owner's copy (simulation seed 1216 with crashes: a
                    // receiver whose request had given up held an older kept copy, and the
                    // handover with an acknowledged append stayed stuck).
                    LocateAnswer::Entry(Role::Backup, Some(g)) => g.saturating_add(1) < h.transfer,
                    _ => false,
                };
            if never_took {
                let at = now_ms();
                let answered = RehandCheck {
                    never_took_ms: Some(at),
                    ..check
                };
                node.rehand_checks.insert(id, answered, at);
            }
        }));
        true
    }
}
