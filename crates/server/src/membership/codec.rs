//! The bytes of foca's messages: protocol.md, "Membership", is the normative layout.
//!
//! Foca writes a message as `header, [u16 count, count x member]`, where the header and the
//! members are ours to encode ([`foca::Codec`]). Every read checks the bytes left first:
//! a datagram that passed authentication is still decoded as untrusted input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message, State};
use sessync_proto::put_addr;

use super::identity::Identity;

/// Why bytes are not a membership message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    /// The bytes end in the middle of a field.
    #[error("membership message ends in the middle of a field")]
    UnexpectedEnd,
    /// A field holds a value the layout does not allow.
    #[error("membership message has an invalid {0}")]
    Invalid(&'static str),
    /// There is no room left in the datagram for this item (foca then stops adding).
    #[error("no room for the item in the datagram")]
    NoRoom,
}

/// Message kinds on the wire.
mod kind {
    pub(super) const PING: u8 = 1;
    pub(super) const ACK: u8 = 2;
    pub(super) const PING_REQ: u8 = 3;
    pub(super) const INDIRECT_PING: u8 = 4;
    pub(super) const INDIRECT_ACK: u8 = 5;
    pub(super) const FORWARDED_ACK: u8 = 6;
    pub(super) const ANNOUNCE: u8 = 7;
    pub(super) const FEED: u8 = 8;
    pub(super) const GOSSIP: u8 = 9;
    pub(super) const BROADCAST: u8 = 10;
    pub(super) const TURN_UNDEAD: u8 = 11;
}

/// The longest identity: 16 + 8 + 1 + two IPv6 addresses (19 each).
#[cfg(test)]
const MAX_IDENTITY_LEN: usize = 16 + 8 + 1 + 19 + 19;

/// Our [`foca::Codec`]: fixed-width big-endian fields, addresses as in protocol.md
/// section 3 (family byte, address, port).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WireCodec;

fn need(buf: &impl Buf, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        Err(CodecError::UnexpectedEnd)
    } else {
        Ok(())
    }
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, CodecError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, CodecError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

fn get_u64(buf: &mut impl Buf) -> Result<u64, CodecError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

fn get_array<const N: usize>(buf: &mut impl Buf) -> Result<[u8; N], CodecError> {
    need(buf, N)?;
    let mut a = [0u8; N];
    buf.copy_to_slice(&mut a);
    Ok(a)
}

fn get_addr(buf: &mut impl Buf) -> Result<SocketAddr, CodecError> {
    let ip = match get_u8(buf)? {
        4 => IpAddr::V4(Ipv4Addr::from(get_array::<4>(buf)?)),
        6 => IpAddr::V6(Ipv6Addr::from(get_array::<16>(buf)?)),
        _ => return Err(CodecError::Invalid("address family")),
    };
    Ok(SocketAddr::new(ip, get_u16(buf)?))
}

fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 7,
        SocketAddr::V6(_) => 19,
    }
}

/// Encoded length of an identity.
pub(crate) fn identity_len(id: &Identity) -> usize {
    16 + 8 + 1 + addr_len(&id.peer) + addr_len(&id.client)
}

/// `[16] node_id, u64 incarnation, u8 flags (bit 0: leaving; others 0), address peer,
/// address client`.
pub(crate) fn put_identity(out: &mut impl BufMut, id: &Identity) {
    out.put_slice(&id.node_id);
    out.put_u64(id.incarnation);
    out.put_u8(u8::from(id.leaving));
    put_addr(out, &id.peer);
    put_addr(out, &id.client);
}

/// Reads an identity written by [`put_identity`].
pub(crate) fn get_identity(buf: &mut impl Buf) -> Result<Identity, CodecError> {
    let node_id = get_array::<16>(buf)?;
    let incarnation = get_u64(buf)?;
    let leaving = match get_u8(buf)? {
        0 => false,
        1 => true,
        _ => return Err(CodecError::Invalid("identity flags")),
    };
    Ok(Identity {
        node_id,
        incarnation,
        leaving,
        peer: get_addr(buf)?,
        client: get_addr(buf)?,
    })
}

impl foca::Codec<Identity> for WireCodec {
    type Error = CodecError;

    /// `identity src, u16 src_incarnation, identity dst, u8 kind, then by kind: PING, ACK:
    /// u8 probe; PING_REQ, INDIRECT_PING, INDIRECT_ACK, FORWARDED_ACK: identity, u8 probe;
    /// the others: nothing`.
    fn encode_header(&mut self, header: &Header<Identity>, mut buf: impl BufMut) -> Result<(), CodecError> {
        let (kind, about, probe) = match &header.message {
            Message::Ping(p) => (kind::PING, None, Some(*p)),
            Message::Ack(p) => (kind::ACK, None, Some(*p)),
            Message::PingReq { target, probe_number } => (kind::PING_REQ, Some(target), Some(*probe_number)),
            Message::IndirectPing { origin, probe_number } => {
                (kind::INDIRECT_PING, Some(origin), Some(*probe_number))
            }
            Message::IndirectAck { target, probe_number } => {
                (kind::INDIRECT_ACK, Some(target), Some(*probe_number))
            }
            Message::ForwardedAck { origin, probe_number } => {
                (kind::FORWARDED_ACK, Some(origin), Some(*probe_number))
            }
            Message::Announce => (kind::ANNOUNCE, None, None),
            Message::Feed => (kind::FEED, None, None),
            Message::Gossip => (kind::GOSSIP, None, None),
            Message::Broadcast => (kind::BROADCAST, None, None),
            Message::TurnUndead => (kind::TURN_UNDEAD, None, None),
        };
        let len = identity_len(&header.src)
            + 2
            + identity_len(&header.dst)
            + 1
            + about.map_or(0, identity_len)
            + usize::from(probe.is_some());
        if buf.remaining_mut() < len {
            return Err(CodecError::NoRoom);
        }
        put_identity(&mut buf, &header.src);
        buf.put_u16(header.src_incarnation);
        put_identity(&mut buf, &header.dst);
        buf.put_u8(kind);
        if let Some(a) = about {
            put_identity(&mut buf, a);
        }
        if let Some(p) = probe {
            buf.put_u8(p);
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<Identity>, CodecError> {
        let src = get_identity(&mut buf)?;
        let src_incarnation = get_u16(&mut buf)?;
        let dst = get_identity(&mut buf)?;
        let message = match get_u8(&mut buf)? {
            kind::PING => Message::Ping(get_u8(&mut buf)?),
            kind::ACK => Message::Ack(get_u8(&mut buf)?),
            kind::PING_REQ => Message::PingReq {
                target: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            kind::INDIRECT_PING => Message::IndirectPing {
                origin: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            kind::INDIRECT_ACK => Message::IndirectAck {
                target: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            kind::FORWARDED_ACK => Message::ForwardedAck {
                origin: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            kind::ANNOUNCE => Message::Announce,
            kind::FEED => Message::Feed,
            kind::GOSSIP => Message::Gossip,
            kind::BROADCAST => Message::Broadcast,
            kind::TURN_UNDEAD => Message::TurnUndead,
            _ => return Err(CodecError::Invalid("message kind")),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    /// `identity, u16 incarnation (SWIM's, raised to refute suspicion), u8 state (0 alive,
    /// 1 suspect, 2 down)`.
    fn encode_member(&mut self, member: &Member<Identity>, mut buf: impl BufMut) -> Result<(), CodecError> {
        if buf.remaining_mut() < identity_len(member.id()) + 3 {
            return Err(CodecError::NoRoom);
        }
        put_identity(&mut buf, member.id());
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<Identity>, CodecError> {
        let id = get_identity(&mut buf)?;
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(CodecError::Invalid("member state")),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

/// The longest header: three IPv6 identities, the incarnation, the kind and a probe number.
#[cfg(test)]
pub(crate) const MAX_HEADER_LEN: usize = 3 * MAX_IDENTITY_LEN + 2 + 1 + 1;

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec as _;

    fn id(n: u8, v6: bool) -> Identity {
        let (p, c) = if v6 {
            ("[fd00::1]:7800", "[fd00::1]:7700")
        } else {
            ("10.0.0.1:7800", "10.0.0.1:7700")
        };
        Identity {
            node_id: [n; 16],
            incarnation: 1_700_000_000_000 + u64::from(n),
            leaving: n % 2 == 0,
            peer: p.parse().unwrap_or_else(|_| unreachable!()),
            client: c.parse().unwrap_or_else(|_| unreachable!()),
        }
    }

    #[test]
    fn headers_and_members_round_trip() {
        let messages = [
            Message::Ping(7),
            Message::Ack(8),
            Message::PingReq {
                target: id(3, true),
                probe_number: 9,
            },
            Message::IndirectPing {
                origin: id(4, false),
                probe_number: 1,
            },
            Message::IndirectAck {
                target: id(5, true),
                probe_number: 2,
            },
            Message::ForwardedAck {
                origin: id(6, false),
                probe_number: 3,
            },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ];
        for message in messages {
            let h = Header {
                src: id(1, false),
                src_incarnation: 3,
                dst: id(2, true),
                message,
            };
            let mut out = Vec::new();
            WireCodec
                .encode_header(&h, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(out.len() <= MAX_HEADER_LEN);
            let mut slice = &out[..];
            assert_eq!(WireCodec.decode_header(&mut slice).ok(), Some(h.clone()));
            assert!(slice.is_empty());
            // Every truncation is an error, never a panic.
            for cut in 0..out.len() {
                assert!(WireCodec.decode_header(&out[..cut]).is_err(), "cut at {cut}");
            }
        }
        for state in [State::Alive, State::Suspect, State::Down] {
            let m = Member::new(id(9, true), 5, state);
            let mut out = Vec::new();
            WireCodec
                .encode_member(&m, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(WireCodec.decode_member(&out[..]).ok(), Some(m));
            for cut in 0..out.len() {
                assert!(WireCodec.decode_member(&out[..cut]).is_err());
            }
        }
    }

    #[test]
    fn no_room_leaves_the_buffer_clean() {
        let m = Member::new(id(9, true), 5, State::Alive);
        let mut out = Vec::new();
        let limited = (&mut out).limit(10);
        assert_eq!(WireCodec.encode_member(&m, limited), Err(CodecError::NoRoom));
        assert!(out.is_empty());
    }

    #[test]
    fn invalid_values_are_refused() {
        let mut out = Vec::new();
        put_identity(&mut out, &id(1, false));
        out[24] = 2; // flags
        assert_eq!(
            get_identity(&mut &out[..]),
            Err(CodecError::Invalid("identity flags"))
        );
        out[24] = 0;
        out[25] = 5; // address family
        assert_eq!(
            get_identity(&mut &out[..]),
            Err(CodecError::Invalid("address family"))
        );
    }
}
