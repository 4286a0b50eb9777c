//! The view: every member this node knows and its state, kept from foca's notifications.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::OwnedNotification;
use sessync_proto::{MemberInfo, MemberState};

use super::identity::Identity;

/// How long a dead member stays in the view (so `sessync members` shows what happened)
/// before it is forgotten.
pub(crate) const FORGET_DEAD_AFTER: Duration = Duration::from_secs(120);

/// The members this node knows, itself included. Owned by the driver task; published
/// through a watch channel after every change.
#[derive(Debug)]
pub(crate) struct View {
    me: Identity,
    my_state: MemberState,
    others: HashMap<[u8; 16], Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    id: Identity,
    dead_since: Option<Instant>,
}

impl Entry {
    fn state(&self) -> MemberState {
        match (self.dead_since, self.id.leaving) {
            (Some(_), _) => MemberState::Dead,
            (None, true) => MemberState::Leaving,
            (None, false) => MemberState::Alive,
        }
    }
}

fn info(id: &Identity, state: MemberState) -> MemberInfo {
    MemberInfo {
        node_id: id.node_id,
        incarnation: id.incarnation,
        state,
        peer: id.peer,
        client: id.client,
    }
}

impl View {
    /// A view of this node alone, in `state` (joining, or alive for a cluster of one).
    pub(crate) fn new(me: Identity, state: MemberState) -> View {
        View {
            me,
            my_state: state,
            others: HashMap::new(),
        }
    }

    /// This node's own state.
    pub(crate) fn my_state(&self) -> MemberState {
        self.my_state
    }

    /// Sets this node's own state (and identity, after a change).
    pub(crate) fn set_me(&mut self, me: Identity, state: MemberState) {
        self.me = me;
        self.my_state = state;
    }

    /// Applies one of foca's notifications; returns whether the view changed.
    pub(crate) fn apply(&mut self, n: &OwnedNotification<Identity>, now: Instant) -> bool {
        match n {
            OwnedNotification::MemberUp(id) => self.up(id),
            OwnedNotification::MemberDown(id) => self.down(id, now),
            OwnedNotification::Rename(old, new) => {
                // Foca renames when a newer identity appears at a known address: the same
                // node announcing a change (leaving), or a restarted process. The new one
                // keeps the old one's liveness (foca sends MemberUp after if it changed).
                let was_dead = self
                    .others
                    .get(&old.node_id)
                    .is_some_and(|e| e.dead_since.is_some());
                let mut changed = false;
                if old.node_id != new.node_id {
                    changed |= self.down(old, now);
                }
                let entry = Entry {
                    id: new.clone(),
                    dead_since: was_dead.then_some(now),
                };
                self.others.insert(new.node_id, entry);
                let _ = changed;
                true
            }
            OwnedNotification::Active => {
                if self.my_state == MemberState::Joining {
                    self.my_state = MemberState::Alive;
                    return true;
                }
                false
            }
            OwnedNotification::Rejoin(id) => {
                self.me = id.clone();
                true
            }
            OwnedNotification::Idle | OwnedNotification::Defunct => false,
        }
    }

    fn up(&mut self, id: &Identity) -> bool {
        if id.node_id == self.me.node_id {
            return false;
        }
        match self.others.get(&id.node_id) {
            Some(e) if e.id.incarnation > id.incarnation => false,
            _ => {
                self.others.insert(
                    id.node_id,
                    Entry {
                        id: id.clone(),
                        dead_since: None,
                    },
                );
                true
            }
        }
    }

    fn down(&mut self, id: &Identity, now: Instant) -> bool {
        match self.others.get_mut(&id.node_id) {
            Some(e) if e.id.incarnation <= id.incarnation && e.dead_since.is_none() => {
                e.id = id.clone();
                e.dead_since = Some(now);
                true
            }
            Some(_) => false,
            None => {
                self.others.insert(
                    id.node_id,
                    Entry {
                        id: id.clone(),
                        dead_since: Some(now),
                    },
                );
                true
            }
        }
    }

    /// Forgets members dead for longer than [`FORGET_DEAD_AFTER`]; returns whether any was.
    pub(crate) fn forget_dead(&mut self, now: Instant) -> bool {
        let before = self.others.len();
        self.others.retain(|_, e| {
            e.dead_since
                .is_none_or(|t| now.saturating_duration_since(t) < FORGET_DEAD_AFTER)
        });
        self.others.len() != before
    }

    /// The alive members' peer addresses, this node left out, sorted: where backups may go.
    pub(crate) fn alive_peers(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .others
            .values()
            .filter(|e| e.state() == MemberState::Alive && e.id.peer != self.me.peer)
            .map(|e| e.id.peer)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether `addr` is the peer address of a member not known dead.
    pub(crate) fn knows_live(&self, addr: SocketAddr) -> bool {
        addr == self.me.peer
            || self
                .others
                .values()
                .any(|e| e.id.peer == addr && e.dead_since.is_none())
    }

    /// Every member, this node first, then by peer address (and newest first at one address).
    pub(crate) fn snapshot(&self) -> Arc<[MemberInfo]> {
        let mut others: Vec<MemberInfo> = self.others.values().map(|e| info(&e.id, e.state())).collect();
        others.sort_by(|a, b| a.peer.cmp(&b.peer).then(b.incarnation.cmp(&a.incarnation)));
        std::iter::once(info(&self.me, self.my_state))
            .chain(others)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8, inc: u64, leaving: bool) -> Identity {
        Identity {
            node_id: [n; 16],
            incarnation: inc,
            leaving,
            peer: format!("127.0.0.1:{}", 7800 + u16::from(n % 10))
                .parse()
                .unwrap_or_else(|_| unreachable!()),
            client: "127.0.0.1:7700".parse().unwrap_or_else(|_| unreachable!()),
        }
    }

    #[test]
    fn states_follow_notifications() {
        let now = Instant::now();
        let mut v = View::new(id(0, 1, false), MemberState::Joining);
        assert!(v.apply(&OwnedNotification::MemberUp(id(1, 1, false)), now));
        assert!(v.apply(&OwnedNotification::Active, now));
        assert_eq!(v.my_state(), MemberState::Alive);
        assert_eq!(v.alive_peers(), vec![id(1, 1, false).peer]);
        // Node 1 announces leaving: a rename to the same node id.
        assert!(v.apply(&OwnedNotification::Rename(id(1, 1, false), id(1, 2, true)), now));
        assert_eq!(v.snapshot()[1].state, MemberState::Leaving);
        assert!(v.alive_peers().is_empty());
        // Then it leaves.
        assert!(v.apply(&OwnedNotification::MemberDown(id(1, 2, true)), now));
        assert_eq!(v.snapshot()[1].state, MemberState::Dead);
        // A restarted process at the same address (node 11 shares port 7801).
        assert!(v.apply(&OwnedNotification::Rename(id(1, 2, true), id(11, 5, false)), now));
        assert!(v.apply(&OwnedNotification::MemberUp(id(11, 5, false)), now));
        let s = v.snapshot();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].node_id, [11; 16]);
        assert_eq!(s[1].state, MemberState::Alive);
        assert_eq!(s[2].state, MemberState::Dead);
        assert_eq!(v.alive_peers(), vec![id(11, 5, false).peer]);
        assert!(!v.forget_dead(now));
        assert!(v.forget_dead(now + FORGET_DEAD_AFTER));
        assert_eq!(v.snapshot().len(), 2);
    }
}
