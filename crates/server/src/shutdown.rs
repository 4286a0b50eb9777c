//! Graceful shutdown: one signal for every task, and a tracker to wait for them.

use tokio::sync::watch;

/// Tells tasks that the node is shutting down. Cheap to clone; every task holds one.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A trigger and its first listener.
    pub(crate) fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown begins (at once if it already has).
    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone, which also means shutting down.
        let _ = self.0.wait_for(|v| *v).await;
    }
}
