// Bad input from a "node": a net.Server in this test that answers HELLO, then misbehaves.
// A reply over the client's limits, a bad CRC, garbage, a reply to no request, a
// truncated body or the wrong reply kind fail that connection's waiting requests with a
// typed error, close the connection, and never crash the process; the next request opens
// a fresh connection.

import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';

import { Client, ConnectionLost, NodeTimeout, ProtocolViolation, RequestTimeout } from '../src/index.js';
import { Op, decodeRequest, encodeFrame, encodeReply, splitFrame } from '../src/wire.js';

const META = { version: 1, createdMs: 1, lastAccessMs: 1, idleTtlMs: 1000, absoluteDeadlineMs: 0 };

function replyFrame(rid, reply) {
  const { opcode, body } = encodeReply(reply);
  return encodeFrame(opcode, rid, body);
}

const session = (attrs = new Map()) => ({ type: 'session', token: null, meta: META, attributes: attrs });

/** A fake node: answers HELLO on each connection, then runs `script(socket, nextFrame)`. */
class FakeNode {
  static async start(script) {
    const f = new FakeNode();
    f.connections = 0;
    f.sockets = new Set();
    f.server = net.createServer((sock) => {
      f.connections++;
      f.sockets.add(sock);
      sock.on('close', () => f.sockets.delete(sock));
      sock.on('error', () => {});
      let buf = Buffer.alloc(0);
      const waiters = [];
      const pump = () => {
        while (waiters.length) {
          const got = splitFrame(buf, 1 << 22);
          if (!got) return;
          buf = buf.subarray(got.used);
          waiters.shift()(got.frame);
        }
      };
      sock.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
      const next = () => new Promise((r) => { waiters.push(r); pump(); });
      (async () => {
        const hello = await next();
        assert.equal(hello.opcode, Op.HELLO);
        sock.write(replyFrame(hello.requestId, { type: 'hello_ok', version: 1, serverName: 'fake', maxFrameLen: 1 << 22 }));
        await script(sock, next);
      })().catch(() => sock.destroy());
    });
    await new Promise((r) => f.server.listen(0, '127.0.0.1', r));
    f.addr = `127.0.0.1:${f.server.address().port}`;
    return f;
  }

  close() {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(r));
  }
}

function within(ms, p) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`no outcome within ${ms} ms`)), ms); })]).finally(() => clearTimeout(t));
}

/** After one misbehaviour per connection, answers every request well. */
async function misbehaveOnce(sock, next, bad) {
  const f = await next();
  const good = replyFrame(f.requestId, session());
  if (bad === 'bad_crc') sock.write(Buffer.concat([good.subarray(0, -1), Buffer.of(good.at(-1) ^ 0xff)]));
  else if (bad === 'garbage') sock.write(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'));
  else if (bad === 'too_large') { sock.write(Buffer.from([0x7f, 0xff, 0xff, 0xff])); sock.write(Buffer.alloc(65536, 1)); }
  else if (bad === 'over_client_limit') sock.write(replyFrame(f.requestId, session(new Map([['v', Buffer.alloc(200_000)]]))));
  else if (bad === 'too_short') sock.write(Buffer.from([0, 0, 0, 3, 1, 2, 3]));
  else if (bad === 'unknown_id') sock.write(replyFrame(f.requestId + 1000, session()));
  else if (bad === 'truncated_body') {
    const { opcode, body } = encodeReply(session());
    sock.write(encodeFrame(opcode, f.requestId, body.subarray(0, -1)));
  } else if (bad === 'wrong_kind') sock.write(replyFrame(f.requestId, { type: 'hello_ok', version: 1, serverName: 'x', maxFrameLen: 1 }));
  else if (bad === 'bad_version') sock.write(encodeFrame(Op.SESSION, f.requestId, encodeReply(session()).body, 7));
  else if (bad === 'count_over_limit') {
    // An attribute count of 60000 in a tiny body: refused from the count, nothing allocated.
    const body = Buffer.concat([Buffer.from([0]), Buffer.alloc(40), Buffer.from([0xea, 0x60])]);
    sock.write(encodeFrame(Op.SESSION, f.requestId, body));
  }
  for (;;) {
    const g = await next();
    sock.write(replyFrame(g.requestId, session()));
  }
}

describe('a misbehaving node', () => {
  const cases = {
    bad_crc: 101, garbage: 102, too_large: 102, over_client_limit: 102, too_short: 100, unknown_id: 0,
    truncated_body: 100, wrong_kind: 0, bad_version: 103, count_over_limit: 105,
  };
  for (const [bad, code] of Object.entries(cases)) {
    test(`${bad}: the waiting requests fail with a typed error and the connection is replaced`, async () => {
      const node = await FakeNode.start((s, n) => misbehaveOnce(s, n, bad));
      const c = new Client(node.addr, { timeout: 3000, limits: { maxFrameLen: 100_000 } });
      const results = await within(5000, Promise.allSettled([c.get('a'), c.get('b'), c.get('c')]));
      // A reply of the wrong kind is seen only after the frames behind it were read (and
      // those were good replies); every other misbehaviour fails all three.
      for (const r of bad === 'wrong_kind' ? results.slice(0, 1) : results) {
        assert.equal(r.status, 'rejected');
        assert.ok(r.reason instanceof ProtocolViolation || r.reason instanceof ConnectionLost, `${r.reason}`);
      }
      const first = results[0].reason;
      assert.ok(first instanceof ProtocolViolation, `${first}`);
      if (code) assert.equal(first.code, code, first.message);
      assert.equal(first.applied, 'maybe');
      const dead = c.conn;
      assert.equal(dead.closed, true);
      assert.equal(dead.pending.size, 0, 'no request left waiting');
      assert.equal(dead.chunks.length, 0, 'no buffered bytes kept');
      // A new request opens a new connection, which misbehaves once more.
      await within(5000, assert.rejects(c.get('d'), ProtocolViolation));
      assert.equal(node.connections, 2);
      c.close();
      await node.close();
    });
  }

  test('a length prefix over the limit fails at once, without waiting for the body', async () => {
    const node = await FakeNode.start(async (sock, next) => {
      await next();
      sock.write(Buffer.from([0x00, 0x40, 0x00, 0x01])); // 4 MiB + 1, and no body ever
    });
    const c = new Client(node.addr, { timeout: 10_000 });
    const start = Date.now();
    await within(3000, assert.rejects(c.get('x'), (e) => e instanceof ProtocolViolation && e.code === 102));
    assert.ok(Date.now() - start < 2000);
    c.close();
    await node.close();
  });

  test('replies in any order are matched by request id', async () => {
    const node = await FakeNode.start(async (sock, next) => {
      for (;;) {
        const frames = [await next(), await next(), await next()];
        for (const f of frames.reverse()) {
          const req = decodeRequest(f);
          sock.write(replyFrame(f.requestId, session(new Map([['t', Buffer.from(req.token)]]))));
        }
      }
    });
    const c = new Client(node.addr, { timeout: 3000 });
    const got = await within(5000, Promise.all(['a', 'b', 'c'].map((t) => c.get(t))));
    assert.deepEqual(got.map((s) => s.text('t')), ['a', 'b', 'c']);
    assert.deepEqual(got.map((s) => s.token), ['a', 'b', 'c']);
    c.close();
    await node.close();
  });

  test('an ERROR with request id 0 fails every waiting request and closes', async () => {
    const node = await FakeNode.start(async (sock, next) => {
      await next();
      await next();
      sock.write(replyFrame(0, { type: 'error', code: 503, message: 'idle' }));
    });
    const c = new Client(node.addr, { timeout: 3000 });
    const results = await within(5000, Promise.allSettled([c.get('x'), c.get('y')]));
    for (const r of results) assert.ok(r.reason instanceof NodeTimeout && r.reason.code === 503 && r.reason.codeName === 'TIMEOUT');
    assert.equal(c.conn.closed, true);
    c.close();
    await node.close();
  });

  test('a timed-out request: its late reply is discarded and the connection kept', async () => {
    const node = await FakeNode.start(async (sock, next) => {
      const f = await next();
      await new Promise((r) => setTimeout(r, 600)); // too late
      sock.write(replyFrame(f.requestId, session()));
      for (;;) {
        const g = await next();
        sock.write(replyFrame(g.requestId, session(new Map([['ok', Buffer.from('1')]]))));
      }
    });
    const c = new Client(node.addr, { timeout: 300 });
    const start = Date.now();
    await assert.rejects(c.get('tok'), RequestTimeout);
    assert.ok(Date.now() - start < 1000);
    await new Promise((r) => setTimeout(r, 500)); // the late reply arrives meanwhile
    assert.equal((await c.get('tok')).text('ok'), '1');
    assert.equal(node.connections, 1);
    c.close();
    await node.close();
  });

  test('a lost connection fails the write in flight and never resends it', async () => {
    const received = [];
    const node = await FakeNode.start(async (sock, next) => {
      for (;;) {
        const f = await next();
        const req = decodeRequest(f);
        received.push(req.type);
        if (req.type === 'set') { sock.destroy(); return; } // dies before answering
        sock.write(replyFrame(f.requestId, session()));
      }
    });
    const c = new Client(node.addr, { timeout: 3000 });
    await assert.rejects(c.set('tok', { puts: { a: '1' } }), (e) => e instanceof ConnectionLost && e.applied === 'maybe');
    await c.get('tok'); // a new connection
    await c.get('tok');
    assert.equal(node.connections, 2);
    assert.deepEqual(received, ['set', 'get', 'get'], 'the SET went out once');
    c.close();
    await node.close();
  });

  test('a connection the node closed while idle is not used again', async () => {
    const node = await FakeNode.start(async (sock, next) => {
      const f = await next();
      sock.write(replyFrame(f.requestId, session()));
      sock.end(); // e.g. the node's idle timeout
    });
    const c = new Client(node.addr, { timeout: 3000 });
    await c.get('tok');
    await new Promise((r) => setTimeout(r, 200));
    await c.get('tok');
    assert.equal(node.connections, 2);
    c.close();
    await node.close();
  });

  test('a frame that never completes: buffering is bounded by its length, and freed', async () => {
    const node = await FakeNode.start(async (sock, next) => {
      await next();
      // A prefix announcing 1 MiB, then 256 KiB of junk and a hang: never completed.
      sock.write(Buffer.from([0x00, 0x10, 0x00, 0x00]));
      sock.write(Buffer.alloc(1 << 18, 0xab));
    });
    const c = new Client(node.addr, { timeout: 300 });
    for (let i = 0; i < 20; i++) {
      await assert.rejects(c.get('x'), RequestTimeout);
      const conn = c.conn;
      assert.ok(conn.buffered <= 4 + (1 << 20), `buffered ${conn.buffered}`);
      assert.equal(conn.need, 4 + (1 << 20), 'waits for exactly the announced frame');
      conn.close(); // a client that gives up on a stuck connection
      assert.equal(conn.chunks.length, 0);
      assert.equal(conn.pending.size, 0);
    }
    assert.equal(node.connections, 20);
    c.close();
    await node.close();
  });
});
