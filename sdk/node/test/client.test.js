// The whole client API against real `sessync node` processes (test/cluster.js).

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import {
  AuthFailed, AuthRequired, Client, ConnectionLost, InvalidRequest, InvalidToken, LimitExceeded, OwnerUnreachable,
  RequestTimeout, Session, SessionNotFound, SessyncError, VersionConflict,
} from '../src/index.js';
import { Cluster } from './cluster.js';

/** Rejects if `p` takes longer than `ms` (every network wait in a test is bounded). */
function within(ms, p) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`no outcome within ${ms} ms`)), ms); })]).finally(() => clearTimeout(t));
}

describe('a three-node cluster', () => {
  let cluster;
  let clients;
  before(async () => {
    cluster = await Cluster.start(3);
    clients = cluster.clients.map((a) => new Client(a, { timeout: 5000 }));
  });
  after(async () => {
    for (const c of clients ?? []) c.close();
    await cluster?.stop();
  });

  test('create, get, set, touch, rotate, destroy, stats, ping', async () => {
    const [a] = clients;
    const s = await a.create({ user: 'alice', bin: Uint8Array.of(0, 255) }, { idleTtl: 60_000, maxLifetime: 3_600_000 });
    assert.ok(s instanceof Session);
    assert.equal(s.tokenChanged, true);
    assert.equal(s.version, 1);
    assert.equal(s.meta.idleTtlMs, 60_000);
    assert.ok(Math.abs(s.meta.absoluteDeadlineMs - (s.meta.createdMs + 3_600_000)) < 5);
    assert.equal(s.expiresAtMs, s.meta.lastAccessMs + 60_000);
    assert.equal(s.text('user'), 'alice');
    assert.deepEqual(s.attributes.get('bin'), Buffer.from([0, 255]));

    const g = await a.get(s.token);
    assert.equal(g.tokenChanged, false);
    assert.equal(g.token, s.token);
    assert.deepEqual([...g.attributes.keys()], ['bin', 'user']);
    const some = await a.get(s.token, ['user', 'missing']);
    assert.deepEqual([...some.attributes.keys()], ['user']);

    const w = await a.set(s.token, { puts: { cart: '1 book' }, deletes: ['bin'], ifVersion: 1 });
    assert.equal(w.version, 2);
    assert.equal(w.attributes.size, 0);
    await assert.rejects(a.set(s.token, { puts: { cart: 'x' }, ifVersion: 1 }), (e) => e instanceof VersionConflict && e.code === 302 && e.codeName === 'VERSION_CONFLICT' && e.applied === 'no');
    assert.equal((await a.get(s.token)).text('cart'), '1 book');
    await assert.rejects(a.set(s.token, { puts: { a: '1' }, deletes: ['a'] }), InvalidRequest);

    const t = await a.touch(s.token);
    assert.equal(t.version, 2);
    assert.equal(t.attributes.size, 0);

    const r = await a.rotate(s.token);
    assert.equal(r.tokenChanged, true);
    assert.notEqual(r.token, s.token);
    assert.equal(r.version, 3);
    assert.equal(r.text('cart'), '1 book');
    await assert.rejects(a.get(s.token), SessionNotFound);

    await a.destroy(r.token);
    await assert.rejects(a.get(r.token), (e) => e instanceof SessionNotFound && e.code === 301 && !e.retryable);
    await assert.rejects(a.destroy(r.token), SessionNotFound);
    await a.destroy(r.token, { missingOk: true });

    const stats = await a.stats();
    assert.equal(typeof stats.requests, 'number');
    assert.ok(stats.created >= 1);
    assert.equal(typeof (await a.ping('hi')), 'number');
  });

  test('errors from the node keep the connection; bad input is refused before sending', async () => {
    const [a] = clients;
    await assert.rejects(a.get('not-a-token'), InvalidToken);
    await assert.rejects(a.set('x'.repeat(300), {}), LimitExceeded);
    await assert.rejects(a.create({ big: Buffer.alloc(1024 * 1024 + 1) }), LimitExceeded);
    await assert.rejects(a.create({ n: 5 }), TypeError);
    const conn = a.conn;
    assert.equal((await a.create({})).version, 1);
    assert.equal(a.conn, conn, 'the same connection');
  });

  test('1000 pipelined requests on one connection', async () => {
    const [a] = clients;
    const tokens = await Promise.all(Array.from({ length: 100 }, (_, i) => a.create({ i: String(i) }).then((s) => s.token)));
    const conn = a.conn;
    const got = await within(30_000, Promise.all(Array.from({ length: 1000 }, (_, i) => a.get(tokens[i % 100], ['i']))));
    got.forEach((s, i) => assert.equal(s.text('i'), String(i % 100)));
    assert.equal(a.conn, conn, 'all on one connection');
    const writes = await Promise.all(Array.from({ length: 1000 }, (_, i) => a.set(tokens[0], { puts: { [`k${i}`]: String(i) } })));
    assert.deepEqual(writes.map((w) => w.version).sort((x, y) => x - y), Array.from({ length: 1000 }, (_, i) => i + 2));
    assert.equal((await a.get(tokens[0])).attributes.size, 1001);
  });

  test('a request that lands on another node: the token changes and the session follows', async () => {
    const [a, b, c] = clients;
    const s = await a.create({ user: 'alice' });
    const atB = await b.get(s.token);
    assert.equal(atB.tokenChanged, true);
    assert.equal(atB.text('user'), 'alice');
    const w = await c.set(atB.token, { puts: { step: '2' }, ifVersion: atB.version });
    assert.equal(w.tokenChanged, true);
    const back = await a.get(w.token);
    assert.equal(back.tokenChanged, true);
    assert.equal(back.text('step'), '2');
    // A stale token is followed too (the nodes forward it), and reads its own writes.
    const stale = await b.get(s.token);
    assert.equal(stale.text('step'), '2');
  });

  test('two concurrent requests changing different keys at different nodes both survive', async () => {
    const [a, b, c] = clients;
    const s = await a.create({ base: '0' });
    await Promise.all([b.set(s.token, { puts: { left: 'L' } }), c.set(s.token, { puts: { right: 'R' } })]);
    const g = await a.get(s.token);
    assert.equal(g.text('left'), 'L');
    assert.equal(g.text('right'), 'R');
    assert.equal(g.version, 3);
  });

  test('logout followed by a slow request does not bring the session back', async () => {
    const [a, b, c] = clients;
    const s = await a.create({ user: 'alice' });
    const moved = await b.get(s.token); // now owned by b; a holds a forwarding entry
    await c.destroy(moved.token); // logout at a third node
    // Slow requests still in flight, with the old and the newer token, at every node.
    for (const [client, token] of [[a, s.token], [b, moved.token], [c, s.token]]) {
      await assert.rejects(client.set(token, { puts: { user: 'mallory' } }), SessionNotFound);
      await assert.rejects(client.touch(token), SessionNotFound);
    }
    for (const client of clients) await assert.rejects(client.get(moved.token), SessionNotFound);
  });
});

describe('failures are bounded and typed', () => {
  test('a node that is down: a clear error, not a hang', async () => {
    const cluster = await Cluster.start(2);
    try {
      const [a, b] = cluster.clients.map((x) => new Client(x, { timeout: 10_000 }));
      const s = await a.create({ x: '1' });
      a.close();
      await cluster.nodes[0].stop();
      // The owner is gone: the other node answers OWNER_UNREACHABLE within its peer timeout.
      const start = Date.now();
      await within(8000, assert.rejects(b.get(s.token), (e) => e instanceof OwnerUnreachable && e.code === 400 && e.retryable));
      assert.ok(Date.now() - start < 5000);
      // The client's own node is gone: the connection is refused at once.
      const dead = new Client(cluster.nodes[0].client, { timeout: 10_000 });
      await within(5000, assert.rejects(dead.get(s.token), (e) => e instanceof ConnectionLost && /cannot connect/.test(e.message) && e.applied === 'no'));
      dead.close();
      b.close();
    } finally {
      await cluster.stop();
    }
  });

  test('a node that stops answering: RequestTimeout after the client timeout', async () => {
    const server = net.createServer(() => {}); // accepts, never answers
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const c = new Client(`127.0.0.1:${server.address().port}`, { timeout: 300 });
    const start = Date.now();
    await within(3000, assert.rejects(c.get('tok'), (e) => e.name === 'RequestTimeout' && e.applied === 'maybe'));
    assert.ok(Date.now() - start < 1500);
    c.close();
    server.close();
  });

  test('a node whose port accepts no connection: the connect is bounded by the timeout', async () => {
    // A listener with a backlog of 1 in a process whose event loop is blocked: once its
    // accept queue is full the kernel drops further SYNs, so a connect hangs.
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['-e', "const s=require('net').createServer();s.listen({port:0,host:'127.0.0.1',backlog:1},()=>{console.log(s.address().port);setTimeout(()=>Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,20000),50)})"], { stdio: ['ignore', 'pipe', 'inherit'] });
    const fillers = [];
    try {
      const port = await within(5000, new Promise((r) => child.stdout.once('data', (d) => r(Number(String(d))))));
      await new Promise((r) => setTimeout(r, 200));
      let connected = 0;
      for (let i = 0; i < 4; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => {});
        s.on('connect', () => connected++);
        fillers.push(s);
      }
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(connected < 4, 'the accept queue is full');
      const c = new Client(`127.0.0.1:${port}`, { timeout: 500 });
      const start = Date.now();
      const results = await within(3000, Promise.allSettled([c.get('a'), c.get('b')]));
      assert.ok(Date.now() - start < 1500);
      for (const r of results) assert.ok(r.reason instanceof RequestTimeout && /cannot connect/.test(r.reason.message) && r.reason.applied === 'no', String(r.reason));
      assert.equal(c.conn.closed, true, 'the stuck connection is dropped');
      c.close();
    } finally {
      for (const s of fillers) s.destroy();
      child.kill('SIGKILL');
    }
  });

  test('password: required, wrong, right', async () => {
    const cluster = await Cluster.start(1, ['--password', 's3cret']);
    try {
      const addr = cluster.clients[0];
      const none = new Client(addr);
      await assert.rejects(none.ping(), (e) => e instanceof AuthRequired && e.code === 200);
      none.close();
      const wrong = new Client(addr, { password: 'wrong' });
      await assert.rejects(wrong.ping(), (e) => e instanceof AuthFailed && e.code === 201);
      wrong.close();
      const right = new Client(addr, { password: 's3cret' });
      assert.equal((await right.create({ a: '1' })).version, 1);
      right.close();
    } finally {
      await cluster.stop();
    }
  });

  test('every error is a SessyncError with code and name', () => {
    const e = new SessionNotFound('gone');
    assert.ok(e instanceof SessyncError && e instanceof Error);
    assert.equal(e.code, 301);
    assert.equal(e.codeName, 'SESSION_NOT_FOUND');
    assert.equal(e.name, 'SessionNotFound');
  });
});

// protocol.md section 4: deadline sums saturate. A session made (by any client) with an
// idle TTL and lifetime of 2^64 - 1 ms is served to this client like any other, its
// times held as Number.MAX_SAFE_INTEGER ("never"), not refused.
test('endless TTLs and lifetimes saturate instead of failing', async () => {
  const { Op, encodeFrame, splitFrame, decodeReply } = await import('../src/wire.js');
  const cluster = await Cluster.start(1);
  try {
    const [host, port] = [cluster.clients[0].replace(/:\d+$/, ''), Number(cluster.clients[0].split(':').pop())];
    // CREATE built by hand (the SDK's writer refuses u64s over 2^53 - 1): idle_ttl_ms and
    // max_lifetime_ms ff x 8, attributes user = alice.
    const body = Buffer.concat([
      Buffer.alloc(16, 0xff),
      Buffer.from([0, 1, 0, 4]), Buffer.from('user'), Buffer.from([0, 0, 0, 5]), Buffer.from('alice'),
    ]);
    const opcode = Op.CREATE;
    const sock = net.connect(port, host);
    const reply = await within(10_000, new Promise((resolve, reject) => {
      let buf = Buffer.alloc(0);
      sock.on('error', reject);
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        const got = splitFrame(buf, 1 << 20);
        if (got) resolve(decodeReply(got.frame));
      });
      sock.write(encodeFrame(opcode, 1, body));
    }));
    sock.destroy();
    assert.equal(reply.type, 'session');
    assert.equal(reply.meta.idleTtlMs, Number.MAX_SAFE_INTEGER);
    assert.equal(reply.meta.absoluteDeadlineMs, Number.MAX_SAFE_INTEGER);
    const client = new Client(cluster.clients[0], { timeout: 5000 });
    const s = await client.get(reply.token);
    assert.equal(s.text('user'), 'alice');
    assert.equal(s.meta.idleTtlMs, Number.MAX_SAFE_INTEGER);
    assert.equal(s.expiresAtMs, Number.MAX_SAFE_INTEGER);
    const endless = await client.create({}, { idleTtl: 1e300 });
    assert.equal(endless.meta.idleTtlMs, Number.MAX_SAFE_INTEGER);
    client.close();
  } finally {
    await cluster.stop();
  }
});
