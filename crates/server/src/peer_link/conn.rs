//! One established connection of a peer link: its requests awaiting replies, the task
//! that writes and reads it (`run_link`), and the sweeper that times its requests out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use sessync_proto::{
    peer_feature, CodecError, FrameCodec, Limits, Message, PeerMessage, SessionId, MAX_ACKS,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{lock, Peers, DEAD_AFTER, KEEPALIVE};
use crate::tls::Stream;

/// One established connection of a link, shared by its requesters, its `run_link` task
/// and its deadline sweeper ([`sweep_deadlines`]).
pub(super) type Conn = Arc<ConnShared>;

pub(super) struct ConnShared {
    pub(super) tx: mpsc::Sender<(u64, PeerMessage)>,
    pub(super) pending: Mutex<Pending>,
    pub(super) alive: AtomicBool,
    /// Set when `run_link` has ended (`alive` may be cleared earlier: a probe replaced the
    /// link, whose requests in flight still get their replies).
    pub(super) ended: AtomicBool,
    pub(super) next_id: AtomicU64,
    /// Wakes the sweeper: a deadline went to the front of the queue, or the link ended.
    pub(super) sweep: Notify,
    /// The features this link may use: the bits both ends named in FEATURES and
    /// FEATURES_ARE (protocol.md 9.3; 0 with a node that predates them).
    pub(super) features: u64,
}

/// The requests of a connection that await their replies, and when each gives up.
///
/// One sweeper per connection ends the requests whose deadline has passed (a requester
/// then sees [`LinkError::Lost`]) instead of a timer per request: a move sends two peer
/// requests, and a timer each was a registration and a removal in tokio's timer wheel
/// per request. The sweeper runs apart from `run_link`, so a link whose writes are stuck
/// (the peer does not read) still times its requests out.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) waiters: HashMap<u64, Waiter>,
    /// `(deadline, id)` of every request registered, in deadline order (nearly always the
    /// order of registration: requesters mostly ask with `now + peer timeout`). A request
    /// answered stays here until the sweeper next wakes. The front is the request the
    /// sweeper sleeps for: one registered with an earlier deadline wakes it.
    deadlines: VecDeque<(Instant, u64)>,
}

impl ConnShared {
    /// Registers a request that gives up at `deadline`; returns its id.
    pub(super) fn register(&self, waiter: Waiter, deadline: Instant) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut p = lock(&self.pending);
            p.waiters.insert(id, waiter);
            let first = p.deadlines.front().is_none_or(|&(d, _)| deadline < d);
            if p.deadlines.back().is_none_or(|&(d, _)| d <= deadline) {
                p.deadlines.push_back((deadline, id));
            } else {
                // An earlier deadline than the last (a chain of requests under one deadline):
                // kept in order, so the sweeper need only look at the front.
                let at = p.deadlines.partition_point(|&(d, _)| d <= deadline);
                p.deadlines.insert(at, (deadline, id));
            }
            first
        };
        if first {
            self.sweep.notify_one();
        }
        id
    }

    /// Forgets request `id` (not sent after all); `None` when it was already answered.
    pub(super) fn unregister(&self, id: u64) -> Option<Waiter> {
        lock(&self.pending).waiters.remove(&id)
    }

    /// Folds the requests `ids`, queued and not written yet, into one new request whose
    /// reply answers them all (COPY_ACKS); returns its id. It gives up at the earliest of
    /// their deadlines. A request already timed out here is not waited for (its sender
    /// was told, and may have sent it again).
    fn fold(&self, ids: impl Iterator<Item = u64>) -> u64 {
        let (waiters, deadline) = {
            let mut p = lock(&self.pending);
            let mut deadline: Option<Instant> = None;
            let mut waiters = Vec::new();
            for id in ids {
                let Some(w) = p.waiters.remove(&id) else { continue };
                // Registered a moment ago, with `now + peer timeout`: its deadline is at
                // the back of the queue, behind at most this write's other requests.
                if let Some(&(d, _)) = p.deadlines.iter().rev().find(|&&(_, i)| i == id) {
                    deadline = Some(deadline.map_or(d, |e| e.min(d)));
                }
                waiters.push(w);
            }
            (waiters, deadline.unwrap_or_else(Instant::now))
        };
        self.register(Waiter::Folded(Box::new(FoldedWaiters(waiters))), deadline)
    }
}

/// Who awaits a request's reply.
pub(super) enum Waiter {
    /// A caller of [`Peers::request`]; dropping the sender tells it the request was lost.
    Caller(oneshot::Sender<PeerMessage>),
    /// No one: a request of [`Peers::send_until_ok`], checked when its reply comes (boxed:
    /// the map's slots stay two words).
    Unwatched(Box<Resend>),
    /// The requests folded into one frame ([`ConnShared::fold`]): its reply is each one's.
    Folded(Box<FoldedWaiters>),
}

// A pending request's value in the map stays two words (checked when built).
const _: () = assert!(std::mem::size_of::<Waiter>() == 16);

/// The waiters of the requests of one folded frame (boxed in [`Waiter::Folded`], so the
/// map's slots stay two words).
pub(super) struct FoldedWaiters(Vec<Waiter>);

impl Waiter {
    /// The request got no reply in time, or its link ended.
    pub(super) fn lost(self) {
        match self {
            // Dropping the sender wakes the caller with "lost".
            Waiter::Caller(_) => {}
            Waiter::Unwatched(r) => r.again(),
            Waiter::Folded(folded) => folded.0.into_iter().for_each(Waiter::lost),
        }
    }

    /// The request's reply came: `msg`. A caller that gave up already leaves it to
    /// `orphans` (a late COPY_DATA must still be installed).
    fn answered(self, msg: PeerMessage, addr: SocketAddr, orphans: &mpsc::Sender<(SocketAddr, PeerMessage)>) {
        match self {
            Waiter::Caller(w) => {
                if let Err(msg) = w.send(msg) {
                    let _ = orphans.try_send((addr, msg));
                }
            }
            Waiter::Unwatched(r) => {
                if !matches!(msg, PeerMessage::Ok) {
                    r.again();
                }
            }
            Waiter::Folded(folded) => {
                for w in folded.0 {
                    w.answered(msg.clone(), addr, orphans);
                }
            }
        }
    }
}

/// A request of [`Peers::send_until_ok`] in flight: what to send again if it fails.
pub(super) struct Resend {
    pub(super) peers: Weak<Peers>,
    pub(super) addr: SocketAddr,
    pub(super) msg: PeerMessage,
    /// Tries left after this one.
    pub(super) tries: u32,
    pub(super) timeout: Duration,
}

impl Resend {
    /// The request failed (not OK, no reply in time, or the link ended): sends it again
    /// while tries are left, in a task of its own (this is off the common path).
    fn again(self) {
        if self.tries == 0 {
            return;
        }
        let Some(peers) = self.peers.upgrade() else { return };
        tokio::spawn(async move {
            resend_loop(&peers, self.addr, self.msg, self.tries, self.timeout).await;
        });
    }
}

/// Sends `msg` to `addr` up to `tries` times, until the peer answers OK.
pub(super) async fn resend_loop(
    peers: &Peers,
    addr: SocketAddr,
    msg: PeerMessage,
    tries: u32,
    timeout: Duration,
) {
    for _ in 0..tries {
        if let Ok(PeerMessage::Ok) = peers.request(addr, msg.clone(), Instant::now() + timeout).await {
            return;
        }
    }
}

/// Drives one established link: writes queued requests in batches, reads replies and
/// completes them, pings when idle, and fails everything pending when the link dies.
pub(super) async fn run_link(
    addr: SocketAddr,
    framed: Framed<Stream, FrameCodec>,
    mut rx: mpsc::Receiver<(u64, PeerMessage)>,
    conn: Conn,
    orphans: mpsc::Sender<(SocketAddr, PeerMessage)>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let (mut sink, mut stream) = framed.split();
    let fold_acks = conn.features & peer_feature::COPY_ACKS != 0;
    let mut last_rx = Instant::now();
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            queued = rx.recv() => {
                let Some(first) = queued else { break };
                let mut acks = Vec::new();
                let first = spoken_on(first, conn.features);
                if feed_or_hold(&mut sink, first, fold_acks.then_some(&mut acks)).await.is_err() { break }
                // Under load (other requests of this link await replies), the tasks about
                // to queue more requests here run first: this task runs again once its
                // worker has nothing else ready, and sends them all in one write instead
                // of one write per request. With one request in flight it writes at once.
                if lock(&conn.pending).waiters.len() > 1 {
                    tokio::task::yield_now().await;
                }
                while let Ok(more) = rx.try_recv() {
                    let more = spoken_on(more, conn.features);
                    if feed_or_hold(&mut sink, more, fold_acks.then_some(&mut acks)).await.is_err() { break }
                }
                if feed_acks(&mut sink, &conn, acks).await.is_err() { break }
                if sink.flush().await.is_err() { break }
            }
            frame = stream.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    _ => break,
                };
                last_rx = Instant::now();
                let msg = match PeerMessage::decode_frame(&frame, &limits) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(peer = %addr, "peer sent an undecodable reply: {e}");
                        break;
                    }
                };
                match conn.unregister(frame.request_id) {
                    Some(waiter) => waiter.answered(msg, addr, &orphans),
                    None => {
                        let _ = orphans.try_send((addr, msg));
                    }
                }
            }
            _ = tick.tick() => {
                if last_rx.elapsed() >= DEAD_AFTER {
                    tracing::info!(peer = %addr, "peer link silent for {DEAD_AFTER:?}; dropping it");
                    break;
                }
                if last_rx.elapsed() >= KEEPALIVE {
                    let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
                    if sink.send((id, PeerMessage::Ping(id))).await.is_err() { break }
                }
            }
        }
    }
    conn.alive.store(false, Ordering::Release);
    if !shutdown.is_cancelled() {
        tracing::info!(peer = %addr, "peer link down: connection lost");
    }
    // No request is queued from now on (a requester's send fails, and it gives up), so
    // none registered after the waiters are failed below can be left waiting.
    rx.close();
    conn.ended.store(true, Ordering::Release);
    fail_all(&conn);
    // The sweeper sees the link is down and ends.
    conn.sweep.notify_one();
}

/// The writing half of a link.
type LinkSink = SplitSink<Framed<Stream, FrameCodec>, (u64, PeerMessage)>;

/// A request as this link may carry it: a claim's REPLICATE_CLAIM goes as a plain
/// REPLICATE to a node that does not know it (protocol.md 9.3; such a node never refuses
/// a claim for its base, as before the feature).
fn spoken_on((id, msg): (u64, PeerMessage), features: u64) -> (u64, PeerMessage) {
    match msg {
        PeerMessage::ReplicateClaim {
            generation, record, ..
        } if features & peer_feature::CLAIM_BASE == 0 => (id, PeerMessage::Replicate { generation, record }),
        msg => (id, msg),
    }
}

/// Writes a queued request into the link's write buffer, or, when `acks` is given (the
/// link folds acknowledgements) and it is a COPY_ACK, holds it for [`feed_acks`].
async fn feed_or_hold(
    sink: &mut LinkSink,
    (id, msg): (u64, PeerMessage),
    acks: Option<&mut Vec<(u64, SessionId, u64)>>,
) -> Result<(), CodecError> {
    match (msg, acks) {
        (PeerMessage::CopyAck { session_id, transfer }, Some(acks)) => {
            acks.push((id, session_id, transfer));
            Ok(())
        }
        (msg, _) => sink.feed((id, msg)).await,
    }
}

/// Writes the COPY_ACKs held while one write's requests were taken from the queue, after
/// them: one alone as it was, more as one COPY_ACKS (per [`MAX_ACKS`]). They go after
/// requests queued later than they were, which a retried COPY_ACK does too (protocol.md
/// 10, COPY_ACKS).
async fn feed_acks(
    sink: &mut LinkSink,
    conn: &ConnShared,
    acks: Vec<(u64, SessionId, u64)>,
) -> Result<(), CodecError> {
    if let [(id, session_id, transfer)] = acks[..] {
        return sink
            .feed((id, PeerMessage::CopyAck { session_id, transfer }))
            .await;
    }
    for chunk in acks.chunks(MAX_ACKS) {
        let id = conn.fold(chunk.iter().map(|&(id, _, _)| id));
        let acks = chunk.iter().map(|&(_, s, t)| (s, t)).collect();
        sink.feed((id, PeerMessage::CopyAcks { acks })).await?;
    }
    Ok(())
}

/// Fails every request of `conn` that awaits a reply (its link ended).
fn fail_all(conn: &ConnShared) {
    let waiters: Vec<Waiter> = {
        let mut p = lock(&conn.pending);
        p.deadlines.clear();
        p.waiters.drain().map(|(_, w)| w).collect()
    };
    // Outside the lock: a resend may queue on another connection.
    for w in waiters {
        w.lost();
    }
}

/// Ends the requests of `conn` whose deadline has passed, until its link ends: one task
/// and one timer per connection instead of a timer per request (see [`Pending`]). It
/// sleeps until the deadline of the oldest request still unanswered, or until a request
/// with an earlier deadline than that is registered; answered requests are dropped from
/// the queue when it wakes. Under load the oldest unanswered request is a recent one, so
/// it wakes about once per peer timeout, not once per request.
pub(super) async fn sweep_deadlines(conn: Conn) {
    let mut expired = Vec::new();
    loop {
        if conn.ended.load(Ordering::Acquire) {
            // run_link failed what was pending; a request registered since then finds
            // the queue closed.
            fail_all(&conn);
            return;
        }
        let now = Instant::now();
        let next = {
            let mut p = lock(&conn.pending);
            while let Some(&(deadline, id)) = p.deadlines.front() {
                if deadline <= now {
                    p.deadlines.pop_front();
                    if let Some(w) = p.waiters.remove(&id) {
                        expired.push(w);
                    }
                } else if !p.waiters.contains_key(&id) {
                    // Answered already: the sweeper need not wake for it.
                    p.deadlines.pop_front();
                } else {
                    break;
                }
            }
            p.deadlines.front().map(|&(d, _)| d)
        };
        for w in expired.drain(..) {
            w.lost();
        }
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = conn.sweep.notified() => {}
                }
            }
            None => conn.sweep.notified().await,
        }
    }
}
