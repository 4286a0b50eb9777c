// One multiplexed, pipelined TCP connection to a node's client port.
//
// Requests go out as soon as they are made (writes within one tick are corked into one
// send) and replies are matched by request id, in any order (protocol.md 2.4). HELLO is
// the first request on every connection; requests made meanwhile are pipelined behind it.
//
// Every failure that leaves the stream in an unknown state (a frame error either way, an
// ERROR that closes, EOF, a socket error) closes the connection and fails every request
// still waiting on it with one typed error. Nothing is ever resent: a request whose reply
// was lost may or may not have been applied, and only the caller can tell whether to
// repeat it. The read buffer never holds more than one frame (whose length prefix was
// checked against the limit first) plus one socket read.

import net from 'node:net';
import tls from 'node:tls';
import { CLOSING_CODES, ConnectionLost, LimitExceeded, ProtocolViolation, RequestTimeout, SessyncError, errorFromCode } from './errors.js';
import { Op, PROTOCOL_VERSION, decodeReply, encodeFrame, encodeRequest, splitFrame } from './wire.js';

/** Timed-out request ids remembered so their late replies are discarded (protocol.md
 * 2.4); past this many the connection is closed instead (it is too slow to be useful). */
const MAX_ABANDONED = 4096;
/** HELLO is the first request of every connection. */
const HELLO_ID = 1;

/**
 * `"127.0.0.1:7700"`, `"[::1]:7700"` or `"localhost:7700"` -> `{host, port}`.
 * @param {string} address
 */
export function parseAddress(address) {
  const i = address.lastIndexOf(':');
  const port = Number(address.slice(i + 1));
  let host = address.slice(0, i);
  if (i < 0 || !/^\d+$/.test(address.slice(i + 1)) || port > 65535 || !host) {
    throw new TypeError(`address ${JSON.stringify(address)} is not HOST:PORT`);
  }
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port };
}

export class Connection {
  /**
   * @param {{host: string, port: number}} addr
   * @param {{limits: any, password: string|null, clientName: string, timeout: number, tls?: {ca: string|Buffer, cert?: string|Buffer, key?: string|Buffer, servername?: string}|null}} opts
   */
  constructor(addr, opts) {
    this.addr = addr;
    this.limits = opts.limits;
    this.timeout = opts.timeout;
    this.closed = false;
    this.serverName = '';
    /** The longest frame we may send: ours, lowered to the node's HELLO_OK. */
    this.maxSendFrame = opts.limits.maxFrameLen;
    this.lastUsed = Date.now();
    this.nextId = 1;
    /** @type {Map<number, {resolve: Function, reject: Function, timer: any}>} */
    this.pending = new Map();
    this.abandoned = new Set();
    this.chunks = [];
    this.buffered = 0;
    this.need = 4;
    this.failure = null;
    this.corked = false;

    // TLS (options.tls): TLS 1.3, the node's certificate verified against `ca` and the
    // name (`servername`, else the host, an IP address checked against IP SANs).
    this.socket = opts.tls
      ? tls.connect({
        host: addr.host,
        port: addr.port,
        minVersion: 'TLSv1.3',
        ca: opts.tls.ca,
        cert: opts.tls.cert,
        key: opts.tls.key,
        ...(opts.tls.servername ? { servername: opts.tls.servername } : {}),
      })
      : net.connect({ host: addr.host, port: addr.port });
    this.socket.setNoDelay(true);
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.socket.on('error', (e) => {
      // A connection that never opened sent nothing: its requests were not applied.
      if (!this.everConnected) this.fail(new ConnectionLost(`cannot connect to ${addr.host}:${addr.port}: ${e.code || e.message}`, { applied: 'no' }));
      else this.fail(new ConnectionLost(`connection failed: ${e.code || e.message}`));
    });
    this.everConnected = false;
    this.socket.on(opts.tls ? 'secureConnect' : 'connect', () => { this.everConnected = true; });
    this.socket.on('close', () => this.fail(new ConnectionLost('the node closed the connection')));
    this.socket.unref();

    const hello = { type: 'hello', minVersion: PROTOCOL_VERSION, maxVersion: PROTOCOL_VERSION, clientName: opts.clientName, password: opts.password };
    this.request(hello, this.timeout).then(
      (reply) => {
        if (reply.type !== 'hello_ok') {
          this.fail(new ProtocolViolation(`HELLO answered with ${reply.type}`));
        } else if (reply.version !== PROTOCOL_VERSION) {
          this.fail(new ProtocolViolation(`HELLO_OK chose version ${reply.version}, outside [1, 1]`, { code: 103, codeName: 'UNSUPPORTED_VERSION' }));
        } else {
          this.serverName = reply.serverName;
          this.maxSendFrame = Math.min(this.maxSendFrame, reply.maxFrameLen);
        }
      },
      (err) => {
        // AUTH_REQUIRED keeps the connection open (every request then gets it too); any
        // other failure of HELLO ends the connection and everything queued behind it.
        if (!(err instanceof SessyncError && err.code === 200)) this.fail(err);
      },
    );
  }

  /**
   * Sends one request; resolves with its decoded reply, or rejects with the node's ERROR
   * (a SessyncError) or the failure that ended the connection. Throws synchronously (before
   * anything is sent) for a request over a limit.
   */
  request(req, timeout) {
    if (this.closed) return Promise.reject(this.failure ?? new ConnectionLost('connection already closed'));
    const { opcode, body } = encodeRequest(req, this.limits);
    if (12 + body.length + 4 > this.maxSendFrame) {
      throw new LimitExceeded(`request frame of ${12 + body.length + 4} bytes exceeds the node's limit of ${this.maxSendFrame}`);
    }
    const id = this.nextId++;
    const frame = encodeFrame(opcode, id, body);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.pending.has(id)) return;
        if (!this.everConnected) {
          // Still connecting (a host that drops packets): give up on this connection, and
          // fail everything queued on it; nothing was sent.
          this.fail(new RequestTimeout(`cannot connect to ${this.addr.host}:${this.addr.port} within ${timeout} ms`, { applied: 'no' }));
          return;
        }
        this.pending.delete(id);
        this.abandoned.add(id);
        this.idle();
        reject(new RequestTimeout(`no reply within ${timeout} ms; the request may or may not have been applied`));
        if (this.abandoned.size > MAX_ABANDONED) this.fail(new ConnectionLost('too many requests timed out on this connection'));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      if (this.pending.size === 1) this.socket.ref();
      this.lastUsed = Date.now();
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(() => { this.corked = false; this.socket.uncork(); });
      }
      this.socket.write(frame);
    });
  }

  idle() {
    if (this.pending.size === 0) this.socket.unref();
  }

  /** Closes the connection; every waiting request fails with `err`. */
  fail(err) {
    if (!this.failure) this.failure = err;
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.chunks = [];
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const p of waiting) {
      clearTimeout(p.timer);
      p.reject(this.failure);
    }
  }

  close() {
    this.fail(new ConnectionLost('the client was closed'));
  }

  onData(chunk) {
    if (this.closed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered < this.need) return;
    let buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
    try {
      for (;;) {
        const got = splitFrame(buf, this.limits.maxFrameLen);
        if (got === null) break;
        buf = buf.subarray(got.used);
        this.handle(got.frame);
        if (this.closed) return;
      }
    } catch (e) {
      this.fail(e instanceof SessyncError ? e : new ProtocolViolation(String(e)));
      return;
    }
    // Keep the rest (part of one frame), copied so the big buffer it came from is freed.
    this.chunks = buf.length ? [Buffer.from(buf)] : [];
    this.buffered = buf.length;
    this.need = buf.length >= 4 ? 4 + buf.readUInt32BE(0) : 4;
  }

  handle(frame) {
    this.lastUsed = Date.now();
    if (frame.opcode === Op.ERROR && frame.requestId === 0) {
      // About the connection as a whole (a framing error, idle timeout, too many
      // connections): the node closes it; every waiting request fails with it.
      let reply;
      try {
        reply = decodeReply(frame, this.limits);
      } catch (e) {
        this.fail(e);
        return;
      }
      this.fail(errorFromCode(reply.code, reply.message));
      return;
    }
    const p = this.pending.get(frame.requestId);
    if (!p) {
      if (this.abandoned.delete(frame.requestId)) return; // a late reply: discarded
      this.fail(new ProtocolViolation(`reply for request id ${frame.requestId}, which is not outstanding`));
      return;
    }
    this.pending.delete(frame.requestId);
    clearTimeout(p.timer);
    this.idle();
    let reply;
    try {
      reply = decodeReply(frame, this.limits);
    } catch (e) {
      // The frame was intact but its body was not (or was over this client's limits): a
      // node that sends such bodies is not trusted further. A reply the client could not
      // read says nothing of whether the request was applied.
      p.reject(e instanceof ProtocolViolation ? e : new ProtocolViolation(e.detail ?? String(e), { code: e.code, codeName: e.codeName }));
      this.fail(new ProtocolViolation(`an earlier reply was undecodable: ${e.message}`));
      return;
    }
    if (reply.type === 'error') {
      const err = errorFromCode(reply.code, reply.message);
      p.reject(err);
      if (CLOSING_CODES.has(reply.code)) {
        // A failed HELLO (AUTH_FAILED) is what every request queued behind it failed of.
        this.fail(frame.requestId === HELLO_ID ? err : new ConnectionLost(`the node closed the connection after ${err.codeName}`));
      }
      return;
    }
    p.resolve(reply);
  }
}
