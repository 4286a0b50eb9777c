package io.sessync.client;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.sessync.client.SessyncException.Applied;
import io.sessync.testing.Nodes;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The client API against two real nodes sharing a secret. */
class ClientTest {
    static Nodes nodes;
    static SessyncClient a;
    static SessyncClient b;

    @BeforeAll
    static void start() throws Exception {
        nodes = new Nodes(2);
        a = SessyncClient.builder(nodes.client(0)).timeout(Duration.ofSeconds(5)).build();
        b = SessyncClient.builder(nodes.client(1)).timeout(Duration.ofSeconds(5)).build();
    }

    @AfterAll
    static void stop() {
        a.close();
        b.close();
        nodes.close();
    }

    static byte[] v(String s) {
        return s.getBytes(UTF_8);
    }

    /** protocol.md section 4: deadlines saturate; an endless TTL and lifetime are served. */
    @Test
    void endlessDurationsSaturate() {
        Duration forever = Duration.ofSeconds(Long.MAX_VALUE);
        Session s = a.create(Map.of("user", v("alice")), forever, forever);
        assertEquals(Long.MAX_VALUE, s.meta().idleTtlMs());
        assertEquals(Long.MAX_VALUE, s.meta().deadlineMs());
        Session got = a.get(s.token());
        assertArrayEquals(v("alice"), got.attributes().get("user"));
        assertEquals(Long.MAX_VALUE, got.meta().deadlineMs());
    }

    @Test
    void createGetSetTouchRotateDestroy() {
        Session s = a.create(Map.of("user", v("alice")), Duration.ofMinutes(10), Duration.ofHours(1));
        assertTrue(s.tokenChanged());
        assertEquals(1, s.version());
        assertEquals(600_000, s.meta().idleTtlMs());
        assertTrue(s.meta().absoluteDeadlineMs() > s.meta().createdMs());
        assertArrayEquals(v("alice"), s.attributes().get("user"));

        Session got = a.get(s.token());
        assertFalse(got.tokenChanged());
        assertEquals(s.token(), got.token());
        assertArrayEquals(v("alice"), got.attributes().get("user"));

        Session set = a.set(s.token(), Map.of("cart", v("1 book")), List.of("user"), 1L);
        assertEquals(2, set.version());
        assertTrue(set.attributes().isEmpty(), "SET replies carry no attributes");
        Session only = a.get(s.token(), "cart", "missing");
        assertEquals(List.of("cart"), new ArrayList<>(only.attributes().keySet()));

        // ifVersion: a stale version changes nothing and says so.
        SessyncException conflict = assertThrows(SessyncException.VersionConflict.class,
                () -> a.set(s.token(), Map.of("cart", v("2 books")), List.of(), 1L));
        assertEquals(302, conflict.code());
        assertEquals("VERSION_CONFLICT", conflict.name());
        assertEquals(Applied.NO, conflict.applied());
        assertArrayEquals(v("1 book"), a.get(s.token()).attributes().get("cart"));
        assertEquals(2, a.get(s.token()).version());

        // Put and delete of one name: refused before sending.
        SessyncException both = assertThrows(SessyncException.class,
                () -> a.set(s.token(), Map.of("x", v("1")), List.of("x"), null));
        assertEquals(106, both.code());

        Session touched = a.touch(s.token());
        assertEquals(2, touched.version());

        Session rotated = a.rotate(s.token());
        assertTrue(rotated.tokenChanged());
        assertNotEquals(s.token(), rotated.token());
        assertEquals(3, rotated.version());
        assertArrayEquals(v("1 book"), rotated.attributes().get("cart"));
        SessyncException old = assertThrows(SessyncException.SessionNotFound.class, () -> a.get(s.token()));
        assertEquals(301, old.code());

        a.destroy(rotated.token(), false);
        assertThrows(SessyncException.SessionNotFound.class, () -> a.get(rotated.token()));
        assertThrows(SessyncException.SessionNotFound.class, () -> a.destroy(rotated.token(), false));
        a.destroy(rotated.token(), true); // a logout of a session already gone
    }

    @Test
    void statsPingAndInvalidToken() {
        Map<String, Long> stats = a.stats();
        assertTrue(stats.containsKey("sessions"), stats.toString());
        assertTrue(a.ping(v("hello")).toNanos() > 0);
        SessyncException e = assertThrows(SessyncException.InvalidToken.class, () -> a.get("not-a-token"));
        assertEquals(300, e.code());
        assertEquals("INVALID_TOKEN", e.name());
    }

    @Test
    void replacementTokenWhenTheSessionMoves() {
        Session s = a.create(Map.of("n", v("1")));
        Session there = b.get(s.token());
        assertTrue(there.tokenChanged(), "the session moved to node b: a new token names it");
        assertNotEquals(s.token(), there.token());
        assertArrayEquals(v("1"), there.attributes().get("n"));
        Session w = b.set(there.token(), Map.of("n", v("2")), List.of(), there.version());
        assertFalse(w.tokenChanged());
        Session back = a.get(w.token());
        assertTrue(back.tokenChanged());
        assertArrayEquals(v("2"), back.attributes().get("n"));
    }

    @Test
    void attributeNamesInWireOrder() {
        // U+FFFD sorts after U+1F600 in UTF-16 but before it in UTF-8: the wire wants UTF-8.
        Map<String, byte[]> attrs = new HashMap<>();
        attrs.put("\uFFFD", v("a"));
        attrs.put("\uD83D\uDE00", v("b"));
        attrs.put("", v("empty"));
        Session s = a.create(attrs);
        assertEquals(List.of("", "\uFFFD", "\uD83D\uDE00"), new ArrayList<>(a.get(s.token()).attributes().keySet()));
    }

    @Test
    void overLimitRequestIsRefusedBeforeSending() {
        byte[] big = new byte[Limits.DEFAULT.maxValueLen() + 1];
        SessyncException e = assertThrows(SessyncException.LimitExceeded.class, () -> a.create(Map.of("big", big)));
        assertEquals(105, e.code());
        assertEquals(Applied.NO, e.applied());
        // The connection is still fine.
        assertEquals(1, a.create(Map.of()).version());
    }

    /** 1000 requests in flight at once from 8 threads over 2 multiplexed connections. */
    @Test
    void thousandPipelinedRequestsFromSeveralThreads() throws Exception {
        Session s = a.create(Map.of());
        int threads = 8;
        int per = 125;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        try {
            List<Future<Integer>> done = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                final int tid = t;
                done.add(pool.submit(() -> {
                    Random rnd = new Random(1000 + tid);
                    List<CompletableFuture<Session>> futures = new ArrayList<>();
                    List<String> expect = new ArrayList<>();
                    for (int i = 0; i < per; i++) {
                        String value = tid + ":" + i + ":" + rnd.nextInt(1_000_000);
                        expect.add(value);
                        futures.add(a.createAsync(Map.of("v", v(value)), null, null));
                    }
                    int ok = 0;
                    for (int i = 0; i < per; i++) {
                        Session got = futures.get(i).get(10, TimeUnit.SECONDS);
                        assertArrayEquals(v(expect.get(i)), got.attributes().get("v"));
                        ok++;
                    }
                    return ok;
                }));
            }
            int total = 0;
            for (Future<Integer> f : done) {
                total += f.get(30, TimeUnit.SECONDS);
            }
            assertEquals(threads * per, total);
        } finally {
            pool.shutdownNow();
        }
        // Unconditional SETs from many threads on one session: every one is applied once.
        List<CompletableFuture<Session>> sets = new ArrayList<>();
        for (int i = 0; i < 200; i++) {
            sets.add(a.setAsync(s.token(), Map.of("k" + (i % 10), v("x" + i)), List.of(), null));
        }
        for (CompletableFuture<Session> f : sets) {
            f.get(10, TimeUnit.SECONDS);
        }
        assertEquals(201, a.get(s.token()).version());
    }

    @Test
    void password() throws Exception {
        try (Nodes locked = new Nodes(1, "--password", "hunter2");
                SessyncClient good = SessyncClient.builder(locked.client(0)).password("hunter2").build();
                SessyncClient bad = SessyncClient.builder(locked.client(0)).password("wrong").build();
                SessyncClient none = SessyncClient.builder(locked.client(0)).build()) {
            assertEquals(1, good.create(Map.of()).version());
            SessyncException e = assertThrows(SessyncException.class, () -> bad.create(Map.of()));
            assertEquals(201, e.code(), e.toString());
            assertEquals("AUTH_FAILED", e.name());
            SessyncException r = assertThrows(SessyncException.class, () -> none.create(Map.of()));
            assertEquals(200, r.code(), r.toString());
        }
    }

    @Test
    void errorCodesByTheirHundred() {
        assertEquals("UNKNOWN_399", SessyncException.fromCode(399, "x").name());
        assertEquals(399, SessyncException.fromCode(399, "x").code());
        assertEquals("INTERNAL", SessyncException.fromCode(7, "x").name());
        assertEquals(Applied.MAYBE, SessyncException.fromCode(402, "x").applied());
        assertFalse(SessyncException.fromCode(402, "x").retryable());
        assertTrue(SessyncException.fromCode(400, "x").retryable());
        assertFalse(SessyncException.fromCode(301, "x").retryable());
    }
}
