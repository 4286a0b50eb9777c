//! One load connection: it writes pipelined requests and matches the replies to them
//! (sessync by request id, RESP and echo in order), recording each request's latency.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{new_hist, IO_TIMEOUT};
use crate::wire::{self, Outcome};

/// Takes one reply off the buffer: the request id it names (sessync), or `None` for a
/// protocol whose replies come in the order of the requests (RESP, echo).
pub(super) type Parse = fn(&mut BytesMut) -> anyhow::Result<Option<(Option<u64>, Outcome)>>;

pub(super) fn sessync_by_id(buf: &mut BytesMut) -> anyhow::Result<Option<(Option<u64>, Outcome)>> {
    Ok(wire::sessync_reply_with_id(buf)?.map(|(id, o)| (Some(id), o)))
}

pub(super) fn resp_in_order(buf: &mut BytesMut) -> anyhow::Result<Option<(Option<u64>, Outcome)>> {
    Ok(wire::resp_reply(buf)?.map(|o| (None, o)))
}

pub(super) fn echo_in_order(buf: &mut BytesMut) -> anyhow::Result<Option<(Option<u64>, Outcome)>> {
    Ok(wire::echo_reply(buf)?.map(|o| (None, o)))
}

/// A request written and not yet answered.
pub(super) struct Pending {
    /// The session slot it is for (`NO_SLOT` for creates).
    pub(super) slot: usize,
    /// Replies that make up its answer (Redis hash requests are two commands).
    pub(super) replies: u8,
    /// Its request id (sessync; 0 for the others).
    pub(super) rid: u64,
    /// Answered (replies matched by id arrive in any order).
    pub(super) done: bool,
}

pub(super) const NO_SLOT: usize = usize::MAX;

pub(super) struct Conn {
    pub(super) stream: crate::tls::Stream,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    pub(super) pending: Vec<Pending>,
    pub(super) results: Vec<(usize, Outcome)>,
    pub(super) hist: Histogram<u64>,
    pub(super) bytes_out: u64,
    pub(super) bytes_in: u64,
}

impl Conn {
    pub(super) async fn open(addr: SocketAddr, sessync: bool) -> anyhow::Result<Conn> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream = crate::tls::wrap(stream, addr, sessync).await?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            pending: Vec::new(),
            results: Vec::new(),
            hist: new_hist(),
            bytes_out: 0,
            bytes_in: 0,
        })
    }

    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            tokio::time::timeout(IO_TIMEOUT, async {
                self.stream.write_all(&self.wbuf).await?;
                self.stream.flush().await
            })
            .await
            .context("write timed out")??;
            self.bytes_out += self.wbuf.len() as u64;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads the replies to every pending request, recording each one's latency since
    /// `start` when `record` is set. sessync replies are matched to their requests by
    /// request id: a node answers a request that needs another node (a move, a replicated
    /// write) when it is ready, after the requests it could answer at once. Matching them
    /// by position would give one session's token to another session's slot. RESP and
    /// echo replies come in order.
    pub(super) async fn read_replies(
        &mut self,
        parse: Parse,
        start: Instant,
        record: bool,
    ) -> anyhow::Result<()> {
        let mut next = 0;
        let mut answered = 0;
        let mut got = 0u8;
        let mut outcome = Outcome::Ok(None);
        while answered < self.pending.len() {
            let k = match parse(&mut self.rbuf)? {
                Some((Some(id), o)) => {
                    let k = self
                        .pending
                        .iter()
                        .position(|p| p.rid == id && !p.done)
                        .with_context(|| format!("a reply to request {id}, which is not awaited"))?;
                    outcome = o;
                    k
                }
                Some((None, o)) => {
                    anyhow::ensure!(next < self.pending.len(), "a reply to no request");
                    got += 1;
                    // Keep the first error, or a token, across the commands of one request.
                    if matches!(outcome, Outcome::Ok(None)) {
                        outcome = o;
                    }
                    if got < self.pending[next].replies {
                        continue;
                    }
                    got = 0;
                    next += 1;
                    next - 1
                }
                None => {
                    let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.rbuf))
                        .await
                        .context("no reply within the I/O timeout")??;
                    if n == 0 {
                        bail!("the server closed the connection");
                    }
                    self.bytes_in += n as u64;
                    continue;
                }
            };
            if record {
                let ns = start.elapsed().as_nanos().max(1) as u64;
                self.hist.saturating_record(ns);
            }
            let o = std::mem::replace(&mut outcome, Outcome::Ok(None));
            self.pending[k].done = true;
            self.results.push((self.pending[k].slot, o));
            answered += 1;
        }
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use bytes::BufMut;
    use sessync_proto::{client_op, write_frame};
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A SESSION reply frame for `rid` carrying `token` as its replacement token.
    fn session_reply(out: &mut BytesMut, rid: u64, token: &str) {
        write_frame(out, client_op::SESSION, rid, |b| {
            b.put_u8(1);
            b.put_u16(token.len() as u16);
            b.put_slice(token.as_bytes());
        });
    }

    fn pending(slot: usize, rid: u64) -> Pending {
        Pending {
            slot,
            replies: 1,
            rid,
            done: false,
        }
    }

    /// A node answers a deferred request after later ones: each token must land in the
    /// slot of the request it answers, not in the slot at the same position.
    #[tokio::test]
    async fn sessync_replies_are_matched_by_request_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut out = BytesMut::new();
            session_reply(&mut out, 12, "token-c");
            session_reply(&mut out, 10, "token-a");
            session_reply(&mut out, 11, "token-b");
            s.write_all(&out).await.unwrap();
            s
        });
        let mut conn = Conn::open(addr, true).await.unwrap();
        conn.pending = vec![pending(0, 10), pending(1, 11), pending(2, 12)];
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, conn.read_replies(sessync_by_id, Instant::now(), true))
            .await
            .unwrap()
            .unwrap();
        let mut got = conn.results.clone();
        got.sort_by_key(|(slot, _)| *slot);
        let want: Vec<(usize, Outcome)> = ["token-a", "token-b", "token-c"]
            .iter()
            .enumerate()
            .map(|(slot, t)| (slot, Outcome::Ok(Some(t.to_string()))))
            .collect();
        assert_eq!(got, want);
        assert_eq!(conn.hist.len(), 3);
        // A reply naming a request that is not awaited is an error, not a silent mismatch.
        let mut out = BytesMut::new();
        session_reply(&mut out, 99, "token-x");
        let mut s = server.await.unwrap();
        s.write_all(&out).await.unwrap();
        conn.results.clear();
        conn.pending = vec![pending(0, 13)];
        let r = tokio::time::timeout(wait, conn.read_replies(sessync_by_id, Instant::now(), false))
            .await
            .unwrap();
        assert!(r.is_err(), "{r:?}");
    }
}
