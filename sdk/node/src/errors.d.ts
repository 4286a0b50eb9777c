/** Whether a failed request took effect: `'no'` (nothing changed), `'yes'` (applied at the
 * node that answered, but not confirmed by a backup: INDETERMINATE), or `'maybe'`
 * (unknown: the connection was lost, the reply timed out or could not be read). */
export type Applied = 'no' | 'yes' | 'maybe';

/** protocol.md section 7: code -> [name, whether the sender closes the connection after it]. */
export declare const ERROR_CODES: ReadonlyMap<number, readonly [string, boolean]>;
/** Codes after which the node closes the connection. */
export declare const CLOSING_CODES: ReadonlySet<number>;

/** Base of every sessync failure. Act on `code` or the class, never on the message. */
export declare class SessyncError extends Error {
  constructor(message?: string, opts?: { code?: number; codeName?: string; applied?: Applied });
  /** The protocol's numeric code (0: found by this client, no protocol code). */
  readonly code: number;
  /** The code's name in protocol.md, e.g. `VERSION_CONFLICT`. */
  readonly codeName: string;
  /** The human text (the node's or this client's). */
  readonly detail: string;
  /** Whether the request took effect. */
  readonly applied: Applied;
  /** Whether the same request may succeed later unchanged (4xx and 5xx, except 402). */
  readonly retryable: boolean;
}

/** 1xx: a frame or message was bad. */
export declare class FrameError extends SessyncError {}
/** 105: over a limit (refused locally or by the node); nothing changed. */
export declare class LimitExceeded extends FrameError {}
/** 106: a SET that puts and deletes one name; nothing changed. */
export declare class InvalidRequest extends FrameError {}
/** The node broke protocol.md; the connection is closed, waiting requests fail with it. */
export declare class ProtocolViolation extends FrameError {}
/** 2xx: authentication. */
export declare class AuthError extends SessyncError {}
/** 200: the node requires a password. */
export declare class AuthRequired extends AuthError {}
/** 201: wrong password; the node closed the connection. */
export declare class AuthFailed extends AuthError {}
/** 3xx: the session or the token; retrying as is fails again. */
export declare class SessionError extends SessyncError {}
/** 300: the token is malformed or not signed by this cluster. */
export declare class InvalidToken extends SessionError {}
/** 301: no live session: never existed, expired, evicted, destroyed or rotated. */
export declare class SessionNotFound extends SessionError {}
/** 302: SET's ifVersion is not the session's version; nothing changed. */
export declare class VersionConflict extends SessionError {}
/** 4xx: the cluster; retrying later may succeed. */
export declare class ClusterError extends SessyncError {}
/** 400: the node holding the session did not answer within the peer timeout. */
export declare class OwnerUnreachable extends ClusterError {}
/** 401: the session kept moving. */
export declare class TooManyHops extends ClusterError {}
/** 402: applied at the node that answered, but not confirmed by a backup. */
export declare class Indeterminate extends ClusterError {}
/** 404: too few backup nodes reachable for a write; nothing changed. */
export declare class BackupUnavailable extends ClusterError {}
/** 5xx: the node itself. */
export declare class NodeError extends SessyncError {}
/** 500: the node is full and does not evict. */
export declare class Capacity extends NodeError {}
/** 501: the node is shutting down. */
export declare class ShuttingDown extends NodeError {}
/** 502: a bug or unexpected condition in the node. */
export declare class Internal extends NodeError {}
/** 503: the node closed an idle or stalled connection. */
export declare class NodeTimeout extends NodeError {}
/** 504: the node is at its connection limit. */
export declare class TooManyConnections extends NodeError {}
/** Found by this client (code 0). */
export declare class ClientSideError extends SessyncError {}
/** The connection failed before the reply came; the request may or may not have been applied. */
export declare class ConnectionLost extends ClientSideError {}
/** No reply within the client's timeout; the request may or may not have been applied. */
export declare class RequestTimeout extends ClientSideError {}

/** The error for an ERROR frame with this code and message (unknown codes by their hundred). */
export declare function errorFromCode(code: number, message: string): SessyncError;
