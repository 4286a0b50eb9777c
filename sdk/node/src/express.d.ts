/** sessync/express: an express-session store and its token-cookie wrapper. */
import type { RequestHandler } from 'express';
import session from 'express-session';
import type { Client } from './index.js';
import { VersionConflict } from './errors.js';

/** The token cookie's default name. */
export declare const DEFAULT_COOKIE_NAME: 'sessync';
/** Times a save is merged onto a newer version before it fails. */
export declare const MAX_MERGES: number;
/** The attribute holding express-session's sid. */
export declare const ID_ATTR: '__express_session.id';
/** The attribute holding express-session's cookie settings (JSON). */
export declare const COOKIE_ATTR: '__express_session.cookie';

/** Another request changed the same session key(s); this request's change was not written. */
export declare class SessionConflict extends VersionConflict {}

export interface SessyncStoreOptions {
  /** Idle TTL of new sessions (ms); default: the session cookie's maxAge, else the node's. */
  idleTtl?: number;
  /** Absolute lifetime of new sessions (ms), whatever their activity; default: the node's. */
  maxLifetime?: number;
  /** The token cookie's name (default `sessync`). */
  cookieName?: string;
  /** Mark the token cookie Secure. */
  secure?: boolean;
  /** Make the token cookie persistent for this long (ms); default: a browser-session cookie. */
  maxAge?: number;
}

/** What to write to turn `old` into `next`. */
export declare function diff(old: Map<string, Buffer>, next: Map<string, Buffer>): { puts: Map<string, Buffer>; deletes: string[] };

/** An express-session store whose sessions live in sessync; mount it through `wrap`. */
export declare class SessyncStore extends session.Store {
  constructor(client: Client, options?: SessyncStoreOptions);
  readonly client: Client;
  /** The middleware to mount in place of express-session's (which must use this store). */
  wrap(sessionMiddleware: RequestHandler): RequestHandler;
  get(sid: string, callback: (err: any, session?: session.SessionData | null) => void): void;
  set(sid: string, session: session.SessionData, callback?: (err?: any) => void): void;
  destroy(sid: string, callback?: (err?: any) => void): void;
  touch(sid: string, session: session.SessionData, callback?: (err?: any) => void): void;
}
