//! What a member is to foca: its identity, and which of two identities at one address wins.

use std::net::SocketAddr;

/// A member as SWIM knows it. Foca treats a change of any field as a new identity (the old
/// one is declared down and the new one joins), which is how a member announces that it
/// is leaving: it takes the same identity with `leaving` set and `incarnation + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    /// The member process's node id (random per process start, as in the peer handshake).
    pub(crate) node_id: [u8; 16],
    /// The member's start time in Unix milliseconds, plus one per announced change: a
    /// restarted or changed member outranks its earlier identity at the same address.
    pub(crate) incarnation: u64,
    /// The member announced that it is leaving (draining).
    pub(crate) leaving: bool,
    /// Its advertised peer address: where membership datagrams and peer links go.
    pub(crate) peer: SocketAddr,
    /// Its client address.
    pub(crate) client: SocketAddr,
}

impl Identity {
    /// The identity a seed address is announced to before anything is known of it: foca
    /// accepts an ANNOUNCE addressed to any identity with the receiver's address.
    pub(crate) fn placeholder(peer: SocketAddr) -> Identity {
        Identity {
            node_id: [0; 16],
            incarnation: 0,
            leaving: false,
            peer,
            client: peer,
        }
    }
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    /// After being declared down (a partition, a long pause), a member rejoins at once
    /// with the next incarnation rather than staying out.
    fn renew(&self) -> Option<Self> {
        Some(Identity {
            incarnation: self.incarnation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.peer
    }

    /// Two identities at one address: the higher incarnation wins (a restart or an
    /// announced change); equal ones are ordered by node id so that every member picks
    /// the same one.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, self.node_id) > (adversary.incarnation, adversary.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity as _;

    fn id(n: u8, incarnation: u64) -> Identity {
        Identity {
            node_id: [n; 16],
            incarnation,
            leaving: false,
            peer: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            client: "127.0.0.1:2".parse().unwrap_or_else(|_| unreachable!()),
        }
    }

    #[test]
    fn restarted_member_wins_its_address() {
        assert!(id(1, 10).win_addr_conflict(&id(2, 9)));
        assert!(!id(1, 9).win_addr_conflict(&id(2, 10)));
        assert!(id(2, 9).win_addr_conflict(&id(1, 9)));
        let renewed = id(1, 9).renew().unwrap_or_else(|| unreachable!());
        assert_eq!(renewed.incarnation, 10);
        assert!(renewed.win_addr_conflict(&id(1, 9)));
    }
}
