//! Membership datagrams: authenticated and encrypted with a key derived from the cluster
//! secret, and refused when replayed or old. protocol.md, "Membership", is the layout.
//!
//! ```text
//! u8 version (1) | u8 key id | [12] nonce | ChaCha20-Poly1305( sender node id [16],
//!     u64 sent_ms, u64 seq, foca message ) | [16] tag          (AAD: the first 14 bytes)
//! ```
//!
//! Why encrypt even without peer TLS: one format is simpler to get right than two, and
//! the AEAD's tag is the MAC the datagram needs anyway; the cost is a few microseconds per
//! datagram at a few datagrams per second. Why ring: it is already in the build (rustls's
//! provider), audited, and has ChaCha20-Poly1305.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sessync_proto::Keyring;

/// The datagram format's version byte.
pub(crate) const VERSION: u8 = 1;
/// The HKDF info string of the datagram key (protocol.md, "Membership").
pub(crate) const KEY_INFO: &[u8] = b"sessync-membership-v1";
/// Version, key id and nonce: the associated data.
pub(crate) const HEADER_LEN: usize = 2 + NONCE_LEN;
/// Sender node id, send time and sequence number, inside the ciphertext.
pub(crate) const INNER_LEN: usize = 16 + 8 + 8;
/// The Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;
/// Everything a datagram adds to foca's message.
pub(crate) const OVERHEAD: usize = HEADER_LEN + INNER_LEN + TAG_LEN;
/// A datagram whose send time is further than this from ours (either way) is refused as
/// old: the replay window only needs to remember this long.
pub(crate) const FRESHNESS: Duration = Duration::from_secs(30);
/// Sequence numbers remembered below the highest seen per sender (reordering allowed).
const WINDOW: u64 = 64;
/// Senders remembered at most (only authenticated senders are remembered at all).
const MAX_SENDERS: usize = 4096;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too short, another version, an unknown key id, or the tag does not verify
    /// (a stranger, another cluster's secret, or corruption).
    Unauthenticated,
    /// Authenticated, but its send time is outside [`FRESHNESS`].
    Stale,
    /// Authenticated, but this sender's sequence number was seen already or is below the
    /// window.
    Replayed,
}

/// A datagram that authenticated.
#[derive(Debug)]
pub(crate) struct Opened<'a> {
    /// The sender's node id, as it sealed it.
    pub(crate) sender: [u8; 16],
    /// Foca's message.
    pub(crate) message: &'a [u8],
}

/// Seals and opens datagrams with every key of the ring (seals with the current one).
pub(crate) struct Sealer {
    keys: Vec<(u8, LessSafeKey)>,
    current: u8,
    node_id: [u8; 16],
    seq: u64,
    rng: SystemRandom,
    replay: HashMap<[u8; 16], Window>,
}

/// One sender's sliding window: the highest sequence number seen and a bitmap of the
/// [`WINDOW`] below it.
#[derive(Debug, Clone, Copy)]
struct Window {
    top: u64,
    seen: u64,
    last: Instant,
}

impl Sealer {
    /// Derives one AEAD key per key id of the ring.
    pub(crate) fn new(ring: &Keyring, node_id: [u8; 16]) -> Sealer {
        let keys = ring
            .key_ids()
            .into_iter()
            .filter_map(|id| {
                let k = ring.derive_key(id, KEY_INFO)?;
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, &k).ok()?;
                Some((id, LessSafeKey::new(unbound)))
            })
            .collect();
        Sealer {
            keys,
            current: ring.current_id(),
            node_id,
            seq: 0,
            rng: SystemRandom::new(),
            replay: HashMap::new(),
        }
    }

    /// Appends a sealed datagram carrying `message` to `out` (cleared first). Fails only if
    /// the system's random source fails.
    pub(crate) fn seal(
        &mut self,
        message: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ring::error::Unspecified> {
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == self.current)
            .map(|(_, k)| k)
            .ok_or(ring::error::Unspecified)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        self.seq += 1;
        out.clear();
        out.push(VERSION);
        out.push(self.current);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&self.node_id);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(message);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header[..]),
            body,
        )?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens a datagram in place: authenticates it, then checks its age and its sequence
    /// number against this sender's window (recording it only when it passes).
    pub(crate) fn open<'a>(
        &mut self,
        datagram: &'a mut [u8],
        now_ms: u64,
        now: Instant,
    ) -> Result<Opened<'a>, Refusal> {
        if datagram.len() < OVERHEAD || datagram[0] != VERSION {
            return Err(Refusal::Unauthenticated);
        }
        let key_id = datagram[1];
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .map(|(_, k)| k)
            .ok_or(Refusal::Unauthenticated)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[2..HEADER_LEN]);
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&header[..]), body)
            .map_err(|_| Refusal::Unauthenticated)?;
        // open_in_place returns the plaintext without the tag; OVERHEAD guarantees INNER_LEN.
        let (inner, message) = plain.split_at(INNER_LEN);
        let mut sender = [0u8; 16];
        sender.copy_from_slice(&inner[..16]);
        let sent_ms = u64::from_be_bytes(inner[16..24].try_into().map_err(|_| Refusal::Unauthenticated)?);
        let seq = u64::from_be_bytes(inner[24..32].try_into().map_err(|_| Refusal::Unauthenticated)?);
        if sent_ms.abs_diff(now_ms) > FRESHNESS.as_millis() as u64 {
            return Err(Refusal::Stale);
        }
        self.check_replay(sender, seq, now)?;
        Ok(Opened { sender, message })
    }

    /// Records `seq` for `sender`, or refuses it as a replay.
    fn check_replay(&mut self, sender: [u8; 16], seq: u64, now: Instant) -> Result<(), Refusal> {
        if !self.replay.contains_key(&sender) && self.replay.len() >= MAX_SENDERS {
            self.forget_idle(now);
            if self.replay.len() >= MAX_SENDERS {
                // Only senders holding the secret get here; refusing one more is safe
                // (its next datagram is tried again).
                return Err(Refusal::Replayed);
            }
        }
        let w = self.replay.entry(sender).or_insert(Window {
            top: 0,
            seen: 0,
            last: now,
        });
        if seq > w.top {
            let shift = seq - w.top;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift };
            // Bit 0 stands for `top` itself.
            w.seen |= 1;
            w.top = seq;
        } else {
            let back = w.top - seq;
            if back >= WINDOW || w.seen & (1 << back) != 0 {
                return Err(Refusal::Replayed);
            }
            w.seen |= 1 << back;
        }
        w.last = now;
        Ok(())
    }

    /// Forgets senders not heard from for twice [`FRESHNESS`]: anything they sent before
    /// is refused as stale by then.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        self.replay
            .retain(|_, w| now.saturating_duration_since(w.last) < 2 * FRESHNESS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(secret: &[u8]) -> Keyring {
        Keyring::single(secret).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn seal_open_and_refuse() {
        let secret = b"sessync-test-secret-0001";
        let mut a = Sealer::new(&ring(secret), [1; 16]);
        let mut b = Sealer::new(&ring(secret), [2; 16]);
        let now = Instant::now();
        let mut d = Vec::new();
        a.seal(b"hello", 1_000_000, &mut d)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.len(), OVERHEAD + 5);
        let copy = d.clone();
        let opened = b.open(&mut d, 1_000_000, now).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(opened.sender, [1; 16]);
        assert_eq!(opened.message, b"hello");
        // The same datagram again: a replay.
        assert_eq!(
            b.open(&mut copy.clone(), 1_000_000, now).err(),
            Some(Refusal::Replayed)
        );
        // Any flipped bit: unauthenticated.
        for i in 0..copy.len() {
            let mut c = copy.clone();
            c[i] ^= 0x40;
            assert_eq!(
                b.open(&mut c, 1_000_000, now).err(),
                Some(Refusal::Unauthenticated),
                "byte {i}"
            );
        }
        // Another secret: unauthenticated.
        let mut other = Sealer::new(&ring(b"another-cluster-secret-01"), [3; 16]);
        let mut e = Vec::new();
        other
            .seal(b"hello", 1_000_000, &mut e)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            b.open(&mut e, 1_000_000, now).err(),
            Some(Refusal::Unauthenticated)
        );
        // Old (or from the future): stale.
        let mut f = Vec::new();
        a.seal(b"x", 1_000_000, &mut f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            b.open(&mut f, 1_000_000 + 31_000, now).err(),
            Some(Refusal::Stale)
        );
        // Truncated: unauthenticated, never a panic.
        for cut in 0..OVERHEAD {
            assert_eq!(
                b.open(&mut copy.clone()[..cut].to_vec(), 1_000_000, now).err(),
                Some(Refusal::Unauthenticated)
            );
        }
    }

    /// The key derivation example of protocol.md section 16.1.
    #[test]
    fn key_derivation_matches_protocol_md() {
        let k = ring(b"sessync-docs-example-secret-0001").derive_key(0, KEY_INFO);
        let hex: Option<String> = k.map(|k| k.iter().map(|b| format!("{b:02x} ")).collect());
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocol.md"));
        let hex = hex.unwrap_or_default();
        assert!(
            doc.contains(hex.trim_end()),
            "protocol.md 16.1 lacks the derived key {hex}"
        );
        assert!(hex.starts_with("b2 65 bc 09"));
    }

    #[test]
    fn window_takes_reordering_and_refuses_repeats() {
        let mut b = Sealer::new(&ring(b"sessync-test-secret-0001"), [2; 16]);
        let now = Instant::now();
        let s = [9u8; 16];
        for seq in [5u64, 3, 4, 1, 70, 10, 69] {
            assert_eq!(b.check_replay(s, seq, now), Ok(()), "seq {seq}");
        }
        for seq in [5u64, 70, 69, 6, 1] {
            // 5, 70, 69 seen; 6 and 1 are below the window (70 - 64).
            assert_eq!(b.check_replay(s, seq, now), Err(Refusal::Replayed), "seq {seq}");
        }
        assert_eq!(b.check_replay(s, 7 + 64, now), Ok(()));
    }

    #[test]
    fn key_rotation_opens_with_any_key_of_the_ring() {
        let old = b"sessync-old-secret-00001";
        let new = b"sessync-new-secret-00001";
        let mut sender = Sealer::new(&ring(old), [1; 16]);
        let both = Keyring::new(1, [(0u8, &old[..]), (1u8, &new[..])]).unwrap_or_else(|e| panic!("{e}"));
        let mut receiver = Sealer::new(&both, [2; 16]);
        let mut d = Vec::new();
        sender.seal(b"m", 5, &mut d).unwrap_or_else(|e| panic!("{e}"));
        assert!(receiver.open(&mut d, 5, Instant::now()).is_ok());
        assert_eq!(Sealer::new(&both, [3; 16]).current, 1);
    }
}
