//! The simulated network: carries the nodes' peer requests to the receiving node's peer
//! handler (`peer_port::handle`, the same function the TCP peer port calls), with delay,
//! loss, duplication, reordering (independent random delays), partitions, paused
//! processes and crashed ones, all drawn from one seeded RNG.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::Rng;
use sessync_proto::{PeerIdentity, PeerMessage};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout_at, Duration, Instant};

use crate::clock::sim::{on_clock, on_clock_sync};
use crate::node::Node;
use crate::peer_link::{LinkError, SimNet};

/// One simulated host: the node process that runs there now.
pub(crate) struct Slot {
    /// Its peer address (what tokens name).
    pub(crate) addr: SocketAddr,
    /// The node process (replaced when it restarts).
    pub(crate) node: Arc<Node>,
    /// False from a crash until the restart.
    pub(crate) alive: bool,
    /// While set and in the future, the process runs nothing and sends nothing.
    pub(crate) paused_until: Option<Instant>,
    /// Counts restarts: a client request that started on an earlier process has an
    /// unknown outcome.
    pub(crate) incarnation: u64,
    /// The process's background tasks (aborted when it crashes).
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// How far the host's clock is off the simulation's (ms): every task of its process
    /// reads `clock::now_ms` through it (`clock::sim::on_clock`). A restarted process
    /// keeps its host's clock.
    pub(crate) clock: i64,
}

/// How messages fare on the network (drawn per seed, or set by a schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weather {
    /// Probability that a request, or its reply, is lost.
    pub loss: f64,
    /// Probability that a request is delivered twice.
    pub dup: f64,
    /// Largest one-way delay.
    pub max_delay: Duration,
    /// Probability of a delay spike (up to 1.5 s: longer than the peer timeout).
    pub spike: f64,
}

/// What the network did in one run (so tests can show a scenario reached what its name
/// says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Peer requests sent.
    pub requests: u64,
    /// Refused at once (host down, or a cut that refuses connections).
    pub refused: u64,
    /// Requests that vanished (lost, or sent into a cut).
    pub requests_lost: u64,
    /// Requests delivered twice.
    pub duplicated: u64,
    /// Replies lost after the request was handled.
    pub replies_lost: u64,
    /// Delay spikes (past the peer timeout).
    pub spikes: u64,
    /// Replies that came after the asker gave up.
    pub late_replies: u64,
    /// Of those, COPY_DATA, handed to the node to install anyway, as its late-reply task
    /// does (the node refuses one that a newer copy superseded).
    pub late_copies: u64,
}

/// The network's mutable state.
pub(crate) struct NetState {
    pub(crate) rng: StdRng,
    pub(crate) slots: Vec<Slot>,
    /// Host pairs (lower index first) that cannot reach each other.
    pub(crate) cuts: HashSet<(usize, usize)>,
    pub(crate) weather: Weather,
    /// What happened to the messages (counted only; draws nothing).
    pub(crate) traffic: Traffic,
}

/// The network, shared by every node and client of one simulation.
pub(crate) struct Net {
    pub(crate) state: Mutex<NetState>,
}

/// What the network does with one request, decided when it is sent.
#[derive(Debug)]
enum Plan {
    /// The connection is refused at once (the host is down, or the route says so).
    Refused(String),
    /// Nothing comes back (a cut that drops packets, or a lost request or reply).
    Silence,
    /// Delivered after `there`; the reply (unless `lose_reply`) arrives after `back`.
    Deliver {
        there: Duration,
        back: Duration,
        lose_reply: bool,
        dup: bool,
    },
}

impl Net {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self, addr: SocketAddr) -> Option<usize> {
        self.lock().slots.iter().position(|s| s.addr == addr)
    }

    /// Whether `who` is the process now running at its address, alive.
    pub(crate) fn is_current(&self, who: &PeerIdentity) -> bool {
        self.lock()
            .slots
            .iter()
            .any(|s| s.addr == who.advertised && s.alive && s.node.node_id == who.node_id)
    }

    /// Waits while host `i` is paused.
    pub(crate) async fn wait_running(&self, i: usize) {
        loop {
            let until = self.lock().slots[i].paused_until;
            match until {
                // In steps, so that a heal (which clears the pause) takes effect at once.
                Some(t) if t > Instant::now() => {
                    sleep_until(t.min(Instant::now() + Duration::from_millis(20))).await
                }
                _ => return,
            }
        }
    }

    fn cut(state: &NetState, a: usize, b: usize) -> bool {
        state.cuts.contains(&(a.min(b), a.max(b)))
    }

    fn delay(state: &mut NetState) -> Duration {
        let w = state.weather;
        if state.rng.gen_bool(w.spike) {
            state.traffic.spikes += 1;
            return Duration::from_millis(state.rng.gen_range(100..1500));
        }
        let max = w.max_delay.as_micros().max(1) as u64;
        Duration::from_micros(state.rng.gen_range(20..=max.max(21)))
    }

    fn plan(&self, from: usize, to: usize) -> Plan {
        let mut st = self.lock();
        st.traffic.requests += 1;
        if !st.slots[to].alive {
            st.traffic.refused += 1;
            return Plan::Refused(format!("{}: connection refused", st.slots[to].addr));
        }
        if Self::cut(&st, from, to) {
            // A blackhole route refuses new connections at once; packets on a link that
            // exists already vanish. Both happen.
            return if st.rng.gen_bool(0.5) {
                st.traffic.refused += 1;
                Plan::Refused("no route to host".into())
            } else {
                st.traffic.requests_lost += 1;
                Plan::Silence
            };
        }
        let w = st.weather;
        if st.rng.gen_bool(w.loss) {
            st.traffic.requests_lost += 1;
            return Plan::Silence;
        }
        let there = Self::delay(&mut st);
        let back = Self::delay(&mut st);
        let lose_reply = st.rng.gen_bool(w.loss);
        let dup = st.rng.gen_bool(w.dup);
        Plan::Deliver {
            there,
            back,
            lose_reply,
            dup,
        }
    }

    /// Carries one request and its reply (see [`SimNet`]); `reply` gets the outcome, or is
    /// dropped at the deadline when nothing came back.
    async fn deliver(
        self: Arc<Self>,
        from: PeerIdentity,
        to: SocketAddr,
        msg: PeerMessage,
        deadline: Instant,
        reply: oneshot::Sender<Result<(PeerMessage, [u8; 16]), LinkError>>,
    ) {
        let (Some(f), Some(t)) = (self.index(from.advertised), self.index(to)) else {
            let _ = reply.send(Err(LinkError::Unreachable(format!("{to}: no such host"))));
            return;
        };
        // A paused process sends nothing until it runs again.
        self.wait_running(f).await;
        if !self.is_current(&from) {
            return; // a crashed process sends nothing
        }
        // The process the request is sent to: a request in flight when it crashes dies with
        // its connection, as TCP's would, and never reaches the process restarted there.
        let to_incarnation = self.lock().slots[t].incarnation;
        let plan = self.plan(f, t);
        tracing::trace!(target: "simnet", from = f, to = t, plan = ?plan, msg = %format!("{msg:?}").chars().take(80).collect::<String>());
        let (there, back, lose_reply, dup) = match plan {
            Plan::Refused(why) => {
                let _ = reply.send(Err(LinkError::Unreachable(why)));
                return;
            }
            Plan::Silence => {
                sleep_until(deadline).await;
                return;
            }
            Plan::Deliver {
                there,
                back,
                lose_reply,
                dup,
            } => (there, back, lose_reply, dup),
        };
        sleep(there).await;
        self.wait_running(t).await;
        let target = {
            let st = self.lock();
            if st.slots[t].incarnation != to_incarnation {
                drop(st);
                // Its connection was reset by the crash.
                let _ = reply.send(Err(LinkError::Lost));
                return;
            }
            if Self::cut(&st, f, t) || !st.slots[t].alive {
                None
            } else {
                Some(st.slots[t].node.clone())
            }
        };
        // The process that answers (a restarted host has a new one), as a real link
        // learns it from its handshake.
        let answerer = target.as_ref().map_or([0; 16], |n| n.node_id);
        let Some(target) = target else {
            sleep_until(deadline).await;
            return;
        };
        let span = tracing::info_span!("peer", node = t, inc = to_incarnation, from = f);
        let _entered = span.enter();
        let (to_clock, from_clock) = {
            let st = self.lock();
            (st.slots[t].clock, st.slots[f].clock)
        };
        let answer = on_clock_sync(to_clock, || {
            // The sender's process, as the peer port learns it from an inbound handshake.
            target.peers.processes.seen(from.advertised, from.node_id);
            crate::peer_port::handle(&target, &from, msg.clone())
        });
        tracing::trace!(target: "simnet", answer = %format!("{answer:?}").chars().take(100).collect::<String>());
        if dup {
            self.lock().traffic.duplicated += 1;
            let _ = on_clock_sync(to_clock, || crate::peer_port::handle(&target, &from, msg));
        }
        drop(_entered);
        let Some(answer) = answer else {
            let _ = reply.send(Err(LinkError::Lost));
            return;
        };
        if lose_reply {
            self.lock().traffic.replies_lost += 1;
            sleep_until(deadline).await;
            return;
        }
        sleep(back).await;
        self.wait_running(f).await;
        if !self.is_current(&from) || Self::cut(&self.lock(), f, t) {
            return;
        }
        // The asker gave up before the reply came: a late COPY_DATA must still be
        // installed (the giver handed the session over), as `late_replies` does.
        let late = reply.send(Ok((answer, answerer)));
        if late.is_err() {
            self.lock().traffic.late_replies += 1;
        }
        if let Err(Ok((
            PeerMessage::CopyData {
                transfer,
                holders,
                record,
            },
            _,
        ))) = late
        {
            self.lock().traffic.late_copies += 1;
            let node = self.lock().slots[f].node.clone();
            on_clock(
                from_clock,
                node.install_late_copy(to, transfer, &record, &holders),
            )
            .await;
        }
    }
}

/// The handle each simulated node's peer links hold.
pub(crate) struct NetHandle(pub(crate) Arc<Net>);

impl SimNet for NetHandle {
    fn request(
        &self,
        from: PeerIdentity,
        to: SocketAddr,
        msg: PeerMessage,
        deadline: Instant,
    ) -> futures_util::future::BoxFuture<'static, Result<(PeerMessage, [u8; 16]), LinkError>> {
        let net = self.0.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            // Delivery runs on its own, so a reply that comes after the deadline still
            // reaches the node (as a late reply), like bytes on a real socket.
            tokio::spawn(net.deliver(from, to, msg, deadline, tx));
            match timeout_at(deadline, rx).await {
                Ok(Ok(r)) => r,
                _ => Err(LinkError::Lost),
            }
        })
    }
}
