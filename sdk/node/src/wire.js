// The client-port wire format of protocol.md, as plain functions over bytes (no sockets).
//
// Frames (protocol.md section 2): u32 L, then u8 version, u8 opcode, u16 flags, u64 request
// id, the body, and a CRC-32 over header and body; every integer is big-endian.
// `splitFrame` takes one frame off the front of a buffer, telling "need more bytes" (null)
// apart from "these bytes are wrong" (a thrown ProtocolViolation carrying the protocol's
// code); every length and count is checked against the limits before anything is
// allocated for it. Both directions of the client port are here, so the conformance tests
// can decode and re-encode every example of protocol.md, and tests can play a node.

import zlib from 'node:zlib';
import { LimitExceeded, ProtocolViolation } from './errors.js';

export const PROTOCOL_VERSION = 1;
/** version, opcode, flags, request id. */
export const HEADER_LEN = 12;

/** protocol.md section 2.2, the defaults. */
export const DEFAULT_LIMITS = Object.freeze({
  maxFrameLen: 4 * 1024 * 1024,
  maxAttributes: 1024,
  maxNameLen: 256,
  maxValueLen: 1024 * 1024,
  maxTokenLen: 256,
  maxTextLen: 1024,
});

/** Opcodes of the client port (protocol.md section 5). */
export const Op = Object.freeze({
  HELLO: 0x01, PING: 0x02, CREATE: 0x03, GET: 0x04, SET: 0x05, TOUCH: 0x06, ROTATE: 0x07,
  DESTROY: 0x08, STATS: 0x09,
  HELLO_OK: 0x81, PONG: 0x82, SESSION: 0x83, DONE: 0x84, STATS_REPLY: 0x85, ERROR: 0xff,
});

// CRC-32 (IEEE 802.3 / zlib): zlib.crc32 where Node has it (20.15+, 22.2+); else a table.
const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** The CRC-32 of `data` computed with the table (the fallback; exported for its test). */
export function crc32Table(data, prev = 0) {
  let c = (prev ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** CRC-32 of `data` (continuing from `prev`), unsigned. */
export const crc32 = typeof zlib.crc32 === 'function' ? (data, prev = 0) => zlib.crc32(data, prev) >>> 0 : crc32Table;

function malformed(what) {
  return new ProtocolViolation(what, { code: 100, codeName: 'MALFORMED_FRAME' });
}

function over(what, n, limit) {
  return new LimitExceeded(`${what} is ${n}, over the limit of ${limit}`);
}

/**
 * The bytes of one frame: length prefix, header, body, CRC.
 * @param {number} opcode
 * @param {number} requestId
 * @param {Uint8Array} body
 */
export function encodeFrame(opcode, requestId, body, version = PROTOCOL_VERSION) {
  const out = Buffer.allocUnsafe(4 + HEADER_LEN + body.length + 4);
  out.writeUInt32BE(HEADER_LEN + body.length + 4, 0);
  out[4] = version;
  out[5] = opcode;
  out.writeUInt16BE(0, 6);
  out.writeBigUInt64BE(BigInt(requestId), 8);
  out.set(body, 16);
  out.writeUInt32BE(crc32(out.subarray(4, 16 + body.length)), 16 + body.length);
  return out;
}

/**
 * Takes one frame from the front of `buf`: `{frame, used}`, or null when `buf` holds only
 * part of a frame. Throws ProtocolViolation (102, 100, 101 or 103, in protocol.md 2.3's
 * order) for a frame that is wrong; the length prefix is judged before any of the body is
 * waited for.
 * @param {Buffer} buf
 * @param {number} maxFrameLen
 */
export function splitFrame(buf, maxFrameLen) {
  if (buf.length < 4) return null;
  const length = buf.readUInt32BE(0);
  if (length > maxFrameLen) {
    throw new ProtocolViolation(`frame length ${length} exceeds the limit of ${maxFrameLen}`, {
      code: 102, codeName: 'FRAME_TOO_LARGE',
    });
  }
  if (length < HEADER_LEN + 4) throw malformed(`frame length ${length} is below 16`);
  if (buf.length < 4 + length) return null;
  const content = buf.subarray(4, length);
  if (crc32(content) !== buf.readUInt32BE(length)) {
    throw new ProtocolViolation('CRC32 mismatch', { code: 101, codeName: 'BAD_CRC' });
  }
  const version = content[0];
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolViolation(`protocol version ${version}`, { code: 103, codeName: 'UNSUPPORTED_VERSION' });
  }
  const flags = content.readUInt16BE(2);
  if (flags !== 0) throw malformed(`reserved flags 0x${flags.toString(16).padStart(4, '0')} set`);
  const rid = content.readBigUInt64BE(4);
  const frame = {
    version,
    opcode: content[1],
    // Ids this client sends are small; a larger one is answered by no request of ours.
    requestId: rid <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(rid) : -1,
    body: Buffer.from(content.subarray(HEADER_LEN)),
  };
  return { frame, used: 4 + length };
}

/** Reads one body field by field (truncated, invalid or left-over bytes: MALFORMED_FRAME;
 * a length or count over a limit: LIMIT_EXCEEDED, judged before the bytes are read). */
export class Reader {
  constructor(body, limits = DEFAULT_LIMITS) {
    this.b = body;
    this.pos = 0;
    this.limits = limits;
  }

  take(n) {
    const end = this.pos + n;
    if (end > this.b.length) throw malformed('body ends in the middle of a field');
    const out = this.b.subarray(this.pos, end);
    this.pos = end;
    return out;
  }

  remaining() { return this.b.length - this.pos; }
  u8() { return this.take(1)[0]; }
  u16() { return this.take(2).readUInt16BE(0); }
  u32() { return this.take(4).readUInt32BE(0); }
  /** A u64 as a Number; values this client cannot hold exactly (over 2^53 - 1) are refused. */
  u64() {
    const v = this.take(8).readBigUInt64BE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ProtocolViolation(`u64 value ${v} is over 2^53 - 1, which this client cannot represent`, {
        code: 105, codeName: 'LIMIT_EXCEEDED',
      });
    }
    return Number(v);
  }
  /** A u64 duration or deadline as a Number: values over 2^53 - 1 ms (about 285,000 years)
   * mean "never" and are held as Number.MAX_SAFE_INTEGER, as deadline sums saturate
   * (protocol.md section 4). A node sends 2^64 - 1 for an endless idle TTL or lifetime. */
  u64Saturating() {
    const v = this.take(8).readBigUInt64BE(0);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  raw(n) { return Buffer.from(this.take(n)); }

  present() {
    const b = this.u8();
    if (b > 1) throw malformed(`option presence byte ${b}`);
    return b === 1;
  }

  string(limit, what = 'string') {
    const n = this.u16();
    if (n > limit) throw over(`${what} length`, n, limit);
    const bytes = this.take(n);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw malformed(`${what} is not UTF-8`);
    }
  }

  blob(what = 'value') {
    const n = this.u32();
    if (n > this.limits.maxValueLen) throw over(`${what} length`, n, this.limits.maxValueLen);
    return Buffer.from(this.take(n));
  }

  /** Attributes: a Map of name to Buffer, names strictly increasing by UTF-8 bytes. */
  attributes() {
    const n = this.u16();
    if (n > this.limits.maxAttributes) throw over('attribute count', n, this.limits.maxAttributes);
    const out = new Map();
    let prev = null;
    for (let i = 0; i < n; i++) {
      const start = this.pos + 2;
      const name = this.string(this.limits.maxNameLen, 'attribute name');
      const key = this.b.subarray(start, this.pos);
      if (prev !== null && Buffer.compare(key, prev) <= 0) throw malformed('attribute names out of order or repeated');
      prev = key;
      out.set(name, this.blob());
    }
    return out;
  }

  names() {
    const n = this.u16();
    if (n > this.limits.maxAttributes) throw over('name count', n, this.limits.maxAttributes);
    const out = [];
    for (let i = 0; i < n; i++) out.push(this.string(this.limits.maxNameLen, 'attribute name'));
    return out;
  }

  meta() {
    return {
      version: this.u64(),
      createdMs: this.u64(),
      lastAccessMs: this.u64(),
      idleTtlMs: this.u64Saturating(),
      absoluteDeadlineMs: this.u64Saturating(),
    };
  }

  end() {
    if (this.pos !== this.b.length) throw malformed(`${this.b.length - this.pos} bytes left over after the body`);
  }
}

/** Builds one body; every length is checked against the limits before it is written. */
export class Writer {
  constructor(limits = DEFAULT_LIMITS) {
    this.parts = [];
    this.limits = limits;
  }

  value() { return Buffer.concat(this.parts); }
  u8(v) { this.parts.push(Buffer.of(v)); }
  u16(v) { const b = Buffer.allocUnsafe(2); b.writeUInt16BE(v); this.parts.push(b); }
  u32(v) { const b = Buffer.allocUnsafe(4); b.writeUInt32BE(v); this.parts.push(b); }
  u64(v) {
    if (!Number.isSafeInteger(v) || v < 0) throw new LimitExceeded(`${v} is not an integer in 0..2^53-1`);
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(BigInt(v));
    this.parts.push(b);
  }
  raw(b) { this.parts.push(Buffer.from(b)); }

  string(s, limit, what = 'string') {
    const b = Buffer.from(s, 'utf8');
    const max = Math.min(limit, 0xffff);
    if (b.length > max) throw over(`${what} length`, b.length, max);
    this.u16(b.length);
    this.parts.push(b);
  }

  blob(b, what = 'value') {
    const max = Math.min(this.limits.maxValueLen, 0xffffffff);
    if (b.length > max) throw over(`${what} length`, b.length, max);
    this.u32(b.length);
    this.parts.push(Buffer.from(b.buffer, b.byteOffset, b.length));
  }

  /** @param {Map<string, Uint8Array>} attrs */
  attributes(attrs) {
    const max = Math.min(this.limits.maxAttributes, 0xffff);
    if (attrs.size > max) throw over('attribute count', attrs.size, max);
    // The one canonical order: by the names' UTF-8 bytes.
    const items = [...attrs].map(([k, v]) => [Buffer.from(k, 'utf8'), k, v]);
    items.sort((a, b) => Buffer.compare(a[0], b[0]));
    this.u16(items.length);
    for (const [, name, value] of items) {
      this.string(name, this.limits.maxNameLen, 'attribute name');
      this.blob(value);
    }
  }

  names(names) {
    const max = Math.min(this.limits.maxAttributes, 0xffff);
    if (names.length > max) throw over('name count', names.length, max);
    this.u16(names.length);
    for (const n of names) this.string(n, this.limits.maxNameLen, 'attribute name');
  }

  meta(m) {
    for (const v of [m.version, m.createdMs, m.lastAccessMs, m.idleTtlMs, m.absoluteDeadlineMs]) this.u64(v);
  }
}

const TOKEN_OPS = { touch: Op.TOUCH, rotate: Op.ROTATE, destroy: Op.DESTROY };

/**
 * `{opcode, body}` of a request (`{type: 'create', ...}` and so on, see wire.d.ts); throws
 * LimitExceeded for anything over a limit (nothing is cut).
 */
export function encodeRequest(req, limits = DEFAULT_LIMITS) {
  const w = new Writer(limits);
  switch (req.type) {
    case 'hello':
      w.u8(req.minVersion);
      w.u8(req.maxVersion);
      w.string(req.clientName, limits.maxTextLen, 'client name');
      if (req.password == null) w.u8(0);
      else { w.u8(1); w.string(req.password, limits.maxTextLen, 'password'); }
      return { opcode: Op.HELLO, body: w.value() };
    case 'ping':
      w.blob(req.payload, 'ping payload');
      return { opcode: Op.PING, body: w.value() };
    case 'create':
      w.u64(req.idleTtlMs);
      w.u64(req.maxLifetimeMs);
      w.attributes(req.attributes);
      return { opcode: Op.CREATE, body: w.value() };
    case 'get':
      w.string(req.token, limits.maxTokenLen, 'token');
      w.names(req.names);
      return { opcode: Op.GET, body: w.value() };
    case 'set':
      w.string(req.token, limits.maxTokenLen, 'token');
      if (req.ifVersion == null) w.u8(0);
      else { w.u8(1); w.u64(req.ifVersion); }
      w.attributes(req.puts);
      w.names(req.deletes);
      return { opcode: Op.SET, body: w.value() };
    case 'touch':
    case 'rotate':
    case 'destroy':
      w.string(req.token, limits.maxTokenLen, 'token');
      return { opcode: TOKEN_OPS[req.type], body: w.value() };
    case 'stats':
      return { opcode: Op.STATS, body: Buffer.alloc(0) };
    default:
      throw new TypeError(`not a request: ${req && req.type}`);
  }
}

/** The request a frame carries (UNKNOWN_OPCODE, MALFORMED_FRAME or LIMIT_EXCEEDED if bad). */
export function decodeRequest(frame, limits = DEFAULT_LIMITS) {
  const r = new Reader(frame.body, limits);
  let req;
  switch (frame.opcode) {
    case Op.HELLO: {
      const minVersion = r.u8();
      const maxVersion = r.u8();
      const clientName = r.string(limits.maxTextLen, 'client name');
      const password = r.present() ? r.string(limits.maxTextLen, 'password') : null;
      req = { type: 'hello', minVersion, maxVersion, clientName, password };
      break;
    }
    case Op.PING: req = { type: 'ping', payload: r.blob('ping payload') }; break;
    case Op.CREATE: req = { type: 'create', idleTtlMs: r.u64(), maxLifetimeMs: r.u64(), attributes: r.attributes() }; break;
    case Op.GET: req = { type: 'get', token: r.string(limits.maxTokenLen, 'token'), names: r.names() }; break;
    case Op.SET: {
      const token = r.string(limits.maxTokenLen, 'token');
      const ifVersion = r.present() ? r.u64() : null;
      req = { type: 'set', token, ifVersion, puts: r.attributes(), deletes: r.names() };
      break;
    }
    case Op.TOUCH: req = { type: 'touch', token: r.string(limits.maxTokenLen, 'token') }; break;
    case Op.ROTATE: req = { type: 'rotate', token: r.string(limits.maxTokenLen, 'token') }; break;
    case Op.DESTROY: req = { type: 'destroy', token: r.string(limits.maxTokenLen, 'token') }; break;
    case Op.STATS: req = { type: 'stats' }; break;
    default:
      throw new ProtocolViolation(`opcode 0x${frame.opcode.toString(16)} is not a client request`, {
        code: 104, codeName: 'UNKNOWN_OPCODE',
      });
  }
  r.end();
  return req;
}

/** `{opcode, body}` of a reply (`{type: 'session', ...}` and so on). */
export function encodeReply(reply, limits = DEFAULT_LIMITS) {
  const w = new Writer(limits);
  switch (reply.type) {
    case 'hello_ok':
      w.u8(reply.version);
      w.string(reply.serverName, limits.maxTextLen, 'server name');
      w.u32(reply.maxFrameLen);
      return { opcode: Op.HELLO_OK, body: w.value() };
    case 'pong':
      w.blob(reply.payload, 'ping payload');
      return { opcode: Op.PONG, body: w.value() };
    case 'session':
      if (reply.token == null) w.u8(0);
      else { w.u8(1); w.string(reply.token, limits.maxTokenLen, 'token'); }
      w.meta(reply.meta);
      w.attributes(reply.attributes);
      return { opcode: Op.SESSION, body: w.value() };
    case 'done':
      return { opcode: Op.DONE, body: Buffer.alloc(0) };
    case 'stats_reply':
      w.u16(reply.counters.length);
      for (const [name, value] of reply.counters) {
        w.string(name, limits.maxTextLen, 'stat name');
        w.u64(value);
      }
      return { opcode: Op.STATS_REPLY, body: w.value() };
    case 'error':
      w.u16(reply.code);
      w.string(reply.message, limits.maxTextLen, 'error message');
      return { opcode: Op.ERROR, body: w.value() };
    default:
      throw new TypeError(`not a reply: ${reply && reply.type}`);
  }
}

/** The reply a frame carries; the same errors as decodeRequest. */
export function decodeReply(frame, limits = DEFAULT_LIMITS) {
  const r = new Reader(frame.body, limits);
  let reply;
  switch (frame.opcode) {
    case Op.HELLO_OK:
      reply = { type: 'hello_ok', version: r.u8(), serverName: r.string(limits.maxTextLen, 'server name'), maxFrameLen: r.u32() };
      break;
    case Op.PONG: reply = { type: 'pong', payload: r.blob('ping payload') }; break;
    case Op.SESSION: {
      const token = r.present() ? r.string(limits.maxTokenLen, 'token') : null;
      reply = { type: 'session', token, meta: r.meta(), attributes: r.attributes() };
      break;
    }
    case Op.DONE: reply = { type: 'done' }; break;
    case Op.STATS_REPLY: {
      const n = r.u16();
      // protocol.md gives no limit for the counter count; an entry takes at least 10
      // bytes, so a count the body cannot hold is refused before the list is built.
      if (n * 10 > r.remaining()) throw malformed(`stats count ${n} does not fit in the body`);
      const counters = [];
      for (let i = 0; i < n; i++) counters.push([r.string(limits.maxTextLen, 'stat name'), r.u64()]);
      reply = { type: 'stats_reply', counters };
      break;
    }
    case Op.ERROR: reply = { type: 'error', code: r.u16(), message: r.string(limits.maxTextLen, 'error message') }; break;
    default:
      throw new ProtocolViolation(`opcode 0x${frame.opcode.toString(16)} is not a client reply`, {
        code: 104, codeName: 'UNKNOWN_OPCODE',
      });
  }
  r.end();
  return reply;
}
