//! A simulation scripted from bytes, so that a fuzzer can explore the simulator: a
//! [`Schedule`] names the seed (the network's randomness and the clients' choices), the
//! cluster and workload, the network's weather, and each fault with its time. Every byte
//! string decodes to a schedule ([`Schedule::decode`]); the same bytes replay the same run
//! ([`super::simulate_bytes`]); [`Schedule::encode`] writes the bytes of a schedule, for
//! named scenarios and the committed corpus.
//!
//! The format (protocol-style, so corpus files stay meaningful):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0-3 | seed, u32 little-endian |
//! | 4 | cluster: bit 0 nodes 3 or 4; bit 1 replicas 1 or 2; bits 2-4 writers - 1 (1 to 8); bits 5-7 readers (0 to 7) |
//! | 5 | workload: bits 0-1 chasers (0 to 3); bit 2 every writer destroys its session at the end (else one in four) |
//! | 6 | weather: bits 0-1 loss, 2-3 duplication, 4-5 largest delay, 6-7 delay spikes: indexes into [`LOSS`], [`DUP`], [`DELAY_US`], [`SPIKE`] |
//! | 7 | chaos: faults are injected for 1 + (byte % 8) seconds of virtual time |
//! | 8.. | faults, four bytes each (a trailing partial fault is ignored): see [`Fault`] |
//!
//! Missing header bytes read as 0. A fault is `[gap, what, x, y]`: it happens `100 + 10 *
//! gap` ms after the previous one; `what % 8` is the kind (0-2 a cut between two nodes,
//! 3-4 a node isolated, 5-6 a pause, 7 a crash and restart) and `what / 8 % nodes` the
//! node; `x` picks the other node of a cut (`(node + 1 + x % (nodes - 1)) % nodes`) and, for
//! a pause, bit 7 makes it long; `y` is the length: `200 + 25 * y` ms for a cut, an
//! isolation or a short pause, `5000 + 100 * y` ms for a long pause, `50 + 10 * y` ms of
//! downtime for a crash. As in the seeded runs, one crash at most (so no more than
//! `replicas` nodes lose their memory at once): a later one is a short pause. Faults that
//! would start after the chaos period are dropped, so a schedule holds what runs. A run
//! lasts at most 8 s of chaos, 2 s of healed workload and the final reads: tens of
//! milliseconds of real time in release builds.

use tokio::time::Duration;

use super::net::Weather;
use super::SimOptions;

/// Loss probabilities, per request and per reply (byte 6, bits 0-1).
pub const LOSS: [f64; 4] = [0.0, 0.01, 0.05, 0.1];
/// Duplication probabilities (byte 6, bits 2-3).
pub const DUP: [f64; 4] = [0.0, 0.02, 0.1, 0.3];
/// Largest one-way delays, in microseconds (byte 6, bits 4-5).
pub const DELAY_US: [u64; 4] = [200, 2_000, 20_000, 100_000];
/// Probabilities of a delay spike of up to 1.5 s, past the peer timeout (byte 6, bits 6-7).
pub const SPIKE: [f64; 4] = [0.0, 0.001, 0.01, 0.05];

/// Bytes before the first fault.
pub const HEADER_LEN: usize = 8;
/// Bytes per fault.
pub const FAULT_LEN: usize = 4;

/// One fault of a [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Virtual time since the previous fault (or the start of the chaos period).
    pub after: Duration,
    /// What happens.
    pub what: FaultKind,
}

/// What a [`Fault`] does. Each heals by itself (and everything heals at the end of the
/// chaos period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Nodes `a` and `b` cannot reach each other for `hold` (both may reach the others:
    /// a partial partition).
    Cut {
        /// One node.
        a: usize,
        /// The other.
        b: usize,
        /// How long.
        hold: Duration,
    },
    /// Node `a` reaches no one for `hold`.
    Isolate {
        /// The node.
        a: usize,
        /// How long.
        hold: Duration,
    },
    /// Node `a`'s process is paused (sends and handles nothing) for `length`.
    Pause {
        /// The node.
        a: usize,
        /// How long.
        length: Duration,
    },
    /// Node `a`'s process crashes and restarts empty after `down`.
    Crash {
        /// The node.
        a: usize,
        /// Downtime.
        down: Duration,
    },
    /// Every node crashes at once and restarts empty after `down`: beyond the promise
    /// (more than `replicas` nodes lose their memory), so a run with it must report lost
    /// writes. Never decoded from bytes; it exists to show that the checks catch a loss
    /// ([`Schedule::encode`] writes it as a crash of node `a`).
    CrashAll {
        /// The node named in the encoding.
        a: usize,
        /// Downtime.
        down: Duration,
    },
}

/// A whole simulation, as a fuzzer or a test script it. See the module docs for the bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The network's randomness (delays, losses) and the clients' choices.
    pub seed: u32,
    /// Nodes: 3 or 4.
    pub nodes: usize,
    /// Backups per session: 1 or 2.
    pub replicas: u8,
    /// Compare-and-set writers, one session each: 1 to 8.
    pub writers: usize,
    /// Readers of sessions of their own, through random nodes: 0 to 7.
    pub readers: usize,
    /// Readers that chase the writers' sessions through random nodes, so that moves race
    /// writes, rotations and destructions: 0 to 3.
    pub chasers: usize,
    /// Every writer destroys its session at the end (else one in four).
    pub destroy_all: bool,
    /// How messages fare.
    pub weather: Weather,
    /// How long faults are injected before everything heals: 1 to 8 s.
    pub chaos: Duration,
    /// The faults, in order.
    pub faults: Vec<Fault>,
}

fn step(ms: u64, base: u64, unit: u64) -> u8 {
    (ms.saturating_sub(base) / unit).min(255) as u8
}

fn index_of<T: PartialOrd + Copy>(table: &[T; 4], v: T) -> u8 {
    // The largest entry not above `v` (exact for values from the table).
    table.iter().rposition(|x| *x <= v).unwrap_or(0) as u8
}

impl Schedule {
    /// The schedule a byte string stands for. Total: every byte string decodes.
    pub fn decode(data: &[u8]) -> Schedule {
        let h = |i: usize| data.get(i).copied().unwrap_or(0);
        let seed = u32::from_le_bytes([h(0), h(1), h(2), h(3)]);
        let (c, w, wx) = (h(4), h(5), h(6));
        let nodes = 3 + usize::from(c & 1);
        let chaos = Duration::from_secs(1 + u64::from(h(7) % 8));
        let mut faults = Vec::new();
        let (mut at, mut crashed) = (Duration::ZERO, false);
        for f in data.get(HEADER_LEN..).unwrap_or(&[]).chunks_exact(FAULT_LEN) {
            if at >= chaos {
                break;
            }
            let (gap, what, x, y) = (f[0], f[1], f[2], f[3]);
            let after = Duration::from_millis(100 + 10 * u64::from(gap));
            let a = usize::from(what / 8) % nodes;
            let hold = Duration::from_millis(200 + 25 * u64::from(y));
            let what = match what % 8 {
                0..=2 => FaultKind::Cut {
                    a,
                    b: (a + 1 + usize::from(x) % (nodes - 1)) % nodes,
                    hold,
                },
                3..=4 => FaultKind::Isolate { a, hold },
                7 if !crashed => {
                    crashed = true;
                    FaultKind::Crash {
                        a,
                        down: Duration::from_millis(50 + 10 * u64::from(y)),
                    }
                }
                _ if x & 0x80 != 0 => FaultKind::Pause {
                    a,
                    length: Duration::from_millis(5000 + 100 * u64::from(y)),
                },
                _ => FaultKind::Pause { a, length: hold },
            };
            at += after;
            if let FaultKind::Crash { down, .. } = what {
                at += down; // the injection waits out the downtime
            }
            faults.push(Fault { after, what });
        }
        Schedule {
            seed,
            nodes,
            replicas: 1 + (c >> 1 & 1),
            writers: 1 + usize::from(c >> 2 & 7),
            readers: usize::from(c >> 5),
            chasers: usize::from(w & 3),
            destroy_all: w & 4 != 0,
            weather: Weather {
                loss: LOSS[usize::from(wx & 3)],
                dup: DUP[usize::from(wx >> 2 & 3)],
                max_delay: Duration::from_micros(DELAY_US[usize::from(wx >> 4 & 3)]),
                spike: SPIKE[usize::from(wx >> 6)],
            },
            chaos,
            faults,
        }
    }

    /// Bytes that [`Schedule::decode`] turns into this schedule, for schedules within the
    /// format's ranges and steps (values off the steps are rounded down, out of range
    /// clamped; [`FaultKind::CrashAll`] is written as a crash).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.seed.to_le_bytes().to_vec();
        out.push(
            u8::from(self.nodes >= 4)
                | u8::from(self.replicas >= 2) << 1
                | (self.writers.clamp(1, 8) as u8 - 1) << 2
                | (self.readers.min(7) as u8) << 5,
        );
        out.push(self.chasers.min(3) as u8 | u8::from(self.destroy_all) << 2);
        let w = &self.weather;
        out.push(
            index_of(&LOSS, w.loss)
                | index_of(&DUP, w.dup) << 2
                | index_of(&DELAY_US, w.max_delay.as_micros() as u64) << 4
                | index_of(&SPIKE, w.spike) << 6,
        );
        out.push((self.chaos.as_secs().clamp(1, 8) - 1) as u8);
        let nodes = if self.nodes >= 4 { 4 } else { 3 };
        for f in &self.faults {
            let gap = step(f.after.as_millis() as u64, 100, 10);
            let ms = |d: Duration| d.as_millis() as u64;
            let node = |a: usize| (a % nodes) as u8 * 8;
            let bytes = match f.what {
                FaultKind::Cut { a, b, hold } => {
                    let x = ((b % nodes) + nodes - (a % nodes) - 1) % nodes;
                    [gap, node(a), x as u8, step(ms(hold), 200, 25)]
                }
                FaultKind::Isolate { a, hold } => [gap, node(a) | 3, 0, step(ms(hold), 200, 25)],
                FaultKind::Pause { a, length } if ms(length) >= 5000 && (ms(length) - 5000) % 100 == 0 => {
                    [gap, node(a) | 5, 0x80, step(ms(length), 5000, 100)]
                }
                FaultKind::Pause { a, length } => [gap, node(a) | 5, 0, step(ms(length), 200, 25)],
                FaultKind::Crash { a, down } | FaultKind::CrashAll { a, down } => {
                    [gap, node(a) | 7, 0, step(ms(down), 50, 10)]
                }
            };
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// The options the simulation runs this schedule with.
    pub(super) fn options(&self) -> SimOptions {
        SimOptions {
            nodes: self.nodes,
            replicas: self.replicas,
            writers: self.writers,
            readers: self.readers,
            chasers: self.chasers,
            destroy_all: self.destroy_all,
            chaos: self.chaos,
            crash: true,
            pauses: true,
            weather: true,
            faults: true,
            skew: super::MAX_CLOCK_SKEW,
        }
    }
}
