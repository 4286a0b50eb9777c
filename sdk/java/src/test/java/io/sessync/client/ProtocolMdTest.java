package io.sessync.client;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.net.InetAddress;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Conformance with protocol.md's shared vectors (its section 14), as
 * crates/proto/tests/protocol_md.rs and sdk/python/tests/test_protocol_md.py do it: every
 * client-port example is decoded with this SDK's codec and compared with the message built
 * here from the prose (independently of the document's bytes), and both re-encode to the
 * example byte for byte. Peer examples are checked as frames (length, CRC, header, a peer
 * opcode the client's decoder refuses as UNKNOWN_OPCODE); this SDK does not speak the peer
 * port. Token examples verify with the stated secret and decode to the stated fields. The
 * error and limit tables must match this SDK's.
 */
class ProtocolMdTest {
    static final String TOKEN = "AgAAESIzRFVmd4iZqrvM3e7_AAAAAAAAAAAECgAAARzpAJY_dtzQzhLirrcpiVPU3tc";
    /** The token layout the examples use (protocol.md 8.1): version 2, with the generation. */
    static final byte TOKEN_VERSION = 2;
    /** protocol.md 8.1's {@code MAX_TOKEN_STR_LEN}. */
    static final int MAX_TOKEN_STR_LEN = 134;
    static final long CREATED = 1_700_000_000_000L;
    static final long IDLE = 1_800_000L;
    static final byte[] SECRET = "sessync-docs-example-secret-0001".getBytes(UTF_8);

    record Example(String kind, String name, String text) {
    }

    static final Map<String, Example> EXAMPLES = new LinkedHashMap<>();
    static String doc;

    @BeforeAll
    static void parse() throws Exception {
        String env = System.getenv("SESSYNC_PROTOCOL_MD");
        Path p = env != null ? Path.of(env) : Path.of("../../protocol.md");
        doc = Files.readString(p);
        Matcher m = Pattern.compile("^<!-- example: (\\S+) (\\S+) -->\\s*```(\\w+)\\n(.*?)```",
                Pattern.DOTALL | Pattern.MULTILINE)
                .matcher(doc);
        while (m.find()) {
            Example e = new Example(m.group(1), m.group(2), m.group(4));
            assertTrue(EXAMPLES.put(e.name(), e) == null, "duplicate example " + e.name());
        }
        int markers = doc.split("(?m)^<!-- example: ", -1).length - 1;
        assertEquals(markers, EXAMPLES.size(), "every example marker is followed by a fenced block");
    }

    static byte[] hex(String text) {
        return HexFormat.of().parseHex(text.replaceAll("\\s+", ""));
    }

    static Map<String, byte[]> attrs(String... kv) {
        Map<String, byte[]> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put(kv[i], kv[i + 1].getBytes(UTF_8));
        }
        return m;
    }

    static Meta meta(long version, long lastAccess) {
        return new Meta(version, CREATED, lastAccess, IDLE, 0);
    }

    record Expected(long id, Wire.Message message) {
    }

    static final Map<String, Expected> REQUESTS = Map.of(
            "hello", new Expected(1, new Wire.Hello(1, 1, "example-client/1.0", "hunter2")),
            "ping", new Expected(2, new Wire.Ping("ping".getBytes(UTF_8))),
            "create", new Expected(3, new Wire.Create(1_800_000, 0, attrs("user", "alice"))),
            "get", new Expected(4, new Wire.Get(TOKEN, List.of("user"))),
            "get_all", new Expected(5, new Wire.Get(TOKEN, List.of())),
            "set", new Expected(6, new Wire.SetReq(TOKEN, 1L, attrs("cart", "1x book"), List.of("csrf"))),
            "touch", new Expected(7, new Wire.Touch(TOKEN)),
            "rotate", new Expected(8, new Wire.Rotate(TOKEN)),
            "destroy", new Expected(9, new Wire.Destroy(TOKEN)),
            "stats", new Expected(10, new Wire.Stats()));

    static final Map<String, Expected> RESPONSES;

    /**
     * Examples of messages this SDK does not speak: MEMBERS and DRAIN are operator requests (the CLI's
     * {@code sessync members}, the Rust SDK); applications have no use for it. The Rust
     * conformance test (crates/proto/tests/protocol_md.rs) decodes them.
     */
    static final Set<String> NOT_SPOKEN = Set.of("client-request members", "client-response members_reply", "client-request drain");

    static {
        Map<String, Long> counters = new LinkedHashMap<>();
        counters.put("sessions", 1L);
        counters.put("copies_received", 0L);
        RESPONSES = Map.of(
                "hello_ok", new Expected(1, new Wire.HelloOk(1, "sessync/0.1.0", 4194304)),
                "pong", new Expected(2, new Wire.Pong("ping".getBytes(UTF_8))),
                "session_created", new Expected(3, new Wire.SessionReply(TOKEN, meta(1, CREATED), attrs("user", "alice"))),
                "session_get", new Expected(4, new Wire.SessionReply(null, meta(1, CREATED + 60_000), attrs("user", "alice"))),
                "session_set", new Expected(6, new Wire.SessionReply(null, meta(2, CREATED + 120_000), Map.of())),
                "done", new Expected(9, new Wire.Done()),
                "stats_reply", new Expected(10, new Wire.StatsReply(counters)),
                "error_version_conflict", new Expected(6, new Wire.ErrorReply(302, "expected version 1, session is at 2")),
                "error_bad_crc", new Expected(0, new Wire.ErrorReply(101, "CRC32 mismatch")));
    }

    /** A readable rendering of a message (byte arrays as hex), to compare decoded with expected. */
    static String show(Object o) {
        if (o instanceof byte[] b) {
            return HexFormat.of().formatHex(b);
        }
        if (o instanceof Map<?, ?> m) {
            StringBuilder s = new StringBuilder("{");
            m.forEach((k, v) -> s.append(show(k)).append('=').append(show(v)).append(','));
            return s.append('}').toString();
        }
        if (o instanceof Record r) {
            StringBuilder s = new StringBuilder(r.getClass().getSimpleName()).append('(');
            for (var c : r.getClass().getRecordComponents()) {
                try {
                    s.append(c.getName()).append('=').append(show(c.getAccessor().invoke(r))).append(';');
                } catch (ReflectiveOperationException e) {
                    throw new AssertionError(e);
                }
            }
            return s.append(')').toString();
        }
        return String.valueOf(o);
    }

    void check(Example e, Expected want, boolean request) throws Exception {
        byte[] bytes = hex(e.text());
        Wire.Frame f = Wire.parseWhole(bytes, Limits.DEFAULT.maxFrameLen());
        assertEquals(want.id(), f.requestId(), e.name());
        Wire.Message got = request ? Wire.decodeRequest(f.opcode(), f.body(), Limits.DEFAULT)
                : Wire.decodeReply(f.opcode(), f.body(), Limits.DEFAULT);
        assertEquals(show(want.message()), show(got), e.name() + ": decoded differs from the prose");
        assertArrayEquals(bytes, Wire.encode(got, f.requestId(), Limits.DEFAULT), e.name() + ": re-encoding");
        assertArrayEquals(bytes, Wire.encode(want.message(), want.id(), Limits.DEFAULT), e.name() + ": from prose");
    }

    @Test
    void clientExamplesDecodeAndReencode() throws Exception {
        Set<Integer> opcodes = new HashSet<>();
        int n = 0;
        for (Example e : EXAMPLES.values()) {
            if (NOT_SPOKEN.contains(e.kind() + " " + e.name())) {
                continue;
            }
            if (e.kind().equals("client-request") || e.kind().equals("client-response")) {
                boolean request = e.kind().equals("client-request");
                Expected want = (request ? REQUESTS : RESPONSES).get(e.name());
                assertNotNull(want, "no expected message for example " + e.name());
                check(e, want, request);
                opcodes.add(Wire.opcode(want.message()));
                n++;
            }
        }
        assertEquals(REQUESTS.size() + RESPONSES.size(), n, "every expected example is in protocol.md");
        for (int op : new int[] {Wire.HELLO, Wire.PING, Wire.CREATE, Wire.GET, Wire.SET, Wire.TOUCH, Wire.ROTATE,
                Wire.DESTROY, Wire.STATS, Wire.HELLO_OK, Wire.PONG, Wire.SESSION, Wire.DONE, Wire.STATS_REPLY,
                Wire.ERROR}) {
            assertTrue(opcodes.contains(op), String.format("no example for opcode 0x%02x", op));
        }
    }

    @Test
    void peerExamplesAreValidFramesTheClientRefuses() throws Exception {
        int n = 0;
        for (Example e : EXAMPLES.values()) {
            if (!e.kind().equals("peer")) {
                continue;
            }
            n++;
            byte[] bytes = hex(e.text());
            Wire.Frame f = Wire.parseWhole(bytes, Limits.DEFAULT.maxFrameLen());
            int op = f.opcode();
            assertTrue((op >= 0x40 && op <= 0x7F) || op >= 0xC0, e.name() + ": not a peer opcode");
            assertArrayEquals(bytes, Wire.frame(op, f.requestId(), f.body()), e.name());
            if (op != Wire.ERROR) {
                try {
                    Wire.decodeReply(op, f.body(), Limits.DEFAULT);
                    fail(e.name() + ": a peer message decoded as a client reply");
                } catch (Wire.WireException x) {
                    assertEquals(104, x.code, e.name());
                }
            }
        }
        assertTrue(n >= 10, "peer examples found: " + n);
    }

    @Test
    void corruptedExampleIsRefused() throws Exception {
        byte[] bytes = hex(EXAMPLES.get("session_created").text());
        bytes[20] ^= 1;
        try {
            Wire.parseWhole(bytes, Limits.DEFAULT.maxFrameLen());
            fail("a flipped bit passed the CRC");
        } catch (Wire.WireException x) {
            assertEquals(101, x.code);
        }
    }

    static byte[] addr(String ip, int port) throws Exception {
        byte[] a = InetAddress.getByName(ip).getAddress();
        ByteBuffer b = ByteBuffer.allocate(1 + a.length + 2);
        b.put((byte) (a.length == 4 ? 4 : 6)).put(a).putShort((short) port);
        return b.array();
    }

    static void checkToken(String name, int keyId, String sessionHex, long generation, String owner, int port,
            String... backups) throws Exception {
        String text = EXAMPLES.get(name).text().strip();
        assertTrue(text.length() <= MAX_TOKEN_STR_LEN, name + ": " + text.length() + " characters");
        byte[] raw = Base64.getUrlDecoder().decode(text);
        assertEquals(text, Base64.getUrlEncoder().withoutPadding().encodeToString(raw), "one string form");
        assertTrue(raw.length >= 50 && raw.length <= 100, name + ": " + raw.length + " bytes");
        List<byte[]> parts = new ArrayList<>();
        parts.add(new byte[] {TOKEN_VERSION, (byte) keyId});
        parts.add(HexFormat.of().parseHex(sessionHex));
        parts.add(ByteBuffer.allocate(8).putLong(generation).array());
        parts.add(addr(owner, port));
        parts.add(new byte[] {(byte) backups.length});
        for (String bk : backups) {
            parts.add(addr(bk, port));
        }
        ByteBuffer body = ByteBuffer.allocate(raw.length - 16);
        parts.forEach(body::put);
        assertEquals(0, body.remaining(), name + ": length");
        byte[] fields = body.array();
        assertArrayEquals(fields, Arrays.copyOf(raw, fields.length), name + ": fields");
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(SECRET, "HmacSHA256"));
        byte[] tag = Arrays.copyOf(mac.doFinal(fields), 16);
        assertArrayEquals(tag, Arrays.copyOfRange(raw, fields.length, raw.length), name + ": tag");
    }

    @Test
    void tokenExamplesVerify() throws Exception {
        checkToken("basic", 0, "00112233445566778899aabbccddeeff", 0, "10.0.0.1", 7401);
        checkToken("backups", 1, "ffeeddccbbaa99887766554433221100", 5, "fd00::1", 7401, "10.0.0.2", "10.0.0.3");
        assertEquals(TOKEN, EXAMPLES.get("basic").text().strip());
    }

    @Test
    void tokenLengthBounds() {
        // The shortest token (IPv4 owner, no backups) and the longest (IPv6 owner, two IPv6
        // backups) are 50 and 100 bytes, 67 and MAX_TOKEN_STR_LEN characters.
        int fixed = 2 + 16 + 8 + 1 + 16;
        int shortest = fixed + 7;
        int longest = fixed + 3 * 19;
        assertEquals(50, shortest);
        assertEquals(100, longest);
        Base64.Encoder b64 = Base64.getUrlEncoder().withoutPadding();
        assertEquals(67, b64.encodeToString(new byte[shortest]).length());
        assertEquals(MAX_TOKEN_STR_LEN, b64.encodeToString(new byte[longest]).length());
        assertTrue(doc.contains("a token string 67 to **" + MAX_TOKEN_STR_LEN + " characters**"));
        assertTrue(doc.contains("at most " + MAX_TOKEN_STR_LEN + " characters long"));
    }

    @Test
    void errorTableMatches() {
        Matcher m = Pattern.compile("^\\| (\\d{3}) \\| ([A-Z_]+) \\| (yes|no) \\|", Pattern.MULTILINE).matcher(doc);
        Map<Integer, String> names = new TreeMap<>();
        while (m.find()) {
            int code = Integer.parseInt(m.group(1));
            names.put(code, m.group(2));
            assertEquals(m.group(3).equals("yes"), SessyncException.closes(code), "close rule of " + code);
            assertEquals(m.group(2), SessyncException.fromCode(code, "").name());
        }
        assertEquals(new TreeMap<>(SessyncException.NAMES), names);
    }

    @Test
    void limitsTableMatches() {
        Map<String, Long> want = Map.of("max_frame_len", (long) Limits.DEFAULT.maxFrameLen(), "max_attributes",
                (long) Limits.DEFAULT.maxAttributes(), "max_name_len", (long) Limits.DEFAULT.maxNameLen(),
                "max_value_len", (long) Limits.DEFAULT.maxValueLen(), "max_token_len",
                (long) Limits.DEFAULT.maxTokenLen(), "max_text_len", (long) Limits.DEFAULT.maxTextLen());
        Matcher m = Pattern.compile("^\\| `(max_[a-z_]+)` \\| (\\d+) \\|", Pattern.MULTILINE).matcher(doc);
        Map<String, Long> got = new TreeMap<>();
        while (m.find()) {
            got.put(m.group(1), Long.parseLong(m.group(2)));
        }
        assertEquals(new TreeMap<>(want), got);
    }
}
