//! Wall-clock time in Unix milliseconds: the unit of every deadline on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

/// The simulator's clock (feature `testing`): on the thread that runs a simulation, wall
/// time is virtual, so deadlines, expiry and timeouts follow tokio's paused clock.
#[cfg(feature = "testing")]
pub(crate) mod sim {
    use std::cell::Cell;

    thread_local! {
        static EPOCH: Cell<Option<(tokio::time::Instant, u64)>> = const { Cell::new(None) };
    }

    /// Makes `now_ms` on this thread read `base_ms` plus the virtual time since now.
    pub(crate) fn set(base_ms: u64) {
        EPOCH.with(|e| e.set(Some((tokio::time::Instant::now(), base_ms))));
    }

    /// Back to the wall clock on this thread.
    pub(crate) fn clear() {
        EPOCH.with(|e| e.set(None));
    }

    tokio::task_local! {
        /// The running node's clock offset from the simulation's (ms): each simulated
        /// node has a clock of its own, within the skew protocol.md section 1 allows.
        static OFFSET: i64;
    }

    pub(super) fn now_ms() -> Option<u64> {
        let offset = offset();
        EPOCH
            .with(|e| e.get())
            .map(|(start, base)| (base + start.elapsed().as_millis() as u64).saturating_add_signed(offset))
    }

    /// The offset of the clock the current task reads (0 outside a node's task).
    pub(crate) fn offset() -> i64 {
        OFFSET.try_with(|o| *o).unwrap_or(0)
    }

    /// Runs `f` as a task of the node whose clock is `offset` ms off the simulation's.
    pub(crate) fn on_clock<F: std::future::Future>(
        offset: i64,
        f: F,
    ) -> impl std::future::Future<Output = F::Output> {
        OFFSET.scope(offset, f)
    }

    /// Runs the synchronous `f` on the clock `offset` ms off the simulation's.
    pub(crate) fn on_clock_sync<R>(offset: i64, f: impl FnOnce() -> R) -> R {
        OFFSET.sync_scope(offset, f)
    }
}

/// `tokio::spawn`, for a task that reads the clock the spawning task reads: in the
/// simulation each node has its own clock (a task-local offset), which a new task would
/// otherwise not inherit. Outside the simulation, `tokio::spawn` itself. Every task a
/// node spawns for its cross-node logic goes through this.
pub(crate) fn spawn_keeping_clock<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(feature = "testing")]
    {
        tokio::spawn(sim::on_clock(sim::offset(), f))
    }
    #[cfg(not(feature = "testing"))]
    {
        tokio::spawn(f)
    }
}

/// Now, in Unix milliseconds. Deadlines are wall-clock so they mean the same on every node
/// of a cluster whose clocks are in sync (NTP); a clock before 1970 reads as 0.
pub fn now_ms() -> u64 {
    #[cfg(feature = "testing")]
    if let Some(ms) = sim::now_ms() {
        return ms;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
