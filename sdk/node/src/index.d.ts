/** sessync: the Node.js SDK of the sessync session store. */
import type { Limits, SessionMeta } from './wire.js';

export * from './errors.js';
export type { Limits, SessionMeta } from './wire.js';
export declare const DEFAULT_LIMITS: Readonly<Limits>;
export declare const VERSION: string;

/** An attribute value: a string (stored as UTF-8) or bytes. */
export type Value = string | Uint8Array;
/** Attributes given to the client: a Map or a plain object. */
export type AttributesInput = Map<string, Value> | Record<string, Value>;

/** A session as the node served it. After every call, keep `token` in place of the one
 * you passed (it changes after create and rotate and whenever the session moved). */
export declare class Session {
  /** The token to keep from now on. */
  readonly token: string;
  /** Whether `token` differs from the token passed in (always true after create). */
  readonly tokenChanged: boolean;
  /** Version and times (Unix ms) after the request. */
  readonly meta: SessionMeta;
  /** The attributes the reply carried (none for set and touch). */
  readonly attributes: Map<string, Buffer>;
  /** The version after this request: what to pass as `ifVersion`. */
  readonly version: number;
  /** When the session ends unless used again (Unix ms). */
  readonly expiresAtMs: number;
  /** Attribute `name` as UTF-8 text, or undefined. */
  text(name: string): string | undefined;
}

export interface ClientOptions {
  /** Bounds each call, connecting included (ms; default 5000). */
  timeout?: number;
  /** The node's client password, if it has one. */
  password?: string | null;
  /** Sent in HELLO, for the node's logs. */
  clientName?: string;
  /** Limits on what is sent and accepted (protocol.md 2.2 defaults). */
  limits?: Partial<Limits>;
  /** A connection idle this long (ms; default 60000) is replaced before use. */
  maxIdle?: number;
  /** TLS 1.3 to a node started with `--client-tls-cert`; omitted or null for plain TCP. */
  tls?: TlsOptions | null;
}

export interface TlsOptions {
  /** PEM CA certificate(s) the node's certificate must chain to. */
  ca: string | Buffer;
  /** PEM client certificate, for a node started with `--client-tls-ca`. */
  cert?: string | Buffer;
  /** PEM key of `cert`. */
  key?: string | Buffer;
  /** The name the node's certificate must carry (default: the address's host). */
  servername?: string;
}

export interface CreateOptions {
  /** Idle time to live (ms); omitted: the node's default (30 min). */
  idleTtl?: number;
  /** Absolute lifetime from creation (ms); omitted: the node's default (none). */
  maxLifetime?: number;
}

export interface Change {
  /** Attributes added or replaced. */
  puts?: AttributesInput;
  /** Attribute names removed (absent ones are ignored). */
  deletes?: Iterable<string>;
  /** Apply only if the session is at this version (compare-and-set). */
  ifVersion?: number | null;
}

/** A client of one sessync node: one multiplexed, pipelined connection, opened on first use
 * and again after it fails; requests are never resent. */
export declare class Client {
  constructor(address?: string, options?: ClientOptions);
  readonly address: string;
  readonly timeout: number;
  /** Creates a session owned by this node. */
  create(attributes?: AttributesInput | null, options?: CreateOptions): Promise<Session>;
  /** Reads the session (all attributes, or those of `names` that exist). */
  get(token: string, names?: Iterable<string>): Promise<Session>;
  /** One atomic change; the reply carries no attributes. */
  set(token: string, change?: Change): Promise<Session>;
  /** Refreshes the idle deadline without reading the data. */
  touch(token: string): Promise<Session>;
  /** A new id and token for the same data (version + 1); the old token stops working. */
  rotate(token: string): Promise<Session>;
  /** Ends the session wherever it lives; `missingOk`: a session already gone is no error. */
  destroy(token: string, options?: { missingOk?: boolean }): Promise<void>;
  /** The node's counters. */
  stats(): Promise<Record<string, number>>;
  /** A round trip to the node; its duration in ms. */
  ping(payload?: Value): Promise<number>;
  /** Closes the connection; waiting requests fail with ConnectionLost. */
  close(): void;
}
