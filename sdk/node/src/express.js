// sessync/express: an express-session Store whose sessions live in sessync, and the
// middleware wrapper that carries the sessync token in its own cookie.
//
// Why a wrapper (the same reason as crates/tower-store): express-session owns its cookie.
// Its value is the session id (`sid`) express-session generates itself, synchronously,
// before any store call, and signs with the app's secret; the store cannot choose or change
// it. A sessync session is named by a *token* instead: a signed string that also names the
// node holding the session, and that changes whenever the session moves to another node,
// at ROTATE, and at CREATE. A sid cannot find a session on another node (there is no
// cluster-wide directory, by design), and a sid->token map in one app instance does not
// help when the next request lands on another instance. Worse, express-session writes the
// response headers (its Set-Cookie included) *before* the store's `set` finishes, so even a
// store that could change the sid could not send the new one.
//
// So `store.wrap(session({store, ...}))` returns a middleware that:
// - reads the token from its own cookie (`sessync` by default) into a per-request slot the
//   store uses (express-session's Store interface passes only the sid);
// - holds the response head (writeHead, write, end) while a store call is in flight, so
//   the Set-Cookie for a token a reply has just handed back (a CREATE at the end of the
//   first request, a SET that found the session moved) goes out with this response;
// - sends the cookie again whenever the token changed, and removes it when the session was
//   destroyed.
// The store keeps express-session's sid inside the session (attribute
// `__express_session.id`) and serves a session only when the stored sid equals the sid in
// express-session's cookie: both cookies must belong together.

import session from 'express-session';
import { InvalidToken, SessionNotFound, VersionConflict } from './errors.js';

/** The token cookie's default name. */
export const DEFAULT_COOKIE_NAME = 'sessync';
/** Times a save is merged onto a newer version of the session before it fails. */
export const MAX_MERGES = 3;
/** The attribute holding express-session's sid. */
export const ID_ATTR = '__express_session.id';
/** The attribute holding express-session's cookie settings (JSON). */
export const COOKIE_ATTR = '__express_session.cookie';
const RESERVED = '__express_session.';

const SLOT = Symbol('sessync.slot');
const VIEW_SLOT = Symbol('sessync.viewSlot');
const CURRENT = Symbol('sessync.current');

/** Another request changed the same session key(s) since this request read the session;
 * this request's change was not written. */
export class SessionConflict extends VersionConflict {}

const gone = (e) => e instanceof SessionNotFound || e instanceof InvalidToken;

/** What to write to turn `old` into `next` (Maps of name to Buffer). */
export function diff(old, next) {
  const puts = new Map();
  for (const [k, v] of next) if (!old.has(k) || !old.get(k).equals(v)) puts.set(k, v);
  const deletes = [...old.keys()].filter((k) => !next.has(k));
  return { puts, deletes };
}

const same = (a, b) => (a === undefined ? b === undefined : b !== undefined && a.equals(b));

function cookieValue(req, name) {
  const header = req.headers.cookie;
  if (!header) return null;
  for (const pair of header.split(';')) {
    const i = pair.indexOf('=');
    if (i < 0 || pair.slice(0, i).trim() !== name) continue;
    const v = pair.slice(i + 1).trim().replace(/^"(.*)"$/, '$1');
    return v || null;
  }
  return null;
}

/**
 * An express-session store backed by a sessync Client. Use it only through `wrap`:
 *
 *     const store = new SessyncStore(client, { maxLifetime: 12 * 3600_000 });
 *     app.use(store.wrap(session({ store, secret, resave: false, saveUninitialized: false })));
 *
 * Storage format: one sessync attribute per key of the session data, holding the value as
 * JSON (the format of the Python adapters and the tower-sessions store, so other services
 * can read a key), plus the reserved `__express_session.id` and `__express_session.cookie`.
 *
 * Consistency: a save writes only the keys that changed since the load (puts and deletes in
 * one atomic SET) conditional on the version loaded. If another request wrote in between,
 * the session is read again and, when the other request changed none of this request's
 * keys, the change is applied on top (at most MAX_MERGES times): both are kept. When both
 * changed the same key, the save fails with SessionConflict (express-session passes it to
 * `next`, a 500 by default) and this request's change is not written. A session destroyed
 * meanwhile (a logout in another request) fails the save with SessionNotFound and is never
 * created again by it.
 */
export class SessyncStore extends session.Store {
  /**
   * @param {import('./index.js').Client} client
   * @param {{idleTtl?: number, maxLifetime?: number, cookieName?: string, secure?: boolean, maxAge?: number}} [options]
   */
  constructor(client, options = {}) {
    super();
    this.client = client;
    this.options = { cookieName: DEFAULT_COOKIE_NAME, ...options };
    this[CURRENT] = null;
  }

  /** The slot of the request this call belongs to. */
  slotFor(sess) {
    const slot = this[VIEW_SLOT] ?? sess?.req?.[SLOT] ?? this[CURRENT];
    if (!slot) throw new Error('SessyncStore used outside store.wrap(session(...))');
    return slot;
  }

  /** Runs `work(slot)` holding the response head; `cb(err, value)` after the head is free. */
  run(sess, cb, work) {
    let slot;
    try {
      slot = this.slotFor(sess);
    } catch (e) {
      process.nextTick(cb, e);
      return;
    }
    slot.hold();
    work(slot).then(
      (v) => { slot.release(); cb(null, v); },
      (e) => { slot.release(); cb(e); },
    );
  }

  /** express-session: the session stored under `sid`, or null. */
  get(sid, cb) {
    this.run(null, cb, async (slot) => {
      if (!slot.token) return null;
      let s;
      try {
        s = await this.client.get(slot.token);
      } catch (e) {
        if (!gone(e)) throw e;
        slot.token = null;
        slot.loaded = null;
        return null;
      }
      // A moved session comes with a new token: the wrapper sends it to the browser.
      slot.token = s.token;
      if (s.attributes.get(ID_ATTR)?.toString('utf8') !== sid) {
        slot.loaded = null; // the token names another session than this sid
        return null;
      }
      slot.loaded = { sid, version: s.version, raw: s.attributes };
      slot.refreshed = true; // a GET refreshes the idle deadline (protocol.md, GET)
      return decode(s.attributes, slot);
    });
  }

  /** express-session: saves `sess` (creates it on the first save). */
  set(sid, sess, cb) {
    this.run(sess, cb, async (slot) => {
      const next = encode(sid, sess, slot.undecodable);
      if (!slot.token || !slot.loaded) {
        const ttl = this.options.idleTtl ?? (typeof sess.cookie?.originalMaxAge === 'number' ? sess.cookie.originalMaxAge : undefined);
        const s = await this.client.create(next, { idleTtl: ttl, maxLifetime: this.options.maxLifetime });
        slot.token = s.token;
        slot.loaded = { sid, version: s.version, raw: next };
        return;
      }
      try {
        await this.writeMerged(slot, next);
      } catch (e) {
        if (gone(e)) {
          // Logged out (or expired) meanwhile: never bring it back.
          slot.token = null;
          slot.loaded = null;
        }
        throw e;
      }
    });
  }

  /** Writes `next` over what the slot loaded, with compare-and-set, merging as the class
   * docs say. */
  async writeMerged(slot, next) {
    let { version, raw: base } = slot.loaded;
    let { puts, deletes } = diff(base, next);
    const mine = new Set([...puts.keys(), ...deletes]);
    for (let merges = 0; ; merges++) {
      if (puts.size === 0 && deletes.length === 0) break;
      try {
        const w = await this.client.set(slot.token, { puts, deletes, ifVersion: version });
        slot.token = w.token;
        base = new Map(base);
        for (const [k, v] of puts) base.set(k, v);
        for (const k of deletes) base.delete(k);
        version = w.version;
        break;
      } catch (e) {
        if (!(e instanceof VersionConflict) || merges === MAX_MERGES) {
          if (e instanceof VersionConflict) throw new SessionConflict(`the session kept changing under ${MAX_MERGES} merges`);
          throw e;
        }
      }
      const fresh = await this.client.get(slot.token);
      slot.token = fresh.token;
      // Keys this request changed that the other writer changed too, to another value.
      // The reserved id and cookie are this request's to set.
      const clash = [...mine].filter((k) => !k.startsWith(RESERVED) && !same(fresh.attributes.get(k), base.get(k)) && !same(fresh.attributes.get(k), next.get(k)));
      if (clash.length) throw new SessionConflict(`another request changed ${clash.map((k) => JSON.stringify(k)).join(', ')} meanwhile`);
      version = fresh.version;
      base = fresh.attributes;
      puts = new Map([...mine].filter((k) => next.has(k) && !same(base.get(k), next.get(k))).map((k) => [k, next.get(k)]));
      deletes = [...mine].filter((k) => !next.has(k) && base.has(k));
    }
    slot.loaded = { sid: slot.loaded.sid, version, raw: base };
  }

  /** express-session: ends the session (a logout), wherever it lives now. */
  destroy(sid, cb) {
    this.run(null, cb, async (slot) => {
      if (!slot.token) return;
      if (slot.loaded && slot.loaded.sid !== sid) return; // the token names another session
      await this.client.destroy(slot.token, { missingOk: true });
      slot.token = null;
      slot.loaded = null;
    });
  }

  /** express-session: refreshes the idle deadline of an unmodified session: a TOUCH,
   * unless this request's load (a GET) already did. */
  touch(sid, sess, cb) {
    this.run(sess, cb, async (slot) => {
      if (!slot.token || !slot.loaded || slot.refreshed) return;
      try {
        const s = await this.client.touch(slot.token);
        slot.token = s.token;
      } catch (e) {
        if (!gone(e)) throw e;
      }
    });
  }

  /** express-session's `req.session.regenerate`: a ROTATE (the old token and id stop
   * working at once, atomically), then a fresh sid and an empty session as express-session
   * defines it; the next save writes the difference (deleting the old keys). Call it at
   * login, against session fixation. */
  regenerate(req, fn) {
    const slot = req[SLOT];
    const work = async () => {
      if (!slot) throw new Error('SessyncStore used outside store.wrap(session(...))');
      if (!slot.token || !slot.loaded) return;
      try {
        const r = await this.client.rotate(slot.token);
        slot.token = r.token;
        slot.loaded = { sid: slot.loaded.sid, version: r.version, raw: r.attributes };
      } catch (e) {
        if (!gone(e)) throw e;
        slot.token = null;
        slot.loaded = null;
      }
    };
    slot?.hold();
    work().then(
      () => { slot.release(); this.generate(req); fn(); },
      (e) => { slot?.release(); fn(e); },
    );
  }

  /**
   * The middleware to mount in place of express-session's: it runs `sessionMiddleware`
   * (express-session configured with this store) with the token cookie around it. See the
   * module docs for why.
   */
  wrap(sessionMiddleware) {
    const store = this;
    const { cookieName } = this.options;
    return function sessyncSession(req, res, next) {
      const cameWith = cookieValue(req, cookieName);
      const slot = newSlot(res, cameWith, (token) => setCookieHeader(store.options, token));
      req[SLOT] = slot;
      const inner = (err) => {
        // express-session is set up: its session methods (save, reload, destroy,
        // regenerate) reach the store through req.sessionStore, which now knows this
        // request; its end-of-request calls reach the store directly, in the synchronous
        // call below.
        if (req.sessionStore === store) {
          const view = Object.create(store);
          view[VIEW_SLOT] = slot;
          req.sessionStore = view;
        }
        const sessionEnd = res.end;
        res.end = function end(...args) {
          const prev = store[CURRENT];
          store[CURRENT] = slot;
          try {
            return sessionEnd.apply(this, args);
          } finally {
            store[CURRENT] = prev;
          }
        };
        next(err);
      };
      // express-session calls store.get synchronously within this call.
      const prev = store[CURRENT];
      store[CURRENT] = slot;
      try {
        sessionMiddleware(req, res, inner);
      } finally {
        store[CURRENT] = prev;
      }
    };
  }
}

/** `Set-Cookie` for a new token, or a removal for null. */
function setCookieHeader(options, token) {
  let v = token
    ? `${options.cookieName}=${token}; Path=/; HttpOnly; SameSite=Lax`
    : `${options.cookieName}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0`;
  if (token && options.maxAge != null) v += `; Max-Age=${Math.floor(options.maxAge / 1000)}`;
  if (options.secure) v += '; Secure';
  return v;
}

/**
 * The per-request slot, and the hold on the response head: while a store call is in flight
 * (`hold`), writeHead/write/end are queued; when the last one ends (`release`) the queue
 * is replayed, the token cookie first. The hook is installed before express-session
 * captures `res.write`/`res.end`, so express-session's own end-of-request writes go through
 * it too.
 */
function newSlot(res, cameWith, cookieFor) {
  const orig = { writeHead: res.writeHead, write: res.write, end: res.end };
  let queue = null;
  let cookieSent = false;
  const slot = {
    token: cameWith,
    loaded: null,
    refreshed: false,
    undecodable: new Map(),
    holds: 0,
    hold() { slot.holds++; },
    release() {
      slot.holds--;
      if (slot.holds > 0 || !queue) return;
      const q = queue;
      queue = null;
      for (const [fn, args] of q) fn.apply(res, args);
    },
  };
  const mine = {
    writeHead(...args) {
      if (slot.holds > 0 || queue) { (queue ??= []).push([mine.writeHead, args]); return this; }
      if (!cookieSent) {
        cookieSent = true;
        if (slot.token !== cameWith && !this.headersSent) {
          const prev = this.getHeader('Set-Cookie');
          const list = prev === undefined ? [] : Array.isArray(prev) ? prev : [String(prev)];
          this.setHeader('Set-Cookie', [...list, cookieFor(slot.token)]);
        }
      }
      return orig.writeHead.apply(this, args);
    },
    write(...args) {
      if (slot.holds > 0 || queue) { (queue ??= []).push([mine.write, args]); return true; }
      return orig.write.apply(this, args);
    },
    end(...args) {
      if (slot.holds > 0 || queue) { (queue ??= []).push([mine.end, args]); return this; }
      return orig.end.apply(this, args);
    },
  };
  Object.assign(res, mine);
  return slot;
}

/** The attributes for a session: the reserved id and cookie, then one JSON value per key. */
function encode(sid, sess, undecodable) {
  const out = new Map(undecodable);
  out.set(ID_ATTR, Buffer.from(sid, 'utf8'));
  out.set(COOKIE_ATTR, Buffer.from(JSON.stringify(sess.cookie ?? {}), 'utf8'));
  for (const key of Object.keys(sess)) {
    if (key === 'cookie') continue;
    if (key.startsWith(RESERVED)) throw new TypeError(`session key ${JSON.stringify(key)} uses the reserved prefix ${RESERVED}`);
    const json = JSON.stringify(sess[key]);
    if (json === undefined) continue; // as JSON does: undefined and functions are left out
    out.set(key, Buffer.from(json, 'utf8'));
  }
  return out;
}

/** The session data express-session expects, from the stored attributes. Values that are
 * not JSON (written by another service) are left out and written back unchanged. */
function decode(attrs, slot) {
  const data = {};
  slot.undecodable = new Map();
  for (const [k, v] of attrs) {
    if (k.startsWith(RESERVED)) continue;
    try {
      Object.defineProperty(data, k, { value: JSON.parse(v.toString('utf8')), enumerable: true, writable: true, configurable: true });
    } catch {
      slot.undecodable.set(k, v);
    }
  }
  let cookie = null;
  try {
    cookie = JSON.parse(attrs.get(COOKIE_ATTR)?.toString('utf8') ?? 'null');
  } catch {
    cookie = null;
  }
  data.cookie = cookie && typeof cookie === 'object' ? cookie : { originalMaxAge: null, expires: null, httpOnly: true, path: '/' };
  return data;
}
