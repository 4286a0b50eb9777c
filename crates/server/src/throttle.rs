//! Password guessing defence: failed authentications are throttled per source address.
//!
//! After the k-th failure in a row from one IP address, the next attempt from that address
//! is answered no sooner than `min(1 ms * 2^(k-1), max)` after the previous attempt's turn
//! (see [`Throttle::delay`]). Turns are reserved, so concurrent connections from one
//! address queue behind each other instead of guessing in parallel, and an address may
//! hold at most `max_unauthenticated` connections that have not authenticated yet.
//! Other addresses are not affected. A success, or ten minutes without a failure,
//! forgets an address.
//!
//! The same type guards HELLO on the client port and the secret handshake on the peer
//! port (each port has its own instance).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The first failure's delay; each further failure doubles it up to the maximum.
pub const BASE_DELAY: Duration = Duration::from_millis(1);
/// An address with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most addresses tracked; past it, forgotten ones are pruned, and if none can be, a new
/// address is not tracked (it gets no delay until there is room).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// The earliest time the next attempt may be answered.
    next_turn: Instant,
    /// Connections from this address that have not authenticated.
    unauthenticated: usize,
}

/// Per-address failure counts and turns.
#[derive(Debug)]
pub(crate) struct Throttle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    max_delay: Duration,
    max_unauthenticated: usize,
}

/// Holds one of an address's unauthenticated-connection slots until dropped.
pub(crate) struct Unauthenticated {
    throttle: Arc<Throttle>,
    ip: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut m = self.throttle.lock();
        if let Some(e) = m.get_mut(&self.ip) {
            e.unauthenticated = e.unauthenticated.saturating_sub(1);
            if e.unauthenticated == 0 && e.failures == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Throttle {
    /// A throttle whose delay grows to `max_delay`, allowing `max_unauthenticated`
    /// unauthenticated connections per address.
    pub(crate) fn new(max_delay: Duration, max_unauthenticated: usize) -> Arc<Throttle> {
        Arc::new(Throttle {
            entries: Mutex::new(HashMap::new()),
            max_delay,
            max_unauthenticated,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wait imposed after `failures` failures in a row: 0 for none, else
    /// `min(BASE_DELAY * 2^(failures-1), max)`.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = (failures - 1).min(30);
        BASE_DELAY.saturating_mul(1 << exp).min(self.max_delay)
    }

    fn entry(m: &mut HashMap<IpAddr, Entry>, ip: IpAddr, now: Instant) -> Option<&mut Entry> {
        if !m.contains_key(&ip) && m.len() >= MAX_TRACKED {
            m.retain(|_, e| e.unauthenticated > 0 || now.duration_since(e.last_failure) < FORGET_AFTER);
            if m.len() >= MAX_TRACKED {
                return None;
            }
        }
        let e = m.entry(ip).or_insert(Entry {
            failures: 0,
            last_failure: now,
            next_turn: now,
            unauthenticated: 0,
        });
        if e.failures > 0 && now.duration_since(e.last_failure) >= FORGET_AFTER {
            e.failures = 0;
        }
        Some(e)
    }

    /// Takes an unauthenticated-connection slot for `ip`; `None` when the address holds
    /// `max_unauthenticated` already.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Unauthenticated> {
        let now = Instant::now();
        let mut m = self.lock();
        if let Some(e) = Self::entry(&mut m, ip, now) {
            if e.unauthenticated >= self.max_unauthenticated {
                return None;
            }
            e.unauthenticated += 1;
        }
        Some(Unauthenticated {
            throttle: self.clone(),
            ip,
        })
    }

    /// Waits for this address's next turn to authenticate (at once for an address with no
    /// failures), reserving the turn after it.
    pub(crate) async fn wait_turn(&self, ip: IpAddr) {
        let turn = {
            let now = Instant::now();
            let mut m = self.lock();
            match m.get_mut(&ip) {
                Some(e) if e.failures > 0 && now.duration_since(e.last_failure) < FORGET_AFTER => {
                    let turn = e.next_turn.max(now);
                    e.next_turn = turn + self.delay(e.failures);
                    turn
                }
                _ => now,
            }
        };
        tokio::time::sleep_until(turn).await;
    }

    /// Records a failed attempt; returns the failures in a row and the delay now imposed.
    pub(crate) fn failure(&self, ip: IpAddr) -> (u32, Duration) {
        let now = Instant::now();
        let mut m = self.lock();
        let Some(e) = Self::entry(&mut m, ip, now) else {
            return (0, Duration::ZERO);
        };
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        let delay = BASE_DELAY
            .saturating_mul(1 << (e.failures - 1).min(30))
            .min(self.max_delay);
        e.next_turn = e.next_turn.max(now + delay);
        (e.failures, delay)
    }

    /// Records a success: the address's failures are forgotten.
    pub(crate) fn success(&self, ip: IpAddr) {
        if let Some(e) = self.lock().get_mut(&ip) {
            e.failures = 0;
            e.next_turn = Instant::now();
        }
    }
}

/// Whether a HELLO password matches the node's, in time independent of both the
/// contents and the lengths: the two SHA-256 digests are compared in constant time
/// (`subtle`'s slice comparison alone returns early on a length mismatch, which tells a
/// guesser the password's length).
pub(crate) fn password_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_compare_by_digest() {
        assert!(password_matches("correct horse", "correct horse"));
        assert!(!password_matches("correct hors", "correct horse"));
        assert!(!password_matches("", "correct horse"));
        assert!(!password_matches("correct horsE", "correct horse"));
    }

    #[test]
    fn delay_doubles_to_the_cap() {
        let t = Throttle::new(Duration::from_millis(100), 4);
        assert_eq!(t.delay(0), Duration::ZERO);
        assert_eq!(t.delay(1), Duration::from_millis(1));
        assert_eq!(t.delay(4), Duration::from_millis(8));
        assert_eq!(t.delay(8), Duration::from_millis(100));
        assert_eq!(t.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn unauthenticated_slots_are_capped_per_address() {
        let t = Throttle::new(Duration::from_millis(100), 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = t.enter(a).unwrap();
        let _g2 = t.enter(a).unwrap();
        assert!(t.enter(a).is_none());
        assert!(t.enter(b).is_some());
        drop(g1);
        assert!(t.enter(a).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_spaced_by_the_delay() {
        let t = Throttle::new(Duration::from_millis(100), 8);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        t.wait_turn(a).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..3 {
            t.failure(a);
        }
        // Three failures: 4 ms; two concurrent attempts take turns 4 ms apart.
        t.wait_turn(a).await;
        let first = start.elapsed();
        t.wait_turn(a).await;
        assert!(first >= Duration::from_millis(4), "{first:?}");
        assert!(start.elapsed() >= first + Duration::from_millis(4));
        t.success(a);
        let before = Instant::now();
        t.wait_turn(a).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}
