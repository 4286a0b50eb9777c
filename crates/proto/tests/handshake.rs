//! The peer handshake, driven without sockets: success, wrong secrets on either side,
//! replay, reflection, self-connection, unknown keys and out-of-order messages.

use std::net::SocketAddr;

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sessync_proto::{
    decode_frame_slice, Acceptor, Dialler, HandshakeError, Keyring, Limits, Message, PeerIdentity,
    PeerMessage, LENGTH_PREFIX_LEN, MAX_HANDSHAKE_FRAME_LEN, NONCE_LEN,
};
use sha2::Sha256;

const SECRET: &[u8] = b"cluster-secret-for-handshake-ok!";
const OTHER: &[u8] = b"a-different-secret-of-32-bytes!!";
const DIALLER_ID: [u8; 16] = [0xd1; 16];
const ACCEPTOR_ID: [u8; 16] = [0xa1; 16];

fn ring(current: u8, keys: &[(u8, &[u8])]) -> Keyring {
    Keyring::new(current, keys.iter().copied()).unwrap_or_else(|e| panic!("keyring: {e}"))
}

fn single(secret: &[u8]) -> Keyring {
    ring(0, &[(0, secret)])
}

fn dialler_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 7401))
}

fn acceptor_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7401))
}

/// Sends a message through the wire format and back, as a link would.
fn wire(msg: PeerMessage) -> PeerMessage {
    let mut out = BytesMut::new();
    msg.encode_frame(1, &mut out);
    let (frame, _) = decode_frame_slice(&out, Limits::DEFAULT.max_frame_len)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("incomplete"));
    PeerMessage::decode_frame(&frame, &Limits::DEFAULT).unwrap_or_else(|e| panic!("{e}"))
}

fn expect<T: std::fmt::Debug>(r: Result<T, HandshakeError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn proof_of(msg: &PeerMessage) -> [u8; 32] {
    match msg {
        PeerMessage::AuthChallenge { proof, .. } | PeerMessage::AuthProof { proof } => *proof,
        other => panic!("no proof in {other:?}"),
    }
}

/// Runs a whole handshake; returns what each side learnt.
fn handshake(
    dialler_keys: Keyring,
    acceptor_keys: Keyring,
) -> Result<(PeerIdentity, PeerIdentity), HandshakeError> {
    let (dialler, hello) = Dialler::start(dialler_keys, DIALLER_ID, dialler_addr());
    let (acceptor, challenge) =
        Acceptor::handle_hello(acceptor_keys, ACCEPTOR_ID, acceptor_addr(), wire(hello))?;
    let (dialler_learnt, proof) = dialler.handle_challenge(wire(challenge))?;
    let acceptor_learnt = acceptor.handle_proof(wire(proof))?;
    Ok((dialler_learnt, acceptor_learnt))
}

#[test]
fn a_full_handshake_succeeds_and_both_learn_who_the_other_is() {
    let (dialler_learnt, acceptor_learnt) = expect(handshake(single(SECRET), single(SECRET)), "handshake");
    assert_eq!(
        dialler_learnt,
        PeerIdentity {
            node_id: ACCEPTOR_ID,
            advertised: acceptor_addr()
        }
    );
    assert_eq!(
        acceptor_learnt,
        PeerIdentity {
            node_id: DIALLER_ID,
            advertised: dialler_addr()
        }
    );
}

#[test]
fn nonces_are_fresh_per_attempt() {
    let (_, a) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
    let (_, b) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
    let nonce = |m: &PeerMessage| match m {
        PeerMessage::AuthHello { nonce, .. } => *nonce,
        other => panic!("{other:?}"),
    };
    assert_ne!(nonce(&a), nonce(&b));
}

#[test]
fn proofs_follow_the_documented_input() {
    // protocol.md: HMAC-SHA256(secret, "sessync-peer-auth" || role || version || key id ||
    // dialler nonce || acceptor nonce || dialler id || acceptor id).
    let dn = [3u8; NONCE_LEN];
    let an = [4u8; NONCE_LEN];
    let keys = ring(9, &[(9, SECRET)]);
    let (dialler, hello) = Dialler::start_with_nonce(keys.clone(), DIALLER_ID, dialler_addr(), dn);
    let (acceptor, challenge) = expect(
        Acceptor::handle_hello_with_nonce(keys, ACCEPTOR_ID, acceptor_addr(), hello, an),
        "hello",
    );
    let (_, proof) = expect(dialler.handle_challenge(challenge.clone()), "challenge");
    let independent = |role: u8| -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).unwrap_or_else(|e| panic!("{e}"));
        mac.update(b"sessync-peer-auth");
        mac.update(&[role, 1, 9]);
        mac.update(&dn);
        mac.update(&an);
        mac.update(&DIALLER_ID);
        mac.update(&ACCEPTOR_ID);
        mac.finalize().into_bytes().into()
    };
    assert_eq!(proof_of(&challenge), independent(2), "acceptor proof");
    assert_eq!(proof_of(&proof), independent(1), "dialler proof");
    expect(acceptor.handle_proof(proof), "proof");
}

#[test]
fn the_dialler_detects_an_acceptor_with_another_secret() {
    let r = handshake(single(SECRET), single(OTHER));
    assert_eq!(r.err(), Some(HandshakeError::BadProof));
}

#[test]
fn the_acceptor_detects_a_dialler_with_another_secret() {
    // The impostor dialler knows OTHER, not SECRET. To get as far as sending a proof, it
    // is fed a challenge from a mirror acceptor that also knows OTHER, with the real
    // acceptor's nonce and id.
    let an = [0x77; NONCE_LEN];
    let (impostor, hello) = Dialler::start(single(OTHER), DIALLER_ID, dialler_addr());
    let (real, _) = expect(
        Acceptor::handle_hello_with_nonce(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello.clone(), an),
        "real hello",
    );
    let (_, mirror_challenge) = expect(
        Acceptor::handle_hello_with_nonce(single(OTHER), ACCEPTOR_ID, acceptor_addr(), hello, an),
        "mirror hello",
    );
    let (_, proof) = expect(impostor.handle_challenge(mirror_challenge), "impostor challenge");
    assert_eq!(real.handle_proof(proof).err(), Some(HandshakeError::BadProof));
}

#[test]
fn a_replayed_proof_fails_against_a_new_acceptor_nonce() {
    // Record a complete handshake.
    let dn = [1u8; NONCE_LEN];
    let (dialler, hello) = Dialler::start_with_nonce(single(SECRET), DIALLER_ID, dialler_addr(), dn);
    let (acceptor, challenge) = expect(
        Acceptor::handle_hello_with_nonce(
            single(SECRET),
            ACCEPTOR_ID,
            acceptor_addr(),
            hello.clone(),
            [2; 32],
        ),
        "hello",
    );
    let (_, recorded_proof) = expect(dialler.handle_challenge(challenge.clone()), "challenge");
    expect(
        acceptor.handle_proof(recorded_proof.clone()),
        "recorded handshake",
    );

    // The attacker replays AUTH_HELLO and AUTH_PROOF; the acceptor picks a new nonce.
    let (fresh, _) = expect(
        Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello.clone()),
        "replayed hello",
    );
    assert_eq!(
        fresh.handle_proof(recorded_proof.clone()).err(),
        Some(HandshakeError::BadProof)
    );
    let (chosen, _) = expect(
        Acceptor::handle_hello_with_nonce(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello, [3; 32]),
        "replayed hello",
    );
    assert_eq!(
        chosen.handle_proof(recorded_proof).err(),
        Some(HandshakeError::BadProof)
    );

    // And a replayed AUTH_CHALLENGE fails against a dialler's fresh nonce.
    let (new_dialler, _) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
    assert_eq!(
        new_dialler.handle_challenge(challenge).err(),
        Some(HandshakeError::BadProof)
    );
}

#[test]
fn a_reflected_proof_fails() {
    let (_, hello) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
    let (acceptor, challenge) = expect(
        Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello),
        "hello",
    );
    // The acceptor's own challenge proof, sent back as the dialler's AUTH_PROOF.
    let reflected = PeerMessage::AuthProof {
        proof: proof_of(&challenge),
    };
    assert_eq!(
        acceptor.handle_proof(reflected).err(),
        Some(HandshakeError::BadProof)
    );
}

#[test]
fn a_dialler_proof_cannot_pose_as_a_challenge() {
    // An attacker who saw a dialler's AUTH_PROOF puts it in an AUTH_CHALLENGE for the same
    // nonces: the role byte differs, so the dialler refuses it.
    let dn = [5u8; NONCE_LEN];
    let an = [6u8; NONCE_LEN];
    let (d1, hello) = Dialler::start_with_nonce(single(SECRET), DIALLER_ID, dialler_addr(), dn);
    let (_, challenge) = expect(
        Acceptor::handle_hello_with_nonce(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello, an),
        "hello",
    );
    let (_, proof) = expect(d1.handle_challenge(challenge), "challenge");
    let (d2, _) = Dialler::start_with_nonce(single(SECRET), DIALLER_ID, dialler_addr(), dn);
    let forged = PeerMessage::AuthChallenge {
        node_id: ACCEPTOR_ID,
        nonce: an,
        proof: proof_of(&proof),
        advertised: acceptor_addr(),
    };
    assert_eq!(d2.handle_challenge(forged).err(), Some(HandshakeError::BadProof));
}

#[test]
fn proofs_are_bound_to_the_node_ids() {
    let dn = [7u8; NONCE_LEN];
    let (dialler, hello) = Dialler::start_with_nonce(single(SECRET), DIALLER_ID, dialler_addr(), dn);
    let (_, challenge) = expect(
        Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello),
        "hello",
    );
    let PeerMessage::AuthChallenge {
        nonce,
        proof,
        advertised,
        ..
    } = challenge
    else {
        panic!("not a challenge")
    };
    let renamed = PeerMessage::AuthChallenge {
        node_id: [0xee; 16],
        nonce,
        proof,
        advertised,
    };
    assert_eq!(
        dialler.handle_challenge(renamed).err(),
        Some(HandshakeError::BadProof)
    );
}

#[test]
fn connecting_to_oneself_is_refused() {
    // The acceptor receives its own node id.
    let (_, hello) = Dialler::start(single(SECRET), ACCEPTOR_ID, dialler_addr());
    let r = Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello.clone());
    assert_eq!(r.err(), Some(HandshakeError::SelfConnection));

    // The dialler receives a challenge carrying its own node id (e.g. its hello was
    // reflected to a node sharing its id), even with a proof that would verify.
    let (dialler, hello) = Dialler::start_with_nonce(single(SECRET), DIALLER_ID, dialler_addr(), [8; 32]);
    let PeerMessage::AuthHello { nonce, .. } = hello else {
        panic!("not a hello")
    };
    let (_, mirror) = expect(
        Acceptor::handle_hello_with_nonce(
            single(SECRET),
            DIALLER_ID,
            acceptor_addr(),
            PeerMessage::AuthHello {
                node_id: [0; 16],
                key_id: 0,
                nonce,
                advertised: dialler_addr(),
            },
            [9; 32],
        ),
        "mirror",
    );
    assert_eq!(
        dialler.handle_challenge(mirror).err(),
        Some(HandshakeError::SelfConnection)
    );
}

#[test]
fn an_unknown_key_id_is_refused() {
    let r = handshake(ring(7, &[(7, SECRET)]), single(SECRET));
    assert_eq!(r.err(), Some(HandshakeError::UnknownKey(7)));
}

#[test]
fn handshakes_work_across_a_secret_rotation() {
    let both_old_current = ring(0, &[(0, SECRET), (1, OTHER)]);
    let both_new_current = ring(1, &[(0, SECRET), (1, OTHER)]);
    let new_only = ring(1, &[(1, OTHER)]);
    let old_only = single(SECRET);
    // The acceptor proves with the key the dialler chose, whichever is current for it.
    expect(
        handshake(both_new_current.clone(), both_old_current.clone()),
        "new -> old current",
    );
    expect(
        handshake(both_old_current, both_new_current.clone()),
        "old -> new current",
    );
    expect(handshake(new_only.clone(), both_new_current), "new only -> both");
    assert_eq!(
        handshake(new_only, old_only).err(),
        Some(HandshakeError::UnknownKey(1)),
        "a node without the new key"
    );
}

#[test]
fn unexpected_messages_are_refused() {
    let (dialler, hello) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
    let others = [
        PeerMessage::AuthOk,
        PeerMessage::Ping(1),
        PeerMessage::AuthProof { proof: [0; 32] },
        PeerMessage::Copy {
            session_id: sessync_proto::SessionId([0; 16]),
            last_transfer: 0,
        },
    ];
    // The acceptor's first message must be AUTH_HELLO.
    for m in others.iter().cloned().chain([PeerMessage::AuthChallenge {
        node_id: [0; 16],
        nonce: [0; 32],
        proof: [0; 32],
        advertised: dialler_addr(),
    }]) {
        let r = Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), m.clone());
        assert_eq!(r.err(), Some(HandshakeError::Unexpected), "acceptor took {m:?}");
    }
    // The dialler's next message must be AUTH_CHALLENGE.
    assert_eq!(
        dialler.handle_challenge(hello.clone()).err(),
        Some(HandshakeError::Unexpected)
    );
    let (dialler, _) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
    assert_eq!(
        dialler.handle_challenge(PeerMessage::AuthOk).err(),
        Some(HandshakeError::Unexpected)
    );
    // The acceptor's second message must be AUTH_PROOF.
    for m in [hello.clone(), PeerMessage::AuthOk, PeerMessage::Ping(2)] {
        let (acceptor, _) = expect(
            Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), hello.clone()),
            "hello",
        );
        assert_eq!(
            acceptor.handle_proof(m.clone()).err(),
            Some(HandshakeError::Unexpected),
            "{m:?}"
        );
    }
}

/// Every handshake message fits the handshake frame limit with the longest (IPv6)
/// addresses, and the limit is no larger than the largest of them needs.
#[test]
fn handshake_frames_fit_the_handshake_frame_limit_exactly() {
    let v6: SocketAddr = "[fd00::1:2:3:4]:65535".parse().unwrap_or_else(|e| panic!("{e}"));
    let keys = single(SECRET);
    let (dialler, hello) = Dialler::start(keys.clone(), DIALLER_ID, v6);
    let (acceptor, challenge) = expect(
        Acceptor::handle_hello(keys, ACCEPTOR_ID, v6, hello.clone()),
        "hello",
    );
    let (_, proof) = expect(dialler.handle_challenge(challenge.clone()), "challenge");
    expect(acceptor.handle_proof(proof.clone()), "proof");
    let mut largest = 0;
    for msg in [hello, challenge, proof, PeerMessage::AuthOk] {
        let mut out = BytesMut::new();
        msg.encode_frame(u64::MAX, &mut out);
        let len = (out.len() - LENGTH_PREFIX_LEN) as u32;
        assert!(len <= MAX_HANDSHAKE_FRAME_LEN, "{msg:?} is {len} bytes");
        decode_frame_slice(&out, MAX_HANDSHAKE_FRAME_LEN).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        largest = largest.max(len);
    }
    assert_eq!(largest, MAX_HANDSHAKE_FRAME_LEN);
}

/// Channel binding: proofs bound to the same TLS session verify; a handshake relayed
/// between two sessions (different bindings), or bound on one side only, fails.
#[test]
fn bound_handshakes_need_the_same_binding_on_both_sides() {
    let run = |dialler_binding: Option<[u8; 32]>, acceptor_binding: Option<[u8; 32]>| {
        let (dialler, hello) = Dialler::start(single(SECRET), DIALLER_ID, dialler_addr());
        let dialler = match dialler_binding {
            Some(b) => dialler.with_binding(b),
            None => dialler,
        };
        let (acceptor, challenge) = match acceptor_binding {
            Some(b) => {
                Acceptor::handle_hello_bound(single(SECRET), ACCEPTOR_ID, acceptor_addr(), wire(hello), b)
            }
            None => Acceptor::handle_hello(single(SECRET), ACCEPTOR_ID, acceptor_addr(), wire(hello)),
        }?;
        let (_, proof) = dialler.handle_challenge(wire(challenge))?;
        acceptor.handle_proof(wire(proof))
    };
    assert!(run(Some([7; 32]), Some([7; 32])).is_ok());
    assert!(run(None, None).is_ok());
    assert!(matches!(
        run(Some([7; 32]), Some([8; 32])),
        Err(HandshakeError::BadProof)
    ));
    assert!(matches!(run(Some([7; 32]), None), Err(HandshakeError::BadProof)));
    assert!(matches!(run(None, Some([7; 32])), Err(HandshakeError::BadProof)));
}
