package io.sessync.client;

import io.sessync.client.SessyncException.Applied;
import io.sessync.client.SessyncException.ConnectionLost;
import io.sessync.client.SessyncException.LimitExceeded;
import io.sessync.client.SessyncException.ProtocolViolation;
import io.sessync.client.Wire.WireException;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One multiplexed connection to a node's client port.
 *
 * <p>Any thread may {@link #send} at any time: the request gets the next request id, goes
 * into {@link #pending} and into a queue that one writer thread drains (so a caller never
 * blocks on a socket that the node does not read; its own timeout always fires). One reader
 * thread reads replies, which may come in any order, and completes each request's future by
 * id. The writer flushes when its queue runs dry, so concurrent callers share TCP segments.
 *
 * <p>A request that timed out stays in {@link #pending} as abandoned (protocol.md 2.4: its
 * late reply is discarded, not an error); past {@link #MAX_ABANDONED} of them the connection
 * is closed, so a node that stops answering cannot grow the map without bound.
 *
 * <p>Any failure that leaves the stream in an unknown state (I/O error, EOF, a frame error
 * either way, an ERROR that closes) marks the connection closed and fails every waiting
 * request with it. Nothing is ever resent: the client opens a new connection for later
 * requests only.
 */
final class Connection {
    static final int QUEUED = 0, SENT = 1, WITHDRAWN = 2;

    /** Timed-out requests still owed a reply before the connection is given up. */
    static final int MAX_ABANDONED = 1024;

    /** A request waiting for its reply. */
    static final class Pending {
        final long id;
        final int opcode;
        final byte[] frame;
        final CompletableFuture<Wire.Message> future = new CompletableFuture<>();
        /** When it was queued (System.nanoTime). */
        final long queuedAt = System.nanoTime();
        /**
         * QUEUED until the writer claims it (SENT: it may have been applied) or a timeout or
         * a failure withdraws it first (WITHDRAWN: it is never written). One compare-and-set
         * decides, so "not applied" is only ever said of a request that is never sent.
         */
        final AtomicInteger stage = new AtomicInteger(QUEUED);

        /** @return true if the request is (now) never to be sent, false if it was sent */
        boolean withdraw() {
            return stage.compareAndSet(QUEUED, WITHDRAWN) || stage.get() == WITHDRAWN;
        }

        boolean sent() {
            return stage.get() == SENT;
        }
        volatile boolean abandoned;

        Pending(long id, int opcode, byte[] frame) {
            this.id = id;
            this.opcode = opcode;
            this.frame = frame;
        }
    }

    private static final Pending POISON = new Pending(0, 0, new byte[0]);

    private final Socket socket;
    private final Limits limits;
    private final String label;
    private final Map<Long, Pending> pending = new ConcurrentHashMap<>();
    private final LinkedBlockingQueue<Pending> queue = new LinkedBlockingQueue<>();
    private final AtomicLong nextId = new AtomicLong(1);
    private final AtomicInteger abandoned = new AtomicInteger();
    private volatile SessyncException failure;
    /** The longest frame this connection may send: ours, lowered to the node's HELLO_OK. */
    private volatile long maxSendFrame;
    private volatile String serverName = "";
    /** When the last frame came from the node, or the connection opened (System.nanoTime). */
    private volatile long lastReceived = System.nanoTime();
    /** When the last request was queued (System.nanoTime). */
    private volatile long lastUsed = System.nanoTime();

    private Connection(Socket socket, Limits limits, String label) {
        this.socket = socket;
        this.limits = limits;
        this.label = label;
        this.maxSendFrame = limits.maxFrameLen();
    }

    /**
     * Connects, starts the reader and writer threads and completes HELLO, all within
     * {@code timeoutMs}.
     */
    static Connection open(InetSocketAddress address, Limits limits, String clientName, String password,
            long timeoutMs, javax.net.ssl.SSLContext tls, String tlsServerName) {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        Socket s = new Socket();
        try {
            int ms = (int) Math.max(1, Math.min(Integer.MAX_VALUE, timeoutMs));
            s.connect(address, ms);
            s.setTcpNoDelay(true);
            if (tls != null) {
                // TLS 1.3; the node's certificate must chain to the context's CA and name the
                // server name (default: the host as given, an IP checked against IP names).
                String name = tlsServerName != null ? tlsServerName : address.getHostString();
                javax.net.ssl.SSLSocket ssl = (javax.net.ssl.SSLSocket) tls.getSocketFactory()
                        .createSocket(s, name, address.getPort(), true);
                ssl.setEnabledProtocols(new String[] {"TLSv1.3"});
                javax.net.ssl.SSLParameters p = ssl.getSSLParameters();
                p.setEndpointIdentificationAlgorithm("HTTPS");
                ssl.setSSLParameters(p);
                ssl.setSoTimeout(ms);
                try {
                    ssl.startHandshake();
                } catch (IOException e) {
                    throw new IOException("TLS handshake failed: " + e.getMessage(), e);
                }
                ssl.setSoTimeout(0);
                s = ssl;
            }
        } catch (IOException e) {
            try {
                s.close();
            } catch (IOException ignored) {
                // nothing to do
            }
            throw new ConnectionLost("cannot connect to " + address + ": " + e.getMessage(), Applied.NO, e);
        }
        Connection c = new Connection(s, limits, address.toString());
        c.start();
        try {
            Pending hello = c.enqueue(new Wire.Hello(Wire.VERSION, Wire.VERSION, clientName, password));
            long left = (deadline - System.nanoTime()) / 1_000_000L;
            Wire.Message reply = c.await(hello, Math.max(1, left));
            Wire.HelloOk ok = (Wire.HelloOk) reply;
            if (ok.version() != Wire.VERSION) {
                throw new ProtocolViolation(103, "HELLO_OK chose version " + ok.version() + ", outside [1, 1]");
            }
            c.serverName = ok.serverName();
            c.maxSendFrame = Math.min(c.maxSendFrame, ok.maxFrameLen());
            return c;
        } catch (RuntimeException e) {
            c.fail(e instanceof SessyncException se ? se
                    : new ConnectionLost("HELLO failed: " + e, Applied.NO, e));
            throw e;
        }
    }

    private void start() {
        Thread r = new Thread(this::readLoop, "sessync-reader " + label);
        r.setDaemon(true);
        Thread w = new Thread(this::writeLoop, "sessync-writer " + label);
        w.setDaemon(true);
        r.start();
        w.start();
    }

    /** @return whether the connection has failed or was closed */
    boolean closed() {
        return failure != null;
    }

    String serverName() {
        return serverName;
    }

    int inFlight() {
        return pending.size();
    }

    /** @return nanoseconds since the last request was queued */
    long idleNanos() {
        return System.nanoTime() - lastUsed;
    }

    /**
     * Queues a request. Returns its pending entry; its future completes with the reply (an
     * {@link Wire.ErrorReply} is turned into its exception) or fails.
     *
     * @throws SessyncException at once (nothing sent) for a request over a limit or a closed
     *     connection
     */
    CompletableFuture<Wire.Message> send(Wire.Message request) {
        return enqueue(request).future;
    }

    Pending enqueue(Wire.Message request) {
        SessyncException f = failure;
        if (f != null) {
            throw new ConnectionLost("connection already closed: " + f.getMessage(), Applied.NO, f);
        }
        long id = nextId.getAndIncrement();
        byte[] frame;
        try {
            frame = Wire.encode(request, id, limits);
        } catch (WireException e) {
            throw e.code == 105 ? new LimitExceeded(e.getMessage())
                    : new SessyncException(e.code, SessyncException.NAMES.getOrDefault(e.code, "INVALID_REQUEST"),
                            e.getMessage(), Applied.NO);
        }
        if (frame.length - 4 > maxSendFrame) {
            throw new LimitExceeded("request frame of " + (frame.length - 4)
                    + " bytes exceeds the node's limit of " + maxSendFrame);
        }
        Pending p = new Pending(id, Wire.opcode(request), frame);
        lastUsed = p.queuedAt;
        pending.put(id, p);
        queue.add(p);
        f = failure;
        if (f != null && pending.remove(id) != null) {
            // Closed meanwhile, and the sweep in fail() may have missed it: whoever removes a
            // request from the map completes it, so this happens exactly once.
            failOne(p, f);
        }
        return p;
    }

    /**
     * Waits for one request's reply (for HELLO, before the connection is handed out).
     *
     * @throws SessyncException the request's failure, or a timeout
     */
    Wire.Message await(Pending p, long timeoutMs) {
        try {
            return p.future.get(timeoutMs, TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            boolean unsent = abandon(p);
            throw new SessyncException.RequestTimeout("no reply within " + timeoutMs + " ms",
                    unsent ? Applied.NO : Applied.MAYBE);
        } catch (ExecutionException e) {
            throw SessyncClient.unwrap(e.getCause());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            boolean unsent = abandon(p);
            throw new ConnectionLost("interrupted while waiting for a reply", unsent ? Applied.NO : Applied.MAYBE, e);
        }
    }

    /**
     * Marks a timed-out request: its late reply will be dropped, or, if the writer has not
     * sent it yet, it is withdrawn and never sent (returns true). When nothing at all came from
     * the node since the request was queued, the connection is presumed dead (a node that
     * stopped, a stream stuck in the middle of a frame) and is closed, so that later requests
     * get a new one instead of timing out in turn; a connection that is slow but still
     * answering other requests is kept.
     */
    boolean abandon(Pending p) {
        p.abandoned = true;
        boolean unsent = p.withdraw();
        if (unsent || lastReceived - p.queuedAt < 0) {
            pending.remove(p.id); // its caller gets the timeout, not this connection's failure
        }
        if (lastReceived - p.queuedAt < 0) {
            fail(new ConnectionLost("no reply of any kind since a request that timed out was queued",
                    Applied.MAYBE, null));
            return unsent;
        }
        if (unsent) {
            return true; // never written: no reply is owed
        }
        if (!pending.containsKey(p.id)) {
            return false; // its reply came meanwhile
        }
        if (abandoned.incrementAndGet() > MAX_ABANDONED) {
            pending.remove(p.id);
            fail(new ConnectionLost("too many requests timed out on this connection", Applied.MAYBE, null));
        }
        return false;
    }

    void close() {
        fail(new ConnectionLost("the client closed the connection", Applied.MAYBE, null));
    }

    /** Closes the connection and fails every request still waiting with {@code why}. */
    void fail(SessyncException why) {
        synchronized (this) {
            if (failure != null) {
                return;
            }
            failure = why;
        }
        try {
            socket.close();
        } catch (IOException ignored) {
            // closing anyway
        }
        queue.add(POISON);
        for (Long id : pending.keySet()) {
            Pending p = pending.remove(id);
            if (p != null) {
                failOne(p, why);
            }
        }
    }

    /** Fails one request removed from {@link #pending} (by its remover, so exactly once). */
    private static void failOne(Pending p, SessyncException why) {
        SessyncException e = why;
        boolean unsent = p.withdraw();
        if (why instanceof ConnectionLost) {
            // Whether this request may have been applied depends on whether it was sent.
            e = new ConnectionLost(why.detail(), unsent ? Applied.NO : Applied.MAYBE, why.getCause());
        } else if (unsent) {
            e = new ConnectionLost(why.getMessage() + " (before this request was sent)", Applied.NO, why);
        }
        p.future.completeExceptionally(e);
    }

    private void writeLoop() {
        try {
            OutputStream out = new BufferedOutputStream(socket.getOutputStream(), 64 * 1024);
            while (true) {
                Pending p = queue.take();
                while (p != null) {
                    if (p == POISON) {
                        return;
                    }
                    if (p.stage.compareAndSet(QUEUED, SENT)) {
                        out.write(p.frame);
                    }
                    // else withdrawn (timed out or failed before it was written): never sent.
                    p = queue.poll();
                }
                out.flush();
            }
        } catch (IOException e) {
            fail(new ConnectionLost("send failed: " + e.getMessage(), Applied.MAYBE, e));
        } catch (InterruptedException e) {
            fail(new ConnectionLost("writer interrupted", Applied.MAYBE, e));
        }
    }

    private void readLoop() {
        try {
            DataInputStream in = new DataInputStream(socket.getInputStream());
            while (failure == null) {
                long len;
                try {
                    len = in.readInt() & 0xFFFFFFFFL;
                } catch (EOFException e) {
                    fail(new ConnectionLost("the node closed the connection", Applied.MAYBE, null));
                    return;
                }
                Wire.Frame frame;
                try {
                    // Checked before a byte of the body is read or buffered.
                    Wire.checkLength(len, limits.maxFrameLen());
                    byte[] rest = new byte[(int) len];
                    in.readFully(rest);
                    frame = Wire.parseFrame(rest);
                    lastReceived = System.nanoTime();
                } catch (WireException e) {
                    fail(new ProtocolViolation(e.code, "invalid frame from the node: " + e.getMessage()));
                    return;
                }
                handle(frame);
            }
        } catch (IOException e) {
            fail(new ConnectionLost("receive failed: " + e.getMessage(), Applied.MAYBE, e));
        } catch (RuntimeException e) {
            fail(new ProtocolViolation(100, "reply could not be handled: " + e));
        }
    }

    private void handle(Wire.Frame frame) {
        if (frame.opcode() == Wire.ERROR && frame.requestId() == 0) {
            // About the connection as a whole (framing error, idle timeout, too many
            // connections): the node closes it and every waiting request fails with it.
            try {
                Wire.ErrorReply e = (Wire.ErrorReply) Wire.decodeReply(frame.opcode(), frame.body(), limits);
                SessyncException x = SessyncException.fromCode(e.code(), e.message());
                fail(new SessyncException(x.code(), x.name(), "the node closed the connection: " + x.detail(),
                        Applied.MAYBE));
            } catch (WireException w) {
                fail(new ProtocolViolation(w.code, "undecodable ERROR: " + w.getMessage()));
            }
            return;
        }
        Pending p = pending.remove(frame.requestId());
        if (p == null) {
            fail(new ProtocolViolation(100, "reply for request id " + frame.requestId() + ", which is not outstanding"));
            return;
        }
        if (p.abandoned) {
            abandoned.decrementAndGet();
            return;
        }
        Wire.Message reply;
        try {
            reply = Wire.decodeReply(frame.opcode(), frame.body(), limits);
        } catch (WireException w) {
            ProtocolViolation v = new ProtocolViolation(w.code, "undecodable reply: " + w.getMessage());
            // Closed first, so that no request sent after the caller wakes uses this connection.
            fail(v);
            p.future.completeExceptionally(v);
            return;
        }
        if (reply instanceof Wire.ErrorReply e) {
            if (SessyncException.closes(e.code())) {
                fail(new ConnectionLost("the node closed the connection after error " + e.code(), Applied.MAYBE,
                        null));
            }
            p.future.completeExceptionally(SessyncException.fromCode(e.code(), e.message()));
            return;
        }
        int want = expectedReply(p.opcode);
        if (Wire.opcode(reply) != want) {
            ProtocolViolation v = new ProtocolViolation(100, String.format(
                    "request 0x%02x answered with opcode 0x%02x", p.opcode, Wire.opcode(reply)));
            fail(v);
            p.future.completeExceptionally(v);
            return;
        }
        p.future.complete(reply);
    }

    private static int expectedReply(int requestOpcode) {
        switch (requestOpcode) {
            case Wire.HELLO:
                return Wire.HELLO_OK;
            case Wire.PING:
                return Wire.PONG;
            case Wire.DESTROY:
                return Wire.DONE;
            case Wire.STATS:
                return Wire.STATS_REPLY;
            default:
                return Wire.SESSION;
        }
    }
}
