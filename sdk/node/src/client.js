// The typed API: Client and Session.

import { InvalidRequest, ProtocolViolation, SessionNotFound } from './errors.js';
import { Connection, parseAddress } from './connection.js';
import { DEFAULT_LIMITS } from './wire.js';

export const VERSION = '0.1.0';

/** A session as the node served it. After every call, store `token` (in the user's cookie)
 * in place of the one you passed: it differs (`tokenChanged`) after create and rotate and
 * whenever the session moved to the node that served the request. */
export class Session {
  constructor(token, tokenChanged, meta, attributes) {
    /** The token to keep from now on. */
    this.token = token;
    /** Whether `token` differs from the token passed in (always true after create). */
    this.tokenChanged = tokenChanged;
    /** Version and times (Unix milliseconds) after the request. */
    this.meta = meta;
    /** The attributes the reply carried (all for create, rotate and get without names; the
     * named ones that exist for get with names; none for set and touch). */
    this.attributes = attributes;
  }

  /** The version after this request: what to pass as `ifVersion`. */
  get version() { return this.meta.version; }

  /** When the session ends unless used again (Unix ms): the idle deadline, capped by the
   * absolute deadline if there is one. Saturates at Number.MAX_SAFE_INTEGER ("never"). */
  get expiresAtMs() {
    const idle = Math.min(this.meta.lastAccessMs + this.meta.idleTtlMs, Number.MAX_SAFE_INTEGER);
    return this.meta.absoluteDeadlineMs ? Math.min(idle, this.meta.absoluteDeadlineMs) : idle;
  }

  /** Attribute `name` as UTF-8 text, or undefined. */
  text(name) {
    const v = this.attributes.get(name);
    return v === undefined ? undefined : v.toString('utf8');
  }
}

/** Milliseconds for the wire: undefined/null = the node's default (0), else at least 1. */
function ms(d, what) {
  if (d == null) return 0;
  if (typeof d !== 'number' || !Number.isFinite(d) || d < 0) throw new TypeError(`${what} must be a non-negative number of milliseconds`);
  // Up to 2^53 - 1 ms: longer means "never" just the same (protocol.md section 4).
  return Math.min(Math.max(1, Math.round(d)), Number.MAX_SAFE_INTEGER);
}

function value(v, name) {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`attribute ${JSON.stringify(name)}: values are strings or bytes (Uint8Array), not ${typeof v}`);
}

/** A Map<string, Buffer> from a Map or a plain object of string/bytes values. */
function attrs(a) {
  const out = new Map();
  if (a == null) return out;
  const entries = a instanceof Map ? a.entries() : Object.entries(a);
  for (const [k, v] of entries) {
    if (typeof k !== 'string') throw new TypeError('attribute names are strings');
    out.set(k, value(v, k));
  }
  return out;
}

function names(list, what) {
  const out = [...(list ?? [])];
  for (const n of out) if (typeof n !== 'string') throw new TypeError(`${what} are strings`);
  return out;
}

function sessionOf(reply, oldToken) {
  if (reply.type !== 'session') throw new ProtocolViolation(`expected SESSION, got ${reply.type}`);
  if (reply.token != null) return new Session(reply.token, reply.token !== oldToken, reply.meta, reply.attributes);
  if (oldToken == null) throw new ProtocolViolation('the reply to CREATE or ROTATE carries no token');
  return new Session(oldToken, false, reply.meta, reply.attributes);
}

/**
 * A client of one sessync node (normally the one beside this application server): one
 * multiplexed, pipelined connection, opened on first use and again after it fails.
 * `timeout` (ms) bounds each call, connecting included. A call that times out or loses its
 * connection rejects with RequestTimeout / ConnectionLost (`applied: 'maybe'`): the request
 * is never resent by the client.
 */
export class Client {
  /**
   * @param {string} [address] HOST:PORT of the node's client port
   * @param {{timeout?: number, password?: string|null, clientName?: string, limits?: object, maxIdle?: number, tls?: {ca: string|Buffer, cert?: string|Buffer, key?: string|Buffer, servername?: string}|null}} [options]
   */
  constructor(address = '127.0.0.1:7700', options = {}) {
    this.address = address;
    this.addr = parseAddress(address);
    this.timeout = options.timeout ?? 5000;
    this.password = options.password ?? null;
    this.clientName = options.clientName ?? `sessync-node/${VERSION}`;
    this.limits = Object.freeze({ ...DEFAULT_LIMITS, ...(options.limits ?? {}) });
    /** A connection idle this long (ms) is replaced before use: the node closes idle
     * connections (300 s by default), and a request must not race that close. */
    this.maxIdle = options.maxIdle ?? 60_000;
    /** TLS to a node started with --client-tls-cert: `{ca, cert?, key?, servername?}`. */
    this.tls = options.tls ?? null;
    this.conn = null;
    this.closed = false;
  }

  connection() {
    if (this.closed) throw new Error('the client is closed');
    const c = this.conn;
    if (c && !c.closed && (c.pending.size > 0 || Date.now() - c.lastUsed < this.maxIdle)) return c;
    if (c) c.close();
    this.conn = new Connection(this.addr, { limits: this.limits, password: this.password, clientName: this.clientName, timeout: this.timeout, tls: this.tls });
    return this.conn;
  }

  /** Sends one request; `convert` turns the reply into the result (a wrong reply kind is
   * the node's protocol violation, and closes the connection). */
  async call(req, convert) {
    const conn = this.connection();
    const reply = await conn.request(req, this.timeout);
    try {
      return convert(reply);
    } catch (e) {
      if (e instanceof ProtocolViolation) conn.fail(e);
      throw e;
    }
  }

  /** Creates a session owned by this node. `idleTtl`/`maxLifetime` in ms; omitted: the
   * node's default (30 min idle, no absolute lifetime). */
  async create(attributes, options = {}) {
    return this.call(
      { type: 'create', idleTtlMs: ms(options.idleTtl, 'idleTtl'), maxLifetimeMs: ms(options.maxLifetime, 'maxLifetime'), attributes: attrs(attributes) },
      (r) => sessionOf(r, null),
    );
  }

  /** Reads the session (all attributes, or those of `names` that exist) and refreshes its
   * idle deadline. Rejects with SessionNotFound when it is gone. */
  async get(token, names_) {
    return this.call({ type: 'get', token, names: names(names_, 'names') }, (r) => sessionOf(r, token));
  }

  /** One atomic change: `puts` added or replaced, `deletes` removed, the version bumped by
   * one. With `ifVersion` it applies only at that version, else rejects with
   * VersionConflict and changes nothing. The reply carries no attributes. */
  async set(token, change = {}) {
    const puts = attrs(change.puts);
    const deletes = [...new Set(names(change.deletes, 'deletes'))];
    const both = deletes.find((n) => puts.has(n));
    if (both !== undefined) {
      // The node would answer INVALID_REQUEST; refuse without a round trip.
      throw new InvalidRequest(`attribute ${JSON.stringify(both)} is both put and deleted`);
    }
    const ifVersion = change.ifVersion ?? null;
    return this.call({ type: 'set', token, ifVersion, puts, deletes }, (r) => sessionOf(r, token));
  }

  /** Refreshes the idle deadline without reading the data. */
  async touch(token) {
    return this.call({ type: 'touch', token }, (r) => sessionOf(r, token));
  }

  /** A new id and token for the same data (version + 1); the old token stops working at
   * once. Call it at login, against session fixation. */
  async rotate(token) {
    return this.call({ type: 'rotate', token }, (r) => {
      const s = sessionOf(r, null);
      s.tokenChanged = s.token !== token;
      return s;
    });
  }

  /** Ends the session wherever it lives. With `missingOk` a session already gone is not an
   * error (a logout). */
  async destroy(token, options = {}) {
    try {
      await this.call({ type: 'destroy', token }, (r) => {
        if (r.type !== 'done') throw new ProtocolViolation(`expected DONE, got ${r.type}`);
      });
    } catch (e) {
      if (!(options.missingOk && e instanceof SessionNotFound)) throw e;
    }
  }

  /** The node's counters (their names are not part of the protocol). */
  async stats() {
    return this.call({ type: 'stats' }, (r) => {
      if (r.type !== 'stats_reply') throw new ProtocolViolation(`expected STATS_REPLY, got ${r.type}`);
      const out = Object.create(null);
      for (const [k, v] of r.counters) out[k] = v;
      return out;
    });
  }

  /** A round trip to the node; resolves with its duration in ms. */
  async ping(payload = new Uint8Array(0)) {
    const p = value(payload, 'ping payload');
    const start = performance.now();
    await this.call({ type: 'ping', payload: p }, (r) => {
      if (r.type !== 'pong' || !r.payload.equals(p)) throw new ProtocolViolation('PING not answered by a PONG with the same payload');
    });
    return performance.now() - start;
  }

  /** Closes the connection; requests still waiting fail with ConnectionLost. */
  close() {
    this.closed = true;
    if (this.conn) this.conn.close();
    this.conn = null;
  }
}
