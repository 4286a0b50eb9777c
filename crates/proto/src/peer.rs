//! Peer-port messages: what nodes say to each other over their authenticated links.
//!
//! Requests use opcodes 0x40..=0x7F; replies 0xC0..=0xFE; ERROR is 0xFF. A link carries
//! many requests at once; replies match requests by request id and may come in any order.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::client::ErrorReply;
use crate::error::DecodeError;
use crate::limits::Limits;
use crate::message::{Message, OP_ERROR};
use crate::session::{SessionId, SessionRecord};
use crate::wire::{put_addr, Reader};

/// Bytes in a handshake nonce (256 bits; the brief asks for at least 128).
pub const NONCE_LEN: usize = 32;
/// Bytes in a handshake proof (a full HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Most holders a COPY_DATA names (a session's backups, including failed ones an owner
/// keeps until they answer again).
pub const MAX_HOLDERS: usize = 8;

/// Peer opcodes.
pub mod op {
    /// AUTH_HELLO: the dialling node opens the handshake.
    pub const AUTH_HELLO: u8 = 0x40;
    /// AUTH_PROOF: the dialling node proves it knows the secret.
    pub const AUTH_PROOF: u8 = 0x41;
    /// PING.
    pub const PING: u8 = 0x42;
    /// COPY: hand a session over to the asker.
    pub const COPY: u8 = 0x43;
    /// COPY_ACK: the asker installed the session.
    pub const COPY_ACK: u8 = 0x44;
    /// REPLICATE: store this backup copy.
    pub const REPLICATE: u8 = 0x45;
    /// DROP: forget a backup copy.
    pub const DROP: u8 = 0x46;
    /// PROMOTE: the owner is gone; hand the backup copy over to the asker.
    pub const PROMOTE: u8 = 0x47;
    /// TAKE: the sender is leaving; take these sessions over from it (COPY each).
    pub const TAKE: u8 = 0x48;
    /// RELEASE: the sender is leaving and holds backup copies of these sessions of the
    /// receiver's: replace it as their holder.
    pub const RELEASE: u8 = 0x49;
    /// LOCATE: what do you know of this session?
    pub const LOCATE: u8 = 0x4A;
    /// EPOCH: which process (node id) answers at this address?
    pub const EPOCH: u8 = 0x4B;
    /// RETIRE: the session was destroyed or rotated away; keep a tombstone for it.
    pub const RETIRE: u8 = 0x4C;
    /// COPY_REFUSED: the asker did not install the session; stop offering it, and
    /// acknowledge nothing that went only into it.
    pub const COPY_REFUSED: u8 = 0x4D;
    /// FEATURES: the dialler's feature bits; which does the acceptor understand?
    pub const FEATURES: u8 = 0x4E;
    /// COPY_ACKS: several COPY_ACKs in one frame (feature [`super::feature::COPY_ACKS`]).
    pub const COPY_ACKS: u8 = 0x4F;
    /// REPLICATE_CLAIM: a claim's REPLICATE, naming the copy it claims (feature
    /// [`super::feature::CLAIM_BASE`]).
    pub const REPLICATE_CLAIM: u8 = 0x50;
    /// AUTH_CHALLENGE: the accepting node's nonce and proof.
    pub const AUTH_CHALLENGE: u8 = 0xC0;
    /// AUTH_OK: the handshake is complete.
    pub const AUTH_OK: u8 = 0xC1;
    /// PONG.
    pub const PONG: u8 = 0xC2;
    /// COPY_DATA: the session, now the asker's.
    pub const COPY_DATA: u8 = 0xC3;
    /// MOVED: the session is owned elsewhere.
    pub const MOVED: u8 = 0xC4;
    /// NOT_FOUND: no such live session here.
    pub const NOT_FOUND: u8 = 0xC5;
    /// OK: COPY_ACK, REPLICATE or DROP done.
    pub const OK: u8 = 0xC6;
    /// IDS: reply to RELEASE: the sessions the receiver does not own.
    pub const IDS: u8 = 0xC7;
    /// LOCATED: reply to LOCATE.
    pub const LOCATED: u8 = 0xC8;
    /// EPOCH_IS: reply to EPOCH: the answering process's node id.
    pub const EPOCH_IS: u8 = 0xC9;
    /// FEATURES_ARE: reply to FEATURES: the acceptor's feature bits.
    pub const FEATURES_ARE: u8 = 0xCA;
}

/// Feature bits of FEATURES and FEATURES_ARE (protocol.md 9.3): what a node can do beyond
/// the base protocol. A link uses a feature only when both of its ends set its bit, so
/// nodes of different releases share a cluster (a rolling deploy).
pub mod feature {
    /// The dialler may send COPY_ACKS: acknowledgements of many handovers in one frame.
    pub const COPY_ACKS: u64 = 1 << 0;
    /// The dialler may send REPLICATE_CLAIM: a claim's copy names the copy it was claimed
    /// from, so that the live owner of that generation can refuse a rival lineage's claim.
    pub const CLAIM_BASE: u64 = 1 << 1;
    /// Every feature this build implements.
    pub const ALL: u64 = COPY_ACKS | CLAIM_BASE;
}

/// Most acknowledgements in one COPY_ACKS.
pub const MAX_ACKS: usize = 4096;

/// The copy a claim was made from (REPLICATE_CLAIM): whose backup copy, of which
/// generation, written by which of that owner's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimBase {
    /// The owner that REPLICATEd the copy (its advertised address).
    pub owner: SocketAddr,
    /// The generation the owner held it under.
    pub generation: u64,
    /// The writing process: the little-endian u32 of the first four bytes of its node id
    /// (from the handshake) with the lowest bit set; 0 when unknown.
    pub writer: u32,
}

/// A message on a peer link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// Dialler -> acceptor, first frame.
    ///
    /// # Format
    /// node_id (16), u8 key_id, nonce (32), advertised peer address.
    AuthHello {
        /// The dialler's node id, random per process start.
        node_id: [u8; 16],
        /// Which cluster secret the dialler proves with.
        key_id: u8,
        /// The dialler's fresh random nonce.
        nonce: [u8; NONCE_LEN],
        /// The address other nodes (and tokens) use for the dialler.
        advertised: SocketAddr,
    },
    /// Acceptor -> dialler: the acceptor's nonce and its proof over both nonces.
    ///
    /// # Format
    /// node_id (16), nonce (32), proof (32), advertised peer address.
    AuthChallenge {
        /// The acceptor's node id.
        node_id: [u8; 16],
        /// The acceptor's fresh random nonce.
        nonce: [u8; NONCE_LEN],
        /// HMAC proof with role "acceptor" (see `handshake`).
        proof: [u8; PROOF_LEN],
        /// The acceptor's advertised peer address.
        advertised: SocketAddr,
    },
    /// Dialler -> acceptor: the dialler's proof over both nonces.
    ///
    /// # Format
    /// proof (32).
    AuthProof {
        /// HMAC proof with role "dialler".
        proof: [u8; PROOF_LEN],
    },
    /// Acceptor -> dialler: the link is open for session traffic.
    ///
    /// # Format
    /// empty.
    AuthOk,
    /// Keep-alive; echoes a number.
    ///
    /// # Format
    /// u64 payload.
    Ping(u64),
    /// Reply to PING.
    ///
    /// # Format
    /// u64 payload.
    Pong(u64),
    /// Asks the receiving node to hand a session over to the sender.
    ///
    /// # Format
    /// session id (16), u64 last_transfer.
    Copy {
        /// The session wanted.
        session_id: SessionId,
        /// The transfer id of the last COPY_DATA for this session the sender installed
        /// (0: none). Lets the owner tell a retry after a lost reply (resend the data)
        /// from a new request by a node that already got that data (never resend it).
        last_transfer: u64,
    },
    /// The session, handed over: the receiver of this reply is now its owner.
    ///
    /// # Format
    /// u64 transfer, u8 holder count (at most [`MAX_HOLDERS`]), that many addresses,
    /// session record.
    CopyData {
        /// The session's handover generation (one more than the sender received it with);
        /// a receiver installs only a generation newer than it knows. Echoed in COPY_ACK and
        /// remembered by the receiver for its next COPY's `last_transfer`.
        transfer: u64,
        /// The nodes that may hold a backup copy of the sender's lineage: the receiver
        /// places its own copy on every one of them before it serves anything, so no older
        /// copy is left that a failover could promote (protocol.md 12.4).
        holders: Vec<SocketAddr>,
        /// The session.
        record: SessionRecord,
    },
    /// The session is owned by another node; ask it.
    ///
    /// # Format
    /// session id (16), owner peer address.
    Moved {
        /// The session.
        session_id: SessionId,
        /// Where it went.
        owner: SocketAddr,
    },
    /// No live session with that id here (never existed, expired or destroyed).
    ///
    /// # Format
    /// session id (16).
    NotFound {
        /// The session.
        session_id: SessionId,
    },
    /// The asker installed the session from COPY_DATA; the old owner may drop its copy.
    ///
    /// # Format
    /// session id (16), u64 transfer (from the COPY_DATA).
    CopyAck {
        /// The session.
        session_id: SessionId,
        /// The transfer id of the COPY_DATA installed.
        transfer: u64,
    },
    /// Several COPY_ACKs in one frame, each handled as if it came alone, in order; one OK
    /// answers them all. Sent only on a link whose acceptor answered FEATURES with
    /// [`feature::COPY_ACKS`].
    ///
    /// # Format
    /// u16 count (1 to [`MAX_ACKS`]), then per acknowledgement: session id (16), u64
    /// transfer.
    CopyAcks {
        /// `(session, transfer id of the COPY_DATA installed)`, as COPY_ACK's fields.
        acks: Vec<(SessionId, u64)>,
    },
    /// The asker did not install the session from COPY_DATA as its live copy (a holder
    /// named a newer owner, or it had installed another copy of that generation first):
    /// the old owner stops offering it, as on COPY_ACK, but acknowledges no write that
    /// went only into it.
    ///
    /// # Format
    /// session id (16), u64 transfer (from the COPY_DATA).
    CopyRefused {
        /// The session.
        session_id: SessionId,
        /// The transfer id of the COPY_DATA refused.
        transfer: u64,
    },
    /// Owner -> backup: store (or replace) this copy of a session the sender owns.
    /// Answered OK, or MOVED when the backup knows of a newer owner (the sender lost the
    /// session to a promotion and must stop serving it).
    ///
    /// # Format
    /// u64 generation, session record.
    Replicate {
        /// The handover generation under which the sender owns the session (its
        /// `received`): copies are ordered by (generation, version, last access).
        generation: u64,
        /// The session.
        record: SessionRecord,
    },
    /// A claim's REPLICATE (a backup promoted its copy of a failed owner's): as
    /// [`PeerMessage::Replicate`], answered the same way, plus the copy it claims. The
    /// node that owns the session live under `base.generation` refuses it (MOVED naming
    /// itself) unless `base` is its own copy: the claim is then of a rival lineage of that
    /// generation, which holds none of the writes acknowledged here. Sent only on a link
    /// whose acceptor answered FEATURES with [`feature::CLAIM_BASE`]; elsewhere the claim
    /// goes as a plain REPLICATE.
    ///
    /// # Format
    /// u64 generation, base (address, u64 generation, u32 writer), session record.
    ReplicateClaim {
        /// The generation the sender claims the session under.
        generation: u64,
        /// The copy claimed.
        base: ClaimBase,
        /// The session.
        record: SessionRecord,
    },
    /// Owner -> backup: forget this session's backup copy, if it is the sender's and of
    /// this generation or older.
    ///
    /// # Format
    /// session id (16), u64 generation.
    Drop {
        /// The session.
        session_id: SessionId,
        /// The sender's generation for the session: a newer owner's copy is kept.
        generation: u64,
    },
    /// Owner -> backup, on DESTROY or ROTATE: the session ended at this generation. Like
    /// DROP, but what the backup keeps is a tombstone (it answers NOT_FOUND and LOCATE
    /// "destroyed"), so that the end outlives the owner: a DROP's fence did not, and a
    /// crash of the owner let a stale copy elsewhere bring the ended session back.
    ///
    /// # Format
    /// session id (16), u64 generation.
    Retire {
        /// The session.
        session_id: SessionId,
        /// The sender's generation for the session: a newer owner's copy is kept.
        generation: u64,
    },
    /// "The owner `failed_owner` did not answer me (or lost the session): if your backup
    /// copy is that owner's, hand it over to me." Answered like COPY.
    ///
    /// # Format
    /// session id (16), u64 last_transfer, failed owner peer address.
    Promote {
        /// The session wanted.
        session_id: SessionId,
        /// As in COPY.
        last_transfer: u64,
        /// The owner the sender could not get the session from.
        failed_owner: SocketAddr,
    },
    /// COPY_ACK, REPLICATE or DROP done.
    ///
    /// # Format
    /// empty.
    Ok,
    /// Leaver -> member: "I am leaving: take these sessions over from me", each by the
    /// ordinary COPY handover. Answered OK (accepted; the COPYs follow) or ERROR.
    ///
    /// # Format
    /// u16 count (at most [`MAX_IDS`]), session ids (16 each).
    Take {
        /// The sessions to take.
        ids: Vec<SessionId>,
    },
    /// Leaver -> owner: "I hold backup copies of these sessions of yours and I am
    /// leaving: place new copies elsewhere, then DROP mine." Answered IDS with those the
    /// receiver does not own.
    ///
    /// # Format
    /// u16 count (at most [`MAX_IDS`]), session ids (16 each).
    Release {
        /// The sessions.
        ids: Vec<SessionId>,
    },
    /// The sessions (of a RELEASE) the receiver does not own.
    ///
    /// # Format
    /// u16 count (at most [`MAX_IDS`]), session ids (16 each).
    Ids {
        /// The sessions.
        ids: Vec<SessionId>,
    },
    /// "What do you know of this session?" Answered LOCATED or NOT_FOUND.
    ///
    /// # Format
    /// session id (16).
    Locate {
        /// The session.
        session_id: SessionId,
    },
    /// Reply to LOCATE.
    ///
    /// # Format
    /// session id (16), u8 role (1 owner, 2 backup, 3 handed over, 4 destroyed), peer
    /// address, then (since the restarted-holder survey, protocol.md 12.2) u64 generation;
    /// a node before it sends no generation.
    Located {
        /// The session.
        session_id: SessionId,
        /// What the answering node holds.
        role: Role,
        /// Role owner: the answering node; backup: the owner the copy is from; handed
        /// over: the node it went to.
        addr: SocketAddr,
        /// The newest handover generation of the session the answering node knows of:
        /// owner, the one it owns under; backup, its copy's; handed over, the one it handed
        /// on; destroyed, 0. `None`: not sent (an older node), or not to be sent.
        generation: Option<u64>,
    },
    /// "Which process answers at your address?" Answered EPOCH_IS.
    ///
    /// # Format
    /// empty.
    Epoch,
    /// Reply to EPOCH.
    ///
    /// # Format
    /// node id (16), u64 uptime_ms.
    EpochIs {
        /// The answering process's node id (random per start).
        node_id: [u8; 16],
        /// How long the answering process has been running, in ms.
        uptime_ms: u64,
    },
    /// Dialler -> acceptor, right after AUTH_OK: what the dialler can do. Answered
    /// FEATURES_ARE; a node that predates it answers ERROR `UNKNOWN_OPCODE` and closes.
    ///
    /// # Format
    /// u64 feature bits ([`feature`]).
    Features(u64),
    /// Reply to FEATURES: what the acceptor can do. The link uses the bits both set.
    ///
    /// # Format
    /// u64 feature bits ([`feature`]).
    FeaturesAre(u64),
    /// The request failed.
    Error(ErrorReply),
}

/// Most session ids in one TAKE, RELEASE or IDS.
pub const MAX_IDS: usize = 4096;

/// What a node holds of a session, in LOCATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It owns the session (live).
    Owner,
    /// It holds a backup copy from the owner named.
    Backup,
    /// It handed the session over to the node named.
    HandedOver,
    /// It destroyed (or rotated away) the session: it must not be brought back from a
    /// copy (the address is the answering node's).
    Destroyed,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Owner => 1,
            Role::Backup => 2,
            Role::HandedOver => 3,
            Role::Destroyed => 4,
        }
    }

    fn from_byte(b: u8) -> Result<Role, DecodeError> {
        match b {
            1 => Ok(Role::Owner),
            2 => Ok(Role::Backup),
            3 => Ok(Role::HandedOver),
            4 => Ok(Role::Destroyed),
            v => Err(DecodeError::Invalid(format!("LOCATED role {v}, expected 1 to 4"))),
        }
    }
}

fn put_ids(out: &mut BytesMut, ids: &[SessionId]) {
    // Encoders are given at most MAX_IDS (u16 range); more would not decode anywhere.
    let n = ids.len().min(MAX_IDS);
    out.put_u16(n as u16);
    for id in &ids[..n] {
        out.put_slice(&id.0);
    }
}

fn get_ids(r: &mut Reader<'_>) -> Result<Vec<SessionId>, DecodeError> {
    let n = r.count("session ids", MAX_IDS, 16)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(SessionId(r.array()?));
    }
    Ok(ids)
}

impl PeerMessage {
    /// The copy a REPLICATE or REPLICATE_CLAIM carries; `None` for every other message.
    /// One accessor for the two, so a check that applies to both (a leaving node takes no
    /// new copy) is written once.
    pub fn replicated_record(&self) -> Option<&SessionRecord> {
        match self {
            PeerMessage::Replicate { record, .. } | PeerMessage::ReplicateClaim { record, .. } => {
                Some(record)
            }
            _ => None,
        }
    }
}

impl Message for PeerMessage {
    fn opcode(&self) -> u8 {
        match self {
            PeerMessage::AuthHello { .. } => op::AUTH_HELLO,
            PeerMessage::AuthChallenge { .. } => op::AUTH_CHALLENGE,
            PeerMessage::AuthProof { .. } => op::AUTH_PROOF,
            PeerMessage::AuthOk => op::AUTH_OK,
            PeerMessage::Ping(_) => op::PING,
            PeerMessage::Pong(_) => op::PONG,
            PeerMessage::Copy { .. } => op::COPY,
            PeerMessage::CopyData { .. } => op::COPY_DATA,
            PeerMessage::Moved { .. } => op::MOVED,
            PeerMessage::NotFound { .. } => op::NOT_FOUND,
            PeerMessage::CopyAck { .. } => op::COPY_ACK,
            PeerMessage::Replicate { .. } => op::REPLICATE,
            PeerMessage::ReplicateClaim { .. } => op::REPLICATE_CLAIM,
            PeerMessage::Drop { .. } => op::DROP,
            PeerMessage::Retire { .. } => op::RETIRE,
            PeerMessage::CopyRefused { .. } => op::COPY_REFUSED,
            PeerMessage::Promote { .. } => op::PROMOTE,
            PeerMessage::Ok => op::OK,
            PeerMessage::Take { .. } => op::TAKE,
            PeerMessage::Release { .. } => op::RELEASE,
            PeerMessage::Ids { .. } => op::IDS,
            PeerMessage::Locate { .. } => op::LOCATE,
            PeerMessage::Located { .. } => op::LOCATED,
            PeerMessage::Epoch => op::EPOCH,
            PeerMessage::EpochIs { .. } => op::EPOCH_IS,
            PeerMessage::CopyAcks { .. } => op::COPY_ACKS,
            PeerMessage::Features(_) => op::FEATURES,
            PeerMessage::FeaturesAre(_) => op::FEATURES_ARE,
            PeerMessage::Error(_) => OP_ERROR,
        }
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            PeerMessage::AuthHello {
                node_id,
                key_id,
                nonce,
                advertised,
            } => {
                out.put_slice(node_id);
                out.put_u8(*key_id);
                out.put_slice(nonce);
                put_addr(out, advertised);
            }
            PeerMessage::AuthChallenge {
                node_id,
                nonce,
                proof,
                advertised,
            } => {
                out.put_slice(node_id);
                out.put_slice(nonce);
                out.put_slice(proof);
                put_addr(out, advertised);
            }
            PeerMessage::AuthProof { proof } => out.put_slice(proof),
            PeerMessage::AuthOk | PeerMessage::Ok | PeerMessage::Epoch => {}
            PeerMessage::Take { ids } | PeerMessage::Release { ids } | PeerMessage::Ids { ids } => {
                put_ids(out, ids)
            }
            PeerMessage::Locate { session_id } => out.put_slice(&session_id.0),
            PeerMessage::Located {
                session_id,
                role,
                addr,
                generation,
            } => {
                out.put_slice(&session_id.0);
                out.put_u8(role.byte());
                put_addr(out, addr);
                if let Some(g) = generation {
                    out.put_u64(*g);
                }
            }
            PeerMessage::EpochIs { node_id, uptime_ms } => {
                out.put_slice(node_id);
                out.put_u64(*uptime_ms);
            }
            PeerMessage::Ping(n)
            | PeerMessage::Pong(n)
            | PeerMessage::Features(n)
            | PeerMessage::FeaturesAre(n) => out.put_u64(*n),
            PeerMessage::CopyAcks { acks } => {
                // Encoders are given at most MAX_ACKS (u16 range); more would not decode.
                let n = acks.len().min(MAX_ACKS);
                out.put_u16(n as u16);
                for (session_id, transfer) in &acks[..n] {
                    out.put_slice(&session_id.0);
                    out.put_u64(*transfer);
                }
            }
            PeerMessage::NotFound { session_id } => out.put_slice(&session_id.0),
            PeerMessage::Drop {
                session_id,
                generation,
            }
            | PeerMessage::Retire {
                session_id,
                generation,
            } => {
                out.put_slice(&session_id.0);
                out.put_u64(*generation);
            }
            PeerMessage::Promote {
                session_id,
                last_transfer,
                failed_owner,
            } => {
                out.put_slice(&session_id.0);
                out.put_u64(*last_transfer);
                put_addr(out, failed_owner);
            }
            PeerMessage::Copy {
                session_id,
                last_transfer,
            } => {
                out.put_slice(&session_id.0);
                out.put_u64(*last_transfer);
            }
            PeerMessage::CopyData {
                transfer,
                holders,
                record,
            } => {
                out.put_u64(*transfer);
                let n = holders.len().min(MAX_HOLDERS);
                out.put_u8(n as u8);
                for h in &holders[..n] {
                    put_addr(out, h);
                }
                record.encode(out);
            }
            PeerMessage::Replicate { generation, record } => {
                out.put_u64(*generation);
                record.encode(out);
            }
            PeerMessage::ReplicateClaim {
                generation,
                base,
                record,
            } => {
                out.put_u64(*generation);
                put_addr(out, &base.owner);
                out.put_u64(base.generation);
                out.put_u32(base.writer);
                record.encode(out);
            }
            PeerMessage::Moved { session_id, owner } => {
                out.put_slice(&session_id.0);
                put_addr(out, owner);
            }
            PeerMessage::CopyAck { session_id, transfer }
            | PeerMessage::CopyRefused { session_id, transfer } => {
                out.put_slice(&session_id.0);
                out.put_u64(*transfer);
            }
            PeerMessage::Error(e) => e.encode(out),
        }
    }

    fn decode_body(opcode: u8, body: &Bytes, limits: &Limits) -> Result<PeerMessage, DecodeError> {
        let mut r = Reader::from_bytes(body);
        let msg = match opcode {
            op::AUTH_HELLO => PeerMessage::AuthHello {
                node_id: r.array()?,
                key_id: r.u8()?,
                nonce: r.array()?,
                advertised: r.addr()?,
            },
            op::AUTH_CHALLENGE => PeerMessage::AuthChallenge {
                node_id: r.array()?,
                nonce: r.array()?,
                proof: r.array()?,
                advertised: r.addr()?,
            },
            op::AUTH_PROOF => PeerMessage::AuthProof { proof: r.array()? },
            op::AUTH_OK => PeerMessage::AuthOk,
            op::PING => PeerMessage::Ping(r.u64()?),
            op::PONG => PeerMessage::Pong(r.u64()?),
            op::COPY => PeerMessage::Copy {
                session_id: SessionId(r.array()?),
                last_transfer: r.u64()?,
            },
            op::COPY_DATA => {
                let transfer = r.u64()?;
                let n = usize::from(r.u8()?);
                if n > MAX_HOLDERS {
                    return Err(DecodeError::Invalid(format!(
                        "COPY_DATA names {n} holders, at most {MAX_HOLDERS} allowed"
                    )));
                }
                let holders = (0..n).map(|_| r.addr()).collect::<Result<Vec<_>, _>>()?;
                PeerMessage::CopyData {
                    transfer,
                    holders,
                    record: SessionRecord::decode(&mut r, limits)?,
                }
            }
            op::MOVED => PeerMessage::Moved {
                session_id: SessionId(r.array()?),
                owner: r.addr()?,
            },
            op::NOT_FOUND => PeerMessage::NotFound {
                session_id: SessionId(r.array()?),
            },
            op::COPY_ACK => PeerMessage::CopyAck {
                session_id: SessionId(r.array()?),
                transfer: r.u64()?,
            },
            op::COPY_REFUSED => PeerMessage::CopyRefused {
                session_id: SessionId(r.array()?),
                transfer: r.u64()?,
            },
            op::REPLICATE => PeerMessage::Replicate {
                generation: r.u64()?,
                record: SessionRecord::decode(&mut r, limits)?,
            },
            op::REPLICATE_CLAIM => PeerMessage::ReplicateClaim {
                generation: r.u64()?,
                base: ClaimBase {
                    owner: r.addr()?,
                    generation: r.u64()?,
                    writer: r.u32()?,
                },
                record: SessionRecord::decode(&mut r, limits)?,
            },
            op::DROP => PeerMessage::Drop {
                session_id: SessionId(r.array()?),
                generation: r.u64()?,
            },
            op::RETIRE => PeerMessage::Retire {
                session_id: SessionId(r.array()?),
                generation: r.u64()?,
            },
            op::PROMOTE => PeerMessage::Promote {
                session_id: SessionId(r.array()?),
                last_transfer: r.u64()?,
                failed_owner: r.addr()?,
            },
            op::OK => PeerMessage::Ok,
            op::TAKE => PeerMessage::Take {
                ids: get_ids(&mut r)?,
            },
            op::RELEASE => PeerMessage::Release {
                ids: get_ids(&mut r)?,
            },
            op::IDS => PeerMessage::Ids {
                ids: get_ids(&mut r)?,
            },
            op::LOCATE => PeerMessage::Locate {
                session_id: SessionId(r.array()?),
            },
            op::LOCATED => PeerMessage::Located {
                session_id: SessionId(r.array()?),
                role: Role::from_byte(r.u8()?)?,
                addr: r.addr()?,
                // Absent from an older node; anything else after the address but 8 bytes
                // is left for `finish` to refuse.
                generation: if r.remaining() >= 8 { Some(r.u64()?) } else { None },
            },
            op::EPOCH => PeerMessage::Epoch,
            op::EPOCH_IS => PeerMessage::EpochIs {
                node_id: r.array()?,
                uptime_ms: r.u64()?,
            },
            op::COPY_ACKS => {
                let n = r.count("acknowledgements", MAX_ACKS, 24)?;
                if n == 0 {
                    return Err(DecodeError::Invalid("COPY_ACKS acknowledges nothing".into()));
                }
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    acks.push((SessionId(r.array()?), r.u64()?));
                }
                PeerMessage::CopyAcks { acks }
            }
            op::FEATURES => PeerMessage::Features(r.u64()?),
            op::FEATURES_ARE => PeerMessage::FeaturesAre(r.u64()?),
            OP_ERROR => PeerMessage::Error(ErrorReply::decode(&mut r, limits)?),
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}
