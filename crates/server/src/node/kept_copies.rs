//! A kept copy (`BackupCopy::kept`) is this node's own older state, kept when it yielded to
//! a rival owner F; it is not F's copy. PROMOTE naming F failed may hand it over (three
//! rivals that each yielded must leave a copy), but not to an asker that knew a newer
//! generation of the session than the kept state while F may still hold that newer state:
//! the kept copy would set the session back past writes F acknowledged (simulation seed
//! 5934 without crashes: F, paused, held the only copy of two acknowledged appends, and a
//! stale kept copy handed on replaced them). So this node asks F itself (LOCATE), and hands
//! the kept copy over only once F answered that it holds nothing newer: no entry (a new
//! process), or an entry that points back here no newer than the kept state (a newer
//! pointer here is F handing this node a newer copy). A silent F, or one that owns the
//! session or points elsewhere, keeps the kept copy here (protocol.md 12.3 step 2).
//! This node's own failover from F claims the kept copy only while no member shows F's
//! lineage past it ([`Node::kept_copy_claimable`], protocol.md 12.3 step 1).

use super::*;

/// How long F's answer counts (ms): the asker asks again about every 100 ms.
const ANSWER_COUNTS_MS: u64 = 1_000;

/// What this node last learned from F about a session whose kept copy it holds.
#[derive(Clone, Copy)]
pub(super) struct KeptCopyCheck {
    /// The failed owner asked.
    failed: SocketAddr,
    /// When it was asked (Unix ms).
    asked_ms: u64,
    /// When it answered that it holds nothing newer (Unix ms), if it did.
    lets_go_ms: Option<u64>,
}

impl Node {
    /// Whether PROMOTE{`id`, `their_last`, failed owner `failed`} must not get the kept
    /// copy held here yet: the asker knew a newer generation than the kept state, and F has
    /// not said lately that it holds nothing newer. Asks F in the background when needed.
    pub(crate) fn kept_copy_withheld(
        self: &Arc<Self>,
        id: &SessionId,
        failed: SocketAddr,
        their_last: u64,
        now: u64,
    ) -> bool {
        let kept = match self.table.kept_generation(id, failed, now) {
            Some(kept) if their_last > kept => kept,
            _ => return false,
        };
        let last = self.kept_copy_checks.get(id).filter(|c| c.failed == failed);
        if let Some(c) = last {
            if c.lets_go_ms
                .is_some_and(|at| now.saturating_sub(at) < ANSWER_COUNTS_MS)
            {
                return false;
            }
            if now.saturating_sub(c.asked_ms) < ANSWER_COUNTS_MS / 10 {
                return true;
            }
        }
        let check = KeptCopyCheck {
            failed,
            asked_ms: now,
            lets_go_ms: None,
        };
        self.kept_copy_checks.insert(*id, check, now);
        let (node, id) = (self.clone(), *id);
        // Not tracked by the shutdown tracker: one request bounded by the peer timeout.
        crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
            let lets_go = match node.ask_locate(id, failed).await {
                Ok(PeerMessage::NotFound { session_id }) => session_id == id,
                // A pointer back here of a generation newer than the kept state is F
                // handing this node a newer copy (its COPY_DATA found no request): F
                // holds more than the kept copy, which must not go on in its place
                // (simulation seed 1216 with crashes: a stale kept copy handed on while F
                // handed this node the copy with an acknowledged append).
                Ok(PeerMessage::Located {
                    session_id,
                    role,
                    addr,
                    generation,
                }) => {
                    session_id == id
                        && role != sessync_proto::Role::Owner
                        && addr == node.advertise
                        && generation.is_none_or(|g| g <= kept)
                }
                _ => false,
            };
            if lets_go {
                let at = now_ms();
                let answered = KeptCopyCheck {
                    lets_go_ms: Some(at),
                    ..check
                };
                node.kept_copy_checks.insert(id, answered, at);
            }
        }));
        true
    }

    /// Whether this node may claim its own copy of `id` for a failover from `failed`: yes
    /// unless it is a kept copy naming `failed` and some member but `failed` holds
    /// something of the kept state's generation or newer that is not this node's own (a
    /// backup of `failed`'s lineage, an owner, a pointer on), or does not answer. A kept
    /// copy is not `failed`'s copy: `failed`'s lineage superseded it, and its holders keep
    /// what `failed` acknowledged since. Claimed anyway, the kept state went on over them
    /// (simulation seed 3201 with crashes: a node's repair claimed its copy kept below a
    /// restarted owner, climbed past that owner's empty new process and replaced the
    /// owner's copy of 10 at its other holder, two acknowledged appends). With every member
    /// holding nothing newer it stays claimable: rivals that each yielded to another may
    /// have left nothing else (seed 29 without crashes).
    pub(super) async fn kept_copy_claimable(&self, id: SessionId, failed: SocketAddr) -> bool {
        match self.table.kept_generation(&id, failed, now_ms()) {
            Some(kept) => self.members_hold_nothing_from(id, kept, failed, false).await,
            None => true,
        }
    }
}
