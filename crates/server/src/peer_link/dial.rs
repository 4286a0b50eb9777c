//! Dialling a link: TCP (and TLS), the secret handshake (protocol.md 9.2) and the
//! feature question (9.3).

use super::*;

/// How long a dialler waits for FEATURES_ARE before it uses the link without features.
const FEATURES_WAIT: Duration = Duration::from_millis(500);

/// Why a dial did not give a link.
enum DialError {
    /// Connecting or the handshake failed; why.
    Failed(String),
    /// The peer answered FEATURES as a node that predates it, and closes the connection:
    /// dialled again, without asking.
    PredatesFeatures,
}

impl From<String> for DialError {
    fn from(why: String) -> DialError {
        DialError::Failed(why)
    }
}

impl Peers {
    /// Dials, authenticates and asks FEATURES; dials once more, without asking, a node
    /// that predates FEATURES (protocol.md 9.3).
    pub(super) async fn dial(&self, link: &Link) -> Result<Conn, String> {
        let dialled = match self.dial_once(link).await {
            Err(DialError::PredatesFeatures) => self.dial_once(link).await,
            first => first,
        };
        dialled.map_err(|e| match e {
            DialError::Failed(why) => why,
            DialError::PredatesFeatures => "the peer refused FEATURES twice".into(),
        })
    }

    async fn dial_once(&self, link: &Link) -> Result<Conn, DialError> {
        let addr = link.addr;
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                self.processes.gone(addr);
            }
            format!("connect: {e}")
        })?;
        let _ = tcp.set_nodelay(true);
        let stream = match self.tls.get() {
            None => Stream::Plain(tcp),
            Some(tls) => {
                // The configuration in use now: a link dialled after a reload uses the new
                // certificate, links already up keep theirs. The peer must prove the
                // dialled IP address (a subjectAltName) under the cluster CA.
                let Some(config) = tls.current().client.clone() else {
                    return Err(DialError::Failed("peer TLS has no client configuration".into()));
                };
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                Stream::Client(Box::new(tls))
            }
        };
        // Replies come in bursts (a peer answers a batch of requests in one write): a
        // 64 KiB read buffer takes a burst of COPY_DATAs in a few reads, where tokio-util's
        // default of 8 KiB took one read per six or so.
        let mut framed = Framed::with_capacity(
            stream,
            FrameCodec::new(self.config.limits.max_frame_len),
            LINK_READ_BUFFER,
        );
        let cfg = &self.config;
        let (dialler, hello) = Dialler::start(cfg.keys.clone(), cfg.node_id, cfg.advertise);
        // Request ids 1 and 2, as in protocol.md's example: 0 means "about the connection"
        // (2.4), and an acceptor's AUTH_FAILED echoes the id it answers.
        // Over TLS the proofs are bound to this TLS session (see peer_port).
        let dialler = match crate::tls::binding(framed.get_ref()).map_err(|e| format!("TLS: {e}"))? {
            Some(b) => dialler.with_binding(b),
            None => dialler,
        };
        framed
            .send((1, hello))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let challenge = self.read_handshake(&mut framed).await?;
        let (peer, proof) = match dialler.handle_challenge(challenge) {
            Ok(x) => x,
            Err(e) => {
                let why = match e {
                    HandshakeError::BadProof | HandshakeError::UnknownKey(_) => {
                        self.refused(addr, &format!("{e}"));
                        // Tell the acceptor too, so that it counts and logs the refusal.
                        let err = ErrorReply::new(ErrorCode::AuthFailed, SECRET_HINT);
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            framed.send((0, PeerMessage::Error(err))),
                        )
                        .await;
                        format!("handshake refused: {e}; {SECRET_HINT}")
                    }
                    e => format!("handshake: {e}"),
                };
                return Err(why.into());
            }
        };
        framed
            .send((2, proof))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        match self.read_handshake(&mut framed).await? {
            PeerMessage::AuthOk => {}
            other => return Err(format!("handshake: expected AUTH_OK, got {other:?}").into()),
        }
        let features = self.features(link, &mut framed, peer.node_id).await?;
        link.was_up.store(true, Ordering::Relaxed);
        // Every reply on this connection comes from that process.
        self.processes.seen(addr, peer.node_id);
        tracing::info!(peer = %addr, advertised = %peer.advertised, "peer link up");
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let conn = Arc::new(ConnShared {
            tx,
            pending: Mutex::new(Pending::default()),
            alive: AtomicBool::new(true),
            ended: AtomicBool::new(false),
            // Past the ids of the handshake and FEATURES (1 to 3): a late FEATURES_ARE
            // ([`FEATURES_WAIT`]) then answers no request of the link's.
            next_id: AtomicU64::new(4),
            sweep: Notify::new(),
            features,
        });
        // Ends with the link (run_link wakes it when it ends).
        tokio::spawn(sweep_deadlines(conn.clone()));
        // Not tracked by the shutdown tracker: `Peers::close` cancels `shutdown` at node
        // shutdown, which ends every link task.
        tokio::spawn(run_link(
            addr,
            framed,
            rx,
            conn.clone(),
            self.orphans.clone(),
            self.shutdown.clone(),
            self.config.limits.clone(),
        ));
        Ok(conn)
    }

    /// Asks the acceptor of a new link which features it has (FEATURES, request id 3),
    /// unless its process is known to predate them; the bits both ends have.
    async fn features(
        &self,
        link: &Link,
        framed: &mut Framed<Stream, FrameCodec>,
        peer: [u8; 16],
    ) -> Result<u64, DialError> {
        if *lock(&link.predates_features) == Some(peer) {
            return Ok(0);
        }
        let ours = sessync_proto::peer_feature::ALL;
        framed
            .send((3, PeerMessage::Features(ours)))
            .await
            .map_err(|e| format!("FEATURES: {e}"))?;
        let Ok(answer) = tokio::time::timeout(FEATURES_WAIT, self.next_message(framed, "FEATURES")).await
        else {
            // Not how any release answers (2.5 says UNKNOWN_OPCODE and close), but a link
            // is not worth failing over it: this one runs the base protocol, and the next
            // dial asks again.
            tracing::info!(peer = %link.addr, "peer did not answer FEATURES within {FEATURES_WAIT:?}: this link uses the base protocol");
            return Ok(0);
        };
        match answer? {
            Some(PeerMessage::FeaturesAre(theirs)) => Ok(ours & theirs),
            // UNKNOWN_OPCODE from every earlier release; any ERROR says the same.
            Some(PeerMessage::Error(e)) => Err(predates(
                link,
                peer,
                &format!("answered ERROR {} ({})", e.code, e.message),
            )),
            // Closed unanswered: as a node of an earlier release that closes without an
            // ERROR first (2.5 lets a receiver close; a crash then is a new process).
            None => Err(predates(link, peer, "closed the link")),
            Some(other) => Err(format!("FEATURES: expected FEATURES_ARE, got {other:?}").into()),
        }
    }

    /// The acceptor's next message on a link being dialled (`None`: it closed the
    /// connection); `what` names the step in an error.
    async fn next_message(
        &self,
        framed: &mut Framed<Stream, FrameCodec>,
        what: &str,
    ) -> Result<Option<PeerMessage>, String> {
        match framed.next().await {
            Some(Ok(f)) => PeerMessage::decode_frame(&f, &self.config.limits)
                .map(Some)
                .map_err(|e| format!("{what}: {e}")),
            Some(Err(e)) => Err(format!("{what}: {e}")),
            None => Ok(None),
        }
    }

    async fn read_handshake(&self, framed: &mut Framed<Stream, FrameCodec>) -> Result<PeerMessage, String> {
        let Some(msg) = self.next_message(framed, "handshake").await? else {
            return Err("handshake: peer closed the connection".into());
        };
        match msg {
            PeerMessage::Error(e) if e.code == ErrorCode::AuthFailed => {
                self.refused(None, &e.message);
                Err(format!(
                    "peer refused the handshake: {}; {SECRET_HINT}",
                    e.message
                ))
            }
            PeerMessage::Error(e) => Err(format!("peer refused: {} {}", e.code, e.message)),
            m => Ok(m),
        }
    }

    /// Counts and logs (rate-limited) a handshake of our own link refused on
    /// authentication.
    fn refused(&self, addr: impl Into<Option<SocketAddr>>, why: &str) {
        self.metrics.handshakes_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(left_out) = self.metrics.refused_log.allow() {
            let peer = addr.into().map_or_else(|| "?".to_string(), |a| a.to_string());
            tracing::info!(%peer, left_out, "peer handshake refused ({why}): {SECRET_HINT}");
        }
    }
}

/// Records that the process `peer` at `link` does not know FEATURES (it did `what`): the
/// link's next dial does not ask it.
fn predates(link: &Link, peer: [u8; 16], what: &str) -> DialError {
    tracing::info!(peer = %link.addr, "asked FEATURES, the peer {what}: it predates them; its links use the base protocol");
    *lock(&link.predates_features) = Some(peer);
    DialError::PredatesFeatures
}
