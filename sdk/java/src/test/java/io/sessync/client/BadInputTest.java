package io.sessync.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.sessync.client.SessyncException.Applied;
import io.sessync.testing.FakeNode;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * Nodes that are down, silent, or answer garbage: each gives a clear exception for the request
 * concerned, within the client's timeout, and the client recovers on a new connection.
 */
class BadInputTest {
    static final Meta META = new Meta(1, 1, 1, 1000, 0);
    static final String TOKEN = "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B";

    static SessyncClient client(String address, long timeoutMs) {
        return SessyncClient.builder(address).timeout(Duration.ofMillis(timeoutMs)).connections(1).build();
    }

    static byte[] sessionReply(long id) {
        try {
            return Wire.encode(new Wire.SessionReply(null, META, Map.of()), id, Limits.DEFAULT);
        } catch (Wire.WireException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    void nodeDown() throws IOException {
        int port;
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            port = s.getLocalPort();
        }
        try (SessyncClient c = client("127.0.0.1:" + port, 2000)) {
            long t = System.nanoTime();
            SessyncException e = assertThrows(SessyncException.ConnectionLost.class, () -> c.get(TOKEN));
            assertEquals(0, e.code());
            assertEquals("CONNECTION_LOST", e.name());
            assertEquals(Applied.NO, e.applied(), "nothing was sent");
            assertTrue(System.nanoTime() - t < TimeUnit.SECONDS.toNanos(2));
        }
    }

    @Test
    void silentNodeTimesOutAndTheClientCarriesOn() throws IOException {
        // The first connection answers HELLO, then nothing; later ones answer everything.
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            if (conn > 0) {
                out.write(sessionReply(f.requestId()));
            }
            return true;
        }); SessyncClient c = client(fake.address(), 300)) {
            long t = System.nanoTime();
            SessyncException e = assertThrows(SessyncException.RequestTimeout.class, () -> c.touch(TOKEN));
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t);
            assertTrue(ms >= 250 && ms < 2000, "timed out after " + ms + " ms");
            assertEquals(Applied.MAYBE, e.applied());
            // Nothing came back on that connection since the request: it was given up, and the
            // next request goes out on a new one.
            assertEquals(1, c.touch(TOKEN).version());
            assertEquals(2, fake.connections.get());
        }
    }

    /** A slow reply on a connection that is otherwise answering: the late reply is dropped. */
    @Test
    void lateReplyIsDroppedAndTheConnectionKept() throws Exception {
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            Wire.Message req;
            try {
                req = Wire.decodeRequest(f.opcode(), f.body(), Limits.DEFAULT);
            } catch (Wire.WireException x) {
                throw new IOException(x);
            }
            if (req instanceof Wire.Touch) {
                // TOUCH is slow: its reply comes after the client's timeout.
                new Thread(() -> {
                    try {
                        Thread.sleep(2000);
                        synchronized (out) {
                            out.write(sessionReply(f.requestId()));
                            out.flush();
                        }
                    } catch (Exception ignored) {
                        // the test is over
                    }
                }).start();
            } else {
                synchronized (out) {
                    out.write(sessionReply(f.requestId()));
                }
            }
            return true;
        }); SessyncClient c = client(fake.address(), 1500)) {
            CompletableFuture<Session> slow = c.touchAsync(TOKEN);
            // Other replies keep flowing while TOUCH is outstanding.
            for (int i = 0; i < 10; i++) {
                Thread.sleep(100);
                assertEquals(1, c.get(TOKEN).version());
            }
            SessyncException e = SessyncClient.unwrap(
                    assertThrows(Exception.class, () -> slow.get(5, TimeUnit.SECONDS)));
            assertEquals("CLIENT_TIMEOUT", e.name());
            Thread.sleep(1000); // the late reply arrives and is dropped
            assertEquals(1, c.get(TOKEN).version());
            assertEquals(1, fake.connections.get(), "one connection throughout");
        }
    }

    /** A connection idle past maxIdle is replaced before it is used (the node may be closing it). */
    @Test
    void idleConnectionIsReplaced() throws Exception {
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            out.write(sessionReply(f.requestId()));
            return true;
        }); SessyncClient c = SessyncClient.builder(fake.address()).connections(1)
                .maxIdle(Duration.ofMillis(200)).build()) {
            c.touch(TOKEN);
            c.touch(TOKEN);
            assertEquals(1, fake.connections.get());
            Thread.sleep(300);
            c.touch(TOKEN);
            assertEquals(2, fake.connections.get());
            assertEquals(3, fake.requests.get());
        }
    }

    /**
     * A node that stops reading: the socket fills, the writer blocks, the callers still time out
     * on time, and the requests never written say so (applied NO); the written ones MAYBE.
     */
    @Test
    void nodeThatStopsReading() throws Exception {
        CountDownLatch release = new CountDownLatch(1);
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            try {
                release.await(10, TimeUnit.SECONDS); // stop reading
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            return false;
        }); SessyncClient c = client(fake.address(), 1000)) {
            byte[] mib = new byte[Limits.DEFAULT.maxValueLen()];
            List<CompletableFuture<byte[]>> pings = new ArrayList<>();
            long t = System.nanoTime();
            for (int i = 0; i < 40; i++) {
                pings.add(c.pingAsync(mib));
            }
            int no = 0;
            int maybe = 0;
            for (CompletableFuture<byte[]> f : pings) {
                SessyncException e = SessyncClient.unwrap(
                        assertThrows(Exception.class, () -> f.get(5, TimeUnit.SECONDS)));
                // Its own timeout, or the failure of the connection that the first timeout
                // found dead (nothing came back since).
                assertTrue(e.name().equals("CLIENT_TIMEOUT") || e.name().equals("CONNECTION_LOST"), e.toString());
                if (e.applied() == Applied.NO) {
                    no++;
                } else {
                    maybe++;
                }
            }
            assertTrue(System.nanoTime() - t < TimeUnit.SECONDS.toNanos(4));
            assertTrue(no > 0 && maybe > 0, "never sent: " + no + ", sent: " + maybe);
            release.countDown();
        }
    }

    @Test
    void garbageReply() throws Exception {
        Random rnd = new Random(7);
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            if (conn == 0) {
                byte[] junk = new byte[64];
                rnd.nextBytes(junk);
                junk[0] = 0; // a plausible length prefix, then junk: the CRC cannot match
                junk[1] = 0;
                junk[2] = 0;
                junk[3] = 40;
                out.write(junk);
            } else {
                out.write(sessionReply(f.requestId()));
            }
            return true;
        }); SessyncClient c = client(fake.address(), 2000)) {
            SessyncException e = assertThrows(SessyncException.class, () -> c.touch(TOKEN));
            assertTrue(e instanceof SessyncException.ProtocolViolation, e.toString());
            assertEquals(101, e.code());
            assertEquals("BAD_CRC", e.name());
            assertEquals(Applied.MAYBE, e.applied());
            // A new connection for the next request; the failed one was not resent.
            assertEquals(1, c.touch(TOKEN).version());
            assertEquals(2, fake.requests.get());
            assertEquals(2, fake.connections.get());
        }
    }

    @Test
    void replyOverTheClientsFrameLimit() throws Exception {
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            // A length prefix of 64 MiB: the client must refuse it without reading on.
            out.write(ByteBuffer.allocate(4).putInt(64 << 20).array());
            return true;
        }); SessyncClient c = client(fake.address(), 2000)) {
            SessyncException e = assertThrows(SessyncException.ProtocolViolation.class, () -> c.get(TOKEN));
            assertEquals(102, e.code());
            assertEquals("FRAME_TOO_LARGE", e.name());
        }
    }

    @Test
    void replyOverTheClientsAttributeLimit() throws Exception {
        Limits small = new Limits(Limits.DEFAULT.maxFrameLen(), 2, 256, 1024, 256, 1024);
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            try {
                out.write(Wire.encode(new Wire.SessionReply(null, META,
                        Map.of("a", new byte[1], "b", new byte[1], "c", new byte[1])), f.requestId(), Limits.DEFAULT));
            } catch (Wire.WireException x) {
                throw new IOException(x);
            }
            return true;
        }); SessyncClient c = SessyncClient.builder(fake.address()).limits(small).connections(1)
                .timeout(Duration.ofSeconds(2)).build()) {
            SessyncException e = assertThrows(SessyncException.ProtocolViolation.class, () -> c.get(TOKEN));
            assertEquals(105, e.code());
            assertTrue(e.getMessage().contains("3 attributes"), e.getMessage());
        }
    }

    @Test
    void wrongReplyKindAndUnknownId() throws Exception {
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            if (conn == 0) {
                out.write(Wire.frame(Wire.DONE, f.requestId(), new byte[0])); // DONE to a GET
            } else {
                out.write(Wire.frame(Wire.DONE, f.requestId() + 1000, new byte[0])); // nobody's id
            }
            return true;
        }); SessyncClient c = client(fake.address(), 2000)) {
            SessyncException e = assertThrows(SessyncException.ProtocolViolation.class, () -> c.get(TOKEN));
            assertTrue(e.getMessage().contains("answered with opcode 0x84"), e.getMessage());
            SessyncException u = assertThrows(SessyncException.ProtocolViolation.class, () -> c.get(TOKEN));
            assertTrue(u.getMessage().contains("not outstanding"), u.getMessage());
        }
    }

    /** A connection that dies with writes in flight: they fail as "maybe applied" and are never resent. */
    @Test
    void reconnectWithoutResendingWrites() throws Exception {
        try (FakeNode fake = new FakeNode((f, out, conn) -> {
            if (conn == 0) {
                return false; // read the SET, then drop the connection without a reply
            }
            out.write(sessionReply(f.requestId()));
            return true;
        }); SessyncClient c = client(fake.address(), 2000)) {
            CompletableFuture<Session> w = c.setAsync(TOKEN, Map.of("k", new byte[] {1}), List.of(), null);
            SessyncException e = SessyncClient.unwrap(
                    assertThrows(Exception.class, () -> w.get(5, TimeUnit.SECONDS)));
            assertEquals("CONNECTION_LOST", e.name());
            assertEquals(Applied.MAYBE, e.applied(), e.toString());
            assertEquals(1, c.set(TOKEN, Map.of("k", new byte[] {2}), List.of(), null).version());
            assertEquals(2, fake.requests.get(), "the lost SET was not sent again");
            assertEquals(2, fake.connections.get());
        }
    }
}
