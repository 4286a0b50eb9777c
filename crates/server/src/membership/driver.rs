//! The SWIM driver: one task owns the foca instance and does its IO. Foca is sans-IO
//! (`handle_data`, `handle_timer` in; `send_to`, `submit_after`, `notify` out through the
//! [`foca::Runtime`]), so this task is the whole runtime: a UDP socket, a timer queue, the
//! seeds' addresses, and commands from the rest of the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{Foca, NoCustomBroadcast, Notification, OwnedNotification, Runtime, Timer};
use foca_rand::rngs::SmallRng;
use foca_rand::SeedableRng;
use sessync_proto::MemberState;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::WireCodec;
use super::identity::Identity;
use super::transport::{Refusal, Sealer};
use super::view::View;
use super::{Counters, MembershipConfig};
use crate::clock::now_ms;
use crate::shutdown::Shutdown;

/// What the rest of the node asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Announce that this node is leaving; answered once the change is sent.
    AnnounceLeaving(oneshot::Sender<()>),
}

/// What foca asked for during one call, done by the driver after the call.
#[derive(Default)]
struct Collect {
    sends: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Timer<Identity>, Duration)>,
    notes: Vec<OwnedNotification<Identity>>,
}

impl Runtime<Identity> for Collect {
    fn notify(&mut self, n: Notification<'_, Identity>) {
        self.notes.push(n.to_owned());
    }

    fn send_to(&mut self, to: Identity, data: &[u8]) {
        self.sends.push((to.peer, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Identity>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// Everything the driver task owns.
pub(crate) struct Driver {
    pub(crate) foca: Foca<Identity, WireCodec, SmallRng, NoCustomBroadcast>,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) sealer: Sealer,
    pub(crate) view: View,
    pub(crate) published: watch::Sender<Arc<[sessync_proto::MemberInfo]>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) on_alive_change: Box<dyn Fn(Vec<SocketAddr>) + Send + Sync>,
    pub(crate) config: MembershipConfig,
    pub(crate) seeds: watch::Receiver<Vec<SocketAddr>>,
    pub(crate) commands: mpsc::Receiver<Command>,
    timers: BTreeMap<(Instant, u64), Timer<Identity>>,
    timer_seq: u64,
    rt: Collect,
    last_alive: Option<Vec<SocketAddr>>,
    out: Vec<u8>,
    joined_at: Instant,
    warned_alone: bool,
}

/// Largest datagram read (foca's packet limit plus our overhead, with room to spare so an
/// oversized one is seen whole and refused rather than cut).
const RECV_BUF: usize = 2048;

impl Driver {
    /// A driver for `me`, its foca seeded from the node id (a replay of a test replays the
    /// member choices too).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        me: Identity,
        config: MembershipConfig,
        socket: Arc<UdpSocket>,
        sealer: Sealer,
        published: watch::Sender<Arc<[sessync_proto::MemberInfo]>>,
        counters: Arc<Counters>,
        on_alive_change: Box<dyn Fn(Vec<SocketAddr>) + Send + Sync>,
        seeds: watch::Receiver<Vec<SocketAddr>>,
        commands: mpsc::Receiver<Command>,
    ) -> Driver {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&me.node_id[..8]);
        let rng = SmallRng::seed_from_u64(u64::from_le_bytes(seed));
        let foca = Foca::new(me.clone(), config.foca(), rng, WireCodec);
        let first = if config.seeds.is_empty() {
            MemberState::Alive
        } else {
            MemberState::Joining
        };
        Driver {
            foca,
            socket,
            sealer,
            view: View::new(me, first),
            published,
            counters,
            on_alive_change,
            config,
            seeds,
            commands,
            timers: BTreeMap::new(),
            timer_seq: 0,
            rt: Collect::default(),
            last_alive: None,
            out: Vec::with_capacity(RECV_BUF),
            joined_at: Instant::now(),
            warned_alone: false,
        }
    }

    /// Runs until shutdown; then declares this node gone (foca's `leave_cluster`), so the
    /// others learn it at once instead of after the failure detector's timeout.
    pub(crate) async fn run(mut self, mut shutdown: Shutdown) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut tick = tokio::time::interval(self.config.announce_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let sleep = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait() => {
                    if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
                        tracing::debug!("membership: leaving: {e}");
                    }
                    self.flush().await;
                    return;
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.receive(&mut buf[..n], from),
                    Err(e) => {
                        // Unconnected UDP sockets report little; a persistent error must not spin.
                        tracing::debug!("membership: receive: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = sleep => self.fire_timers(),
                _ = tick.tick() => self.periodic(),
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::AnnounceLeaving(done) => {
                        self.announce_leaving();
                        self.flush().await;
                        let _ = done.send(());
                        continue;
                    }
                },
                Ok(()) = self.seeds.changed() => self.announce_to_seeds(),
            }
            self.flush().await;
        }
    }

    /// One datagram from the socket.
    fn receive(&mut self, datagram: &mut [u8], from: SocketAddr) {
        Counters::bump(&self.counters.received);
        let now = Instant::now();
        let opened = match self.sealer.open(datagram, now_ms(), now) {
            Ok(o) => o,
            Err(Refusal::Unauthenticated) => {
                Counters::bump(&self.counters.refused);
                if let Some(skipped) = self.counters.refused_log.allow() {
                    tracing::warn!(
                        "membership: a datagram from {from} does not authenticate (do the nodes share the cluster secret?); dropped{}",
                        super::skipped_note(skipped)
                    );
                }
                return;
            }
            Err(Refusal::Stale) => {
                Counters::bump(&self.counters.stale);
                if let Some(skipped) = self.counters.stale_log.allow() {
                    tracing::warn!(
                        "membership: a datagram from {from} is older than {:?} (or the clocks differ that much); dropped{}",
                        super::transport::FRESHNESS,
                        super::skipped_note(skipped)
                    );
                }
                return;
            }
            Err(Refusal::Replayed) => {
                Counters::bump(&self.counters.replayed);
                return;
            }
        };
        let sender = opened.sender;
        let message = opened.message;
        // The sealed sender must be the message's source: a member cannot speak for another.
        let mut peek = message;
        match <WireCodec as foca::Codec<Identity>>::decode_header(&mut WireCodec, &mut peek) {
            Ok(h) if h.src.node_id == sender => {}
            _ => {
                Counters::bump(&self.counters.malformed);
                return;
            }
        }
        if let Err(e) = self.foca.handle_data(message, &mut self.rt) {
            // Foca's own refusals (data from ourselves, a stale identity) are normal noise.
            tracing::debug!("membership: datagram from {from}: {e}");
            if matches!(e, foca::Error::Decode(_) | foca::Error::MalformedPacket) {
                Counters::bump(&self.counters.malformed);
            }
        }
    }

    /// Hands every due timer to foca.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                tracing::debug!("membership: timer: {e}");
            }
        }
    }

    /// Every `announce_every`: announce to seeds not yet in the view, forget long-dead
    /// members, and age the replay windows.
    fn periodic(&mut self) {
        let now = Instant::now();
        if self.view.my_state() == MemberState::Joining {
            let me = self.foca.identity().clone();
            let seeds = self.seeds.borrow().clone();
            if !seeds.is_empty() && seeds.iter().all(|s| *s == me.peer) {
                // The only seed is this node: the first member of its cluster.
                self.view.set_me(me, MemberState::Alive);
                self.publish();
            } else if !self.warned_alone
                && now.saturating_duration_since(self.joined_at) >= self.config.join_grace
            {
                self.warned_alone = true;
                tracing::warn!(
                    "membership: no member has answered after {:?} (seeds now: {seeds:?}); still trying. \
                     Do the nodes share the cluster secret, and is UDP open on their peer port?",
                    self.config.join_grace
                );
            }
        }
        self.view.forget_dead(now);
        self.sealer.forget_idle(now);
        self.announce_to_seeds();
    }

    /// Announces this node to every seed address that is not a member known alive.
    fn announce_to_seeds(&mut self) {
        if self.view.my_state() == MemberState::Leaving {
            return;
        }
        let seeds = self.seeds.borrow_and_update().clone();
        for addr in seeds {
            if self.view.knows_live(addr) {
                continue;
            }
            if let Err(e) = self.foca.announce(Identity::placeholder(addr), &mut self.rt) {
                tracing::debug!("membership: announce to {addr}: {e}");
            }
        }
    }

    /// Re-identifies as leaving (incarnation + 1): the cluster renames this member.
    fn announce_leaving(&mut self) {
        if self.view.my_state() == MemberState::Leaving {
            return;
        }
        let mut me = self.foca.identity().clone();
        me.leaving = true;
        me.incarnation = me.incarnation.wrapping_add(1);
        if let Err(e) = self.foca.change_identity(me.clone(), &mut self.rt) {
            tracing::warn!("membership: announcing leaving: {e}");
        }
        self.view.set_me(me, MemberState::Leaving);
        self.publish();
        tracing::info!("membership: announced leaving");
    }

    /// Does what foca asked for: sends, timers, and view changes.
    async fn flush(&mut self) {
        let rt = std::mem::take(&mut self.rt);
        let now = Instant::now();
        for (event, after) in rt.timers {
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), event);
        }
        let mut changed = false;
        for n in &rt.notes {
            match n {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!("membership: {} is up ({})", id.peer, hex(&id.node_id))
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!("membership: {} is down ({})", id.peer, hex(&id.node_id))
                }
                OwnedNotification::Rename(a, b) if a.node_id != b.node_id => tracing::info!(
                    "membership: {} restarted ({} replaces {})",
                    b.peer,
                    hex(&b.node_id),
                    hex(&a.node_id)
                ),
                OwnedNotification::Rename(_, b) if b.leaving => {
                    tracing::info!("membership: {} is leaving", b.peer)
                }
                OwnedNotification::Active => tracing::info!("membership: joined the cluster"),
                OwnedNotification::Defunct => {
                    tracing::warn!("membership: this node was declared down and cannot rejoin")
                }
                OwnedNotification::Rejoin(_) => {
                    tracing::warn!("membership: this node was declared down; rejoined with a new incarnation")
                }
                _ => {}
            }
            changed |= self.view.apply(n, now);
        }
        if changed {
            self.publish();
        }
        for (to, message) in rt.sends {
            let sealed = self.sealer.seal(&message, now_ms(), &mut self.out);
            if sealed.is_err() {
                Counters::bump(&self.counters.send_errors);
                continue;
            }
            match self.socket.send_to(&self.out, to).await {
                Ok(_) => Counters::bump(&self.counters.sent),
                Err(e) => {
                    Counters::bump(&self.counters.send_errors);
                    tracing::debug!("membership: send to {to}: {e}");
                }
            }
        }
    }

    /// Publishes the view, and the alive peers to the node when they changed.
    pub(crate) fn publish(&mut self) {
        let snapshot = self.view.snapshot();
        self.published.send_replace(snapshot);
        let alive = self.view.alive_peers();
        if self.last_alive.as_ref() != Some(&alive) {
            // The first publication (this node alone) leaves the configured peers in place.
            if self.last_alive.is_some() || !alive.is_empty() {
                (self.on_alive_change)(alive.clone());
            }
            self.last_alive = Some(alive);
        }
    }
}

/// A node id in hex (the first 8 bytes: enough to tell processes apart in a log).
fn hex(id: &[u8; 16]) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}
