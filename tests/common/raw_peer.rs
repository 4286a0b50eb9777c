//! A raw peer or client connection for tests that speak the wire protocol byte by byte
//! (tests/protocol_rules.rs, tests/peer_endings.rs): frames out, frames in, every wait
//! bounded by [`super::WAIT`].

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use sessync_proto::{
    decode_frame, peer_op, write_frame, Dialler, ErrorCode, Frame, Limits, Message, PeerMessage, Response,
    SessionId, OP_ERROR,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{keys, WAIT};

/// One raw connection: frames out, frames in, every wait bounded.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// The longest frame this side accepts (115 to read like a dialler in the handshake).
    pub max: u32,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            max: 1 << 24,
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send<M: Message>(&mut self, request_id: u64, msg: &M) {
        let mut out = BytesMut::new();
        msg.encode_frame(request_id, &mut out);
        self.send_bytes(&out).await;
    }

    /// The next frame, or `None` once the node closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match decode_frame(&mut self.buf, self.max) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("the node sent an invalid frame (limit {}): {e}", self.max),
            }
            match timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no frame and no close in time")
            {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next client-port reply, which must answer `request_id`.
    pub async fn reply(&mut self, request_id: u64) -> Response {
        let f = self.next().await.expect("the node closed the connection");
        assert_eq!(f.request_id, request_id, "a reply to another request");
        Response::decode_frame(&f, &Limits::DEFAULT).unwrap()
    }

    /// Exactly one ERROR frame, then the close: its (request id, code).
    pub async fn error_then_close(&mut self, what: &str) -> (u64, ErrorCode) {
        let f = self
            .next()
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an ERROR"));
        assert_eq!(f.opcode, OP_ERROR, "{what}: opcode {:#04x}", f.opcode);
        let code = match PeerMessage::decode_frame(&f, &Limits::DEFAULT).unwrap() {
            PeerMessage::Error(e) => e.code,
            other => panic!("{what}: {other:?}"),
        };
        assert!(self.next().await.is_none(), "{what}: more frames after the ERROR");
        (f.request_id, code)
    }
}

/// One frame with any opcode and body, as bytes.
pub fn raw_frame(opcode: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_frame(&mut out, opcode, request_id, |b| b.put_slice(body));
    out.to_vec()
}

/// Completes the handshake as a dialler with the cluster secret.
pub async fn authenticated(peer: SocketAddr) -> Raw {
    authenticated_as(peer, "127.0.0.1:9".parse().unwrap(), SessionId::random().0).await
}

/// [`authenticated`], as the node `node_id` advertising `me` (a fake peer listening there
/// answers what the node then asks that address).
pub async fn authenticated_as(peer: SocketAddr, me: SocketAddr, node_id: [u8; 16]) -> Raw {
    let mut raw = Raw::connect(peer).await;
    let (dialler, hello) = Dialler::start(keys(), node_id, me);
    raw.send(1, &hello).await;
    let f = raw.next().await.unwrap();
    let challenge = PeerMessage::decode_frame(&f, &Limits::DEFAULT).unwrap();
    let (_, proof) = dialler.handle_challenge(challenge).unwrap();
    raw.send(2, &proof).await;
    let f = raw.next().await.unwrap();
    assert_eq!(f.opcode, peer_op::AUTH_OK);
    raw
}

/// Sends one peer request and returns its decoded reply.
pub async fn ask(raw: &mut Raw, msg: PeerMessage) -> PeerMessage {
    raw.send(77, &msg).await;
    let f = raw.next().await.unwrap();
    assert_eq!(f.request_id, 77);
    PeerMessage::decode_frame(&f, &Limits::DEFAULT).unwrap()
}
