// A browser for the tests: a cookie jar and one TCP connection per request (no keep-alive,
// so a round-robin balancer sends each request to the next instance). Bounded waits.

import http from 'node:http';

export class Browser {
  constructor() {
    /** @type {Map<string, string>} */
    this.jar = new Map();
  }

  /** GET `url`; resolves {status, body, setCookies: [names]}. */
  get(url, { timeout = 10_000 } = {}) {
    const cookie = [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ');
    return new Promise((resolve, reject) => {
      const req = http.get(url, { agent: false, headers: cookie ? { cookie } : {}, timeout }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const setCookies = [];
          for (const line of res.headers['set-cookie'] ?? []) {
            const [pair] = line.split(';');
            const i = pair.indexOf('=');
            const name = pair.slice(0, i).trim();
            const value = pair.slice(i + 1).trim();
            setCookies.push(name);
            if (!value || /Max-Age=0/i.test(line)) this.jar.delete(name);
            else this.jar.set(name, value);
          }
          resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString(), setCookies });
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`no answer from ${url} within ${timeout} ms`)));
      req.on('error', reject);
    });
  }
}
