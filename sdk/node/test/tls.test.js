// TLS to a real node's client port: verified by default, wrong names and unknown CAs
// refused, client certificates when the node asks for them. The certificates are made
// here with the openssl command (.ci/node.sh installs it when missing).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Client, ConnectionLost, SessyncError } from '../src/index.js';
import { Cluster } from './cluster.js';

function within(ms, p) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`no outcome within ${ms} ms`)), ms); })]).finally(() => clearTimeout(t));
}

/** A CA in `dir` (NAME.crt/.key), and leaf certificates for 127.0.0.1 and localhost. */
function makeCa(dir, name) {
  const run = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', `/CN=${name}`, '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)]);
  const leaf = (cn) => {
    const base = join(dir, `${name}-${cn}`);
    run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`,
      '-keyout', `${base}.key`, '-out', `${base}.csr`]);
    writeFileSync(`${base}.ext`, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
    run(['x509', '-req', '-in', `${base}.csr`, '-CA', join(dir, `${name}.crt`), '-CAkey', join(dir, `${name}.key`),
      '-CAcreateserial', '-days', '2', '-extfile', `${base}.ext`, '-out', `${base}.crt`]);
    return { cert: `${base}.crt`, key: `${base}.key` };
  };
  return { ca: join(dir, `${name}.crt`), leaf };
}

describe('TLS to the client port', () => {
  let dir;
  let ca;
  let node;
  let mtls;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sessync-node-tls-'));
    ca = makeCa(dir, 'ca');
    const n = ca.leaf('node');
    node = await Cluster.start(1, ['--client-tls-cert', n.cert, '--client-tls-key', n.key]);
    mtls = await Cluster.start(1, ['--client-tls-cert', n.cert, '--client-tls-key', n.key, '--client-tls-ca', ca.ca]);
  });
  after(async () => {
    await node?.stop();
    await mtls?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a verified TLS connection serves requests', async () => {
    for (const servername of [undefined, 'localhost']) {
      const c = new Client(node.clients[0], { tls: { ca: readFileSync(ca.ca), servername } });
      const s = await within(10_000, c.create({ user: 'alice', blob: Buffer.alloc(300_000, 7) }));
      const got = await within(10_000, c.get(s.token));
      assert.equal(got.text('user'), 'alice');
      assert.equal(got.attributes.get('blob').length, 300_000);
      const many = await within(10_000, Promise.all(Array.from({ length: 200 }, () => c.get(s.token))));
      assert.equal(many.length, 200);
      c.close();
    }
  });

  test('a wrong name or an unknown CA is refused', async () => {
    const wrong = new Client(node.clients[0], { timeout: 3000, tls: { ca: readFileSync(ca.ca), servername: 'wrong.example' } });
    await assert.rejects(within(10_000, wrong.ping()), (e) => e instanceof ConnectionLost && /ALTNAME|altnames|Hostname/i.test(e.message));
    wrong.close();
    const other = makeCa(dir, 'other');
    const unknown = new Client(node.clients[0], { timeout: 3000, tls: { ca: readFileSync(other.ca) } });
    await assert.rejects(within(10_000, unknown.ping()), (e) => e instanceof ConnectionLost && /CERT|certificate|VERIFY/i.test(e.message));
    unknown.close();
  });

  test('client certificates, when the node asks for them', async () => {
    const without = new Client(mtls.clients[0], { timeout: 3000, tls: { ca: readFileSync(ca.ca) } });
    await assert.rejects(within(10_000, without.ping()), (e) => e instanceof SessyncError);
    without.close();
    const app = ca.leaf('app');
    const withCert = new Client(mtls.clients[0], { tls: { ca: readFileSync(ca.ca), cert: readFileSync(app.cert), key: readFileSync(app.key) } });
    await within(10_000, withCert.ping());
    withCert.close();
  });
});
