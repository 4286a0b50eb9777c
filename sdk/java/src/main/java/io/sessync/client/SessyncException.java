package io.sessync.client;

import java.util.Map;

/**
 * Every failure of a sessync call: the protocol's numeric {@link #code()} and {@link #name()}
 * (protocol.md section 7), the human message, and whether the request was {@link #applied()}.
 *
 * <p>Errors a node sends (ERROR frames) keep the node's code and the table's name; codes this
 * client does not know are named {@code UNKNOWN_<code>} and treated by their hundred, and
 * codes below 100 or above 599 as 502 {@code INTERNAL}, as protocol.md says. Failures found
 * by this client itself have code 0 ({@link ConnectionLost}, {@link RequestTimeout}), except
 * where the client refuses a request for the same reason the node would (over a limit: 105
 * {@code LIMIT_EXCEEDED}; a SET that puts and deletes one name: 106 {@code INVALID_REQUEST})
 * or where the node broke the protocol ({@link ProtocolViolation}, with the 1xx code that
 * describes what was wrong). Act on the code or the class, never on the message.
 */
public class SessyncException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** Whether the failed request changed anything at the node. */
    public enum Applied {
        /** Nothing changed: the node said so, or the request was never sent. */
        NO,
        /**
         * Unknown: the request was sent but no answer came (connection lost, timeout), or the
         * node answered INDETERMINATE. Re-read the session (or use ifVersion) before repeating
         * a write; the client never resends one by itself.
         */
        MAYBE
    }

    /** protocol.md section 7: code to name. */
    static final Map<Integer, String> NAMES = Map.ofEntries(
            Map.entry(100, "MALFORMED_FRAME"), Map.entry(101, "BAD_CRC"),
            Map.entry(102, "FRAME_TOO_LARGE"), Map.entry(103, "UNSUPPORTED_VERSION"),
            Map.entry(104, "UNKNOWN_OPCODE"), Map.entry(105, "LIMIT_EXCEEDED"),
            Map.entry(106, "INVALID_REQUEST"), Map.entry(200, "AUTH_REQUIRED"),
            Map.entry(201, "AUTH_FAILED"), Map.entry(300, "INVALID_TOKEN"),
            Map.entry(301, "SESSION_NOT_FOUND"), Map.entry(302, "VERSION_CONFLICT"),
            Map.entry(400, "OWNER_UNREACHABLE"), Map.entry(401, "TOO_MANY_HOPS"),
            Map.entry(402, "INDETERMINATE"), Map.entry(403, "MOVED"),
            Map.entry(404, "BACKUP_UNAVAILABLE"), Map.entry(500, "CAPACITY"),
            Map.entry(501, "SHUTTING_DOWN"), Map.entry(502, "INTERNAL"),
            Map.entry(503, "TIMEOUT"), Map.entry(504, "TOO_MANY_CONNECTIONS"));

    /** protocol.md section 7: the codes after which the sender closes the connection. */
    static boolean closes(int code) {
        return (code >= 100 && code <= 104) || code == 201 || code == 503 || code == 504;
    }

    /** The protocol code, 0 for client-side failures. */
    private final int code;
    /** The code's name. */
    private final String name;
    /** Whether the request may have changed anything. */
    private final Applied applied;
    /** The message without the code and name. */
    private final String detail;

    /**
     * A failure with the given code, name, message and applied state.
     *
     * @param code the protocol code (0 for client-side failures)
     * @param name the code's name
     * @param message human-readable text
     * @param applied whether the request may have changed anything
     */
    public SessyncException(int code, String name, String message, Applied applied) {
        this(code, name, message, applied, null);
    }

    /**
     * As {@link #SessyncException(int, String, String, Applied)}, with a cause.
     *
     * @param code the protocol code (0 for client-side failures)
     * @param name the code's name
     * @param message human-readable text
     * @param applied whether the request may have changed anything
     * @param cause the underlying failure, or null
     */
    public SessyncException(int code, String name, String message, Applied applied, Throwable cause) {
        super(name + " (" + code + ")" + (message == null || message.isEmpty() ? "" : ": " + message), cause);
        this.code = code;
        this.name = name;
        this.applied = applied;
        this.detail = message == null ? "" : message;
    }

    /** @return the protocol's numeric code, 0 for a client-side failure with no code */
    public int code() {
        return code;
    }

    /** @return the code's name, e.g. {@code VERSION_CONFLICT} */
    public String name() {
        return name;
    }

    /** @return the node's (or this client's) message, for people */
    public String detail() {
        return detail;
    }

    /** @return whether the request may have changed anything at the node */
    public Applied applied() {
        return applied;
    }

    /**
     * @return whether the same request may succeed later unchanged (4xx and 5xx, the cluster
     *     or the node was unavailable, except INDETERMINATE), or it failed on the client side
     *     (connection lost, timeout: but re-read before repeating a write, see {@link #applied()})
     */
    public boolean retryable() {
        return (code >= 400 && code < 600 && code != 402) || code == 0;
    }

    /**
     * The exception for an ERROR frame from a node.
     *
     * @param code the ERROR's code
     * @param message the ERROR's message
     * @return the exception of the code's class
     */
    public static SessyncException fromCode(int code, String message) {
        Applied applied = code == 402 ? Applied.MAYBE : Applied.NO;
        String name = NAMES.get(code);
        if (name == null) {
            if (code < 100 || code > 599) {
                return new SessyncException(code, "INTERNAL", message, applied);
            }
            name = "UNKNOWN_" + code;
        }
        switch (code) {
            case 105:
                return new LimitExceeded(message);
            case 300:
                return new InvalidToken(message);
            case 301:
                return new SessionNotFound(message);
            case 302:
                return new VersionConflict(message);
            default:
                return new SessyncException(code, name, message, applied);
        }
    }

    /** 105: a count, string or value over a limit, found by this client or the node; nothing changed. */
    public static class LimitExceeded extends SessyncException {
        private static final long serialVersionUID = 1L;

        /** @param message what exceeded which limit */
        public LimitExceeded(String message) {
            super(105, "LIMIT_EXCEEDED", message, Applied.NO);
        }
    }

    /** 300: the token is malformed or not signed by this cluster; treat as logged out. */
    public static class InvalidToken extends SessyncException {
        private static final long serialVersionUID = 1L;

        /** @param message the node's message */
        public InvalidToken(String message) {
            super(300, "INVALID_TOKEN", message, Applied.NO);
        }
    }

    /** 301: no live session: never existed, expired, evicted, destroyed or rotated. */
    public static class SessionNotFound extends SessyncException {
        private static final long serialVersionUID = 1L;

        /** @param message the node's message */
        public SessionNotFound(String message) {
            super(301, "SESSION_NOT_FOUND", message, Applied.NO);
        }
    }

    /** 302: SET's ifVersion is not the session's version; nothing changed. */
    public static class VersionConflict extends SessyncException {
        private static final long serialVersionUID = 1L;

        /** @param message the node's (or the merging code's) message */
        public VersionConflict(String message) {
            super(302, "VERSION_CONFLICT", message, Applied.NO);
        }
    }

    /**
     * The connection failed (refused, reset, closed) before the reply came. If the request was
     * sent ({@link #applied()} MAYBE) it may or may not have been applied; it is never resent.
     */
    public static class ConnectionLost extends SessyncException {
        private static final long serialVersionUID = 1L;

        /**
         * @param message what happened
         * @param applied NO when the request was never sent, else MAYBE
         * @param cause the I/O failure, or null
         */
        public ConnectionLost(String message, Applied applied, Throwable cause) {
            super(0, "CONNECTION_LOST", message, applied, cause);
        }
    }

    /** No reply within the client's timeout; the request may or may not have been applied. */
    public static class RequestTimeout extends SessyncException {
        private static final long serialVersionUID = 1L;

        /**
         * @param message what timed out
         * @param applied NO when nothing was sent (the connection could not be opened in time)
         */
        public RequestTimeout(String message, Applied applied) {
            super(0, "CLIENT_TIMEOUT", message, applied);
        }
    }

    /**
     * The node sent something that breaks protocol.md (bad CRC, a frame over this client's
     * limit, a truncated body, a reply to no request, ...): the connection is closed and every
     * request waiting on it fails; those may or may not have been applied.
     */
    public static class ProtocolViolation extends SessyncException {
        private static final long serialVersionUID = 1L;

        /**
         * @param code the 1xx code naming what was wrong
         * @param message what was wrong
         */
        public ProtocolViolation(int code, String message) {
            super(code, NAMES.getOrDefault(code, "MALFORMED_FRAME"), message, Applied.MAYBE);
        }
    }
}
