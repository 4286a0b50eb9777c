// Compiled by `tsc --noEmit` only (CI): the declarations describe the API as the README
// uses it. Never run.
import express from 'express';
import session from 'express-session';
import { Client, SessionNotFound, SessyncError, VersionConflict, type Session } from 'sessync';
import { SessyncStore, SessionConflict } from 'sessync/express';
import { splitFrame, encodeFrame, type Reply } from 'sessync/wire';

declare module 'express-session' {
  interface SessionData {
    user: string;
  }
}

export async function api(): Promise<void> {
  const client = new Client('127.0.0.1:7700', { timeout: 2000, password: null });
  const s: Session = await client.create({ user: 'alice', bytes: Uint8Array.of(1) }, { idleTtl: 60_000, maxLifetime: 3_600_000 });
  const g = await client.get(s.token, ['user']);
  const user: string | undefined = g.text('user');
  const raw: Buffer | undefined = g.attributes.get('user');
  const w = await client.set(g.token, { puts: new Map([['cart', 'book']]), deletes: ['csrf'], ifVersion: g.version });
  await client.touch(w.token);
  const r = await client.rotate(w.token);
  await client.destroy(r.token, { missingOk: true });
  const stats: Record<string, number> = await client.stats();
  const ms: number = await client.ping('x');
  try {
    await client.get('x');
  } catch (e) {
    if (e instanceof SessionNotFound || e instanceof VersionConflict) {
      const code: number = e.code;
      const name: string = e.codeName;
      const applied: 'no' | 'yes' | 'maybe' = e.applied;
      void [code, name, applied];
    } else if (e instanceof SessyncError && e.retryable) {
      void e.detail;
    }
  }
  client.close();
  const f = splitFrame(encodeFrame(0x84, 1, new Uint8Array(0)), 1 << 22);
  const reply: Reply | null = f && { type: 'done' };
  void [user, raw, stats, ms, reply];
}

export function app(): express.Express {
  const store = new SessyncStore(new Client(), { maxLifetime: 12 * 3_600_000, secure: true });
  const a = express();
  a.use(store.wrap(session({ store, secret: 's', resave: false, saveUninitialized: false })));
  a.get('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.user = 'alice';
      res.send('hi');
    });
  });
  a.use((err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(err instanceof SessionConflict ? 409 : 500).end();
  });
  return a;
}
