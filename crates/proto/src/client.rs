//! Client-port messages: what an application (through an SDK) says to its local node.
//!
//! Requests use opcodes 0x01..=0x3F; replies 0x81..=0xBF; ERROR is 0xFF. protocol.md has
//! the byte layout of each; the `# Format` blocks below repeat it next to the code.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, ErrorCode};
use crate::frame::{write_frame, CRC_LEN, HEADER_LEN, LENGTH_PREFIX_LEN};
use crate::limits::Limits;
use crate::message::{Message, OP_ERROR};
use crate::session::{
    decode_attributes, decode_names, encode_attributes, encode_names, Attributes, PackedAttributes,
    SessionMeta,
};
use crate::wire::{put_addr, put_bytes, put_string, Reader};

/// Client request opcodes.
pub mod op {
    /// HELLO request.
    pub const HELLO: u8 = 0x01;
    /// PING request.
    pub const PING: u8 = 0x02;
    /// CREATE request.
    pub const CREATE: u8 = 0x03;
    /// GET request.
    pub const GET: u8 = 0x04;
    /// SET request.
    pub const SET: u8 = 0x05;
    /// TOUCH request.
    pub const TOUCH: u8 = 0x06;
    /// ROTATE request.
    pub const ROTATE: u8 = 0x07;
    /// DESTROY request.
    pub const DESTROY: u8 = 0x08;
    /// STATS request.
    pub const STATS: u8 = 0x09;
    /// MEMBERS request.
    pub const MEMBERS: u8 = 0x0A;
    /// DRAIN request: hand everything over to other members and leave.
    pub const DRAIN: u8 = 0x0B;
    /// HELLO_OK reply.
    pub const HELLO_OK: u8 = 0x81;
    /// PONG reply.
    pub const PONG: u8 = 0x82;
    /// SESSION reply.
    pub const SESSION: u8 = 0x83;
    /// DONE reply.
    pub const DONE: u8 = 0x84;
    /// STATS_REPLY reply.
    pub const STATS_REPLY: u8 = 0x85;
    /// MEMBERS_REPLY reply.
    pub const MEMBERS_REPLY: u8 = 0x86;
}

/// A request from a client to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Opens the conversation: version range, name, optional password.
    ///
    /// # Format
    /// u8 min_version, u8 max_version, client_name (string), password (option of string).
    Hello {
        /// Oldest protocol version the client speaks.
        min_version: u8,
        /// Newest protocol version the client speaks.
        max_version: u8,
        /// Free text for logs and STATS, e.g. "sessync-python/0.1".
        client_name: String,
        /// The node's client password, when it requires one.
        password: Option<String>,
    },
    /// Liveness check; the reply echoes the payload.
    ///
    /// # Format
    /// payload (bytes).
    Ping(Bytes),
    /// Makes a session at this node.
    ///
    /// # Format
    /// u64 idle_ttl_ms (0: the node's default), u64 max_lifetime_ms (0: the node's
    /// default), attributes.
    Create {
        /// Idle time to live; 0 takes the node's default.
        idle_ttl_ms: u64,
        /// Absolute lifetime from creation; 0 takes the node's default (which may be none).
        max_lifetime_ms: u64,
        /// Initial attributes.
        attributes: Attributes,
    },
    /// Reads a session (all attributes, or only the named ones) and refreshes its idle deadline.
    ///
    /// # Format
    /// token (string), names (u16 count + strings; empty means all).
    Get {
        /// The token from the application's cookie.
        token: String,
        /// Attributes to return; empty for all of them.
        names: Vec<String>,
    },
    /// Puts and deletes attributes in one atomic change, optionally compare-and-set.
    ///
    /// # Format
    /// token (string), if_version (option of u64), puts (attributes), deletes (names).
    Set {
        /// The token from the application's cookie.
        token: String,
        /// Apply only if the session is at this version; else VERSION_CONFLICT, no change.
        if_version: Option<u64>,
        /// Attributes to add or replace.
        puts: Attributes,
        /// Attributes to remove (absent names are ignored). A name may not also be in
        /// `puts`: the node answers INVALID_REQUEST (and keeps the connection).
        deletes: Vec<String>,
    },
    /// Refreshes the idle deadline without reading the data.
    ///
    /// # Format
    /// token (string).
    Touch {
        /// The token from the application's cookie.
        token: String,
    },
    /// Gives the session a new id and token, keeping its data; the old token stops working.
    ///
    /// # Format
    /// token (string).
    Rotate {
        /// The token from the application's cookie.
        token: String,
    },
    /// Ends the session wherever it lives.
    ///
    /// # Format
    /// token (string).
    Destroy {
        /// The token from the application's cookie.
        token: String,
    },
    /// Asks for the node's counters.
    ///
    /// # Format
    /// empty.
    Stats,
    /// Asks for the node's view of the cluster's members.
    ///
    /// # Format
    /// empty.
    Members,
    /// Asks the node to leave the cluster gracefully: hand every session it owns and every
    /// backup copy it holds to other members, then exit (protocol.md 17). Answered when
    /// the drain ended: DONE when everything was handed over, ERROR SHUTTING_DOWN saying
    /// what was left otherwise.
    ///
    /// # Format
    /// empty.
    Drain,
}

/// A node's reply to a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// HELLO accepted.
    ///
    /// # Format
    /// u8 version, server_name (string), u32 max_frame_len.
    HelloOk {
        /// The protocol version the rest of the conversation uses.
        version: u8,
        /// Free text, e.g. "sessync/0.1.0".
        server_name: String,
        /// The largest frame length the node accepts.
        max_frame_len: u32,
    },
    /// PING's echo.
    ///
    /// # Format
    /// payload (bytes).
    Pong(Bytes),
    /// A served session: the reply to CREATE, GET, SET, TOUCH and ROTATE.
    Session(SessionReply),
    /// DESTROY done.
    ///
    /// # Format
    /// empty.
    Done,
    /// STATS reply: named counters.
    ///
    /// # Format
    /// u16 count, then per counter: name (string), u64 value.
    Stats(Vec<(String, u64)>),
    /// MEMBERS reply: the node's view of the cluster, itself included.
    ///
    /// # Format
    /// u16 count, then per member: [`MemberInfo`] (43 to 67 bytes).
    Members(Vec<MemberInfo>),
    /// The request failed; see the code.
    Error(ErrorReply),
}

/// A served session.
///
/// # Format
/// token (option of string), meta (40 bytes, see [`SessionMeta`]), attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionReply {
    /// A replacement token: present whenever the client must store a new one (CREATE,
    /// ROTATE, and any request served after the session moved to this node).
    pub token: Option<String>,
    /// Version and deadlines after the request.
    pub meta: SessionMeta,
    /// The attributes: all of them for CREATE, ROTATE and an unfiltered GET, the named
    /// ones for a filtered GET, none for SET and TOUCH.
    pub attributes: Attributes,
}

/// A member's state, as one node sees it (protocol.md, "Membership").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Known, but not yet confirmed by the cluster (a node sees itself so until another
    /// member has heard of it).
    Joining,
    /// Answers probes (directly or through other members); may hold backups.
    Alive,
    /// Announced that it is leaving (draining); still answers, takes no new backups.
    Leaving,
    /// Declared dead by the failure detector, or left.
    Dead,
}

impl MemberState {
    /// The state's byte on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            MemberState::Joining => 0,
            MemberState::Alive => 1,
            MemberState::Leaving => 2,
            MemberState::Dead => 3,
        }
    }

    /// The state of a wire byte, if it names one.
    pub fn from_u8(b: u8) -> Option<MemberState> {
        Some(match b {
            0 => MemberState::Joining,
            1 => MemberState::Alive,
            2 => MemberState::Leaving,
            3 => MemberState::Dead,
            _ => return None,
        })
    }

    /// The lower-case name (`joining`, `alive`, `leaving`, `dead`).
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Alive => "alive",
            MemberState::Leaving => "leaving",
            MemberState::Dead => "dead",
        }
    }
}

/// One member of the cluster.
///
/// # Format
/// [16] node_id, u64 incarnation, u8 state (0 joining, 1 alive, 2 leaving, 3 dead),
/// address peer, address client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member process's node id (random per process start).
    pub node_id: [u8; 16],
    /// Grows with every restart and every change the member announces (its start time in
    /// Unix milliseconds, plus one per change).
    pub incarnation: u64,
    /// The member's state.
    pub state: MemberState,
    /// Its advertised peer address.
    pub peer: std::net::SocketAddr,
    /// Its client address (where applications connect).
    pub client: std::net::SocketAddr,
}

impl MemberInfo {
    /// The smallest encoding (both addresses IPv4).
    const MIN_LEN: usize = 16 + 8 + 1 + 7 + 7;

    fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.node_id);
        out.put_u64(self.incarnation);
        out.put_u8(self.state.as_u8());
        put_addr(out, &self.peer);
        put_addr(out, &self.client);
    }

    fn decode(r: &mut Reader<'_>) -> Result<MemberInfo, DecodeError> {
        let node_id = r.array::<16>()?;
        let incarnation = r.u64()?;
        let b = r.u8()?;
        let state = MemberState::from_u8(b)
            .ok_or_else(|| DecodeError::Invalid(format!("member state {b}, expected 0 to 3")))?;
        Ok(MemberInfo {
            node_id,
            incarnation,
            state,
            peer: r.addr()?,
            client: r.addr()?,
        })
    }
}

/// An error reply, on either port.
///
/// # Format
/// u16 code, message (string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorReply {
    /// An error reply with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u16(self.code.as_u16());
        put_string(out, &self.message);
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<ErrorReply, DecodeError> {
        let code = ErrorCode::from_u16(r.u16()?);
        let message = r.string("error message", limits.max_text_len)?;
        Ok(ErrorReply { code, message })
    }
}

/// # Format
/// u8 presence (0 or 1), then the value when 1.
fn put_opt_string(out: &mut impl BufMut, s: &Option<String>) {
    match s {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_string(out, s);
        }
    }
}

fn opt_string(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Option<String>, DecodeError> {
    Ok(if r.bool()? {
        Some(r.string(what, max)?)
    } else {
        None
    })
}

impl Message for Request {
    fn opcode(&self) -> u8 {
        match self {
            Request::Hello { .. } => op::HELLO,
            Request::Ping(_) => op::PING,
            Request::Create { .. } => op::CREATE,
            Request::Get { .. } => op::GET,
            Request::Set { .. } => op::SET,
            Request::Touch { .. } => op::TOUCH,
            Request::Rotate { .. } => op::ROTATE,
            Request::Destroy { .. } => op::DESTROY,
            Request::Stats => op::STATS,
            Request::Members => op::MEMBERS,
            Request::Drain => op::DRAIN,
        }
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Request::Hello {
                min_version,
                max_version,
                client_name,
                password,
            } => {
                out.put_u8(*min_version);
                out.put_u8(*max_version);
                put_string(out, client_name);
                put_opt_string(out, password);
            }
            Request::Ping(payload) => put_bytes(out, payload),
            Request::Create {
                idle_ttl_ms,
                max_lifetime_ms,
                attributes,
            } => {
                out.put_u64(*idle_ttl_ms);
                out.put_u64(*max_lifetime_ms);
                encode_attributes(out, attributes);
            }
            Request::Get { token, names } => {
                put_string(out, token);
                encode_names(out, names);
            }
            Request::Set {
                token,
                if_version,
                puts,
                deletes,
            } => {
                put_string(out, token);
                match if_version {
                    None => out.put_u8(0),
                    Some(v) => {
                        out.put_u8(1);
                        out.put_u64(*v);
                    }
                }
                encode_attributes(out, puts);
                encode_names(out, deletes);
            }
            Request::Touch { token } | Request::Rotate { token } | Request::Destroy { token } => {
                put_string(out, token)
            }
            Request::Stats | Request::Members | Request::Drain => {}
        }
    }

    fn decode_body(opcode: u8, body: &Bytes, limits: &Limits) -> Result<Request, DecodeError> {
        let mut r = Reader::from_bytes(body);
        let token = |r: &mut Reader<'_>| r.string("token", limits.max_token_len);
        let req = match opcode {
            op::HELLO => Request::Hello {
                min_version: r.u8()?,
                max_version: r.u8()?,
                client_name: r.string("client name", limits.max_text_len)?,
                password: opt_string(&mut r, "password", limits.max_text_len)?,
            },
            op::PING => Request::Ping(r.bytes("ping payload", limits.max_value_len)?),
            op::CREATE => Request::Create {
                idle_ttl_ms: r.u64()?,
                max_lifetime_ms: r.u64()?,
                attributes: decode_attributes(&mut r, limits)?,
            },
            op::GET => Request::Get {
                token: token(&mut r)?,
                names: decode_names(&mut r, limits)?,
            },
            op::SET => {
                let token = token(&mut r)?;
                let if_version = if r.bool()? { Some(r.u64()?) } else { None };
                let puts = decode_attributes(&mut r, limits)?;
                let deletes = decode_names(&mut r, limits)?;
                Request::Set {
                    token,
                    if_version,
                    puts,
                    deletes,
                }
            }
            op::TOUCH => Request::Touch {
                token: token(&mut r)?,
            },
            op::ROTATE => Request::Rotate {
                token: token(&mut r)?,
            },
            op::DESTROY => Request::Destroy {
                token: token(&mut r)?,
            },
            op::STATS => Request::Stats,
            op::MEMBERS => Request::Members,
            op::DRAIN => Request::Drain,
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Message for Response {
    fn opcode(&self) -> u8 {
        match self {
            Response::HelloOk { .. } => op::HELLO_OK,
            Response::Pong(_) => op::PONG,
            Response::Session(_) => op::SESSION,
            Response::Done => op::DONE,
            Response::Stats(_) => op::STATS_REPLY,
            Response::Members(_) => op::MEMBERS_REPLY,
            Response::Error(_) => OP_ERROR,
        }
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Response::HelloOk {
                version,
                server_name,
                max_frame_len,
            } => {
                out.put_u8(*version);
                put_string(out, server_name);
                out.put_u32(*max_frame_len);
            }
            Response::Pong(payload) => put_bytes(out, payload),
            Response::Session(s) => {
                put_opt_string(out, &s.token);
                s.meta.encode(out);
                encode_attributes(out, &s.attributes);
            }
            Response::Done => {}
            Response::Stats(counters) => {
                out.put_u16(counters.len().min(usize::from(u16::MAX)) as u16);
                for (name, value) in counters.iter().take(usize::from(u16::MAX)) {
                    put_string(out, name);
                    out.put_u64(*value);
                }
            }
            Response::Members(members) => {
                out.put_u16(members.len().min(usize::from(u16::MAX)) as u16);
                for m in members.iter().take(usize::from(u16::MAX)) {
                    m.encode(out);
                }
            }
            Response::Error(e) => e.encode(out),
        }
    }

    fn decode_body(opcode: u8, body: &Bytes, limits: &Limits) -> Result<Response, DecodeError> {
        let mut r = Reader::from_bytes(body);
        let resp = match opcode {
            op::HELLO_OK => Response::HelloOk {
                version: r.u8()?,
                server_name: r.string("server name", limits.max_text_len)?,
                max_frame_len: r.u32()?,
            },
            op::PONG => Response::Pong(r.bytes("ping payload", limits.max_value_len)?),
            op::SESSION => Response::Session(SessionReply {
                token: opt_string(&mut r, "token", limits.max_token_len)?,
                meta: SessionMeta::decode(&mut r)?,
                attributes: decode_attributes(&mut r, limits)?,
            }),
            op::DONE => Response::Done,
            op::STATS_REPLY => {
                // Each counter takes at least 2 + 8 bytes.
                let n = r.count("stats count", usize::from(u16::MAX), 10)?;
                let mut counters = Vec::with_capacity(n);
                for _ in 0..n {
                    counters.push((r.string("stat name", limits.max_text_len)?, r.u64()?));
                }
                Response::Stats(counters)
            }
            op::MEMBERS_REPLY => {
                let n = r.count("member count", usize::from(u16::MAX), MemberInfo::MIN_LEN)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberInfo::decode(&mut r)?);
                }
                Response::Members(members)
            }
            OP_ERROR => Response::Error(ErrorReply::decode(&mut r, limits)?),
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// Appends a SESSION reply frame built from attributes a node keeps packed, without
/// unpacking them. The bytes are exactly those of `Response::Session` with the same fields.
pub fn encode_session_reply(
    out: &mut BytesMut,
    request_id: u64,
    token: Option<&str>,
    meta: &SessionMeta,
    attributes: &PackedAttributes,
) {
    write_frame(out, op::SESSION, request_id, |b| {
        match token {
            None => b.put_u8(0),
            Some(t) => {
                b.put_u8(1);
                put_string(b, t);
            }
        }
        meta.encode(b);
        b.put_slice(attributes.as_bytes());
    });
}

/// Appends a SESSION reply frame without a token whose attributes `attributes` writes
/// straight into the frame, in their wire form (the u16 count, then each attribute as
/// `Response::Session` encodes it): a node writes them from its own storage with no
/// intermediate copy. Returns where the frame starts, for [`set_session_reply_token`].
/// The bytes are exactly those of `Response::Session` with the same fields.
pub fn encode_session_reply_with(
    out: &mut BytesMut,
    request_id: u64,
    meta: &SessionMeta,
    attributes: impl FnOnce(&mut BytesMut),
) -> usize {
    let start = out.len();
    write_frame(out, op::SESSION, request_id, |b| {
        b.put_u8(0);
        meta.encode(b);
        attributes(b);
    });
    start
}

/// Gives the SESSION reply frame at `start`, the last frame in `out`, written by
/// [`encode_session_reply_with`] (so without a token), the token `token`: it is inserted
/// after the token flag, and the length and CRC are written again. For the rarer reply
/// whose token is only known after its attributes were written.
pub fn set_session_reply_token(out: &mut BytesMut, start: usize, token: &str) {
    let flag = start + LENGTH_PREFIX_LEN + HEADER_LEN;
    if out.len() < flag + 1 + CRC_LEN {
        return;
    }
    out.truncate(out.len() - CRC_LEN);
    let end = out.len();
    put_string(out, token);
    let inserted = out.len() - end;
    out[flag + 1..].rotate_right(inserted);
    out[flag] = 1;
    let crc = crc32fast::hash(&out[start + LENGTH_PREFIX_LEN..]);
    out.put_u32(crc);
    let len = (out.len() - start - LENGTH_PREFIX_LEN) as u32;
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
}
