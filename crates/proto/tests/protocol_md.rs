//! Conformance: every hex example in protocol.md decodes to the message its prose
//! describes, and re-encoding that message reproduces the bytes exactly. The error code
//! table, the limits table and the token example are checked against the crate too, so
//! the normative text and the code cannot drift apart.
//!
//! The expected messages are built here, independently of the document. To regenerate
//! the blocks after a deliberate format change:
//! `cargo test -p sessync-proto --test protocol_md -- --ignored --nocapture print_examples`

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use sessync_proto::{
    client_op, decode_frame_slice, peer_op, Acceptor, Attributes, Dialler, ErrorCode, Keyring, Limits,
    Message, PackedAttributes, PeerIdentity, PeerMessage, Request, Response, SessionId, SessionMeta,
    SessionRecord, Token, OP_ERROR,
};

#[path = "protocol_md/frame_examples.rs"]
mod frame_examples;

const DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocol.md"));

/// The example secret stated in protocol.md (32 ASCII characters).
const SECRET: &[u8; 32] = b"sessync-docs-example-secret-0001";
const SESSION: SessionId = SessionId([
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
]);
const SESSION_2: SessionId = SessionId([
    0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00,
]);
/// Node A (accepts the example handshake) and node B (dials it).
const NODE_A: [u8; 16] = [0x11; 16];
const NODE_B: [u8; 16] = [0x22; 16];
const CREATED: u64 = 1_700_000_000_000;
/// The transfer id of the example handover.
const TRANSFER: u64 = 0x0123_4567_89ab_cdef;
const IDLE: u64 = 1_800_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

fn ring(current: u8) -> Keyring {
    Keyring::new(current, [(current, &SECRET[..])]).unwrap_or_else(|e| panic!("example keyring: {e}"))
}

/// The token examples: name -> (key id, token fields).
fn token_examples() -> Vec<(&'static str, u8, Token)> {
    vec![
        (
            "basic",
            0,
            Token {
                session_id: SESSION,
                generation: 0,
                owner: addr("10.0.0.1:7401"),
                backups: vec![],
            },
        ),
        (
            "backups",
            1,
            Token {
                session_id: SESSION_2,
                generation: 5,
                owner: addr("[fd00::1]:7401"),
                backups: vec![addr("10.0.0.2:7401"), addr("10.0.0.3:7401")],
            },
        ),
    ]
}

fn basic_token() -> String {
    let (_, key_id, token) = token_examples().remove(0);
    token.sign(&ring(key_id))
}

fn meta(version: u64, last_access_ms: u64) -> SessionMeta {
    SessionMeta {
        version,
        created_ms: CREATED,
        last_access_ms,
        idle_ttl_ms: IDLE,
        absolute_deadline_ms: 0,
    }
}

fn record() -> SessionRecord {
    SessionRecord {
        id: SESSION,
        meta: meta(1, CREATED),
        attributes: PackedAttributes::pack(&attrs(&[("user", "alice")])),
    }
}

/// The example nonces: the dialler's is 00 01 .. 1f, the acceptor's 20 21 .. 3f.
fn nonces() -> ([u8; 32], [u8; 32]) {
    let mut d = [0u8; 32];
    let mut a = [0u8; 32];
    for i in 0..32u8 {
        d[usize::from(i)] = i;
        a[usize::from(i)] = 0x20 + i;
    }
    (d, a)
}

/// Runs the example handshake (B dials A) with the fixed nonces and the example secret:
/// AUTH_HELLO, AUTH_CHALLENGE, AUTH_PROOF, plus what each side learnt.
fn example_handshake() -> (PeerMessage, PeerMessage, PeerMessage, PeerIdentity, PeerIdentity) {
    let (dn, an) = nonces();
    let (dialler, hello) = Dialler::start_with_nonce(ring(0), NODE_B, addr("10.0.0.2:7401"), dn);
    let (acceptor, challenge) =
        Acceptor::handle_hello_with_nonce(ring(0), NODE_A, addr("10.0.0.1:7401"), hello.clone(), an)
            .unwrap_or_else(|e| panic!("example hello: {e}"));
    let (dialler_learnt, proof) = dialler
        .handle_challenge(challenge.clone())
        .unwrap_or_else(|e| panic!("example challenge: {e}"));
    let acceptor_learnt = acceptor
        .handle_proof(proof.clone())
        .unwrap_or_else(|e| panic!("example proof: {e}"));
    (hello, challenge, proof, dialler_learnt, acceptor_learnt)
}

/// One expected example: the message and the request id of its frame.
#[derive(Debug, Clone)]
enum Expected {
    Request(u64, Request),
    Response(u64, Response),
    Peer(u64, PeerMessage),
}

impl Expected {
    fn kind(&self) -> &'static str {
        match self {
            Expected::Request(..) => "client-request",
            Expected::Response(..) => "client-response",
            Expected::Peer(..) => "peer",
        }
    }

    fn opcode(&self) -> u8 {
        match self {
            Expected::Request(_, m) => m.opcode(),
            Expected::Response(_, m) => m.opcode(),
            Expected::Peer(_, m) => m.opcode(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        match self {
            Expected::Request(id, m) => m.encode_frame(*id, &mut out),
            Expected::Response(id, m) => m.encode_frame(*id, &mut out),
            Expected::Peer(id, m) => m.encode_frame(*id, &mut out),
        }
        out.to_vec()
    }
}

use frame_examples::frame_examples;

/// One `<!-- example: KIND NAME -->` marker and the fenced block after it.
#[derive(Debug)]
struct DocExample {
    kind: String,
    name: String,
    fence: String,
    body: String,
    line: usize,
}

fn doc_examples(doc: &str) -> Vec<DocExample> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        let Some(rest) = line.strip_prefix("<!-- example:") else {
            continue;
        };
        let marker_line = i;
        let rest = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("line {marker_line}: example marker not closed"));
        let words: Vec<&str> = rest.split_whitespace().collect();
        assert_eq!(
            words.len(),
            2,
            "line {marker_line}: marker needs a kind and a name"
        );
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        let fence = lines
            .get(i)
            .and_then(|l| l.trim().strip_prefix("```"))
            .unwrap_or_else(|| panic!("line {marker_line}: example marker not followed by a fenced block"));
        i += 1;
        let mut body = String::new();
        while i < lines.len() && lines[i].trim() != "```" {
            body.push_str(lines[i]);
            body.push('\n');
            i += 1;
        }
        assert!(i < lines.len(), "line {marker_line}: fenced block not closed");
        i += 1;
        out.push(DocExample {
            kind: words[0].to_string(),
            name: words[1].to_string(),
            fence: fence.trim().to_string(),
            body,
            line: marker_line,
        });
    }
    out
}

/// Hex pairs, whitespace ignored.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            let pair = std::str::from_utf8(p).map_err(|e| e.to_string())?;
            u8::from_str_radix(pair, 16).map_err(|_| format!("not a hex pair: {pair:?}"))
        })
        .collect()
}

fn hex_line(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A frame as protocol.md shows it: length prefix and header on the first line, the body
/// in lines of 16 bytes, the CRC on the last line.
fn hex_block(frame: &[u8]) -> String {
    let (head, rest) = frame.split_at(16);
    let (body, crc) = rest.split_at(rest.len() - 4);
    let mut lines = vec![hex_line(head)];
    lines.extend(body.chunks(16).map(hex_line));
    lines.push(hex_line(crc));
    lines.join("\n")
}

#[test]
fn hex_parser_accepts_pairs_only() {
    assert_eq!(parse_hex("00 ff\n1A"), Ok(vec![0x00, 0xff, 0x1a]));
    assert!(parse_hex("0").is_err());
    assert!(parse_hex("zz").is_err());
    assert!(parse_hex("0x").is_err());
}

#[test]
fn every_frame_example_decodes_to_its_prose_and_reencodes_exactly() {
    let expected = frame_examples();
    let examples = doc_examples(DOC);
    let limits = Limits::DEFAULT;
    let mut seen = BTreeSet::new();
    for ex in examples.iter().filter(|e| e.kind != "token") {
        let at = format!("protocol.md line {} ({} {})", ex.line, ex.kind, ex.name);
        assert!(seen.insert(ex.name.clone()), "{at}: example name used twice");
        assert_eq!(ex.fence, "hex", "{at}: frame examples use a ```hex block");
        let bytes = parse_hex(&ex.body).unwrap_or_else(|e| panic!("{at}: {e}"));
        let want = expected
            .get(ex.name.as_str())
            .unwrap_or_else(|| panic!("{at}: no expected message for this example in the test"));
        assert_eq!(ex.kind, want.kind(), "{at}: wrong kind");

        let (frame, used) = decode_frame_slice(&bytes, limits.max_frame_len)
            .unwrap_or_else(|e| panic!("{at}: frame error {e}"))
            .unwrap_or_else(|| panic!("{at}: incomplete frame"));
        assert_eq!(used, bytes.len(), "{at}: bytes after the frame");
        match want {
            Expected::Request(id, m) => {
                assert_eq!(frame.request_id, *id, "{at}: request id");
                let got = Request::decode_frame(&frame, &limits).unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(&got, m, "{at}");
            }
            Expected::Response(id, m) => {
                assert_eq!(frame.request_id, *id, "{at}: request id");
                let got = Response::decode_frame(&frame, &limits).unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(&got, m, "{at}");
            }
            Expected::Peer(id, m) => {
                assert_eq!(frame.request_id, *id, "{at}: request id");
                let got = PeerMessage::decode_frame(&frame, &limits).unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(&got, m, "{at}");
            }
        }
        assert_eq!(
            want.encode(),
            bytes,
            "{at}: re-encoding differs from the document"
        );
    }
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains(**k)).collect();
    assert!(
        missing.is_empty(),
        "examples missing from protocol.md: {missing:?}"
    );
}

#[test]
fn every_opcode_has_an_example() {
    let examples = doc_examples(DOC);
    let expected = frame_examples();
    let documented: BTreeSet<(&str, u8)> = examples
        .iter()
        .filter_map(|e| expected.get(e.name.as_str()))
        .map(|e| (e.kind(), e.opcode()))
        .collect();
    let requests = [
        client_op::HELLO,
        client_op::PING,
        client_op::CREATE,
        client_op::GET,
        client_op::SET,
        client_op::TOUCH,
        client_op::ROTATE,
        client_op::DESTROY,
        client_op::STATS,
        client_op::MEMBERS,
        client_op::DRAIN,
    ];
    let responses = [
        client_op::HELLO_OK,
        client_op::PONG,
        client_op::SESSION,
        client_op::DONE,
        client_op::STATS_REPLY,
        client_op::MEMBERS_REPLY,
        OP_ERROR,
    ];
    let peer = [
        peer_op::AUTH_HELLO,
        peer_op::AUTH_PROOF,
        peer_op::PING,
        peer_op::COPY,
        peer_op::COPY_ACK,
        peer_op::REPLICATE,
        peer_op::DROP,
        peer_op::PROMOTE,
        peer_op::RETIRE,
        peer_op::AUTH_CHALLENGE,
        peer_op::AUTH_OK,
        peer_op::PONG,
        peer_op::COPY_DATA,
        peer_op::MOVED,
        peer_op::NOT_FOUND,
        peer_op::OK,
        peer_op::TAKE,
        peer_op::RELEASE,
        peer_op::LOCATE,
        peer_op::EPOCH,
        peer_op::IDS,
        peer_op::LOCATED,
        peer_op::EPOCH_IS,
        OP_ERROR,
    ];
    let wanted = requests
        .iter()
        .map(|op| ("client-request", *op))
        .chain(responses.iter().map(|op| ("client-response", *op)))
        .chain(peer.iter().map(|op| ("peer", *op)));
    for (kind, op) in wanted {
        assert!(
            documented.contains(&(kind, op)),
            "protocol.md has no {kind} example for opcode 0x{op:02x}"
        );
    }
    // Opcode constants are distinct within each set, so the lists above really are
    // 11, 7 and 24 different messages.
    assert_eq!(requests.iter().collect::<BTreeSet<_>>().len(), 11);
    assert_eq!(responses.iter().collect::<BTreeSet<_>>().len(), 7);
    assert_eq!(peer.iter().collect::<BTreeSet<_>>().len(), 24);
}

/// Rows of a markdown table whose first cell satisfies `first`, as trimmed cells.
fn table_rows(doc: &str, first: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    doc.lines()
        .filter_map(|l| l.trim().strip_prefix('|'))
        .map(|l| {
            l.trim_end_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .filter(|cells: &Vec<String>| cells.first().is_some_and(|c| first(c)))
        .collect()
}

#[test]
fn error_table_lists_every_code_with_number_name_and_close_rule() {
    // Rows of the error code table: | number | NAME | closes | meaning |
    let rows = table_rows(DOC, |c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()));
    let mut table = BTreeMap::new();
    for row in &rows {
        assert!(row.len() >= 4, "error table row too short: {row:?}");
        let n: u16 = row[0].parse().unwrap_or_else(|e| panic!("{row:?}: {e}"));
        assert!(table.insert(n, row.clone()).is_none(), "code {n} listed twice");
    }
    for code in ErrorCode::ALL {
        let row = table
            .get(&code.as_u16())
            .unwrap_or_else(|| panic!("protocol.md's error table lacks {code}"));
        assert_eq!(row[1], code.name(), "name of code {}", code.as_u16());
        let closes = match row[2].as_str() {
            "yes" => true,
            "no" => false,
            other => panic!(
                "code {}: closes column must be yes or no, got {other:?}",
                code.as_u16()
            ),
        };
        assert_eq!(closes, code.closes_connection(), "close rule of {code}");
        assert!(!row[3].is_empty(), "code {code} has no meaning");
    }
    let known: BTreeSet<u16> = ErrorCode::ALL.iter().map(|c| c.as_u16()).collect();
    let extra: Vec<_> = table.keys().filter(|n| !known.contains(n)).collect();
    assert!(
        extra.is_empty(),
        "protocol.md lists codes the crate does not know: {extra:?}"
    );
}

#[test]
fn limits_table_matches_the_defaults() {
    let d = Limits::DEFAULT;
    let want: [(&str, u64); 6] = [
        ("max_frame_len", u64::from(d.max_frame_len)),
        ("max_attributes", d.max_attributes as u64),
        ("max_name_len", d.max_name_len as u64),
        ("max_value_len", d.max_value_len as u64),
        ("max_token_len", d.max_token_len as u64),
        ("max_text_len", d.max_text_len as u64),
    ];
    let rows = table_rows(DOC, |c| c.starts_with("max_"));
    for (name, value) in want {
        let row = rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("protocol.md's limits table lacks {name}"));
        let documented: u64 = row
            .get(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{name}: second column is not a number: {row:?}"));
        assert_eq!(documented, value, "default of {name}");
    }
}

#[test]
fn token_examples_verify_with_the_stated_secret() {
    let secret = std::str::from_utf8(SECRET).unwrap_or_default();
    assert!(
        DOC.contains(&format!("`{secret}`")),
        "protocol.md does not state the example secret"
    );
    let tokens: Vec<DocExample> = doc_examples(DOC)
        .into_iter()
        .filter(|e| e.kind == "token")
        .collect();
    let expected = token_examples();
    assert_eq!(tokens.len(), expected.len(), "token examples in protocol.md");
    for (name, key_id, want) in expected {
        let ex = tokens
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("protocol.md lacks the token {name} example"));
        assert_eq!(ex.fence, "text", "token {name}: use a ```text block");
        let s = ex.body.trim();
        let got = Token::verify(s, &ring(key_id)).unwrap_or_else(|e| panic!("token {name}: {e}"));
        assert_eq!(got, want, "token {name}");
        // Signing is deterministic, so the document holds exactly what the crate makes.
        assert_eq!(s, want.sign(&ring(key_id)), "token {name}");
        // And it was the stated secret that signed it.
        let other = Keyring::new(key_id, [(key_id, &b"another-secret-of-32-characters!"[..])])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Token::verify(s, &other).is_err(),
            "token {name} verifies with another secret"
        );
    }
}

#[test]
fn handshake_examples_are_a_real_handshake() {
    // The proofs in the AUTH_CHALLENGE and AUTH_PROOF examples are those the stated
    // secret and nonces give, so another implementation can check its HMAC input.
    let (_, _, _, dialler_learnt, acceptor_learnt) = example_handshake();
    assert_eq!(dialler_learnt.node_id, NODE_A);
    assert_eq!(dialler_learnt.advertised, addr("10.0.0.1:7401"));
    assert_eq!(acceptor_learnt.node_id, NODE_B);
    assert_eq!(acceptor_learnt.advertised, addr("10.0.0.2:7401"));
    let examples = frame_examples();
    assert!(
        matches!(
            examples.get("auth_proof"),
            Some(Expected::Peer(2, PeerMessage::AuthProof { .. }))
        ),
        "auth_proof example is not an AUTH_PROOF"
    );
}

/// Prints the example blocks for protocol.md (see the module docs).
#[test]
#[ignore = "a generator, not a check: runs by hand after a wire format change (`cargo test -p sessync-proto --test protocol_md -- --ignored --nocapture print_examples`) to regenerate the examples; every_frame_example_decodes_to_its_prose_and_reencodes_exactly checks them in every run"]
fn print_examples() {
    for (name, e) in frame_examples() {
        println!(
            "<!-- example: {} {name} -->\n```hex\n{}\n```\n",
            e.kind(),
            hex_block(&e.encode())
        );
    }
    for (name, key_id, t) in token_examples() {
        println!(
            "<!-- example: token {name} -->\n```text\n{}\n```\n",
            t.sign(&ring(key_id))
        );
    }
}
