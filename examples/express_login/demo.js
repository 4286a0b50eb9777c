// The express login demo: three `sessync node` processes (one cluster, a fresh random
// secret), an express app instance beside each (in this process, each with its own
// client to its own node), and a tiny round-robin TCP balancer in front. Log in through the
// balancer and every next request lands on another instance; the session follows (instant
// copy between the nodes), and the `sessync` cookie is updated whenever the session moved.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import express from 'express';
import session from 'express-session';
import { Client } from 'sessync';
import { SessyncStore } from 'sessync/express';

const HERE = dirname(fileURLToPath(import.meta.url));
const READY_TIMEOUT = 15_000;

/** $SESSYNC_BIN, else the repository's target/debug/sessync, else `sessync` on the PATH. */
export function sessyncBinary() {
  if (process.env.SESSYNC_BIN) return process.env.SESSYNC_BIN;
  const built = resolve(HERE, '../../target/debug/sessync');
  return existsSync(built) ? built : 'sessync';
}

/** Starts one node on OS-chosen ports; resolves `{proc, client, peer}` at its ready line. */
function startNode(secretFile) {
  const proc = spawn(sessyncBinary(), ['node', '--client', '127.0.0.1:0', '--peer', '127.0.0.1:0', '--secret-file', secretFile], {
    env: { ...process.env, SESSYNC_LOG: process.env.SESSYNC_LOG ?? 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((ok, fail) => {
    let out = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); fail(new Error('sessync node did not get ready in time')); }, READY_TIMEOUT);
    proc.once('error', (e) => { clearTimeout(timer); fail(e); });
    proc.once('exit', (code) => { clearTimeout(timer); fail(new Error(`sessync node exited (status ${code})`)); });
    proc.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n')[0];
      if (!out.includes('\n')) return;
      clearTimeout(timer);
      proc.removeAllListeners('exit');
      proc.stdout.removeAllListeners('data');
      proc.stdout.resume();
      const f = Object.fromEntries(line.split(' ').slice(1).map((p) => p.split('=', 2)));
      if (!line.startsWith('ready ') || !f.client) { proc.kill('SIGKILL'); fail(new Error(`unexpected line ${line}`)); return; }
      ok({ proc, client: f.client, peer: f.peer });
    });
  });
}

/** One app instance: `/login?user=NAME`, `/me`, `/cart?add=ITEM`, `/logout`. */
export function app(instance, client) {
  const store = new SessyncStore(client, { maxLifetime: 12 * 3600_000 });
  const a = express();
  a.use(store.wrap(session({ store, secret: 'demo secret', resave: false, saveUninitialized: false })));
  a.get('/login', (req, res, next) => {
    // A new session id at login (a sessync ROTATE): a session fixed before login is worth nothing.
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.user = String(req.query.user ?? 'anonymous');
      res.send(`instance ${instance}: welcome ${req.session.user}\n`);
    });
  });
  a.get('/me', (req, res) => {
    if (!req.session.user) return res.status(401).send(`instance ${instance}: not logged in\n`);
    res.send(`${req.session.user} via instance ${instance}; cart: ${(req.session.cart ?? []).join(', ')}\n`);
  });
  a.get('/cart', (req, res) => {
    if (!req.session.user) return res.status(401).send(`instance ${instance}: not logged in\n`);
    req.session.cart = [...(req.session.cart ?? []), String(req.query.add)];
    res.send(`instance ${instance}: cart has ${req.session.cart.length}\n`);
  });
  a.get('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.send(`instance ${instance}: bye\n`)));
  });
  return a;
}

/** The balancer: each TCP connection goes to the next backend in turn, relayed byte for
 * byte (so a client that opens one connection per request visits every backend). */
function balance(backends, listen) {
  let next = 0;
  const sockets = new Set();
  const server = net.createServer((inbound) => {
    const backend = backends[next++ % backends.length];
    const outbound = net.connect(backend.port, backend.host);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { inbound.destroy(); outbound.destroy(); });
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  server.sockets = sockets;
  return new Promise((ok) => server.listen(listen.port, listen.host, () => ok(server)));
}

/**
 * Starts `n` nodes, an app instance beside each, and the balancer on `listen`
 * (`{host, port}`; port 0 for any). Resolves `{balancer, instances, stop()}`.
 */
export async function start(n = 3, listen = { host: '127.0.0.1', port: 0 }) {
  const dir = mkdtempSync(join(tmpdir(), 'sessync-express-demo-'));
  const secretFile = join(dir, 'secret');
  writeFileSync(secretFile, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  const nodes = [];
  const clients = [];
  const servers = [];
  const stop = async () => {
    for (const s of servers) { s.closeAllConnections?.(); for (const k of s.sockets ?? []) k.destroy(); s.close(); }
    for (const c of clients) c.close();
    await Promise.all(nodes.map((node) => new Promise((r) => {
      if (node.proc.exitCode !== null || node.proc.signalCode !== null) return r();
      const t = setTimeout(() => node.proc.kill('SIGKILL'), 5000);
      node.proc.once('exit', () => { clearTimeout(t); r(); });
      node.proc.kill('SIGTERM');
    })));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const instances = [];
    for (let i = 0; i < n; i++) {
      const node = await startNode(secretFile);
      nodes.push(node);
      const client = new Client(node.client);
      clients.push(client);
      const server = await new Promise((ok) => { const s = app(i, client).listen(0, '127.0.0.1', () => ok(s)); });
      servers.push(server);
      instances.push({ host: '127.0.0.1', port: server.address().port });
    }
    const lb = await balance(instances, listen);
    servers.push(lb);
    return { balancer: `127.0.0.1:${lb.address().port}`, instances: instances.map((x) => `${x.host}:${x.port}`), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
