//! Which process answers at each peer address. A node id is random per process start
//! (protocol.md 11.1), so a new one at an address that answered before is a process that
//! restarted, and the backup copies and fences the old one kept are gone: an owner must
//! not count the new process's confirmations for its sessions as if it remembered them
//! (protocol.md 12.2, "a holder that restarted"; `node/holder_restarts.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The process last seen at each peer address, and the addresses where another one
/// appeared since [`Processes::take_restarted`] was last called.
#[derive(Default)]
pub(crate) struct Processes {
    inner: Mutex<Inner>,
    /// Whether `restarted` may be non-empty: read without the lock on every replicated
    /// write. Set after a push, cleared when taken (both under the lock).
    any_restarted: AtomicBool,
    /// Whether any process was ever replaced: [`Processes::replaced`] runs on every
    /// REPLICATE and COPY this node answers, and takes no lock until one was.
    any_replaced: AtomicBool,
}

#[derive(Default)]
struct Inner {
    node_ids: HashMap<SocketAddr, [u8; 16]>,
    restarted: Vec<SocketAddr>,
    /// Processes another one replaced at their address: never taken for the current one
    /// again (a late reply or request of theirs would otherwise undo what the new one's
    /// handshake told), and their late requests are taken as protocol.md 12.2 step 7
    /// says (`peer_port::handle`). One entry per restart seen, 16 bytes each.
    replaced: HashSet<[u8; 16]>,
    /// When this node last learned that the process running at an address before then is
    /// gone (Unix ms): another process answered or REPLICATEd from there, or a dial was
    /// refused (nothing listened there).
    gone_ms: HashMap<SocketAddr, u64>,
}

impl Processes {
    /// Records that the process `node_id` answered at `addr` (a handshake, or a reply in
    /// the simulation). A process already replaced at its address is ignored: what it
    /// sent was late.
    pub(crate) fn seen(&self, addr: SocketAddr, node_id: [u8; 16]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.replaced.contains(&node_id) {
            return;
        }
        let before = inner.node_ids.insert(addr, node_id);
        if let Some(before) = before.filter(|b| *b != node_id) {
            inner.replaced.insert(before);
            self.any_replaced.store(true, Ordering::SeqCst);
            inner.gone_ms.insert(addr, crate::clock::now_ms());
            if !inner.restarted.contains(&addr) {
                inner.restarted.push(addr);
                self.any_restarted.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether another process has answered at `peer`'s address since `peer`'s own
    /// handshake: `peer` is gone, and a request of its is one its link delivered late
    /// (protocol.md 12.2 step 7; simulation seed 11377 with crashes).
    pub(crate) fn replaced(&self, peer: &sessync_proto::PeerIdentity) -> bool {
        if !self.any_replaced.load(Ordering::SeqCst) {
            return false;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.replaced.contains(&peer.node_id)
    }

    /// Records that whichever process ran at `addr` before now is gone: a dial there was
    /// refused (no process listened), or another process REPLICATEd from there.
    pub(crate) fn gone(&self, addr: SocketAddr) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.gone_ms.insert(addr, crate::clock::now_ms());
    }

    /// When this node last learned that the process running at `addr` before then is gone
    /// (Unix ms; 0: never). A process that did something before this time cannot be
    /// running any more (a failover need not wait out its read lease, protocol.md 12.3).
    pub(crate) fn gone_since(&self, addr: SocketAddr) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.gone_ms.get(&addr).copied().unwrap_or(0)
    }

    /// The node id of the process last seen at `addr`, if any answered there: what a
    /// survey compares with this node's own to know which of two rival claims of one
    /// generation yields to the other (protocol.md 12.4, the tie of two claims).
    pub(crate) fn node_id_at(&self, addr: SocketAddr) -> Option<[u8; 16]> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.node_ids.get(&addr).copied()
    }

    /// The addresses where a new process answered since the last call.
    pub(crate) fn take_restarted(&self) -> Vec<SocketAddr> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.any_restarted.store(false, Ordering::SeqCst);
        std::mem::take(&mut inner.restarted)
    }

    /// Whether [`Processes::take_restarted`] may return something (no lock taken).
    pub(crate) fn may_have_restarted(&self) -> bool {
        self.any_restarted.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_process_at_a_known_address_is_reported_once() {
        let p = Processes::default();
        let a: SocketAddr = "10.0.0.1:7400".parse().unwrap();
        p.seen(a, [1; 16]);
        p.seen(a, [1; 16]);
        assert!(
            p.take_restarted().is_empty(),
            "first sight and the same process again"
        );
        p.seen(a, [2; 16]);
        p.seen(a, [2; 16]);
        assert_eq!(p.take_restarted(), vec![a]);
        assert!(p.take_restarted().is_empty());
        p.seen(a, [1; 16]);
        assert!(
            p.take_restarted().is_empty() && p.node_id_at(a) == Some([2; 16]),
            "a replaced process seen late is not taken for the current one"
        );
    }
}
