/** The client-port wire format of protocol.md (sans-IO). */

export declare const PROTOCOL_VERSION: 1;
export declare const HEADER_LEN: 12;

/** Receiver limits (protocol.md section 2.2). */
export interface Limits {
  maxFrameLen: number;
  maxAttributes: number;
  maxNameLen: number;
  maxValueLen: number;
  maxTokenLen: number;
  maxTextLen: number;
}
export declare const DEFAULT_LIMITS: Readonly<Limits>;

export declare const Op: {
  readonly HELLO: 0x01; readonly PING: 0x02; readonly CREATE: 0x03; readonly GET: 0x04; readonly SET: 0x05;
  readonly TOUCH: 0x06; readonly ROTATE: 0x07; readonly DESTROY: 0x08; readonly STATS: 0x09;
  readonly HELLO_OK: 0x81; readonly PONG: 0x82; readonly SESSION: 0x83; readonly DONE: 0x84;
  readonly STATS_REPLY: 0x85; readonly ERROR: 0xff;
};

/** SessionMeta (protocol.md section 4); times are Unix milliseconds. */
export interface SessionMeta {
  version: number;
  createdMs: number;
  lastAccessMs: number;
  idleTtlMs: number;
  /** 0: no absolute lifetime. */
  absoluteDeadlineMs: number;
}

/** One frame whose length, CRC, version and flags were checked. */
export interface Frame {
  version: number;
  opcode: number;
  requestId: number;
  body: Buffer;
}

export type Attributes = Map<string, Buffer>;

export type Request =
  | { type: 'hello'; minVersion: number; maxVersion: number; clientName: string; password: string | null }
  | { type: 'ping'; payload: Buffer }
  | { type: 'create'; idleTtlMs: number; maxLifetimeMs: number; attributes: Attributes }
  | { type: 'get'; token: string; names: string[] }
  | { type: 'set'; token: string; ifVersion: number | null; puts: Attributes; deletes: string[] }
  | { type: 'touch' | 'rotate' | 'destroy'; token: string }
  | { type: 'stats' };

export type Reply =
  | { type: 'hello_ok'; version: number; serverName: string; maxFrameLen: number }
  | { type: 'pong'; payload: Buffer }
  | { type: 'session'; token: string | null; meta: SessionMeta; attributes: Attributes }
  | { type: 'done' }
  | { type: 'stats_reply'; counters: Array<[string, number]> }
  | { type: 'error'; code: number; message: string };

/** CRC-32 (IEEE): zlib.crc32 where Node has it, else the table. */
export declare function crc32(data: Uint8Array, prev?: number): number;
/** CRC-32 computed with a table (the fallback). */
export declare function crc32Table(data: Uint8Array, prev?: number): number;
/** The bytes of one frame. */
export declare function encodeFrame(opcode: number, requestId: number, body: Uint8Array, version?: number): Buffer;
/** One frame off the front of `buf`, or null for "need more bytes"; throws ProtocolViolation. */
export declare function splitFrame(buf: Buffer, maxFrameLen: number): { frame: Frame; used: number } | null;
export declare function encodeRequest(req: Request, limits?: Limits): { opcode: number; body: Buffer };
export declare function decodeRequest(frame: Frame, limits?: Limits): Request;
export declare function encodeReply(reply: Reply, limits?: Limits): { opcode: number; body: Buffer };
export declare function decodeReply(frame: Frame, limits?: Limits): Reply;

/** Reads one body field by field. */
export declare class Reader {
  constructor(body: Buffer, limits?: Limits);
  take(n: number): Buffer;
  remaining(): number;
  u8(): number;
  u16(): number;
  u32(): number;
  u64(): number;
  raw(n: number): Buffer;
  present(): boolean;
  string(limit: number, what?: string): string;
  blob(what?: string): Buffer;
  attributes(): Attributes;
  names(): string[];
  meta(): SessionMeta;
  end(): void;
}

/** Builds one body. */
export declare class Writer {
  constructor(limits?: Limits);
  value(): Buffer;
  u8(v: number): void;
  u16(v: number): void;
  u32(v: number): void;
  u64(v: number): void;
  raw(b: Uint8Array): void;
  string(s: string, limit: number, what?: string): void;
  blob(b: Uint8Array, what?: string): void;
  attributes(attrs: Map<string, Uint8Array>): void;
  names(names: string[]): void;
  meta(m: SessionMeta): void;
}
