// The express-session store (sessync/express) in real express apps, each beside its own
// real `sessync node`, driven by a browser with a cookie jar.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import express from 'express';
import session from 'express-session';

import { Client, SessionNotFound } from '../src/index.js';
import { ID_ATTR, SessyncStore } from '../src/express.js';
import { Cluster } from './cluster.js';
import { Browser } from './http.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Errors the apps' error handlers saw (express-session reports a failed end-of-request
 * save to `next` after the response went out). */
const seen = [];

/** One app instance: login (regenerate), me, put (optionally slow), visit, logout. */
function app(instance, store) {
  const a = express();
  a.use(store.wrap(session({ store, secret: 'test-secret', resave: false, saveUninitialized: false, name: 'sid' })));
  a.get('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.user = req.query.user;
      res.send(`instance ${instance}: welcome ${req.query.user}`);
    });
  });
  a.get('/me', (req, res) => {
    if (!req.session.user) return res.status(401).send(`instance ${instance}: not logged in`);
    res.json({ instance, user: req.session.user, data: req.session.data ?? {} });
  });
  a.get('/put', async (req, res) => {
    const wait = Number(req.query.wait ?? 0);
    if (wait) await sleep(wait);
    req.session.data = undefined;
    req.session[req.query.k] = req.query.v;
    res.send('ok');
  });
  a.get('/visit', (req, res) => {
    req.session.visits = (req.session.visits ?? 0) + 1;
    res.send(String(req.session.visits));
  });
  a.get('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.send('bye')));
  });
  a.get('/plain', (req, res) => res.send('no session change'));
  // eslint-disable-next-line no-unused-vars
  a.use((err, req, res, _next) => {
    seen.push(err);
    if (!res.headersSent) res.status(500).send(`${err.name}: ${err.message}`);
  });
  return a;
}

function listen(a) {
  return new Promise((resolve) => {
    const server = a.listen(0, '127.0.0.1', () => resolve(server));
  });
}

describe('express-session store on a three-node cluster', () => {
  let cluster;
  let clients;
  let servers;
  let urls;
  before(async () => {
    cluster = await Cluster.start(3);
    clients = cluster.clients.map((c) => new Client(c));
    servers = await Promise.all(clients.map((c, i) => listen(app(i, new SessyncStore(c)))));
    urls = servers.map((s) => `http://127.0.0.1:${s.address().port}`);
  });
  after(async () => {
    for (const s of servers ?? []) s.closeAllConnections?.(), s.close();
    for (const c of clients ?? []) c.close();
    await cluster?.stop();
  });

  test('a new session: both cookies in the first response, the data in the next', async () => {
    const b = new Browser();
    const r = await b.get(`${urls[0]}/visit`);
    assert.equal(r.body, '1');
    assert.deepEqual(r.setCookies.sort(), ['sessync', 'sid']);
    assert.equal((await b.get(`${urls[0]}/visit`)).body, '2');
    const nothing = new Browser();
    const p = await nothing.get(`${urls[0]}/plain`);
    assert.deepEqual(p.setCookies, [], 'an untouched session is not created');
  });

  test('the login follows the user to every instance; the token cookie changes at each move', async () => {
    const b = new Browser();
    assert.equal((await b.get(`${urls[0]}/me`)).status, 401);
    const r = await b.get(`${urls[0]}/login?user=alice`);
    assert.equal(r.status, 200, r.body);
    const sid = b.jar.get('sid');
    const tokens = new Set([b.jar.get('sessync')]);
    let prev = b.jar.get('sessync');
    for (const i of [1, 2, 0, 2]) {
      const me = await b.get(`${urls[i]}/me`);
      assert.equal(me.status, 200, me.body);
      assert.deepEqual(JSON.parse(me.body), { instance: i, user: 'alice', data: {} });
      assert.deepEqual(me.setCookies, ['sessync'], 'the moved session hands back a new token');
      assert.notEqual(b.jar.get('sessync'), prev);
      prev = b.jar.get('sessync');
      tokens.add(prev);
      assert.equal(b.jar.get('sid'), sid, "express-session's sid stays the same");
    }
    // A token names (session, generation, owner): one per move, since every move gives
    // the session a newer generation (protocol.md 8.1).
    assert.equal(tokens.size, 5);
    // A request with express-session's cookie but another session's token is not served.
    const other = new Browser();
    await other.get(`${urls[1]}/login?user=bob`);
    other.jar.set('sid', sid);
    assert.equal((await other.get(`${urls[1]}/me`)).status, 401);
  });

  test('a request that only reads the session costs one node request (the GET)', async () => {
    const b = new Browser();
    await b.get(`${urls[0]}/login?user=hank`);
    await b.get(`${urls[0]}/me`);
    const before_ = (await clients[0].stats()).requests;
    assert.equal((await b.get(`${urls[0]}/me`)).status, 200);
    // The stats request itself counts once.
    assert.equal((await clients[0].stats()).requests - before_, 2);
  });

  test('login regenerates: the old token dies at once (ROTATE), the data starts fresh', async () => {
    const b = new Browser();
    await b.get(`${urls[0]}/visit`);
    const before_ = b.jar.get('sessync');
    const sid = b.jar.get('sid');
    await b.get(`${urls[1]}/login?user=carol`);
    assert.notEqual(b.jar.get('sid'), sid, 'a new sid');
    await assert.rejects(clients[2].get(before_), SessionNotFound);
    const s = await clients[2].get(b.jar.get('sessync'));
    assert.equal(s.text('visits'), undefined, 'express-session semantics: regenerate empties the session');
    assert.equal(s.text('user'), '"carol"');
    assert.equal(s.text(ID_ATTR), b.jar.get('sid').split('.')[0].replace(/^s%3A/, ''));
  });

  test('two concurrent requests changing different keys at different instances both survive', async () => {
    const b = new Browser();
    await b.get(`${urls[0]}/login?user=dave`);
    const left = new Browser();
    const right = new Browser();
    left.jar = new Map(b.jar);
    right.jar = new Map(b.jar);
    const errors = async () => (await Promise.all(clients.map((c) => c.stats()))).reduce((n, st) => n + st.errors, 0);
    const errorsBefore = await errors();
    const [l, r] = await Promise.all([left.get(`${urls[1]}/put?k=left&v=L&wait=500`), right.get(`${urls[2]}/put?k=right&v=R&wait=500`)]);
    assert.equal(l.status, 200, l.body);
    assert.equal(r.status, 200, r.body);
    const s = await clients[0].get(b.jar.get('sessync'));
    assert.equal(s.text('left'), '"L"');
    assert.equal(s.text('right'), '"R"');
    assert.equal(s.text('user'), '"dave"');
    // Both loaded the same version: the second save met VERSION_CONFLICT and merged.
    assert.equal(await errors(), errorsBefore + 1);
  });

  test('two concurrent requests changing the same key: one fails, nothing is silently lost', async () => {
    const b = new Browser();
    await b.get(`${urls[0]}/login?user=erin`);
    const one = new Browser();
    const two = new Browser();
    one.jar = new Map(b.jar);
    two.jar = new Map(b.jar);
    seen.length = 0;
    const [x, y] = await Promise.all([one.get(`${urls[1]}/put?k=k&v=one&wait=500`), two.get(`${urls[2]}/put?k=k&v=two&wait=500`)]);
    assert.equal(x.status, 200);
    assert.equal(y.status, 200);
    await sleep(50);
    // express-session reports the failed save to the error handler (the response was
    // already written); the other request's value is kept, not overwritten.
    assert.equal(seen.length, 1, seen.map(String).join('; '));
    assert.equal(seen[0].name, 'SessionConflict');
    assert.equal(seen[0].code, 302);
    const s = await clients[0].get(b.jar.get('sessync'));
    assert.ok(['"one"', '"two"'].includes(s.text('k')));
  });

  test('logout followed by a slow request does not bring the session back', async () => {
    const b = new Browser();
    await b.get(`${urls[0]}/login?user=frank`);
    const token = b.jar.get('sessync');
    const slow = new Browser();
    slow.jar = new Map(b.jar);
    const slowReq = slow.get(`${urls[1]}/put?k=cart&v=book&wait=1000`); // loads now, saves late
    await sleep(100);
    const out = await b.get(`${urls[2]}/logout`);
    assert.equal(out.status, 200);
    assert.equal(b.jar.has('sessync'), false, 'the token cookie is removed');
    seen.length = 0;
    await slowReq;
    await sleep(50);
    assert.equal(seen.length, 1);
    assert.ok(seen[0] instanceof SessionNotFound, String(seen[0]));
    for (const c of clients) await assert.rejects(c.get(token), SessionNotFound);
    assert.equal((await slow.get(`${urls[0]}/me`)).status, 401);
  });
});

describe('absolute lifetime', () => {
  test('a session ends at maxLifetime however active it is', async () => {
    const cluster = await Cluster.start(1);
    const client = new Client(cluster.clients[0]);
    const server = await listen(app(0, new SessyncStore(client, { maxLifetime: 1500 })));
    try {
      const url = `http://127.0.0.1:${server.address().port}`;
      const b = new Browser();
      await b.get(`${url}/login?user=gina`);
      const started = Date.now();
      let last = 200;
      while (Date.now() - started < 6000) {
        last = (await b.get(`${url}/me`)).status;
        if (last === 401) break;
        await sleep(200);
      }
      const lived = Date.now() - started;
      assert.equal(last, 401, 'the session ended');
      assert.ok(lived >= 1200 && lived < 4000, `lived ${lived} ms`);
    } finally {
      server.closeAllConnections?.();
      server.close();
      client.close();
      await cluster.stop();
    }
  });
});

describe('misuse', () => {
  test('the store without its wrapper: a clear error, not a silent session', async () => {
    const client = new Client('127.0.0.1:1'); // never reached
    const store = new SessyncStore(client);
    const a = express();
    a.use(session({ store, secret: 's', resave: false, saveUninitialized: false, name: 'sid' }));
    a.get('/', (req, res) => { req.session.n = 1; res.send('ok'); });
    const errors = [];
    a.use((err, req, res, _next) => { errors.push(err); if (!res.headersSent) res.status(500).send(err.message); });
    const server = await listen(a);
    try {
      const b = new Browser();
      await b.get(`http://127.0.0.1:${server.address().port}/`);
      await sleep(50);
      assert.equal(errors.length, 1);
      assert.match(errors[0].message, /outside store\.wrap/);
      // With express-session's cookie (from the first response) it calls get, and fails.
      assert.ok(b.jar.has('sid'));
      const r = await b.get(`http://127.0.0.1:${server.address().port}/`);
      assert.equal(r.status, 500);
      assert.match(r.body, /outside store\.wrap/);
    } finally {
      server.closeAllConnections?.();
      server.close();
      client.close();
    }
  });
});
