//! The asking side of the COPY handover, sans-IO.
//!
//! Calling order: [`Fetch::new`] gives the first peer to send COPY to; feed each outcome
//! back with [`Fetch::handle_reply`] or [`Fetch::handle_lost`] (no reply: timeout or
//! broken link) until the step is [`Step::Install`] or [`Step::Fail`]. The caller does
//! the IO and owns the deadline. The owner's side is `Table::hand_over` /
//! `Table::ack_handover`; protocol.md ("The COPY handover") specifies both.

use std::net::SocketAddr;

use sessync_proto::{ErrorCode, PeerMessage, SessionId, SessionRecord};

pub use crate::fetch_error::FetchError;

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send COPY for the session to this peer.
    Ask(SocketAddr),
    /// Wait a moment (see [`NOT_YET_PAUSE`]), then send COPY to this peer again: it was
    /// named by MOVED but does not have the session yet (its copy is still on the wire).
    AskLater(SocketAddr),
    /// The session arrived from `from`: install it, then send COPY_ACK to `from`.
    Install {
        /// The node that handed it over (receives the COPY_ACK).
        from: SocketAddr,
        /// The handover's transfer id (for the COPY_ACK and our next COPY).
        transfer: u64,
        /// The giver's backup holders (they must take our copy before we serve).
        holders: Vec<std::net::SocketAddr>,
        /// The session.
        record: SessionRecord,
    },
    /// The chain of MOVED answers points back at this node: look in the local table
    /// again (another request's fetch may have installed the session meanwhile); if it
    /// is not there, the session is gone.
    Local,
    /// Give up; answer the client with this error.
    Fail(FetchError),
}

/// One fetch of one session by this node.
#[derive(Debug)]
pub struct Fetch {
    id: SessionId,
    me: SocketAddr,
    /// COPY requests still allowed (the hop limit).
    asks_left: u8,
    /// Re-asks of the same peer still allowed after a lost reply.
    retries_left: u8,
    /// Whether the peer being asked was named by a MOVED (rather than by the token).
    followed_moved: bool,
    /// Re-asks still allowed of a MOVED-named peer that does not have the session yet.
    not_yet_left: u8,
    /// The peer whose latest answer was NOT_FOUND (asked again: see `not_yet_left`).
    said_not_found: Option<SocketAddr>,
}

/// Pause before asking again a node that MOVED named but that has not installed the
/// session yet: the owner marks the handover before its reply reaches the new owner, so a
/// third node can arrive there first.
pub const NOT_YET_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl Fetch {
    /// Starts fetching `id`, first from `owner`: the token's owner, or (`forwarded`) the
    /// node our own forwarding tombstone names. `max_hops` bounds how many nodes are asked.
    pub fn new(
        id: SessionId,
        me: SocketAddr,
        owner: SocketAddr,
        forwarded: bool,
        max_hops: u8,
    ) -> (Fetch, Step) {
        let mut f = Fetch {
            id,
            me,
            asks_left: max_hops.max(1),
            retries_left: 1,
            followed_moved: forwarded,
            not_yet_left: 5,
            said_not_found: None,
        };
        let step = f.ask(owner);
        (f, step)
    }

    /// Re-asks a node that answers NOT_FOUND up to 255 times (the caller's deadline and
    /// pause bound it first), not five: it said it owns the session (LOCATE), so it is
    /// placing a copy on its holders and installs it within two peer timeouts.
    pub fn wait_while_placed(&mut self) {
        self.not_yet_left = u8::MAX;
    }

    fn ask(&mut self, to: SocketAddr) -> Step {
        if to == self.me {
            return Step::Local;
        }
        if self.asks_left == 0 {
            return Step::Fail(FetchError::HopLimit { last: to });
        }
        self.asks_left -= 1;
        Step::Ask(to)
    }

    /// Feeds the reply `from` sent to our COPY.
    pub fn handle_reply(&mut self, from: SocketAddr, reply: PeerMessage) -> Step {
        match reply {
            // Transfer ids are handover generations, never 0 (protocol.md 11.1): a copy
            // claiming 0 is not installed, served or acknowledged.
            PeerMessage::CopyData { transfer: 0, .. } => Step::Fail(FetchError::Protocol(format!(
                "{from} sent COPY_DATA with transfer id 0, which no handover has"
            ))),
            PeerMessage::CopyData {
                transfer,
                holders,
                record,
            } if record.id == self.id => Step::Install {
                from,
                transfer,
                holders,
                record,
            },
            PeerMessage::Moved { session_id, owner } if session_id == self.id => {
                self.followed_moved = true;
                self.ask(owner)
            }
            PeerMessage::NotFound { session_id }
                if session_id == self.id && self.followed_moved && self.not_yet_left > 0 =>
            {
                self.not_yet_left -= 1;
                self.said_not_found = Some(from);
                Step::AskLater(from)
            }
            PeerMessage::NotFound { session_id } if session_id == self.id => {
                Step::Fail(FetchError::NotAt { at: from })
            }
            PeerMessage::Error(e) => {
                // A peer's own troubles are not the client's: codes about a connection or
                // a frame (1xx, 2xx, and anything that would close the client's connection)
                // become INTERNAL; a peer shutting down is an unreachable owner.
                let code = match e.code {
                    ErrorCode::ShuttingDown | ErrorCode::Timeout => ErrorCode::OwnerUnreachable,
                    c if c.closes_connection() || c.as_u16() < 300 => ErrorCode::Internal,
                    c => c,
                };
                Step::Fail(FetchError::Refused {
                    owner: from,
                    code,
                    message: e.message,
                })
            }
            other => Step::Fail(FetchError::Protocol(format!(
                "owner {from} sent an unexpected reply: {other:?}"
            ))),
        }
    }

    /// No reply from `from` (timeout or broken link). Asks the same peer once more: if it
    /// had handed the session over and only the reply was lost, it sends the same data.
    pub fn handle_lost(&mut self, from: SocketAddr) -> Step {
        if self.retries_left > 0 {
            self.retries_left -= 1;
            return Step::Ask(from);
        }
        self.gave_up_on(from, FetchError::Silent { owner: from })
    }

    /// How a fetch ends at `at`, which stopped answering: `silent` (it looks unreachable,
    /// and its sessions may be taken over from their backups), unless its last answer
    /// was NOT_FOUND. On a lossy link a NOT_FOUND re-asked can be followed by silence, and
    /// a session destroyed at that node was then taken over from a backup copy (handover
    /// corpus file 04d5b25f): it ends as NOT_FOUND there, which the failover checks with
    /// LOCATE before it takes anything over.
    pub fn gave_up_on(&self, at: SocketAddr, silent: FetchError) -> Step {
        if self.said_not_found == Some(at) {
            Step::Fail(FetchError::NotAt { at })
        } else {
            Step::Fail(silent)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Deterministic handover tests: three tables, messages delivered (or dropped) by hand.
    use super::*;
    use crate::table::{CopyOutcome, EvictPolicy, Miss, Table, TableConfig};
    use bytes::Bytes;
    use sessync_proto::Attributes;

    struct Cluster {
        nodes: Vec<(SocketAddr, Table)>,
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7800 + i))
    }

    /// The identity a node at `a` proves in the handshake (one process per address here).
    fn who(a: SocketAddr) -> sessync_proto::PeerIdentity {
        let mut node_id = [0u8; 16];
        node_id[..2].copy_from_slice(&a.port().to_be_bytes());
        sessync_proto::PeerIdentity {
            node_id,
            advertised: a,
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    impl Cluster {
        fn new(n: u16) -> Cluster {
            let cfg = TableConfig {
                max_sessions: 100,
                max_memory: 1 << 20,
                max_attributes: 16,
                max_session_bytes: 1 << 20,
                evict: EvictPolicy::Reject,
            };
            Cluster {
                nodes: (0..n).map(|i| (addr(i), Table::new(cfg.clone()))).collect(),
            }
        }

        fn table(&self, a: SocketAddr) -> &Table {
            &self.nodes.iter().find(|(x, _)| *x == a).unwrap().1
        }

        /// The owner's reply to a COPY, as the peer port would build it.
        fn serve_copy(&self, owner: SocketAddr, from: SocketAddr, id: SessionId) -> PeerMessage {
            let last = self.table(from).last_received(&id);
            match self.table(owner).hand_over(&id, who(from), last, None, 0) {
                CopyOutcome::Data {
                    transfer,
                    holders,
                    record,
                } => PeerMessage::CopyData {
                    transfer,
                    holders,
                    record,
                },
                CopyOutcome::Moved(to) => PeerMessage::Moved {
                    session_id: id,
                    owner: to,
                },
                CopyOutcome::NotFound => PeerMessage::NotFound { session_id: id },
            }
        }

        /// Runs a fetch to completion; `drop_reply(n)` says whether the n-th reply is lost.
        // A test helper: the step it fails with is read right away, never moved around.
        #[allow(clippy::result_large_err)]
        fn fetch(
            &self,
            me: SocketAddr,
            owner: SocketAddr,
            id: SessionId,
            drop_reply: impl Fn(usize) -> bool,
        ) -> Result<(), Step> {
            let (mut f, mut step) = Fetch::new(id, me, owner, false, 3);
            let mut n = 0;
            loop {
                step = match step {
                    Step::Ask(to) | Step::AskLater(to) => {
                        let reply = self.serve_copy(to, me, id);
                        n += 1;
                        if drop_reply(n) {
                            f.handle_lost(to)
                        } else {
                            f.handle_reply(to, reply)
                        }
                    }
                    Step::Install {
                        from,
                        transfer,
                        record,
                        ..
                    } => {
                        self.table(me).install(&record, transfer, 0).unwrap();
                        self.table(from).ack_handover(&id, who(me), transfer, 0);
                        return Ok(());
                    }
                    other @ (Step::Fail(..) | Step::Local) => return Err(other),
                };
            }
        }
    }

    #[test]
    fn move_then_stale_token_follows_moved() {
        let c = Cluster::new(3);
        let (a, b, cc) = (addr(0), addr(1), addr(2));
        let (id, _) = c
            .table(a)
            .create(&attrs(&[("u", "alice")]), 60_000, 0, 0)
            .unwrap();
        c.fetch(b, a, id, |_| false).unwrap();
        assert_eq!(c.table(a).get(&id, &[], 1).unwrap_err(), Miss::Moved(b));
        assert_eq!(
            c.table(b).get(&id, &[], 1).unwrap().attrs.unpack(),
            attrs(&[("u", "alice")])
        );
        // C holds the stale token naming A: A says MOVED to B, C copies from B.
        c.fetch(cc, a, id, |_| false).unwrap();
        assert_eq!(c.table(b).get(&id, &[], 1).unwrap_err(), Miss::Moved(cc));
        assert!(c.table(cc).get(&id, &[], 1).is_ok());
    }

    #[test]
    fn lost_reply_is_asked_again_and_nothing_is_lost() {
        let c = Cluster::new(3);
        let (a, b, cc) = (addr(0), addr(1), addr(2));
        let (id, _) = c.table(a).create(&attrs(&[("n", "1")]), 60_000, 0, 0).unwrap();
        c.table(a).set(&id, None, &attrs(&[("n", "2")]), &[], 0).unwrap();
        // The first COPY_DATA is lost; the retry gets the same session.
        c.fetch(b, a, id, |n| n == 1).unwrap();
        let got = c.table(b).get(&id, &[], 1).unwrap();
        assert_eq!((got.meta.version, got.attrs.unpack()), (2, attrs(&[("n", "2")])));
        // Before B's ACK, a third node would have been told MOVED to B as well.
        let (id2, _) = c.table(a).create(&attrs(&[]), 60_000, 0, 0).unwrap();
        assert!(matches!(c.serve_copy(a, b, id2), PeerMessage::CopyData { .. }));
        assert_eq!(
            c.serve_copy(a, cc, id2),
            PeerMessage::Moved {
                session_id: id2,
                owner: b
            }
        );
        assert!(
            matches!(c.serve_copy(a, b, id2), PeerMessage::CopyData { .. }),
            "the same asker gets the data again"
        );
    }

    #[test]
    fn every_reply_lost_fails_as_unreachable_and_the_owner_keeps_the_data() {
        let c = Cluster::new(2);
        let (a, b) = (addr(0), addr(1));
        let (id, _) = c.table(a).create(&attrs(&[("k", "v")]), 60_000, 0, 0).unwrap();
        let err = c.fetch(b, a, id, |_| true).unwrap_err();
        assert!(matches!(err, Step::Fail(FetchError::Silent { .. })));
        // A kept the data for B: a later retry by B (a client's retry) still gets it.
        c.fetch(b, a, id, |_| false).unwrap();
        assert_eq!(
            c.table(b).get(&id, &[], 1).unwrap().attrs.unpack(),
            attrs(&[("k", "v")])
        );
    }

    #[test]
    fn silence_after_not_found_ends_as_not_found_and_silence_alone_as_unreachable() {
        let (me, a, b) = (addr(0), addr(1), addr(2));
        let id = SessionId::random();
        // A MOVED to b, which answers NOT_FOUND (not installed yet: asked again), then
        // nothing: the fetch ends as b's NOT_FOUND, which the failover checks with LOCATE.
        let (mut f, step) = Fetch::new(id, me, a, false, 3);
        assert!(matches!(step, Step::Ask(to) if to == a));
        let moved = PeerMessage::Moved {
            session_id: id,
            owner: b,
        };
        assert!(matches!(f.handle_reply(a, moved), Step::Ask(to) if to == b));
        let not_found = PeerMessage::NotFound { session_id: id };
        assert!(matches!(f.handle_reply(b, not_found), Step::AskLater(to) if to == b));
        assert!(
            matches!(f.handle_lost(b), Step::Ask(to) if to == b),
            "asked once more"
        );
        let end = f.handle_lost(b);
        assert!(
            matches!(&end, Step::Fail(e) if e.not_found() && !e.unreachable()),
            "{end:?}"
        );
        // Silence from a node that never said NOT_FOUND: unreachable, as before.
        let (mut f, _) = Fetch::new(id, me, a, false, 3);
        assert!(matches!(f.handle_lost(a), Step::Ask(_)));
        let end = f.handle_lost(a);
        assert!(
            matches!(&end, Step::Fail(e) if e.unreachable() && !e.not_found()),
            "{end:?}"
        );
        // A NOT_FOUND from another node than the silent one does not count for it.
        let (mut f, _) = Fetch::new(id, me, a, true, 3);
        let not_found = PeerMessage::NotFound { session_id: id };
        assert!(matches!(f.handle_reply(a, not_found), Step::AskLater(_)));
        assert!(matches!(f.gave_up_on(b, FetchError::Silent { owner: b }), Step::Fail(e) if e.unreachable()));
    }

    #[test]
    fn concurrent_copies_resolve_to_one_owner() {
        let c = Cluster::new(3);
        let (a, b, cc) = (addr(0), addr(1), addr(2));
        let (id, _) = c.table(a).create(&attrs(&[]), 60_000, 0, 0).unwrap();
        // B and C both ask A; whoever comes first wins, the other is sent to it.
        let rb = c.serve_copy(a, b, id);
        let rc = c.serve_copy(a, cc, id);
        assert!(matches!(rb, PeerMessage::CopyData { .. }));
        assert_eq!(
            rc,
            PeerMessage::Moved {
                session_id: id,
                owner: b
            }
        );
        let PeerMessage::CopyData {
            transfer: rec_t,
            record: rec,
            ..
        } = rb
        else {
            unreachable!()
        };
        c.table(b).install(&rec, rec_t, 0).unwrap();
        c.table(a).ack_handover(&id, who(b), rec_t, 0);
        // C follows MOVED to B and ends as the single owner.
        c.fetch(cc, b, id, |_| false).unwrap();
        let owners = c.nodes.iter().filter(|(_, t)| t.get(&id, &[], 1).is_ok()).count();
        assert_eq!(owners, 1);
    }

    #[test]
    fn writes_at_the_old_owner_are_in_the_copy_or_rejected() {
        let c = Cluster::new(2);
        let (a, b) = (addr(0), addr(1));
        let (id, _) = c.table(a).create(&attrs(&[]), 60_000, 0, 0).unwrap();
        c.table(a)
            .set(&id, None, &attrs(&[("before", "1")]), &[], 0)
            .unwrap();
        let PeerMessage::CopyData { record: rec, .. } = c.serve_copy(a, b, id) else {
            panic!("expected data")
        };
        // A write at A after the handover began is refused with MOVED, never applied.
        assert_eq!(
            c.table(a)
                .set(&id, None, &attrs(&[("after", "1")]), &[], 0)
                .unwrap_err(),
            Miss::Moved(b)
        );
        assert_eq!(rec.attributes.unpack(), attrs(&[("before", "1")]));
    }

    #[test]
    fn hop_limit_and_destroyed_tombstones() {
        let c = Cluster::new(3);
        let (a, b, cc) = (addr(0), addr(1), addr(2));
        let id = SessionId::random();
        // A forwarding loop (impossible in practice, but bounded anyway).
        let rec = sessync_proto::SessionRecord {
            id,
            meta: sessync_proto::SessionMeta {
                version: 1,
                idle_ttl_ms: 60_000,
                ..Default::default()
            },
            attributes: sessync_proto::PackedAttributes::default(),
        };
        c.table(a).install(&rec, 5, 0).unwrap();
        let CopyOutcome::Data { transfer: t1, .. } = c.table(a).hand_over(&id, who(b), 0, None, 0) else {
            panic!()
        };
        c.table(a).ack_handover(&id, who(b), t1, 0);
        c.table(b).install(&rec, t1, 0).unwrap();
        let CopyOutcome::Data { transfer: t2, .. } = c.table(b).hand_over(&id, who(a), 5, None, 0) else {
            panic!()
        };
        c.table(b).ack_handover(&id, who(a), t2, 0);
        // Now A says B and B says A.
        let err = c.fetch(cc, a, id, |_| false).unwrap_err();
        assert!(matches!(err, Step::Fail(FetchError::HopLimit { .. })), "{err:?}");
        // A destroyed session is never copied back in.
        let (d, _) = c.table(cc).create(&attrs(&[]), 60_000, 0, 0).unwrap();
        let PeerMessage::CopyData {
            transfer: drec_t,
            record: drec,
            ..
        } = c.serve_copy(cc, b, d)
        else {
            panic!()
        };
        c.table(b).install(&drec, drec_t, 0).unwrap();
        c.table(cc).ack_handover(&d, who(b), drec_t, 0);
        c.table(b).destroy(&d, 0).unwrap();
        assert_eq!(c.table(b).install(&drec, drec_t, 0).unwrap_err(), Miss::NotFound);
        assert!(matches!(
            c.fetch(a, cc, d, |_| false).unwrap_err(),
            Step::Fail(FetchError::NotAt { .. })
        ));
    }

    /// The race the round-robin test over sockets found: B installed A's copy but its ACK
    /// has not reached A yet; the session moves from B back to A (A asked B), and before A
    /// installs it, B asks A again. A must not resend the stale copy it still holds for B
    /// (that made two owners at one version); it answers MOVED and treats the COPY as B's ACK.
    #[test]
    fn a_new_copy_from_a_node_that_already_got_the_data_is_not_a_retry() {
        let c = Cluster::new(2);
        let (a, b) = (addr(0), addr(1));
        let (id, _) = c.table(a).create(&attrs(&[("n", "0")]), 60_000, 0, 0).unwrap();
        // A -> B; B installs, its ACK is delayed (not delivered).
        let PeerMessage::CopyData {
            transfer: t1, record, ..
        } = c.serve_copy(a, b, id)
        else {
            panic!()
        };
        c.table(b).install(&record, t1, 0).unwrap();
        c.table(b)
            .set(&id, Some(1), &attrs(&[("n", "1")]), &[], 0)
            .unwrap();
        // A asks B (a request at A): B hands v2 over; A has not installed it yet.
        let PeerMessage::CopyData {
            transfer: t2,
            record: v2,
            ..
        } = c.serve_copy(b, a, id)
        else {
            panic!()
        };
        assert_eq!(v2.meta.version, 2);
        // B asks A anew (a request at B): A still holds B's old copy, but must not send it.
        assert_eq!(
            c.serve_copy(a, b, id),
            PeerMessage::Moved {
                session_id: id,
                owner: b
            }
        );
        // A installs v2 (its reply arrives); B's late ACK of t1 changes nothing now.
        c.table(a).install(&v2, t2, 0).unwrap();
        assert!(c.table(a).ack_handover(&id, who(b), t1, 0).is_none());
        c.table(b).ack_handover(&id, who(a), t2, 0);
        // Exactly one owner, at version 2.
        assert_eq!(c.table(a).get(&id, &[], 1).unwrap().meta.version, 2);
        assert_eq!(c.table(b).get(&id, &[], 1).unwrap_err(), Miss::Moved(a));
        // And a genuine retry (B never got t3) still gets the data again.
        let PeerMessage::CopyData { transfer: t3, .. } = c.serve_copy(a, b, id) else {
            panic!()
        };
        let PeerMessage::CopyData { transfer: again, .. } = c.serve_copy(a, b, id) else {
            panic!()
        };
        assert_eq!(t3, again);
    }

    /// A node that installed a copy, acknowledged writes and died before its COPY_ACK
    /// arrived comes back (same address, new node id) and asks again: it must not be sent
    /// the old owner's stale copy, which would silently undo those writes.
    #[test]
    fn a_restarted_node_is_not_sent_the_stale_copy() {
        let c = Cluster::new(2);
        let (a, b) = (addr(0), addr(1));
        let (id, _) = c.table(a).create(&attrs(&[("n", "0")]), 60_000, 0, 0).unwrap();
        assert!(matches!(
            c.table(a).hand_over(&id, who(b), 0, None, 0),
            CopyOutcome::Data { .. }
        ));
        let reborn = sessync_proto::PeerIdentity {
            node_id: [9; 16],
            advertised: b,
        };
        assert_eq!(
            c.table(a).hand_over(&id, reborn, 0, None, 0),
            CopyOutcome::Moved(b)
        );
        // The original process (had it lived) would still get its lost reply again.
        assert!(matches!(
            c.table(a).hand_over(&id, who(b), 0, None, 0),
            CopyOutcome::Data { .. }
        ));
    }
}
