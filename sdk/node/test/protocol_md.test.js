// Conformance with protocol.md, the shared vectors (protocol.md section 14).
//
// Every `<!-- example: KIND NAME -->` block is decoded and re-encoded byte for byte: client
// frames with the SDK's own codec (src/wire.js), peer frames with the small peer codec
// below (the SDK does not speak the peer port), tokens with node:crypto's HMAC. The
// expected field values are written here from the prose, independently of the document's
// bytes, as crates/proto/tests/protocol_md.rs and sdk/python/tests/test_protocol_md.py do.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { dirname, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { ERROR_CODES, ProtocolViolation } from '../src/errors.js';
import {
  DEFAULT_LIMITS, Reader, Writer, crc32, crc32Table, decodeReply, decodeRequest, encodeFrame, encodeReply, encodeRequest, splitFrame,
} from '../src/wire.js';

const DOC_PATH = process.env.SESSYNC_PROTOCOL_MD ?? resolve(dirname(fileURLToPath(import.meta.url)), '../../../protocol.md');
const DOC = readFileSync(DOC_PATH, 'utf8');
const MAX_FRAME = 4 * 1024 * 1024;

const SECRET = Buffer.from('sessync-docs-example-secret-0001');
const TOKEN = 'AgAAESIzRFVmd4iZqrvM3e7_AAAAAAAAAAAECgAAARzpAJY_dtzQzhLirrcpiVPU3tc';
const SESSION = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const SESSION_2 = Buffer.from('ffeeddccbbaa99887766554433221100', 'hex');
const CREATED = 1_700_000_000_000;
const IDLE = 1_800_000;
const TRANSFER = 0x0123456789abcdefn;
const NODE_A = Buffer.alloc(16, 0x11);
const NODE_B = Buffer.alloc(16, 0x22);
const NONCE_B = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const NONCE_A = Buffer.from(Array.from({ length: 32 }, (_, i) => 0x20 + i));

const meta = (version, lastAccessMs) => ({ version, createdMs: CREATED, lastAccessMs, idleTtlMs: IDLE, absoluteDeadlineMs: 0 });
const attrs = (o) => new Map(Object.entries(o).map(([k, v]) => [k, Buffer.from(v)]));

// Expected client-port messages: name -> [request id, message], from the prose.
const CLIENT_REQUESTS = {
  hello: [1, { type: 'hello', minVersion: 1, maxVersion: 1, clientName: 'example-client/1.0', password: 'hunter2' }],
  ping: [2, { type: 'ping', payload: Buffer.from('ping') }],
  create: [3, { type: 'create', idleTtlMs: 1_800_000, maxLifetimeMs: 0, attributes: attrs({ user: 'alice' }) }],
  get: [4, { type: 'get', token: TOKEN, names: ['user'] }],
  get_all: [5, { type: 'get', token: TOKEN, names: [] }],
  set: [6, { type: 'set', token: TOKEN, ifVersion: 1, puts: attrs({ cart: '1x book' }), deletes: ['csrf'] }],
  touch: [7, { type: 'touch', token: TOKEN }],
  rotate: [8, { type: 'rotate', token: TOKEN }],
  destroy: [9, { type: 'destroy', token: TOKEN }],
  stats: [10, { type: 'stats' }],
};
const CLIENT_RESPONSES = {
  hello_ok: [1, { type: 'hello_ok', version: 1, serverName: 'sessync/0.1.0', maxFrameLen: 4194304 }],
  pong: [2, { type: 'pong', payload: Buffer.from('ping') }],
  session_created: [3, { type: 'session', token: TOKEN, meta: meta(1, CREATED), attributes: attrs({ user: 'alice' }) }],
  session_get: [4, { type: 'session', token: null, meta: meta(1, CREATED + 60_000), attributes: attrs({ user: 'alice' }) }],
  session_set: [6, { type: 'session', token: null, meta: meta(2, CREATED + 120_000), attributes: new Map() }],
  done: [9, { type: 'done' }],
  stats_reply: [10, { type: 'stats_reply', counters: [['sessions', 1], ['copies_received', 0]] }],
  error_version_conflict: [6, { type: 'error', code: 302, message: 'expected version 1, session is at 2' }],
  error_bad_crc: [0, { type: 'error', code: 101, message: 'CRC32 mismatch' }],
};
// Examples of messages this SDK does not speak: MEMBERS and DRAIN are operator requests (the CLI's
// `sessync members`, the Rust SDK); applications have no use for it. The Rust conformance
// test (crates/proto/tests/protocol_md.rs) decodes them.
const NOT_SPOKEN = new Set([
  'client-request members',
  'client-response members_reply',
  'client-request drain',
  // The peer messages of leaving, lookup and repair (protocol.md 17.5): node to node only,
  // decoded field by field by the Rust conformance test.
  'peer take', 'peer release', 'peer locate', 'peer epoch', 'peer ids', 'peer located', 'peer epoch_is',
]);

// A small peer-port codec (protocol.md section 10), enough to decode and re-encode the
// examples. u64 fields are BigInt here (a transfer id uses all 64 bits).
function addrRead(r) {
  const fam = r.u8();
  let ip;
  if (fam === 4) ip = [...r.raw(4)].join('.');
  else if (fam === 6) {
    const b = r.raw(16);
    const groups = [];
    for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
    ip = groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
  } else throw new ProtocolViolation(`address family ${fam}`);
  return [ip, r.u16()];
}

function addrWrite(w, [ip, port]) {
  if (isIPv4(ip)) {
    w.u8(4);
    w.raw(Buffer.from(ip.split('.').map(Number)));
  } else {
    // Expand "::" (the examples use one run of zero groups at most).
    const [head, tail] = ip.split('::');
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
    w.u8(6);
    w.raw(b);
  }
  w.u16(port);
}

function addrsRead(r) {
  const n = r.u8();
  if (n > 8) throw new ProtocolViolation(`${n} holders`, { code: 100, codeName: 'MALFORMED_FRAME' });
  return Array.from({ length: n }, () => addrRead(r));
}

function addrsWrite(w, addrs) {
  assert.ok(addrs.length <= 8);
  w.u8(addrs.length);
  for (const a of addrs) addrWrite(w, a);
}

const u64Read = (r) => r.take(8).readBigUInt64BE(0);
function u64Write(w, v) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); w.raw(b); }

// COPY_ACKS: a u16 count (1 to 4096), then (session id, transfer) pairs.
function acksRead(r) {
  const n = r.u16();
  if (n === 0) throw new ProtocolViolation('COPY_ACKS acknowledges nothing', { code: 100, codeName: 'MALFORMED_FRAME' });
  if (n > 4096) throw new ProtocolViolation(`${n} acknowledgements`, { code: 105, codeName: 'LIMIT_EXCEEDED' });
  return Array.from({ length: n }, () => [r.raw(16), u64Read(r)]);
}

function acksWrite(w, acks) {
  assert.ok(acks.length >= 1 && acks.length <= 4096);
  w.u16(acks.length);
  for (const [sessionId, transfer] of acks) {
    w.raw(sessionId);
    u64Write(w, transfer);
  }
}
const recordRead = (r) => ({ id: r.raw(16), meta: r.meta(), attributes: r.attributes() });
function recordWrite(w, rec) { w.raw(rec.id); w.meta(rec.meta); w.attributes(rec.attributes); }

const PEER_LAYOUTS = {
  0x40: [['node_id', 16], ['key_id', 'u8'], ['nonce', 32], ['advertised', 'addr']],
  0xc0: [['node_id', 16], ['nonce', 32], ['proof', 32], ['advertised', 'addr']],
  0x41: [['proof', 32]],
  0xc1: [],
  0x42: [['payload', 'u64']],
  0xc2: [['payload', 'u64']],
  0x43: [['session_id', 16], ['last_transfer', 'u64']],
  0xc3: [['transfer', 'u64'], ['holders', 'addrs'], ['record', 'record']],
  0xc4: [['session_id', 16], ['owner', 'addr']],
  0xc5: [['session_id', 16]],
  0x44: [['session_id', 16], ['transfer', 'u64']],
  0xc6: [],
  0x45: [['generation', 'u64'], ['record', 'record']],
  0x46: [['session_id', 16], ['generation', 'u64']],
  0x4c: [['session_id', 16], ['generation', 'u64']],
  0x4d: [['session_id', 16], ['transfer', 'u64']],
  0x47: [['session_id', 16], ['last_transfer', 'u64'], ['failed_owner', 'addr']],
  0x4e: [['features', 'u64']],
  0xca: [['features', 'u64']],
  0x4f: [['acks', 'acks']],
  0x50: [['generation', 'u64'], ['base_owner', 'addr'], ['base_generation', 'u64'], ['base_writer', 'u32'], ['record', 'record']],
  0xff: [['code', 'u16'], ['message', 'text']],
};

function peerDecode(frame) {
  const layout = PEER_LAYOUTS[frame.opcode];
  if (!layout) throw new ProtocolViolation('unknown peer opcode', { code: 104, codeName: 'UNKNOWN_OPCODE' });
  const r = new Reader(frame.body);
  const out = {};
  for (const [name, kind] of layout) {
    if (typeof kind === 'number') out[name] = r.raw(kind);
    else if (kind === 'u8') out[name] = r.u8();
    else if (kind === 'u16') out[name] = r.u16();
    else if (kind === 'u32') out[name] = r.u32();
    else if (kind === 'u64') out[name] = u64Read(r);
    else if (kind === 'addr') out[name] = addrRead(r);
    else if (kind === 'addrs') out[name] = addrsRead(r);
    else if (kind === 'acks') out[name] = acksRead(r);
    else if (kind === 'record') out[name] = recordRead(r);
    else if (kind === 'text') out[name] = r.string(1024);
  }
  r.end();
  return out;
}

function peerEncode(opcode, fields) {
  const w = new Writer();
  for (const [name, kind] of PEER_LAYOUTS[opcode]) {
    const v = fields[name];
    if (typeof kind === 'number') { assert.equal(v.length, kind); w.raw(v); }
    else if (kind === 'u8') w.u8(v);
    else if (kind === 'u16') w.u16(v);
    else if (kind === 'u32') w.u32(v);
    else if (kind === 'u64') u64Write(w, v);
    else if (kind === 'addr') addrWrite(w, v);
    else if (kind === 'addrs') addrsWrite(w, v);
    else if (kind === 'acks') acksWrite(w, v);
    else if (kind === 'record') recordWrite(w, v);
    else if (kind === 'text') w.string(v, 1024);
  }
  return w.value();
}

function proof(role) {
  const data = Buffer.concat([Buffer.from('sessync-peer-auth'), Buffer.from([role, 1, 0]), NONCE_B, NONCE_A, NODE_B, NODE_A]);
  return createHmac('sha256', SECRET).update(data).digest();
}

const RECORD = { id: SESSION, meta: meta(1, CREATED), attributes: attrs({ user: 'alice' }) };
const PEER = {
  auth_hello: [1, 0x40, { node_id: NODE_B, key_id: 0, nonce: NONCE_B, advertised: ['10.0.0.2', 7401] }],
  auth_challenge: [1, 0xc0, { node_id: NODE_A, nonce: NONCE_A, proof: proof(2), advertised: ['10.0.0.1', 7401] }],
  auth_proof: [2, 0x41, { proof: proof(1) }],
  auth_ok: [2, 0xc1, {}],
  peer_ping: [3, 0x42, { payload: 1n }],
  peer_pong: [3, 0xc2, { payload: 1n }],
  copy: [4, 0x43, { session_id: SESSION, last_transfer: 0n }],
  copy_data: [4, 0xc3, { transfer: TRANSFER, holders: [['10.0.0.2', 7800]], record: RECORD }],
  moved: [6, 0xc4, { session_id: SESSION, owner: ['10.0.0.2', 7401] }],
  moved_v6: [7, 0xc4, { session_id: SESSION, owner: ['fd00::3', 7401] }],
  not_found: [8, 0xc5, { session_id: SESSION }],
  copy_ack: [5, 0x44, { session_id: SESSION, transfer: TRANSFER }],
  ok: [5, 0xc6, {}],
  replicate: [9, 0x45, { generation: 1n, record: RECORD }],
  replicate_claim: [9, 0x50, { generation: 3n, base_owner: ['10.0.0.2', 7400], base_generation: 2n, base_writer: 0x12345679, record: RECORD }],
  drop: [10, 0x46, { session_id: SESSION, generation: 1n }],
  retire: [12, 0x4c, { session_id: SESSION, generation: 3n }],
  copy_refused: [13, 0x4d, { session_id: SESSION, transfer: TRANSFER }],
  features: [3, 0x4e, { features: 1n }],
  features_are: [3, 0xca, { features: 1n }],
  copy_acks: [14, 0x4f, { acks: [[SESSION, TRANSFER], [SESSION_2, 2n]] }],
  promote: [11, 0x47, { session_id: SESSION, last_transfer: 0n, failed_owner: ['10.0.0.1', 7401] }],
  peer_error: [2, 0xff, { code: 201, message: 'peer proof does not verify' }],
};

// Token examples (version 2, protocol.md 8.1): name -> [key id, session id, generation,
// owner, backups].
const TOKEN_VERSION = 2;
const MAX_TOKEN_STR_LEN = 134;
const TOKENS = {
  basic: [0, SESSION, 0n, ['10.0.0.1', 7401], []],
  backups: [1, SESSION_2, 5n, ['fd00::1', 7401], [['10.0.0.2', 7401], ['10.0.0.3', 7401]]],
};

// Parsing protocol.md ------------------------------------------------------------------
const EXAMPLE = /<!-- example: ([a-z-]+) ([a-z0-9_]+) -->\s*```(hex|text)\n([\s\S]*?)```/g;
const EXAMPLES = new Map();
for (const [, kind, name, lang, content] of DOC.matchAll(EXAMPLE)) {
  assert.ok(![...EXAMPLES.keys()].some((k) => k.endsWith(` ${name}`)), `example name ${name} is not unique`);
  assert.equal(lang, kind === 'token' ? 'text' : 'hex', `${kind} ${name}: wrong block language`);
  EXAMPLES.set(`${kind} ${name}`, content);
}

const frameBytes = (kind, name) => Buffer.from(EXAMPLES.get(`${kind} ${name}`).replace(/\s+/g, ''), 'hex');

function wholeFrame(raw) {
  const got = splitFrame(raw, MAX_FRAME);
  assert.ok(got, 'example frame is incomplete');
  assert.equal(got.used, raw.length, 'bytes after the example frame');
  return got.frame;
}

test('every example marker is followed by its block', () => {
  const markers = [...DOC.matchAll(/<!-- example: ([a-z-]+) ([a-z0-9_]+) -->/g)];
  assert.equal(markers.length, EXAMPLES.size);
  assert.ok(EXAMPLES.size > 0, 'no examples found');
});

test('every example is known to this test, and every expected one is in protocol.md', () => {
  const kinds = {
    'client-request': Object.keys(CLIENT_REQUESTS),
    'client-response': Object.keys(CLIENT_RESPONSES),
    peer: Object.keys(PEER),
    token: Object.keys(TOKENS),
  };
  for (const key of EXAMPLES.keys()) {
    if (NOT_SPOKEN.has(key)) continue;
    const [kind, name] = key.split(' ');
    assert.ok(kinds[kind], `unknown example kind ${kind}`);
    assert.ok(kinds[kind].includes(name), `example ${key} has no expected value in this test`);
  }
  for (const [kind, names] of Object.entries(kinds)) {
    for (const name of names) assert.ok(EXAMPLES.has(`${kind} ${name}`), `protocol.md lost the example ${kind} ${name}`);
  }
});

for (const [name, [rid, expected]] of Object.entries(CLIENT_REQUESTS)) {
  test(`client-request ${name}: decodes to the prose and re-encodes byte for byte`, () => {
    const raw = frameBytes('client-request', name);
    const frame = wholeFrame(raw);
    assert.equal(frame.requestId, rid);
    assert.deepEqual(decodeRequest(frame), expected);
    const { opcode, body } = encodeRequest(expected);
    assert.equal(opcode, frame.opcode);
    assert.deepEqual(encodeFrame(opcode, rid, body), raw);
  });
}

for (const [name, [rid, expected]] of Object.entries(CLIENT_RESPONSES)) {
  test(`client-response ${name}: decodes to the prose and re-encodes byte for byte`, () => {
    const raw = frameBytes('client-response', name);
    const frame = wholeFrame(raw);
    assert.equal(frame.requestId, rid);
    assert.deepEqual(decodeReply(frame), expected);
    const { opcode, body } = encodeReply(expected);
    assert.equal(opcode, frame.opcode);
    assert.deepEqual(encodeFrame(opcode, rid, body), raw);
  });
}

for (const [name, [rid, opcode, fields]] of Object.entries(PEER)) {
  test(`peer ${name}: decodes to the prose and re-encodes byte for byte`, () => {
    const raw = frameBytes('peer', name);
    const frame = wholeFrame(raw);
    assert.deepEqual([frame.requestId, frame.opcode], [rid, opcode]);
    assert.deepEqual(peerDecode(frame), fields);
    assert.deepEqual(encodeFrame(opcode, rid, peerEncode(opcode, fields)), raw);
  });
}

test('every opcode of both ports has an example', () => {
  const client = new Set();
  const peer = new Set();
  for (const key of EXAMPLES.keys()) {
    const [kind, name] = key.split(' ');
    if (kind === 'token' || NOT_SPOKEN.has(key)) continue;
    (kind === 'peer' ? peer : client).add(wholeFrame(frameBytes(kind, name)).opcode);
  }
  const want = [...Array.from({ length: 9 }, (_, i) => 0x01 + i), ...Array.from({ length: 5 }, (_, i) => 0x81 + i), 0xff];
  assert.deepEqual([...client].sort((a, b) => a - b), want.sort((a, b) => a - b));
  assert.deepEqual([...peer].sort((a, b) => a - b), Object.keys(PEER_LAYOUTS).map(Number).sort((a, b) => a - b));
});

function b64urlDecodeStrict(s) {
  assert.match(s, /^[A-Za-z0-9_-]*$/, 'not base64url without padding');
  const raw = Buffer.from(s, 'base64url');
  // Unused low bits of the last character are zero: the encoding is canonical.
  assert.equal(raw.toString('base64url'), s);
  return raw;
}

for (const [name, [keyId, sid, generation, owner, backups]] of Object.entries(TOKENS)) {
  test(`token ${name}: verifies with the example secret and holds the stated fields`, () => {
    const text = EXAMPLES.get(`token ${name}`).trim();
    assert.ok(text.length <= MAX_TOKEN_STR_LEN);
    const raw = b64urlDecodeStrict(text);
    assert.ok(raw.length >= 50 && raw.length <= 100, `${raw.length} bytes`);
    assert.equal(raw[0], TOKEN_VERSION);
    assert.equal(raw[1], keyId);
    const body = raw.subarray(0, raw.length - 16);
    const tag = raw.subarray(raw.length - 16);
    assert.deepEqual(tag, createHmac('sha256', SECRET).update(body).digest().subarray(0, 16));
    const r = new Reader(body);
    r.raw(2);
    assert.deepEqual(r.raw(16), sid);
    assert.equal(u64Read(r), generation);
    assert.deepEqual(addrRead(r), owner);
    const n = r.u8();
    assert.deepEqual(Array.from({ length: n }, () => addrRead(r)), backups);
    r.end();
    // Re-signing the stated fields gives the same string.
    const w = new Writer();
    w.raw(Buffer.concat([Buffer.from([TOKEN_VERSION, keyId]), sid]));
    u64Write(w, generation);
    addrWrite(w, owner);
    w.u8(backups.length);
    for (const b of backups) addrWrite(w, b);
    const signed = w.value();
    const full = Buffer.concat([signed, createHmac('sha256', SECRET).update(signed).digest().subarray(0, 16)]);
    assert.equal(full.toString('base64url'), text);
  });
}

test('token basic is the token of the request examples', () => {
  assert.equal(EXAMPLES.get('token basic').trim(), TOKEN);
});

test('the token length bounds of protocol.md 8.1', () => {
  // The shortest token (IPv4 owner, no backups) and the longest (IPv6 owner, two IPv6
  // backups) are 50 and 100 bytes, 67 and MAX_TOKEN_STR_LEN characters.
  const fixed = 2 + 16 + 8 + 1 + 16;
  const [shortest, longest] = [fixed + 7, fixed + 3 * 19];
  assert.deepEqual([shortest, longest], [50, 100]);
  assert.equal(Buffer.alloc(shortest).toString('base64url').length, 67);
  assert.equal(Buffer.alloc(longest).toString('base64url').length, MAX_TOKEN_STR_LEN);
  assert.ok(DOC.includes(`a token string 67 to **${MAX_TOKEN_STR_LEN} characters**`));
  assert.ok(DOC.includes(`at most ${MAX_TOKEN_STR_LEN} characters long`));
});

test('the CRC, address and attribute bytes stated in the prose', () => {
  assert.equal(encodeFrame(0xc1, 2, Buffer.alloc(0)).toString('hex'), '0000001001c10000000000000000000' + '26e59189c');
  let w = new Writer();
  addrWrite(w, ['10.0.0.2', 7401]);
  assert.equal(w.value().toString('hex'), '040a0000021ce9');
  w = new Writer();
  addrWrite(w, ['fd00::3', 7401]);
  assert.equal(w.value().toString('hex'), '06fd0000000000000000000000000000031ce9');
  w = new Writer();
  w.attributes(attrs({ user: 'alice' }));
  assert.equal(w.value().toString('hex'), '0001' + '00047573' + '6572' + '00000005616c696365');
  w = new Writer();
  w.u64(IDLE);
  assert.equal(w.value().toString('hex'), '00000000001b7740');
});

test('the table CRC (for Node without zlib.crc32) agrees with zlib on every example', () => {
  for (const key of EXAMPLES.keys()) {
    const [kind, name] = key.split(' ');
    if (kind === 'token' || NOT_SPOKEN.has(key)) continue;
    const raw = frameBytes(kind, name);
    const content = raw.subarray(4, raw.length - 4);
    assert.equal(crc32Table(content), raw.readUInt32BE(raw.length - 4));
    assert.equal(crc32(content), raw.readUInt32BE(raw.length - 4));
  }
  assert.equal(crc32Table(Buffer.from('123456789')), 0xcbf43926);
});

test('the error table matches the SDK', () => {
  const rows = [...DOC.matchAll(/^\| (\d{3}) \| ([A-Z_]+) \| (yes|no) \|/gm)];
  const table = new Map(rows.map(([, code, name, closes]) => [Number(code), [name, closes === 'yes']]));
  assert.deepEqual(table, ERROR_CODES);
});

test('the limits table matches the SDK', () => {
  const rows = [...DOC.matchAll(/^\| `(max_[a-z_]+)` \| (\d+) \|/gm)];
  const camel = (s) => s.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  assert.deepEqual(Object.fromEntries(rows.map(([, k, v]) => [camel(k), Number(v)])), { ...DEFAULT_LIMITS });
});

test('the handshake example proofs are real', () => {
  assert.equal(proof(2).toString('hex'), 'a096d322dd620ee0c6e6aeb19d0d74f7978947a3ccb54b677f54c05e5717122b');
  assert.equal(proof(1).toString('hex'), '40faec9aec5879442f0f8e9764dc8d17117b327db5aafaa3b57693cec96ba7cd');
});
