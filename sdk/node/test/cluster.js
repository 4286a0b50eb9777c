// A real local sessync cluster for the tests: `sessync node` processes sharing a secret.
// Each node binds 127.0.0.1:0 for both ports and prints `ready client=ADDR peer=ADDR`; the
// cluster reads that line (bounded wait) and stops every node at the end (SIGTERM, then
// SIGKILL after a bounded wait).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const READY_TIMEOUT = 15_000;

/** $SESSYNC_BIN, else target/debug/sessync of this repository. */
export function sessyncBinary() {
  if (process.env.SESSYNC_BIN) return process.env.SESSYNC_BIN;
  const path = resolve(HERE, '../../../target/debug/sessync');
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`cargo build --bin sessync\` (or set SESSYNC_BIN)`);
  return path;
}

export class Node {
  constructor(proc, client, peer) {
    this.proc = proc;
    this.client = client;
    this.peer = peer;
  }

  /** Stops the node (SIGTERM, SIGKILL after 5 s). */
  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }

  /** Kills the node at once (a crash). */
  async kill() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGKILL');
    await exited;
  }
}

/** Starts one node; resolves when it printed its ready line. */
export function spawnNode(args) {
  const env = { ...process.env, SESSYNC_LOG: process.env.SESSYNC_LOG ?? 'warn' };
  const proc = spawn(sessyncBinary(), ['node', '--client', '127.0.0.1:0', '--peer', '127.0.0.1:0', ...args], {
    env, stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolveReady, reject) => {
    let line = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`node did not print its ready line within ${READY_TIMEOUT} ms: ${JSON.stringify(line)}`)); }, READY_TIMEOUT);
    const onExit = (code) => { clearTimeout(timer); reject(new Error(`node exited before it was ready (status ${code})`)); };
    proc.once('exit', onExit);
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    proc.stdout.on('data', (d) => {
      if (line.includes('\n')) return;
      line += d.toString();
      if (!line.includes('\n')) return;
      clearTimeout(timer);
      proc.off('exit', onExit);
      const first = line.split('\n')[0];
      const fields = Object.fromEntries(first.split(' ').slice(1).map((p) => p.split('=', 2)));
      if (!first.startsWith('ready ') || !fields.client || !fields.peer) {
        proc.kill('SIGKILL');
        reject(new Error(`unexpected ready line ${JSON.stringify(first)}`));
        return;
      }
      proc.stdout.resume();
      resolveReady(new Node(proc, fields.client, fields.peer));
    });
  });
}

/** `n` nodes sharing one secret file. */
export class Cluster {
  static async start(n, extra = []) {
    const c = new Cluster();
    c.dir = mkdtempSync(join(tmpdir(), 'sessync-node-'));
    c.secretFile = join(c.dir, 'secret');
    writeFileSync(c.secretFile, randomBytes(32).toString('hex') + '\n');
    c.nodes = [];
    try {
      for (let i = 0; i < n; i++) c.nodes.push(await spawnNode(['--secret-file', c.secretFile, ...extra]));
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  get clients() { return this.nodes.map((n) => n.client); }

  async stop() {
    await Promise.all((this.nodes ?? []).map((n) => n.stop()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
