//! `sessync-bench delay-proxy`: a TCP proxy that gives a link a real round trip.
//!
//! This machine's kernel has no netem, so `benches/netns.sh` puts one of these in front of
//! every link that crosses the network (the nodes' peer links, the application's link to
//! Redis). Every byte read on one side is written to the other side `--delay` after it
//! arrived, in each direction independently, in order, and without limiting throughput:
//! the reading side keeps reading while earlier bytes wait out their delay (a bounded
//! queue of chunks, far larger than any bandwidth-delay product here).
//!
//! Each direction of each connection has a reading thread and a writing thread joined by a
//! queue; the writer sleeps until a chunk is due (`thread::sleep`, the OS's high-resolution
//! timer) and writes it together with everything else already due. Plain threads rather
//! than tokio: tokio's timer wheel ticks in whole milliseconds, too coarse for 0.5 ms, and a
//! timer thread handing wake-ups to tasks (the first version) serialised every chunk of
//! every connection through two thread hand-offs, which capped a pipelined Redis run at a
//! tenth of what it reached directly. A handful of connections cross each proxy in
//! `benches/netns.sh` (at most one per client connection to Redis), so four threads per
//! connection are cheap.
//!
//! The delay is a lower bound: the sleeping writer wakes up to the kernel's timer slack
//! (50 µs) plus scheduling later, ~0.1 ms per direction on the 2-core machine of
//! BENCHMARKS.md (0.5 ms each way measured as a 1.24 ms round trip, p50).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Flags of `sessync-bench delay-proxy`.
#[derive(clap::Args, Debug)]
pub(crate) struct DelayArgs {
    /// Where to listen (port 0: the OS chooses; the address is printed as
    /// `ready listen=ADDR`).
    #[arg(long)]
    listen: SocketAddr,
    /// Where every accepted connection is forwarded.
    #[arg(long)]
    to: SocketAddr,
    /// Delay added to each direction, e.g. `0.5ms`, `500us`, `2ms` (a round trip through
    /// the proxy gains twice this).
    #[arg(long, default_value = "0.5ms", value_parser = parse_delay)]
    delay: Duration,
}

/// Parses a duration with a fractional number: `0.5ms`, `500us`, `500µs`, `1.5s`, `200ns`.
pub(crate) fn parse_delay(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?}: a unit is needed (ns, us, ms, s)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: not a number"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (ns, us, ms, s)")),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=60.0).contains(&secs) {
        return Err(format!("{s:?}: must be between 0 and 60 s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the proxy until the process is stopped.
pub(crate) fn run(args: DelayArgs) -> anyhow::Result<()> {
    let proxy = DelayProxy::bind(args.listen, args.to, args.delay)?;
    println!("ready listen={}", proxy.addr);
    proxy.serve()
}

/// A listening delay proxy.
pub(crate) struct DelayProxy {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    listener: TcpListener,
    to: SocketAddr,
    delay: Duration,
}

impl DelayProxy {
    /// Binds the listening socket.
    pub(crate) fn bind(listen: SocketAddr, to: SocketAddr, delay: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        Ok(DelayProxy {
            addr: listener.local_addr()?,
            listener,
            to,
            delay,
        })
    }

    /// Accepts connections and forwards each one, until accepting fails.
    pub(crate) fn serve(self) -> anyhow::Result<()> {
        loop {
            let (inbound, _) = self.listener.accept().context("accepting")?;
            let (to, delay) = (self.to, self.delay);
            let spawned = std::thread::Builder::new()
                .name("delay-conn".into())
                .spawn(move || {
                    if let Err(e) = forward(inbound, to, delay) {
                        eprintln!("delay-proxy: connection to {to}: {e:#}");
                    }
                });
            if let Err(e) = spawned {
                eprintln!("delay-proxy: no thread for a connection: {e}");
            }
        }
    }
}

/// How long connecting to the far side may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks read but not yet written, per direction (each at most `CHUNK` bytes).
const QUEUE: usize = 4096;
const CHUNK: usize = 64 * 1024;

/// A chunk of one direction and when it is due; `None` is the end of the stream.
type Due = (Instant, Option<Vec<u8>>);

fn forward(inbound: TcpStream, to: SocketAddr, delay: Duration) -> anyhow::Result<()> {
    let outbound = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).context("connect")?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let there = pipe(inbound.try_clone()?, outbound.try_clone()?, delay)?;
    let back = pipe(outbound, inbound, delay)?;
    let mut result = Ok(());
    for (name, handles) in [("to the far side", there), ("back", back)] {
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e.context(name))),
                Err(_) => result = result.and(Err(anyhow::anyhow!("{name}: a thread panicked"))),
            }
        }
    }
    result
}

type Handles = [std::thread::JoinHandle<anyhow::Result<()>>; 2];

/// Copies one direction on two threads: `from`'s bytes reach `to` `delay` after they were
/// read, in order. At end of stream (or a read error) the write side is shut down after
/// the delay (the half-close is passed on).
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) -> anyhow::Result<Handles> {
    let (tx, rx) = mpsc::sync_channel::<Due>(QUEUE);
    let reader =
        std::thread::Builder::new()
            .name("delay-read".into())
            .spawn(move || -> anyhow::Result<()> {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = from.read(&mut buf);
                    let due = Instant::now() + delay;
                    match n {
                        Ok(0) | Err(_) => {
                            let _ = tx.send((due, None));
                            return n.map(|_| ()).map_err(anyhow::Error::from);
                        }
                        Ok(n) => {
                            if tx.send((due, Some(buf[..n].to_vec()))).is_err() {
                                // The writer failed; the far side is gone. Stop reading too.
                                let _ = from.shutdown(Shutdown::Read);
                                return Ok(());
                            }
                        }
                    }
                }
            })?;
    let writer =
        std::thread::Builder::new()
            .name("delay-write".into())
            .spawn(move || -> anyhow::Result<()> {
                let mut held: Option<Due> = None;
                let mut out: Vec<u8> = Vec::new();
                loop {
                    let (due, first) = match held.take() {
                        Some(x) => x,
                        None => match rx.recv() {
                            Ok(x) => x,
                            Err(_) => return Ok(()),
                        },
                    };
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let Some(first) = first else {
                        let _ = to.shutdown(Shutdown::Write);
                        return Ok(());
                    };
                    // Everything else already due goes out in the same write.
                    let mut eof = false;
                    let now = Instant::now();
                    out.clear();
                    while let Ok((due, more)) = rx.try_recv() {
                        match more {
                            Some(more) if due <= now => {
                                if out.is_empty() {
                                    out.extend_from_slice(&first);
                                }
                                out.extend_from_slice(&more);
                            }
                            None if due <= now => {
                                eof = true;
                                break;
                            }
                            _ => {
                                held = Some((due, more));
                                break;
                            }
                        }
                    }
                    let sent = if out.is_empty() {
                        to.write_all(&first)
                    } else {
                        to.write_all(&out)
                    };
                    if let Err(e) = sent {
                        // Unblock the reader of the other end's peer: nothing more gets through.
                        let _ = to.shutdown(Shutdown::Both);
                        return Err(e.into());
                    }
                    if eof {
                        let _ = to.shutdown(Shutdown::Write);
                        return Ok(());
                    }
                }
            })?;
    Ok([reader, writer])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rand::{Rng, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const WAIT: Duration = Duration::from_secs(20);

    fn proxy_to(to: SocketAddr, delay: Duration) -> SocketAddr {
        let p = DelayProxy::bind("127.0.0.1:0".parse().unwrap(), to, delay).unwrap();
        let addr = p.addr;
        std::thread::spawn(move || p.serve());
        addr
    }

    #[test]
    fn parses_delays() {
        assert_eq!(parse_delay("0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_delay("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_delay("500µs").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_delay("2ms").unwrap(), Duration::from_millis(2));
        assert_eq!(parse_delay("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_delay("0ms").unwrap(), Duration::ZERO);
        for bad in ["", "5", "ms", "1.2.3ms", "5 parsecs", "-1ms", "100s", "1e9s"] {
            assert!(parse_delay(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Each direction is delayed by at least the delay: the far side receives the client's
    /// bytes no sooner than `delay` after they were sent, and the client receives the far
    /// side's answer no sooner than `delay` after it was sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delays_each_direction() {
        let delay = Duration::from_millis(30);
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut times = Vec::new();
            for i in 0..5u8 {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                let got = Instant::now();
                assert_eq!(b[0], i);
                let sent = Instant::now();
                s.write_all(&[i + 100]).await.unwrap();
                times.push((got, sent));
            }
            times
        });
        let addr = proxy_to(up_addr, delay);
        let mut c = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        c.set_nodelay(true).unwrap();
        let mut client = Vec::new();
        for i in 0..5u8 {
            let sent = Instant::now();
            c.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            tokio::time::timeout(WAIT, c.read_exact(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(b[0], i + 100);
            client.push((sent, Instant::now()));
        }
        let server = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
        for ((c_sent, c_got), (s_got, s_sent)) in client.into_iter().zip(server) {
            let there = s_got - c_sent;
            let back = c_got - s_sent;
            assert!(there >= delay, "client -> server took {there:?} < {delay:?}");
            assert!(back >= delay, "server -> client took {back:?} < {delay:?}");
            eprintln!("delay {delay:?}: there {there:?}, back {back:?}");
        }
    }

    /// Bytes arrive intact and in order in both directions, whatever the write pattern
    /// (seeded random sizes), and end of stream is passed on in each direction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_order_both_ways_and_passes_eof() {
        const TOTAL: usize = 2 * 1024 * 1024;
        let pattern: Vec<u8> = {
            let mut rng = rand::rngs::StdRng::seed_from_u64(15);
            (0..TOTAL).map(|_| rng.gen()).collect()
        };
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        // The far side: echoes everything it reads, then closes its side at end of stream.
        let echo = tokio::spawn(async move {
            let (s, _) = upstream.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 7919];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                w.write_all(&buf[..n]).await.unwrap();
            }
            w.shutdown().await.unwrap();
            seen
        });
        let addr = proxy_to(up_addr, Duration::from_millis(1));
        let c = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let (mut r, mut w) = c.into_split();
        let send = pattern.clone();
        let writer = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(16);
            let mut at = 0;
            while at < send.len() {
                let n = rng.gen_range(1..20_000).min(send.len() - at);
                w.write_all(&send[at..at + n]).await.unwrap();
                at += n;
                if rng.gen_ratio(1, 50) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        tokio::time::timeout(WAIT, r.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
        let seen = tokio::time::timeout(WAIT, echo).await.unwrap().unwrap();
        assert!(
            seen == pattern,
            "the far side got other bytes ({} of {TOTAL})",
            seen.len()
        );
        assert!(
            back == pattern,
            "the client got other bytes back ({} of {TOTAL})",
            back.len()
        );
    }

    /// The delay is a latency, not a rate limit: 100 messages sent 1 ms apart through a
    /// 100 ms proxy all arrive within a few delays, not one delay after another (which
    /// would take 10 s). The bound is loose on purpose; the property is the overlap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_does_not_serialize() {
        let delay = Duration::from_millis(100);
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            all
        });
        let addr = proxy_to(up_addr, delay);
        let mut c = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        c.set_nodelay(true).unwrap();
        let start = Instant::now();
        for i in 0..100u8 {
            c.write_all(&[i]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.shutdown().await.unwrap();
        let all = tokio::time::timeout(WAIT, sink).await.unwrap().unwrap();
        let took = start.elapsed();
        assert_eq!(all, (0..100u8).collect::<Vec<_>>());
        assert!(took >= delay, "{took:?}");
        assert!(
            took < delay * 30,
            "100 messages took {took:?}: the delays did not overlap"
        );
    }
}
