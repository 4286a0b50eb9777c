package io.sessync.tomcat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.sessync.client.Limits;
import io.sessync.client.Meta;
import io.sessync.client.Session;
import io.sessync.client.SessyncClient;
import io.sessync.client.SessyncException;
import io.sessync.client.Wire;
import io.sessync.testing.FakeNode;
import io.sessync.testing.Nodes;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.ObjectInputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Level;
import java.util.logging.Logger;
import org.apache.catalina.Context;
import org.apache.catalina.LifecycleException;
import org.apache.catalina.startup.Tomcat;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Two embedded Tomcat 10.1 instances, each beside its own sessync node (the nodes share a
 * secret), serving {@link AppServlet} with a {@link SessyncManager}; a cookie jar sends the
 * user's requests to one Tomcat and then the other.
 */
class TomcatTest {
    static final Logger TOMCAT_LOG = Logger.getLogger("org.apache");
    /** The webapp loader's warnings about --add-opens for leak detection, irrelevant here. */
    static final Logger LOADER_LOG = Logger.getLogger("org.apache.catalina.loader");
    static Nodes nodes;
    static Server a;
    static Server b;
    static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

    /** An embedded Tomcat with the app and a SessyncManager. */
    static final class Server implements AutoCloseable {
        final Tomcat tomcat = new Tomcat();
        final Path dir;
        final int port;
        final SessyncManager manager = new SessyncManager();

        Server(String nodeAddress, long timeoutMillis) throws Exception {
            dir = Files.createTempDirectory("sessync-tomcat-");
            tomcat.setBaseDir(dir.toString());
            // As in a real installation, where the manager's jar is in Tomcat's lib/.
            tomcat.getServer().setParentClassLoader(TomcatTest.class.getClassLoader());
            tomcat.setPort(0);
            tomcat.getConnector();
            Context ctx = tomcat.addContext("", dir.toString());
            manager.setAddress(nodeAddress);
            manager.setTimeoutMillis(timeoutMillis);
            manager.setMaxLifetimeSeconds(3600);
            ctx.setManager(manager);
            ctx.setSessionTimeout(10);
            Tomcat.addServlet(ctx, "app", new AppServlet()).addMapping("/*");
            tomcat.start();
            port = tomcat.getConnector().getLocalPort();
        }

        @Override
        public void close() throws LifecycleException {
            tomcat.stop();
            tomcat.destroy();
        }
    }

    /** A user's browser: one JSESSIONID cookie, sent to whichever Tomcat is asked. */
    static final class Browser {
        String cookie;
        /** Responses that replaced the cookie's token with another. */
        int cookieChanges;

        HttpResponse<String> go(Server s, String pathAndQuery) throws Exception {
            HttpRequest.Builder r = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + s.port + pathAndQuery))
                    .timeout(Duration.ofSeconds(20));
            if (cookie != null) {
                r.header("Cookie", "JSESSIONID=" + cookie);
            }
            HttpResponse<String> resp = HTTP.send(r.build(), HttpResponse.BodyHandlers.ofString());
            for (String h : resp.headers().allValues("Set-Cookie")) {
                if (h.startsWith("JSESSIONID=")) {
                    String v = h.substring("JSESSIONID=".length()).split(";", 2)[0];
                    if (cookie != null && !cookie.equals(v)) {
                        cookieChanges++;
                    }
                    cookie = v.isEmpty() ? null : v;
                }
            }
            return resp;
        }

        String body(Server s, String pathAndQuery) throws Exception {
            HttpResponse<String> r = go(s, pathAndQuery);
            assertEquals(200, r.statusCode(), pathAndQuery + ": " + r.body());
            return r.body();
        }
    }

    @BeforeAll
    static void start() throws Exception {
        TOMCAT_LOG.setLevel(Level.WARNING);
        LOADER_LOG.setLevel(Level.SEVERE);
        nodes = new Nodes(2);
        a = new Server(nodes.client(0), 3000);
        b = new Server(nodes.client(1), 3000);
    }

    @AfterAll
    static void stop() throws Exception {
        if (a != null) {
            a.close();
        }
        if (b != null) {
            b.close();
        }
        nodes.close();
    }

    @Test
    void counterFollowsTheUserAcrossTomcats() throws Exception {
        Browser user = new Browser();
        for (int i = 1; i <= 10; i++) {
            Server s = i % 2 == 1 ? a : b;
            assertEquals(String.valueOf(i), user.body(s, "/count"), "request " + i);
        }
        // Every request after the first moved the session to the other node, whose reply named
        // the new owner: each time the cookie got the new token.
        assertEquals(9, user.cookieChanges);
        // The node holds the attribute, Java-serialized, under its name.
        try (SessyncClient c = SessyncClient.builder(nodes.client(1)).build()) {
            Session s = c.get(user.cookie, "n");
            try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(s.attributes().get("n")))) {
                assertEquals(10, in.readObject());
            }
        }
        // Nothing stays in Tomcat's memory after the requests.
        assertEquals(0, a.manager.getActiveSessions());
        assertEquals(0, b.manager.getActiveSessions());
    }

    @Test
    void changeSessionIdAfterLoginInvalidatesTheOldId() throws Exception {
        Browser user = new Browser();
        assertEquals("1", user.body(a, "/count"));
        String before = user.cookie;
        assertNotNull(before);
        String returned = user.body(b, "/login?user=alice");
        String after = user.cookie;
        assertNotEquals(before, after);
        assertEquals(returned, after, "changeSessionId returns the id the cookie now carries");
        assertEquals("alice", user.body(a, "/whoami"));
        assertEquals("2", user.body(b, "/count"), "the data survived the rotation");

        Browser attacker = new Browser();
        attacker.cookie = before;
        assertEquals("anonymous", attacker.body(a, "/whoami"));
        assertEquals("anonymous", attacker.body(b, "/whoami"));
        try (SessyncClient c = SessyncClient.builder(nodes.client(0)).build()) {
            assertThrows(SessyncException.SessionNotFound.class, () -> c.get(before));
        }
    }

    @Test
    void invalidateSticksEverywhere() throws Exception {
        Browser user = new Browser();
        assertEquals("1", user.body(a, "/count"));
        assertEquals("2", user.body(b, "/count"));
        String beforeLogout = user.cookie;
        assertEquals("bye", user.body(a, "/logout"));
        for (Server s : List.of(a, b)) {
            Browser old = new Browser();
            old.cookie = beforeLogout;
            assertEquals("none", old.body(s, "/peek"));
        }
        for (int i = 0; i < 2; i++) {
            try (SessyncClient c = SessyncClient.builder(nodes.client(i)).build()) {
                assertThrows(SessyncException.SessionNotFound.class, () -> c.get(beforeLogout));
            }
        }
        // The same browser starts over.
        Browser again = new Browser();
        again.cookie = beforeLogout;
        assertEquals("1", again.body(b, "/count"));
        assertNotEquals(beforeLogout, again.cookie);
    }

    @Test
    void concurrentChangesOfDifferentAttributesAreMerged() throws Exception {
        Browser user = new Browser();
        assertEquals("ok", user.body(a, "/put?k=start&v=0"));
        String token = user.cookie;
        Browser u1 = new Browser();
        u1.cookie = token;
        Browser u2 = new Browser();
        u2.cookie = token;
        // Both requests load the session before either saves.
        CompletableFuture<String> slow = CompletableFuture.supplyAsync(() -> {
            try {
                return u1.body(a, "/put?k=x&v=1&sleep=500");
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        Thread.sleep(150);
        assertEquals("ok", u2.body(b, "/put?k=y&v=2"));
        assertEquals("ok", slow.get(20, TimeUnit.SECONDS));
        Browser check = new Browser();
        check.cookie = u1.cookie;
        assertEquals("1", check.body(b, "/get?k=x"));
        assertEquals("2", check.body(a, "/get?k=y"));
        assertEquals("0", check.body(b, "/get?k=start"));
    }

    @Test
    void nodeDownGivesTheServletAnErrorInTime() throws Exception {
        int port;
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            port = s.getLocalPort();
        }
        try (Server down = new Server("127.0.0.1:" + port, 1000)) {
            Browser user = new Browser();
            long t = System.nanoTime();
            HttpResponse<String> r = user.go(down, "/count");
            assertEquals(503, r.statusCode(), r.body());
            assertTrue(r.body().contains("CONNECTION_LOST"), r.body());
            user.cookie = "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B";
            assertEquals(503, user.go(down, "/count").statusCode());
            assertTrue(System.nanoTime() - t < TimeUnit.SECONDS.toNanos(4));
        }
    }

    @Test
    void silentNodeNeverHoldsARequestPastTheTimeout() throws Exception {
        try (FakeNode silent = new FakeNode((f, out, conn) -> true);
                Server hung = new Server(silent.address(), 500)) {
            for (String cookie : new String[] {null, "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B"}) {
                Browser user = new Browser();
                user.cookie = cookie;
                long t = System.nanoTime();
                HttpResponse<String> r = user.go(hung, "/count");
                long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t);
                assertEquals(503, r.statusCode(), r.body());
                assertTrue(r.body().contains("CLIENT_TIMEOUT"), r.body());
                assertTrue(ms < 2500, "the request took " + ms + " ms");
            }
        }
    }

    static final String SOME_TOKEN = "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B";

    /** A fake node that serves GET from {@code gets} in turn and answers SET with {@code set}. */
    static FakeNode scripted(List<Map<String, byte[]>> gets, Wire.Message set) throws IOException {
        AtomicInteger served = new AtomicInteger();
        return new FakeNode((f, out, conn) -> {
            try {
                Wire.Message req = Wire.decodeRequest(f.opcode(), f.body(), Limits.DEFAULT);
                if (req instanceof Wire.Get) {
                    int i = served.getAndIncrement();
                    Meta meta = new Meta(1 + i, 1, System.currentTimeMillis(), 600_000, 0);
                    out.write(Wire.encode(new Wire.SessionReply(null, meta, gets.get(Math.min(i, gets.size() - 1))),
                            f.requestId(), Limits.DEFAULT));
                } else if (req instanceof Wire.SetReq && set != null) {
                    out.write(Wire.encode(set, f.requestId(), Limits.DEFAULT));
                }
                return true;
            } catch (Wire.WireException e) {
                throw new IOException(e);
            }
        });
    }

    static byte[] serialized(Object o) throws IOException {
        return new JavaSerializationCodec().encode("n", o);
    }

    @Test
    void saveThatTimesOutBecomes503InTime() throws Exception {
        try (FakeNode fake = scripted(List.of(Map.of()), null); Server s = new Server(fake.address(), 500)) {
            Browser user = new Browser();
            user.cookie = SOME_TOKEN;
            long t = System.nanoTime();
            HttpResponse<String> r = user.go(s, "/count");
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t);
            assertEquals(503, r.statusCode(), r.body());
            assertTrue(ms < 2500, "the request took " + ms + " ms");
        }
    }

    @Test
    void afterOneFailedCallTheRequestMakesNoOther() throws Exception {
        // GET answers, ROTATE (changeSessionId at login) never does.
        try (FakeNode fake = scripted(List.of(Map.of()), null); Server s = new Server(fake.address(), 500)) {
            Browser user = new Browser();
            user.cookie = SOME_TOKEN;
            long t = System.nanoTime();
            HttpResponse<String> r = user.go(s, "/login?user=alice");
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t);
            assertEquals(503, r.statusCode(), r.body());
            assertTrue(ms < 2500, "the request took " + ms + " ms");
            assertEquals(2, fake.requests.get(), "GET and ROTATE; no SET of the unsaved change");
        }
    }

    @Test
    void conflictingSaveBecomes409() throws Exception {
        // Loaded with no n; the SET meets VERSION_CONFLICT; the re-read shows another request
        // set n to 5 meanwhile: this request's n = 1 must not overwrite it.
        try (FakeNode fake = scripted(List.of(Map.of(), Map.of("n", serialized(5))),
                new Wire.ErrorReply(302, "expected version 1, session is at 2"));
                Server s = new Server(fake.address(), 2000)) {
            Browser user = new Browser();
            user.cookie = SOME_TOKEN;
            HttpResponse<String> r = user.go(s, "/count");
            assertEquals(409, r.statusCode(), r.body());
            assertEquals(3, fake.requests.get(), "GET, SET (conflict), GET, and no second SET");
        }
    }

    /** What SessyncSession.rotated relies on: a save on the old baseline after a rotation merges. */
    @Test
    void saveAfterRotationKeepsAnotherWritersAddition() throws Exception {
        try (SessyncClient c = SessyncClient.builder(nodes.client(0)).build()) {
            Session s = c.create(Map.of("a", new byte[] {1}));
            SessionStore.Snapshot loaded = new SessionStore.Snapshot(s.token(), 1, s.attributes(), false);
            c.set(s.token(), Map.of("b", new byte[] {1}), List.of(), null); // another request
            Session r = c.rotate(s.token());
            assertEquals(3, r.version());
            SessionStore.Snapshot afterRotate = new SessionStore.Snapshot(r.token(), loaded.version(), loaded.raw(), true);
            SessionStore.Snapshot saved = SessionStore.save(c, afterRotate,
                    Map.of("a", new byte[] {1}, "c", new byte[] {1}));
            assertEquals(r.token(), saved.token());
            assertEquals(Set.of("a", "b", "c"), c.get(r.token()).attributes().keySet());
        }
    }

    @Test
    void storeMergesOrRefuses() throws Exception {
        try (SessyncClient c = SessyncClient.builder(nodes.client(0)).build()) {
            Session s = c.create(Map.of("a", new byte[] {1}, "b", new byte[] {1}));
            SessionStore.Snapshot base = new SessionStore.Snapshot(s.token(), 1, s.attributes(), false);
            SessionStore.Snapshot one = SessionStore.save(c, base,
                    Map.of("a", new byte[] {2}, "b", new byte[] {1}));
            assertEquals(2, one.version());
            // The second writer read version 1 and changed b only: merged onto version 2.
            SessionStore.Snapshot two = SessionStore.save(c, base,
                    Map.of("a", new byte[] {1}, "b", new byte[] {2}));
            assertEquals(3, two.version());
            Session now = c.get(s.token());
            assertEquals(2, now.attributes().get("a")[0]);
            assertEquals(2, now.attributes().get("b")[0]);
            // A third writer from version 1 changes a, which the first writer changed: refused.
            assertThrows(SessionStore.SessionConflict.class, () -> SessionStore.save(c, base,
                    Map.of("a", new byte[] {3}, "b", new byte[] {1})));
            assertEquals(2, c.get(s.token()).attributes().get("a")[0]);
            assertEquals(3, c.get(s.token()).version());
        }
    }

}
