// Errors: every failure is a SessyncError carrying the protocol's numeric `code`, its
// `codeName` from protocol.md section 7, and `applied`: whether the request took effect.
//
// Errors a node sends (ERROR frames) keep the node's code. The class is chosen by the code:
// a specific subclass for codes an application acts on (SessionNotFound, VersionConflict,
// OwnerUnreachable, ...), else the class of the code's hundred (FrameError 1xx, AuthError
// 2xx, SessionError 3xx, ClusterError 4xx, NodeError 5xx), which is how protocol.md says to
// treat codes one does not know. Codes below 100 or above 599 are treated as 502 INTERNAL.
//
// Failures found by this client have code 0 (ConnectionLost, RequestTimeout), except where
// the client refuses a request for the reason the node would (105 LIMIT_EXCEEDED, 106
// INVALID_REQUEST) or where the node broke the protocol (ProtocolViolation, with the 1xx
// code that says what was wrong).

/** protocol.md section 7: code -> [name, whether the sender closes the connection after it]. */
export const ERROR_CODES = new Map([
  [100, ['MALFORMED_FRAME', true]],
  [101, ['BAD_CRC', true]],
  [102, ['FRAME_TOO_LARGE', true]],
  [103, ['UNSUPPORTED_VERSION', true]],
  [104, ['UNKNOWN_OPCODE', true]],
  [105, ['LIMIT_EXCEEDED', false]],
  [106, ['INVALID_REQUEST', false]],
  [200, ['AUTH_REQUIRED', false]],
  [201, ['AUTH_FAILED', true]],
  [300, ['INVALID_TOKEN', false]],
  [301, ['SESSION_NOT_FOUND', false]],
  [302, ['VERSION_CONFLICT', false]],
  [400, ['OWNER_UNREACHABLE', false]],
  [401, ['TOO_MANY_HOPS', false]],
  [402, ['INDETERMINATE', false]],
  [403, ['MOVED', false]],
  [404, ['BACKUP_UNAVAILABLE', false]],
  [500, ['CAPACITY', false]],
  [501, ['SHUTTING_DOWN', false]],
  [502, ['INTERNAL', false]],
  [503, ['TIMEOUT', true]],
  [504, ['TOO_MANY_CONNECTIONS', true]],
]);

/** Codes after which the node closes the connection. */
export const CLOSING_CODES = new Set([...ERROR_CODES].filter(([, [, c]]) => c).map(([code]) => code));

/** Base of every sessync failure. Act on `code` or the class, never on the message. */
export class SessyncError extends Error {
  /**
   * @param {string} [message]
   * @param {{code?: number, codeName?: string, applied?: 'no'|'yes'|'maybe'}} [opts]
   */
  constructor(message = '', opts = {}) {
    const ctor = /** @type {any} */ (new.target);
    const code = opts.code ?? ctor.CODE;
    const codeName = opts.codeName ?? ctor.CODE_NAME;
    super(message ? `${codeName} (${code}): ${message}` : `${codeName} (${code})`);
    this.name = ctor.name;
    /** The protocol's numeric code (0: found by this client, no protocol code). */
    this.code = code;
    /** The code's name in protocol.md, e.g. VERSION_CONFLICT. */
    this.codeName = codeName;
    /** The human text (the node's or this client's). */
    this.detail = message;
    /** Whether the request took effect: 'no', 'yes', or 'maybe' (unknown). */
    this.applied = opts.applied ?? ctor.APPLIED;
  }

  /** Whether the same request may succeed later unchanged (4xx and 5xx, except 402). */
  get retryable() {
    return this.code >= 400 && this.code < 600 && this.code !== 402;
  }
}
SessyncError.CODE = 0;
SessyncError.CODE_NAME = 'ERROR';
SessyncError.APPLIED = 'no';

function define(name, base, code, codeName, applied) {
  const cls = { [name]: class extends base {} }[name];
  if (code !== undefined) cls.CODE = code;
  if (codeName !== undefined) cls.CODE_NAME = codeName;
  if (applied !== undefined) cls.APPLIED = applied;
  return cls;
}

// 1xx: a frame or message was bad (a bug on one side). Nothing was applied.
export const FrameError = define('FrameError', SessyncError, 100, 'MALFORMED_FRAME');
/** 105: a count, string or value over a limit (refused locally or by the node); nothing changed. */
export const LimitExceeded = define('LimitExceeded', FrameError, 105, 'LIMIT_EXCEEDED');
/** 106: a SET that puts and deletes one name; nothing changed. */
export const InvalidRequest = define('InvalidRequest', FrameError, 106, 'INVALID_REQUEST');
/** The node sent something that breaks protocol.md (bad CRC, garbage, a frame over this
 * client's limits, a reply to no request). The connection is closed and every request
 * waiting on it fails with this error; those requests may or may not have been applied. */
export const ProtocolViolation = define('ProtocolViolation', FrameError, undefined, undefined, 'maybe');

// 2xx: authentication.
export const AuthError = define('AuthError', SessyncError, 200, 'AUTH_REQUIRED');
/** 200: the node requires a password (`new Client(addr, {password})`). */
export const AuthRequired = define('AuthRequired', AuthError);
/** 201: wrong password; the node closed the connection. */
export const AuthFailed = define('AuthFailed', AuthError, 201, 'AUTH_FAILED');

// 3xx: the session or the token; retrying as is fails again.
export const SessionError = define('SessionError', SessyncError, 300, 'INVALID_TOKEN');
/** 300: the token is malformed or not signed by this cluster. Treat as logged out. */
export const InvalidToken = define('InvalidToken', SessionError);
/** 301: no live session: never existed, expired, evicted, destroyed or rotated. */
export const SessionNotFound = define('SessionNotFound', SessionError, 301, 'SESSION_NOT_FOUND');
/** 302: SET's ifVersion is not the session's version; nothing changed. */
export const VersionConflict = define('VersionConflict', SessionError, 302, 'VERSION_CONFLICT');

// 4xx: the cluster; retrying later may succeed.
export const ClusterError = define('ClusterError', SessyncError, 400, 'OWNER_UNREACHABLE', 'maybe');
/** 400: the node holding the session did not answer within the peer timeout; nothing changed. */
export const OwnerUnreachable = define('OwnerUnreachable', ClusterError, 400, 'OWNER_UNREACHABLE', 'no');
/** 401: the session kept moving (more MOVED answers than the hop limit); nothing changed. */
export const TooManyHops = define('TooManyHops', ClusterError, 401, 'TOO_MANY_HOPS', 'no');
/** 402: the write is applied at the node that answered, but no backup confirmed it: it
 * may not survive that node's death. Read the session to see. */
export const Indeterminate = define('Indeterminate', ClusterError, 402, 'INDETERMINATE', 'yes');
/** 404: too few backup nodes reachable for a write; nothing changed. */
export const BackupUnavailable = define('BackupUnavailable', ClusterError, 404, 'BACKUP_UNAVAILABLE', 'no');

// 5xx: the node itself; retry later, possibly at another node.
export const NodeError = define('NodeError', SessyncError, 502, 'INTERNAL', 'maybe');
/** 500: the node is full and does not evict; nothing changed. */
export const Capacity = define('Capacity', NodeError, 500, 'CAPACITY', 'no');
/** 501: the node is shutting down; the request was not run. */
export const ShuttingDown = define('ShuttingDown', NodeError, 501, 'SHUTTING_DOWN', 'no');
/** 502: a bug or unexpected condition in the node. */
export const Internal = define('Internal', NodeError);
/** 503: the node closed the connection: nothing (or no complete frame) came in time. */
export const NodeTimeout = define('NodeTimeout', NodeError, 503, 'TIMEOUT');
/** 504: the node is at its connection limit and closed this connection; nothing ran. */
export const TooManyConnections = define('TooManyConnections', NodeError, 504, 'TOO_MANY_CONNECTIONS', 'no');

// Found by this client (code 0).
export const ClientSideError = define('ClientSideError', SessyncError, 0, 'CLIENT_ERROR', 'maybe');
/** The connection failed (refused, reset, closed) before the reply came. A request that was
 * sent may or may not have been applied; the client never resends it. */
export const ConnectionLost = define('ConnectionLost', ClientSideError, 0, 'CONNECTION_LOST');
/** No reply within the client's timeout; the request may or may not have been applied. */
export const RequestTimeout = define('RequestTimeout', ClientSideError, 0, 'CLIENT_TIMEOUT');

const SPECIFIC = new Map([
  [105, LimitExceeded], [106, InvalidRequest], [200, AuthRequired], [201, AuthFailed],
  [300, InvalidToken], [301, SessionNotFound], [302, VersionConflict], [400, OwnerUnreachable],
  [401, TooManyHops], [402, Indeterminate], [404, BackupUnavailable], [500, Capacity],
  [501, ShuttingDown], [502, Internal], [503, NodeTimeout], [504, TooManyConnections],
]);
const BY_HUNDRED = [undefined, FrameError, AuthError, SessionError, ClusterError, NodeError];

/**
 * The error for an ERROR frame with this code and message (protocol.md section 7).
 * @param {number} code
 * @param {string} message
 * @returns {SessyncError}
 */
export function errorFromCode(code, message) {
  const known = ERROR_CODES.get(code);
  if (known) {
    const Cls = SPECIFIC.get(code) ?? BY_HUNDRED[Math.floor(code / 100)];
    return new Cls(message, { code, codeName: known[0] });
  }
  if (code >= 100 && code <= 599) {
    const Cls = BY_HUNDRED[Math.floor(code / 100)];
    return new Cls(message, { code, codeName: `UNKNOWN_${code}` });
  }
  return new Internal(message, { code, codeName: 'INTERNAL' });
}
