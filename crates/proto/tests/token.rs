//! Signed tokens: round trips, and every way of altering a token is refused.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sessync_proto::{
    KeyError, Keyring, SessionId, Token, TokenError, MAX_BACKUPS, MAX_TOKEN_STR_LEN, TAG_LEN,
};
use sha2::Sha256;

const OLD: &[u8] = b"the-old-cluster-secret-32-bytes!";
const NEW: &[u8] = b"the-new-cluster-secret-32-bytes!";

fn ring(current: u8, keys: &[(u8, &[u8])]) -> Keyring {
    Keyring::new(current, keys.iter().copied()).unwrap_or_else(|e| panic!("keyring: {e}"))
}

fn single(secret: &[u8]) -> Keyring {
    Keyring::single(secret).unwrap_or_else(|e| panic!("keyring: {e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn token(owner: &str, backups: &[&str]) -> Token {
    Token {
        session_id: SessionId([0x5a; 16]),
        generation: 0,
        owner: addr(owner),
        backups: backups.iter().map(|b| addr(b)).collect(),
    }
}

fn samples() -> Vec<Token> {
    vec![
        token("10.0.0.1:7401", &[]),
        token("[fd00::1]:7401", &[]),
        token("10.0.0.1:7401", &["10.0.0.2:7401"]),
        token("[fd00::1]:1", &["[fd00::2]:2"]),
        token("10.0.0.1:7401", &["[fd00::2]:7401", "10.0.0.3:65535"]),
        token(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            &["[::]:0", "[::1]:1"],
        ),
    ]
}

fn decode(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("a signed token is not base64url: {e}"))
}

fn encode(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

#[test]
fn tokens_round_trip() {
    let keys = single(OLD);
    for t in samples() {
        let s = t.sign(&keys);
        assert!(s.len() <= MAX_TOKEN_STR_LEN, "{t:?} gave {} characters", s.len());
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{s}"
        );
        assert_eq!(Token::verify(&s, &keys), Ok(t.clone()));
        // Signing is deterministic.
        assert_eq!(t.sign(&keys), s);
    }
}

#[test]
fn the_longest_token_fits_the_string_limit() {
    let longest = token("[fd00::1]:7401", &["[fd00::2]:7401", "[fd00::3]:7401"]);
    let s = longest.sign(&single(OLD));
    assert_eq!(decode(&s).len(), 2 + 16 + 8 + 3 * 19 + 1 + TAG_LEN);
    // protocol.md 8.1: the longest token is 100 bytes, 134 characters, and the limit is
    // exactly that (not the 136 of a padded form).
    assert_eq!(s.len(), 134);
    assert_eq!(MAX_TOKEN_STR_LEN, s.len());
    assert_eq!(Token::verify(&s, &single(OLD)), Ok(longest));
    // One character more is refused before decoding (8.3 step 1).
    assert_eq!(
        Token::verify(&format!("{s}A"), &single(OLD)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn backups_beyond_the_maximum_are_left_out() {
    let mut t = token("10.0.0.1:1", &["10.0.0.2:2", "10.0.0.3:3", "10.0.0.4:4"]);
    let got = Token::verify(&t.sign(&single(OLD)), &single(OLD)).unwrap_or_else(|e| panic!("{e}"));
    t.backups.truncate(MAX_BACKUPS);
    assert_eq!(got, t);
}

#[test]
fn the_layout_is_the_documented_one() {
    // Built by hand from protocol.md's layout and signed with an independent HMAC.
    let build = |version: u8, generation: Option<u64>| {
        let mut raw = vec![version, 0];
        raw.extend_from_slice(&[0x5a; 16]);
        if let Some(g) = generation {
            raw.extend_from_slice(&g.to_be_bytes());
        }
        raw.extend_from_slice(&[4, 10, 0, 0, 1, 0x1c, 0xe9]);
        raw.push(1);
        raw.extend_from_slice(&[6]);
        raw.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        raw.extend_from_slice(&[0x1c, 0xe9]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(OLD).unwrap_or_else(|e| panic!("{e}"));
        mac.update(&raw);
        raw.extend_from_slice(&mac.finalize().into_bytes()[..16]);
        raw
    };
    let mut expected = token("10.0.0.1:7401", &["[fd00::2]:7401"]);
    expected.generation = 0x0102_0304_0506_0708;
    let v2 = build(2, Some(expected.generation));
    assert_eq!(expected.sign(&single(OLD)), encode(&v2));
    assert_eq!(Token::verify(&encode(&v2), &single(OLD)), Ok(expected.clone()));
    // Version 1 (no generation) is still read, as generation 0.
    let v1 = build(1, None);
    expected.generation = 0;
    assert_eq!(Token::verify(&encode(&v1), &single(OLD)), Ok(expected));
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let keys = single(OLD);
    for t in samples() {
        let raw = decode(&t.sign(&keys));
        for bit in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let r = Token::verify(&encode(&bad), &keys);
            assert!(r.is_err(), "{t:?}: flipping bit {bit} was accepted as {r:?}");
            // Only the version and key id bytes can fail before the MAC does.
            if bit >= 16 {
                assert_eq!(r, Err(TokenError::BadSignature), "{t:?}: bit {bit}");
            }
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let keys = single(OLD);
    for t in samples() {
        let s = t.sign(&keys);
        let raw = decode(&s);
        for k in 0..raw.len() {
            assert!(
                Token::verify(&encode(&raw[..k]), &keys).is_err(),
                "{t:?}: first {k} bytes accepted"
            );
        }
        for k in 0..s.len() {
            assert!(
                Token::verify(&s[..k], &keys).is_err(),
                "{t:?}: first {k} characters accepted"
            );
        }
    }
}

#[test]
fn extra_bytes_are_rejected() {
    let keys = single(OLD);
    for t in samples() {
        let raw = decode(&t.sign(&keys));
        for extra in [&[0u8][..], &[0xff], &[0; 3], &[0; 16]] {
            let mut longer = raw.clone();
            longer.extend_from_slice(extra);
            assert!(
                Token::verify(&encode(&longer), &keys).is_err(),
                "{t:?} + {extra:?} accepted"
            );
            // Extra bytes before the tag, with a tag that verifies over them: the
            // structure is still checked strictly after the MAC.
            let mut inner = raw[..raw.len() - TAG_LEN].to_vec();
            inner.extend_from_slice(extra);
            let resigned = sign_raw(&inner, OLD);
            assert_eq!(
                Token::verify(&encode(&resigned), &keys),
                Err(TokenError::Malformed),
                "{t:?}"
            );
        }
    }
}

/// Appends a valid tag to any bytes, as a holder of the secret could.
fn sign_raw(signed: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|e| panic!("{e}"));
    mac.update(signed);
    let mut out = signed.to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    out
}

#[test]
fn authentic_but_malformed_tokens_are_rejected() {
    let keys = single(OLD);
    let base = |family: u8, addr_bytes: usize, backups: u8| {
        let mut raw = vec![1u8, 0];
        raw.extend_from_slice(&[9; 16]);
        raw.push(family);
        raw.resize(raw.len() + addr_bytes, 1);
        raw.extend_from_slice(&[0, 80]);
        raw.push(backups);
        raw
    };
    assert!(Token::verify(&encode(&sign_raw(&base(4, 4, 0), OLD)), &keys).is_ok());
    // Address family 5.
    assert_eq!(
        Token::verify(&encode(&sign_raw(&base(5, 4, 0), OLD)), &keys),
        Err(TokenError::Malformed)
    );
    // Three backups (more than MAX_BACKUPS), present in full.
    let mut three = base(4, 4, 3);
    for _ in 0..3 {
        three.extend_from_slice(&[4, 1, 2, 3, 4, 0, 1]);
    }
    assert_eq!(
        Token::verify(&encode(&sign_raw(&three, OLD)), &keys),
        Err(TokenError::Malformed)
    );
    // One backup announced, none present.
    assert_eq!(
        Token::verify(&encode(&sign_raw(&base(4, 4, 1), OLD)), &keys),
        Err(TokenError::Malformed)
    );
    // Version 2 laid out as version 1 (no generation): the owner is read from the wrong
    // bytes and the structure does not hold.
    let mut v2 = base(4, 4, 0);
    v2[0] = 2;
    assert_eq!(
        Token::verify(&encode(&sign_raw(&v2, OLD)), &keys),
        Err(TokenError::Malformed)
    );
    // Token version 3, even with a valid tag.
    let mut v3 = base(4, 4, 0);
    v3[0] = 3;
    assert_eq!(
        Token::verify(&encode(&sign_raw(&v3, OLD)), &keys),
        Err(TokenError::UnsupportedVersion(3))
    );
}

#[test]
fn wrong_key_id_or_secret_is_rejected() {
    let t = token("10.0.0.1:7401", &["10.0.0.2:7401"]);
    let s = t.sign(&single(OLD));
    // The same secret under another id: the token names key 0, which this ring lacks.
    assert_eq!(
        Token::verify(&s, &ring(1, &[(1, OLD)])),
        Err(TokenError::UnknownKey(0))
    );
    // Key 0 with another secret.
    assert_eq!(Token::verify(&s, &single(NEW)), Err(TokenError::BadSignature));
    // A token whose key id byte is changed to a key the verifier has: the tag no longer matches.
    let mut raw = decode(&s);
    raw[1] = 1;
    assert_eq!(
        Token::verify(&encode(&raw), &ring(1, &[(0, OLD), (1, OLD)])),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn secret_rotation() {
    let t = token("10.0.0.1:7401", &[]);
    let old_ring = ring(0, &[(0, OLD)]);
    let both = ring(1, &[(0, OLD), (1, NEW)]);
    let new_only = ring(1, &[(1, NEW)]);

    let from_old = t.sign(&old_ring);
    let from_both = t.sign(&both);
    assert_eq!(decode(&from_old)[1], 0, "old ring signs with key id 0");
    assert_eq!(
        decode(&from_both)[1],
        1,
        "a ring whose current key is 1 signs with key id 1"
    );

    // During the rotation both kinds verify.
    assert_eq!(Token::verify(&from_old, &both), Ok(t.clone()));
    assert_eq!(Token::verify(&from_both, &both), Ok(t.clone()));
    // After the old key is removed, only new tokens verify.
    assert_eq!(Token::verify(&from_both, &new_only), Ok(t.clone()));
    assert_eq!(
        Token::verify(&from_old, &new_only),
        Err(TokenError::UnknownKey(0))
    );
    // A node that has not yet received the new key cannot verify new tokens: the reason
    // step 1 of the procedure must finish everywhere before step 2.
    assert_eq!(
        Token::verify(&from_both, &old_ring),
        Err(TokenError::UnknownKey(1))
    );
}

#[test]
fn keyring_rules() {
    assert_eq!(Keyring::single(b"short").err(), Some(KeyError::TooShort(0)));
    assert!(Keyring::single(&[0u8; 16]).is_ok());
    assert_eq!(
        Keyring::new(0, [(0, OLD), (0, NEW)]).err(),
        Some(KeyError::DuplicateId(0))
    );
    assert_eq!(
        Keyring::new(2, [(0, OLD), (1, NEW)]).err(),
        Some(KeyError::MissingCurrent(2))
    );
    assert_eq!(ring(1, &[(0, OLD), (1, NEW)]).current_id(), 1);
}

#[test]
fn over_long_and_non_base64_strings_are_rejected() {
    let keys = single(OLD);
    let valid = token("10.0.0.1:7401", &[]).sign(&keys);

    // Longer than any token can be: refused before decoding.
    assert_eq!(
        Token::verify(&"A".repeat(MAX_TOKEN_STR_LEN + 1), &keys),
        Err(TokenError::Malformed)
    );
    assert_eq!(
        Token::verify(&"A".repeat(100_000), &keys),
        Err(TokenError::Malformed)
    );
    let padded_out = format!("{valid}{}", "A".repeat(MAX_TOKEN_STR_LEN + 1 - valid.len()));
    assert_eq!(Token::verify(&padded_out, &keys), Err(TokenError::Malformed));

    for bad in [
        String::new(),
        "!!!!".to_string(),
        format!("{valid}="),
        format!("{valid}=="),
        format!(" {valid}"),
        format!("{valid}\n"),
        valid.replace('_', "/"),
        valid.replace('A', "+"),
        format!("{}é", &valid[..valid.len() - 1]),
    ] {
        if bad == valid {
            // A replacement that found nothing to replace in this token.
            continue;
        }
        assert!(Token::verify(&bad, &keys).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn non_canonical_base64_is_rejected() {
    // 62 bytes -> 83 characters: the last character carries 2 unused bits.
    let keys = single(OLD);
    let s = token("[fd00::1]:7401", &[]).sign(&keys);
    assert_eq!(s.len() % 4, 3);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = s.as_bytes()[s.len() - 1];
    let index = alphabet
        .iter()
        .position(|c| *c == last)
        .unwrap_or_else(|| panic!("not base64url"));
    assert_eq!(
        index & 0b11,
        0,
        "a canonical encoding leaves the unused bits zero"
    );
    for unused in 1..4 {
        let mut other = s.as_bytes().to_vec();
        let end = other.len() - 1;
        other[end] = alphabet[index | unused];
        let other = String::from_utf8(other).unwrap_or_default();
        assert_eq!(
            Token::verify(&other, &keys),
            Err(TokenError::Malformed),
            "{other}"
        );
    }
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

proptest! {
    #[test]
    fn random_tokens_round_trip_and_other_secrets_fail(
        id in any::<[u8; 16]>(),
        generation in any::<u64>(),
        owner in any_addr(),
        backups in proptest::collection::vec(any_addr(), 0..=MAX_BACKUPS),
        key_id in any::<u8>(),
    ) {
        let t = Token { session_id: SessionId(id), generation, owner, backups };
        let keys = ring(key_id, &[(key_id, OLD)]);
        let s = t.sign(&keys);
        prop_assert!(s.len() <= MAX_TOKEN_STR_LEN);
        prop_assert_eq!(Token::verify(&s, &keys), Ok(t));
        prop_assert_eq!(Token::verify(&s, &ring(key_id, &[(key_id, NEW)])), Err(TokenError::BadSignature));
    }

    #[test]
    fn random_strings_never_verify(s in "[A-Za-z0-9_-]{0,130}") {
        prop_assert!(Token::verify(&s, &single(OLD)).is_err());
    }
}
