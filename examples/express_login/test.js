// End to end through the balancer: log in, then every request lands on the next app
// instance (each beside its own sessync node), and the login holds on each of them.

import assert from 'node:assert/strict';
import http from 'node:http';
import { test } from 'node:test';

import { start } from './demo.js';

/** A browser with a cookie jar; one TCP connection per request (no keep-alive), so the
 * round-robin balancer sends each request to the next instance. */
class Browser {
  jar = new Map();

  get(addr, path) {
    const cookie = [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ');
    return new Promise((ok, fail) => {
      const req = http.get(`http://${addr}${path}`, { agent: false, headers: cookie ? { cookie } : {}, timeout: 10_000 }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => {
          const setCookies = [];
          for (const line of res.headers['set-cookie'] ?? []) {
            const [pair] = line.split(';');
            const name = pair.slice(0, pair.indexOf('='));
            const value = pair.slice(pair.indexOf('=') + 1);
            setCookies.push(name);
            if (!value || /Max-Age=0/.test(line)) this.jar.delete(name);
            else this.jar.set(name, value);
          }
          ok({ status: res.statusCode, body, setCookies });
        });
      });
      req.on('timeout', () => req.destroy(new Error('the demo did not answer in time')));
      req.on('error', fail);
    });
  }
}

test('a login survives landing on every instance; logout anywhere ends it everywhere', async () => {
  const demo = await start(3);
  try {
    const lb = demo.balancer;
    const alice = new Browser();
    assert.equal((await alice.get(lb, '/me')).status, 401);
    const login = await alice.get(lb, '/login?user=alice');
    assert.equal(login.status, 200, login.body);
    assert.match(login.body, /^instance \d: welcome alice/);
    const sid = alice.jar.get('connect.sid');
    const tokens = new Set([alice.jar.get('sessync')]);
    const seen = new Set();
    for (let i = 0; i < 6; i++) {
      const r = await alice.get(lb, i === 2 ? '/cart?add=book' : '/me');
      assert.equal(r.status, 200, r.body);
      if (i !== 2) {
        const [, user, instance] = r.body.match(/^(\w+) via instance (\d)/);
        assert.equal(user, 'alice');
        seen.add(instance);
      }
      // Every request lands on another instance than the last, so the session moves each
      // time and the response carries its new token.
      assert.deepEqual(r.setCookies, ['sessync'], r.body);
      tokens.add(alice.jar.get('sessync'));
      assert.equal(alice.jar.get('connect.sid'), sid, "express-session's cookie stays the same");
    }
    assert.equal(seen.size, 3, `the login held on every instance: ${[...seen]}`);
    // Every move gives the session a newer generation, which its token names (protocol.md
    // 8.1): the login token and one per move.
    assert.equal(tokens.size, 7, 'one token per move');
    assert.match((await alice.get(lb, '/me')).body, /cart: book/);

    // Another user in between is not alice.
    const bob = new Browser();
    assert.equal((await bob.get(lb, '/login?user=bob')).status, 200);
    assert.match((await bob.get(lb, '/me')).body, /^bob via/);
    assert.match((await alice.get(lb, '/me')).body, /^alice via/);

    // Logout anywhere ends it everywhere.
    const stolen = new Map(alice.jar);
    assert.equal((await alice.get(lb, '/logout')).status, 200);
    assert.equal(alice.jar.has('sessync'), false);
    for (let i = 0; i < 3; i++) assert.equal((await alice.get(lb, '/me')).status, 401);
    // The cookies from before the logout are worth nothing on any instance.
    const thief = new Browser();
    thief.jar = stolen;
    for (let i = 0; i < 3; i++) assert.equal((await thief.get(lb, '/me')).status, 401);
  } finally {
    await demo.stop();
  }
});
