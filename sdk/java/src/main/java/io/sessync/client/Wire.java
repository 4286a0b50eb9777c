package io.sessync.client;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.zip.CRC32;

/**
 * The client-port codec of protocol.md (sections 2 to 6): frames, and the body of every
 * client request and reply, both ways (the client encodes requests and decodes replies; the
 * other directions serve the conformance tests and fake servers in tests).
 *
 * <p>Decoding never trusts the wire: every count and length is checked against its
 * {@link Limits} before anything is allocated for it ({@link WireException} with code 105),
 * and a body that ends early, has bytes left over or holds a value its layout does not allow
 * is malformed (code 100).
 */
public final class Wire {
    private Wire() {
    }

    /** The protocol version this codec speaks. */
    public static final int VERSION = 1;
    /** Bytes of the header after the length prefix: version, opcode, flags, request id. */
    public static final int HEADER_LEN = 12;

    /** Client-port opcodes (protocol.md section 5). */
    public static final int HELLO = 0x01, PING = 0x02, CREATE = 0x03, GET = 0x04, SET = 0x05, TOUCH = 0x06,
            ROTATE = 0x07, DESTROY = 0x08, STATS = 0x09, HELLO_OK = 0x81, PONG = 0x82, SESSION = 0x83,
            DONE = 0x84, STATS_REPLY = 0x85, ERROR = 0xFF;

    /** A frame's body or header broke the protocol: {@code code} is the protocol code (100..105). */
    public static final class WireException extends Exception {
        private static final long serialVersionUID = 1L;
        /** The protocol code naming what is wrong. */
        public final int code;

        /**
         * @param code the protocol code naming what is wrong
         * @param message what is wrong
         */
        public WireException(int code, String message) {
            super(message);
            this.code = code;
        }
    }

    // ---- messages --------------------------------------------------------------------------

    /** A client-port message (request or reply). */
    public sealed interface Message permits Hello, Ping, Create, Get, SetReq, Touch, Rotate, Destroy, Stats,
            HelloOk, Pong, SessionReply, Done, StatsReply, ErrorReply {
    }

    /** HELLO: version range, client name, optional password. */
    public record Hello(int minVersion, int maxVersion, String clientName, String password) implements Message {
    }

    /** PING with a payload. */
    public record Ping(byte[] payload) implements Message {
    }

    /** CREATE: idle TTL and lifetime in ms (0 = node default), initial attributes. */
    public record Create(long idleTtlMs, long maxLifetimeMs, Map<String, byte[]> attributes) implements Message {
    }

    /** GET: a token and the names wanted (empty = all). */
    public record Get(String token, List<String> names) implements Message {
    }

    /** SET: a token, an optional expected version (null = none), puts and deletes. */
    public record SetReq(String token, Long ifVersion, Map<String, byte[]> puts, List<String> deletes)
            implements Message {
    }

    /** TOUCH: a token. */
    public record Touch(String token) implements Message {
    }

    /** ROTATE: a token. */
    public record Rotate(String token) implements Message {
    }

    /** DESTROY: a token. */
    public record Destroy(String token) implements Message {
    }

    /** STATS: no fields. */
    public record Stats() implements Message {
    }

    /** HELLO_OK: the version chosen, the server's name, its longest accepted frame. */
    public record HelloOk(int version, String serverName, long maxFrameLen) implements Message {
    }

    /** PONG with PING's payload. */
    public record Pong(byte[] payload) implements Message {
    }

    /** SESSION: an optional replacement token (null = none), the meta, attributes. */
    public record SessionReply(String token, Meta meta, Map<String, byte[]> attributes) implements Message {
    }

    /** DONE: no fields. */
    public record Done() implements Message {
    }

    /** STATS_REPLY: counters in wire order. */
    public record StatsReply(Map<String, Long> counters) implements Message {
    }

    /** ERROR: a code and a message. */
    public record ErrorReply(int code, String message) implements Message {
    }

    /** One frame's header fields and body. */
    public record Frame(int version, int opcode, long requestId, byte[] body) {
    }

    /**
     * @param m a message
     * @return its opcode
     */
    public static int opcode(Message m) {
        if (m instanceof Hello) return HELLO;
        if (m instanceof Ping) return PING;
        if (m instanceof Create) return CREATE;
        if (m instanceof Get) return GET;
        if (m instanceof SetReq) return SET;
        if (m instanceof Touch) return TOUCH;
        if (m instanceof Rotate) return ROTATE;
        if (m instanceof Destroy) return DESTROY;
        if (m instanceof Stats) return STATS;
        if (m instanceof HelloOk) return HELLO_OK;
        if (m instanceof Pong) return PONG;
        if (m instanceof SessionReply) return SESSION;
        if (m instanceof Done) return DONE;
        if (m instanceof StatsReply) return STATS_REPLY;
        return ERROR;
    }

    // ---- frames ----------------------------------------------------------------------------

    /**
     * One whole frame: length prefix, header, body, CRC.
     *
     * @param opcode the opcode
     * @param requestId the request id
     * @param body the body
     * @return the frame's bytes
     */
    public static byte[] frame(int opcode, long requestId, byte[] body) {
        int len = HEADER_LEN + body.length + 4;
        ByteBuffer b = ByteBuffer.allocate(4 + len);
        b.putInt(len).put((byte) VERSION).put((byte) opcode).putShort((short) 0).putLong(requestId).put(body);
        CRC32 crc = new CRC32();
        crc.update(b.array(), 4, HEADER_LEN + body.length);
        b.putInt((int) crc.getValue());
        return b.array();
    }

    /**
     * Checks a length prefix (protocol.md 2.3 steps 1 and 2) before anything is read for it.
     *
     * @param len the prefix, as an unsigned value
     * @param maxFrameLen the receiver's limit
     * @throws WireException 102 over the limit, 100 under 16
     */
    public static void checkLength(long len, int maxFrameLen) throws WireException {
        if (len > maxFrameLen) {
            throw new WireException(102, "frame length " + len + " exceeds the limit of " + maxFrameLen);
        }
        if (len < 16) {
            throw new WireException(100, "frame length " + len + " is under 16");
        }
    }

    /**
     * Parses the {@code L} bytes after a checked length prefix (step 3): CRC, version, flags.
     *
     * @param rest the bytes after the prefix
     * @return the frame
     * @throws WireException 101, 103 or 100
     */
    public static Frame parseFrame(byte[] rest) throws WireException {
        int n = rest.length;
        CRC32 crc = new CRC32();
        crc.update(rest, 0, n - 4);
        long want = ByteBuffer.wrap(rest, n - 4, 4).getInt() & 0xFFFFFFFFL;
        if (crc.getValue() != want) {
            throw new WireException(101, "CRC32 mismatch");
        }
        ByteBuffer b = ByteBuffer.wrap(rest);
        int version = b.get() & 0xFF;
        int opcode = b.get() & 0xFF;
        int flags = b.getShort() & 0xFFFF;
        long id = b.getLong();
        if (version != VERSION) {
            throw new WireException(103, "protocol version " + version + " is not 1");
        }
        if (flags != 0) {
            throw new WireException(100, "reserved flags are set");
        }
        return new Frame(version, opcode, id, Arrays.copyOfRange(rest, HEADER_LEN, n - 4));
    }

    /**
     * Splits one complete frame from the start of {@code data} (for tests and examples).
     *
     * @param data the bytes, exactly one frame
     * @param maxFrameLen the receiver's limit
     * @return the frame
     * @throws WireException when it is not exactly one valid frame
     */
    public static Frame parseWhole(byte[] data, int maxFrameLen) throws WireException {
        if (data.length < 4) {
            throw new WireException(100, "shorter than a length prefix");
        }
        long len = ByteBuffer.wrap(data, 0, 4).getInt() & 0xFFFFFFFFL;
        checkLength(len, maxFrameLen);
        if (data.length != 4 + len) {
            throw new WireException(100, "frame is " + data.length + " bytes, its prefix says " + (4 + len));
        }
        return parseFrame(Arrays.copyOfRange(data, 4, data.length));
    }

    // ---- encoding --------------------------------------------------------------------------

    /** Appends big-endian fields; checks limits as it goes. */
    static final class Writer {
        private final ByteArrayOutputStream out = new ByteArrayOutputStream();
        private final Limits limits;

        Writer(Limits limits) {
            this.limits = limits;
        }

        void u8(int v) {
            out.write(v);
        }

        void u16(int v) {
            out.write(v >>> 8);
            out.write(v);
        }

        void u32(long v) {
            u16((int) (v >>> 16) & 0xFFFF);
            u16((int) v & 0xFFFF);
        }

        void u64(long v) {
            u32(v >>> 32);
            u32(v & 0xFFFFFFFFL);
        }

        void raw(byte[] b) {
            out.write(b, 0, b.length);
        }

        void string(String s, int max, String what) throws WireException {
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            if (b.length > max || b.length > 0xFFFF) {
                throw new WireException(105, what + " of " + b.length + " bytes exceeds the limit of " + max);
            }
            u16(b.length);
            raw(b);
        }

        void bytes(byte[] b, String what) throws WireException {
            if (b.length > limits.maxValueLen()) {
                throw new WireException(105,
                        what + " of " + b.length + " bytes exceeds the limit of " + limits.maxValueLen());
            }
            u32(b.length);
            raw(b);
        }

        void attributes(Map<String, byte[]> attrs) throws WireException {
            if (attrs.size() > limits.maxAttributes()) {
                throw new WireException(105,
                        attrs.size() + " attributes exceed the limit of " + limits.maxAttributes());
            }
            u16(attrs.size());
            for (Map.Entry<String, byte[]> e : sorted(attrs).entrySet()) {
                if (e.getValue() == null) {
                    throw new WireException(106, "attribute " + e.getKey() + " has a null value");
                }
                string(e.getKey(), limits.maxNameLen(), "attribute name");
                bytes(e.getValue(), "value of " + e.getKey());
            }
        }

        void names(List<String> names) throws WireException {
            if (names.size() > limits.maxAttributes()) {
                throw new WireException(105, names.size() + " names exceed the limit of " + limits.maxAttributes());
            }
            u16(names.size());
            for (String n : names) {
                string(n, limits.maxNameLen(), "attribute name");
            }
        }

        byte[] toByteArray() {
            return out.toByteArray();
        }
    }

    /** Orders names by their UTF-8 bytes, as the wire requires (String order differs for surrogates). */
    static final Comparator<String> UTF8_ORDER = (a, b) -> Arrays.compareUnsigned(
            a.getBytes(StandardCharsets.UTF_8), b.getBytes(StandardCharsets.UTF_8));

    /**
     * @param attrs any map
     * @return a copy sorted in wire order
     */
    public static TreeMap<String, byte[]> sorted(Map<String, byte[]> attrs) {
        TreeMap<String, byte[]> t = new TreeMap<>(UTF8_ORDER);
        t.putAll(attrs);
        return t;
    }

    /**
     * The body of a message.
     *
     * @param m the message
     * @param limits limits to check (105 when over)
     * @return the body's bytes
     * @throws WireException when a field is over a limit
     */
    public static byte[] encodeBody(Message m, Limits limits) throws WireException {
        Writer w = new Writer(limits);
        if (m instanceof Hello h) {
            w.u8(h.minVersion());
            w.u8(h.maxVersion());
            w.string(h.clientName(), limits.maxTextLen(), "client name");
            if (h.password() == null) {
                w.u8(0);
            } else {
                w.u8(1);
                w.string(h.password(), limits.maxTextLen(), "password");
            }
        } else if (m instanceof Ping p) {
            w.bytes(p.payload(), "PING payload");
        } else if (m instanceof Create c) {
            w.u64(c.idleTtlMs());
            w.u64(c.maxLifetimeMs());
            w.attributes(c.attributes());
        } else if (m instanceof Get g) {
            w.string(g.token(), limits.maxTokenLen(), "token");
            w.names(g.names());
        } else if (m instanceof SetReq s) {
            w.string(s.token(), limits.maxTokenLen(), "token");
            if (s.ifVersion() == null) {
                w.u8(0);
            } else {
                w.u8(1);
                w.u64(s.ifVersion());
            }
            w.attributes(s.puts());
            w.names(s.deletes());
        } else if (m instanceof Touch t) {
            w.string(t.token(), limits.maxTokenLen(), "token");
        } else if (m instanceof Rotate r) {
            w.string(r.token(), limits.maxTokenLen(), "token");
        } else if (m instanceof Destroy d) {
            w.string(d.token(), limits.maxTokenLen(), "token");
        } else if (m instanceof HelloOk h) {
            w.u8(h.version());
            w.string(h.serverName(), limits.maxTextLen(), "server name");
            w.u32(h.maxFrameLen());
        } else if (m instanceof Pong p) {
            w.bytes(p.payload(), "PONG payload");
        } else if (m instanceof SessionReply s) {
            if (s.token() == null) {
                w.u8(0);
            } else {
                w.u8(1);
                w.string(s.token(), limits.maxTokenLen(), "token");
            }
            Meta mt = s.meta();
            w.u64(mt.version());
            w.u64(mt.createdMs());
            w.u64(mt.lastAccessMs());
            w.u64(mt.idleTtlMs());
            w.u64(mt.absoluteDeadlineMs());
            w.attributes(s.attributes());
        } else if (m instanceof StatsReply s) {
            w.u16(s.counters().size());
            for (Map.Entry<String, Long> e : s.counters().entrySet()) {
                w.string(e.getKey(), limits.maxTextLen(), "stat name");
                w.u64(e.getValue());
            }
        } else if (m instanceof ErrorReply e) {
            w.u16(e.code());
            w.string(e.message(), limits.maxTextLen(), "error message");
        }
        // Stats and Done have empty bodies.
        return w.toByteArray();
    }

    /**
     * A whole frame for a message.
     *
     * @param m the message
     * @param requestId its request id
     * @param limits limits to check
     * @return the frame's bytes
     * @throws WireException when a field is over a limit
     */
    public static byte[] encode(Message m, long requestId, Limits limits) throws WireException {
        return frame(opcode(m), requestId, encodeBody(m, limits));
    }

    // ---- decoding --------------------------------------------------------------------------

    /** Reads big-endian fields from a body; every read is bounds-checked. */
    static final class Reader {
        private final byte[] b;
        private int pos;
        private final Limits limits;

        Reader(byte[] b, Limits limits) {
            this.b = b;
            this.limits = limits;
        }

        private void need(int n) throws WireException {
            if (b.length - pos < n) {
                throw new WireException(100, "body ends in the middle of a field");
            }
        }

        int u8() throws WireException {
            need(1);
            return b[pos++] & 0xFF;
        }

        int u16() throws WireException {
            need(2);
            int v = ((b[pos] & 0xFF) << 8) | (b[pos + 1] & 0xFF);
            pos += 2;
            return v;
        }

        long u32() throws WireException {
            return ((long) u16() << 16) | u16();
        }

        long u64() throws WireException {
            return (u32() << 32) | u32();
        }

        boolean present() throws WireException {
            int v = u8();
            if (v > 1) {
                throw new WireException(100, "option byte " + v + " is not 0 or 1");
            }
            return v == 1;
        }

        String string(int max, String what) throws WireException {
            int n = u16();
            if (n > max) {
                throw new WireException(105, what + " of " + n + " bytes exceeds the limit of " + max);
            }
            need(n);
            try {
                String s = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(b, pos, n))
                        .toString();
                pos += n;
                return s;
            } catch (CharacterCodingException e) {
                throw new WireException(100, what + " is not valid UTF-8");
            }
        }

        byte[] bytes(String what) throws WireException {
            long n = u32();
            if (n > limits.maxValueLen()) {
                throw new WireException(105, what + " of " + n + " bytes exceeds the limit of " + limits.maxValueLen());
            }
            need((int) n);
            byte[] v = Arrays.copyOfRange(b, pos, pos + (int) n);
            pos += (int) n;
            return v;
        }

        Map<String, byte[]> attributes() throws WireException {
            int count = u16();
            if (count > limits.maxAttributes()) {
                throw new WireException(105, count + " attributes exceed the limit of " + limits.maxAttributes());
            }
            Map<String, byte[]> out = new LinkedHashMap<>();
            byte[] prev = null;
            for (int i = 0; i < count; i++) {
                String name = string(limits.maxNameLen(), "attribute name");
                byte[] nb = name.getBytes(StandardCharsets.UTF_8);
                if (prev != null && Arrays.compareUnsigned(prev, nb) >= 0) {
                    throw new WireException(100, "attribute names out of order or repeated");
                }
                prev = nb;
                out.put(name, bytes("attribute value"));
            }
            return out;
        }

        List<String> names() throws WireException {
            int count = u16();
            if (count > limits.maxAttributes()) {
                throw new WireException(105, count + " names exceed the limit of " + limits.maxAttributes());
            }
            List<String> out = new ArrayList<>(count);
            for (int i = 0; i < count; i++) {
                out.add(string(limits.maxNameLen(), "attribute name"));
            }
            return out;
        }

        void end() throws WireException {
            if (pos != b.length) {
                throw new WireException(100, (b.length - pos) + " bytes left over after the body");
            }
        }
    }

    /**
     * Decodes a reply body (node to client).
     *
     * @param opcode the frame's opcode
     * @param body the body
     * @param limits this receiver's limits
     * @return the reply
     * @throws WireException 104 for an opcode that is not a reply, 100/105 for a bad body
     */
    public static Message decodeReply(int opcode, byte[] body, Limits limits) throws WireException {
        Reader r = new Reader(body, limits);
        Message m;
        switch (opcode) {
            case HELLO_OK:
                m = new HelloOk(r.u8(), r.string(limits.maxTextLen(), "server name"), r.u32());
                break;
            case PONG:
                m = new Pong(r.bytes("PONG payload"));
                break;
            case SESSION: {
                String token = r.present() ? r.string(limits.maxTokenLen(), "token") : null;
                Meta meta = new Meta(r.u64(), r.u64(), r.u64(), r.u64(), r.u64());
                m = new SessionReply(token, meta, r.attributes());
                break;
            }
            case DONE:
                m = new Done();
                break;
            case STATS_REPLY: {
                int count = r.u16();
                // Each counter takes at least 10 bytes: a count beyond the body is malformed.
                if ((long) count * 10 > body.length) {
                    throw new WireException(100, count + " counters cannot fit in " + body.length + " bytes");
                }
                Map<String, Long> c = new LinkedHashMap<>();
                for (int i = 0; i < count; i++) {
                    c.put(r.string(limits.maxTextLen(), "stat name"), r.u64());
                }
                m = new StatsReply(c);
                break;
            }
            case ERROR:
                m = new ErrorReply(r.u16(), r.string(limits.maxTextLen(), "error message"));
                break;
            default:
                throw new WireException(104, String.format("opcode 0x%02x is not a client-port reply", opcode));
        }
        r.end();
        return m;
    }

    /**
     * Decodes a request body (client to node): for conformance tests and fake nodes.
     *
     * @param opcode the frame's opcode
     * @param body the body
     * @param limits this receiver's limits
     * @return the request
     * @throws WireException 104 for an opcode that is not a request, 100/105 for a bad body
     */
    public static Message decodeRequest(int opcode, byte[] body, Limits limits) throws WireException {
        Reader r = new Reader(body, limits);
        Message m;
        switch (opcode) {
            case HELLO: {
                int min = r.u8();
                int max = r.u8();
                String name = r.string(limits.maxTextLen(), "client name");
                String pw = r.present() ? r.string(limits.maxTextLen(), "password") : null;
                m = new Hello(min, max, name, pw);
                break;
            }
            case PING:
                m = new Ping(r.bytes("PING payload"));
                break;
            case CREATE:
                m = new Create(r.u64(), r.u64(), r.attributes());
                break;
            case GET:
                m = new Get(r.string(limits.maxTokenLen(), "token"), r.names());
                break;
            case SET: {
                String token = r.string(limits.maxTokenLen(), "token");
                Long ifVersion = r.present() ? r.u64() : null;
                m = new SetReq(token, ifVersion, r.attributes(), r.names());
                break;
            }
            case TOUCH:
                m = new Touch(r.string(limits.maxTokenLen(), "token"));
                break;
            case ROTATE:
                m = new Rotate(r.string(limits.maxTokenLen(), "token"));
                break;
            case DESTROY:
                m = new Destroy(r.string(limits.maxTokenLen(), "token"));
                break;
            case STATS:
                m = new Stats();
                break;
            default:
                throw new WireException(104, String.format("opcode 0x%02x is not a client-port request", opcode));
        }
        r.end();
        return m;
    }

    /** @return hex of bytes, for messages */
    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder();
        for (byte x : b) {
            s.append(String.format("%02x", x));
        }
        return s.toString();
    }

}
