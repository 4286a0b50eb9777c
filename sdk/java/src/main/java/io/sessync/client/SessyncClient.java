package io.sessync.client;

import io.sessync.client.SessyncException.Applied;
import io.sessync.client.SessyncException.ConnectionLost;
import io.sessync.client.SessyncException.ProtocolViolation;
import io.sessync.client.SessyncException.RequestTimeout;
import io.sessync.client.SessyncException.SessionNotFound;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Function;

/**
 * A client of one sessync node (normally the one beside this application server), written
 * from protocol.md with nothing outside the JDK.
 *
 * <p><b>Thread-safe and pipelined.</b> Any number of threads share a few multiplexed
 * connections ({@link Builder#connections}, default 2, used round robin); each request gets
 * its own request id and replies are matched by id in whatever order the node sends them.
 * The {@code *Async} methods return at once, so one thread can keep many requests in flight.
 *
 * <p><b>Timeouts.</b> Every call is bounded by {@link Builder#timeout} (default 5 s),
 * covering opening a connection, HELLO, sending and the reply; a call that runs out raises
 * {@link RequestTimeout}. A call never blocks on a socket: a writer thread per connection
 * does the writing.
 *
 * <p><b>Failures and reconnection.</b> A connection that fails (refused, reset, closed by
 * the node, or the node broke the protocol) fails the requests waiting on it with
 * {@link ConnectionLost} or {@link ProtocolViolation}; whether each may have been applied is
 * in {@link SessyncException#applied()}. Such requests are never resent; the next call opens
 * a new connection.
 *
 * <p><b>Tokens.</b> After every call keep the returned {@link Session#token()} in place of
 * the token passed in: it changes at create and rotate and whenever the session moved here.
 *
 * <pre>{@code
 * try (SessyncClient c = SessyncClient.builder("127.0.0.1:7700").build()) {
 *     Session s = c.create(Map.of("user", "alice".getBytes(UTF_8)));
 *     s = c.set(s.token(), Map.of("cart", bytes), List.of(), s.version());
 * }
 * }</pre>
 */
public final class SessyncClient implements AutoCloseable {
    /** This SDK's version, sent in HELLO as {@code sessync-java/VERSION}. */
    public static final String VERSION = "0.1.0";

    private final InetSocketAddress address;
    private final String password;
    private final String clientName;
    private final Limits limits;
    private final long timeoutMs;
    private final long connectTimeoutMs;
    private final long maxIdleNanos;
    private final Slot[] slots;
    private final AtomicInteger next = new AtomicInteger();
    private final ScheduledThreadPoolExecutor timer;
    private final javax.net.ssl.SSLContext tls;
    private final String tlsServerName;
    private volatile boolean closed;

    /** One connection place; the lock makes concurrent callers share one reconnect. */
    private static final class Slot {
        final ReentrantLock lock = new ReentrantLock();
        volatile Connection conn;
    }

    /** Settings of a {@link SessyncClient}. */
    public static final class Builder {
        private final String address;
        private String password;
        private String clientName = "sessync-java/" + VERSION;
        private Limits limits = Limits.DEFAULT;
        private Duration timeout = Duration.ofSeconds(5);
        private Duration connectTimeout;
        private int connections = 2;
        private Duration maxIdle = Duration.ofSeconds(60);
        private javax.net.ssl.SSLContext tls;
        private String tlsServerName;

        private Builder(String address) {
            this.address = address;
        }

        /**
         * @param password the node's client password (sent in HELLO), or null for none
         * @return this
         */
        public Builder password(String password) {
            this.password = password;
            return this;
        }

        /**
         * @param name free text for the node's logs
         * @return this
         */
        public Builder clientName(String name) {
            this.clientName = name;
            return this;
        }

        /**
         * @param limits this client's receive and send limits (default: the protocol's)
         * @return this
         */
        public Builder limits(Limits limits) {
            this.limits = limits;
            return this;
        }

        /**
         * @param timeout the bound on each call, including connecting (default 5 s)
         * @return this
         */
        public Builder timeout(Duration timeout) {
            this.timeout = timeout;
            return this;
        }

        /**
         * @param timeout the bound on opening a connection and its HELLO (default: the call timeout)
         * @return this
         */
        public Builder connectTimeout(Duration timeout) {
            this.connectTimeout = timeout;
            return this;
        }

        /**
         * @param n multiplexed connections to the node (default 2)
         * @return this
         */
        public Builder connections(int n) {
            this.connections = n;
            return this;
        }

        /**
         * @param maxIdle a connection unused this long is replaced before the next request
         *     (default 60 s, well under the node's 300 s idle timeout)
         * @return this
         */
        public Builder maxIdle(Duration maxIdle) {
            this.maxIdle = maxIdle;
            return this;
        }

        /**
         * @param context TLS 1.3 to a node started with {@code --client-tls-cert} (see
         *     {@link Tls#context}); null (the default) for plain TCP
         * @return this
         */
        public Builder tls(javax.net.ssl.SSLContext context) {
            this.tls = context;
            return this;
        }

        /**
         * @param name the name the node's certificate must carry (default: the address's
         *     host, an IP address being checked against the certificate's IP names)
         * @return this
         */
        public Builder tlsServerName(String name) {
            this.tlsServerName = name;
            return this;
        }

        /** @return the client (connections open on first use) */
        public SessyncClient build() {
            return new SessyncClient(this);
        }
    }

    /**
     * @param address the node's client address, {@code HOST:PORT} or {@code [IPv6]:PORT}
     * @return a builder
     */
    public static Builder builder(String address) {
        return new Builder(address);
    }

    private SessyncClient(Builder b) {
        this.address = parseAddress(b.address);
        this.password = b.password;
        this.clientName = b.clientName;
        this.limits = b.limits;
        this.tls = b.tls;
        this.tlsServerName = b.tlsServerName;
        if (b.timeout.isNegative() || b.timeout.isZero()) {
            throw new IllegalArgumentException("timeout must be positive");
        }
        if (b.connections < 1) {
            throw new IllegalArgumentException("connections must be at least 1");
        }
        this.timeoutMs = b.timeout.toMillis();
        this.connectTimeoutMs = b.connectTimeout == null ? timeoutMs : b.connectTimeout.toMillis();
        this.maxIdleNanos = b.maxIdle.toNanos();
        this.slots = new Slot[b.connections];
        for (int i = 0; i < slots.length; i++) {
            slots[i] = new Slot();
        }
        this.timer = new ScheduledThreadPoolExecutor(1, r -> {
            Thread t = new Thread(r, "sessync-timer");
            t.setDaemon(true);
            return t;
        });
        this.timer.setRemoveOnCancelPolicy(true);
    }

    static InetSocketAddress parseAddress(String address) {
        int colon = address.lastIndexOf(':');
        if (colon < 0) {
            throw new IllegalArgumentException("address " + address + " is not HOST:PORT");
        }
        String host = address.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
            host = host.substring(1, host.length() - 1);
        }
        int port;
        try {
            port = Integer.parseInt(address.substring(colon + 1));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("address " + address + " is not HOST:PORT");
        }
        return new InetSocketAddress(host, port);
    }

    /** @return the node's client address */
    public InetSocketAddress address() {
        return address;
    }

    /** @return the call timeout in milliseconds */
    public long timeoutMillis() {
        return timeoutMs;
    }

    /** Closes every connection; requests still waiting fail with {@link ConnectionLost}. */
    @Override
    public void close() {
        closed = true;
        for (Slot s : slots) {
            Connection c = s.conn;
            if (c != null) {
                c.close();
            }
        }
        timer.shutdownNow();
    }

    // ---- plumbing --------------------------------------------------------------------------

    private Connection connection(long deadlineNanos) {
        if (closed) {
            throw new ConnectionLost("the client is closed", Applied.NO, null);
        }
        Slot slot = slots[Math.floorMod(next.getAndIncrement(), slots.length)];
        Connection c = slot.conn;
        if (c != null && !c.closed()) {
            if (c.inFlight() > 0 || c.idleNanos() < maxIdleNanos) {
                return c;
            }
            // Idle for long: the node may be about to close it (its idle timeout), and a
            // request racing that close would be lost. Start afresh.
            c.close();
        }
        long left = (deadlineNanos - System.nanoTime()) / 1_000_000L;
        try {
            if (left <= 0 || !slot.lock.tryLock(left, TimeUnit.MILLISECONDS)) {
                throw new RequestTimeout("could not get a connection within " + timeoutMs + " ms", Applied.NO);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ConnectionLost("interrupted while connecting", Applied.NO, e);
        }
        try {
            c = slot.conn;
            if (c != null && !c.closed()) {
                return c;
            }
            left = (deadlineNanos - System.nanoTime()) / 1_000_000L;
            if (left <= 0) {
                throw new RequestTimeout("could not connect within " + timeoutMs + " ms", Applied.NO);
            }
            c = Connection.open(address, limits, clientName, password, Math.min(left, connectTimeoutMs), tls,
                    tlsServerName);
            if (closed) {
                c.close();
                throw new ConnectionLost("the client is closed", Applied.NO, null);
            }
            slot.conn = c;
            return c;
        } catch (RequestTimeout e) {
            // HELLO went unanswered: nothing but HELLO was sent.
            throw new RequestTimeout("connecting: " + e.detail(), Applied.NO);
        } finally {
            slot.lock.unlock();
        }
    }

    /** The SessyncException behind a future's failure. */
    static SessyncException unwrap(Throwable t) {
        while ((t instanceof CompletionException || t instanceof ExecutionException) && t.getCause() != null) {
            t = t.getCause();
        }
        if (t instanceof SessyncException e) {
            return e;
        }
        return new ConnectionLost("unexpected failure: " + t, Applied.MAYBE, t);
    }

    private <T> CompletableFuture<T> call(Wire.Message request, Function<Wire.Message, T> convert) {
        CompletableFuture<T> out = new CompletableFuture<>();
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        Connection conn = null;
        Connection.Pending p = null;
        for (int attempt = 0; p == null; attempt++) {
            try {
                conn = connection(deadline);
                p = conn.enqueue(request);
            } catch (SessyncException e) {
                if (conn != null && conn.closed() && e instanceof ConnectionLost && e.applied() == Applied.NO
                        && attempt == 0) {
                    continue; // it closed just now, with nothing of this request sent: a new one
                }
                out.completeExceptionally(e);
                return out;
            }
        }
        final Connection c = conn;
        final Connection.Pending pending = p;
        long left = Math.max(1, (deadline - System.nanoTime()) / 1_000_000L);
        ScheduledFuture<?> timeout;
        try {
            timeout = timer.schedule(() -> {
                if (!out.isDone()) {
                    // Abandoned (and the connection given up, if it looks dead) before the caller
                    // wakes, so that its next request cannot pick a connection about to close.
                    boolean unsent = c.abandon(pending);
                    out.completeExceptionally(new RequestTimeout("no reply within " + timeoutMs + " ms"
                            + (unsent ? "; it was never sent" : "; the request may or may not have been applied"),
                            unsent ? Applied.NO : Applied.MAYBE));
                }
            }, left, TimeUnit.MILLISECONDS);
        } catch (RuntimeException e) {
            // The client was closed meanwhile (the timer is shut down).
            boolean unsent = c.abandon(pending);
            out.completeExceptionally(new ConnectionLost("the client is closed", unsent ? Applied.NO : Applied.MAYBE, e));
            return out;
        }
        pending.future.whenComplete((reply, err) -> {
            timeout.cancel(false);
            if (err != null) {
                out.completeExceptionally(unwrap(err));
                return;
            }
            try {
                out.complete(convert.apply(reply));
            } catch (SessyncException e) {
                c.fail(e);
                out.completeExceptionally(e);
            }
        });
        return out;
    }

    private <T> T sync(CompletableFuture<T> f) {
        try {
            // The timer completes every call's future by its deadline; the extra bound only
            // guards against a timer that could not run.
            return f.get(timeoutMs + 5000, TimeUnit.MILLISECONDS);
        } catch (ExecutionException e) {
            throw unwrap(e.getCause());
        } catch (TimeoutException e) {
            throw new RequestTimeout("no reply within " + timeoutMs + " ms", Applied.MAYBE);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ConnectionLost("interrupted while waiting for a reply", Applied.MAYBE, e);
        }
    }

    private static Function<Wire.Message, Session> session(String oldToken) {
        return reply -> {
            Wire.SessionReply r = (Wire.SessionReply) reply;
            if (r.token() != null) {
                return new Session(r.token(), !r.token().equals(oldToken), r.meta(), r.attributes());
            }
            if (oldToken == null) {
                throw new ProtocolViolation(100, "the reply to CREATE or ROTATE carries no token");
            }
            return new Session(oldToken, false, r.meta(), r.attributes());
        };
    }

    private static long ms(Duration d) {
        if (d == null || d.isZero()) {
            return 0;
        }
        if (d.isNegative()) {
            throw new IllegalArgumentException("durations must not be negative");
        }
        try {
            return Math.max(1, d.toMillis());
        } catch (ArithmeticException tooLong) {
            // Over Long.MAX_VALUE ms: "never" just the same (deadlines saturate, protocol.md 4).
            return Long.MAX_VALUE;
        }
    }

    // ---- async API -------------------------------------------------------------------------

    /**
     * Creates a session owned by this node.
     *
     * @param attributes initial attributes (name to value)
     * @param idleTtl idle time to live; null or zero = the node's default (30 min)
     * @param maxLifetime absolute lifetime from creation; null or zero = the node's default (none)
     * @return the session, with its token
     */
    public CompletableFuture<Session> createAsync(Map<String, byte[]> attributes, Duration idleTtl,
            Duration maxLifetime) {
        return call(new Wire.Create(ms(idleTtl), ms(maxLifetime), attributes), session(null));
    }

    /**
     * Reads a session and refreshes its idle deadline.
     *
     * @param token the session's token
     * @param names the attributes wanted; empty = all
     * @return the session with the named attributes that exist (or all)
     */
    public CompletableFuture<Session> getAsync(String token, Collection<String> names) {
        return call(new Wire.Get(token, List.copyOf(names)), session(token));
    }

    /**
     * One atomic change: puts added or replaced, deletes removed, the version bumped by one.
     *
     * @param token the session's token
     * @param puts attributes to add or replace
     * @param deletes names to remove (absent ones are ignored)
     * @param ifVersion apply only at this version (else VERSION_CONFLICT, nothing changes); null = always
     * @return the session after the change (no attributes)
     */
    public CompletableFuture<Session> setAsync(String token, Map<String, byte[]> puts, Collection<String> deletes,
            Long ifVersion) {
        List<String> d = new ArrayList<>(new LinkedHashSet<>(deletes));
        for (String n : d) {
            if (puts.containsKey(n)) {
                // The node would answer INVALID_REQUEST; refuse without a round trip.
                return CompletableFuture.failedFuture(new SessyncException(106, "INVALID_REQUEST",
                        "attribute " + n + " is both put and deleted", Applied.NO));
            }
        }
        return call(new Wire.SetReq(token, ifVersion, puts, d), session(token));
    }

    /**
     * @param token the session's token
     * @return the session with its idle deadline refreshed (no attributes)
     */
    public CompletableFuture<Session> touchAsync(String token) {
        return call(new Wire.Touch(token), session(token));
    }

    /**
     * A new id and token for the same data (version + 1); the old token stops working.
     *
     * @param token the session's token
     * @return the session under its new token, with all attributes
     */
    public CompletableFuture<Session> rotateAsync(String token) {
        Function<Wire.Message, Session> inner = session(null);
        return call(new Wire.Rotate(token), reply -> {
            Session s = inner.apply(reply);
            return new Session(s.token(), !s.token().equals(token), s.meta(), s.attributes());
        });
    }

    /**
     * Ends the session wherever it lives.
     *
     * @param token the session's token
     * @return completes when done; SessionNotFound when it was already gone
     */
    public CompletableFuture<Void> destroyAsync(String token) {
        return call(new Wire.Destroy(token), reply -> null);
    }

    /** @return the node's counters (names are not part of the protocol) */
    public CompletableFuture<Map<String, Long>> statsAsync() {
        return call(new Wire.Stats(), reply -> ((Wire.StatsReply) reply).counters());
    }

    /**
     * @param payload bytes the node echoes
     * @return the echoed payload
     */
    public CompletableFuture<byte[]> pingAsync(byte[] payload) {
        return call(new Wire.Ping(payload), reply -> {
            byte[] got = ((Wire.Pong) reply).payload();
            if (!Arrays.equals(got, payload)) {
                throw new ProtocolViolation(100, "PONG payload differs from PING's");
            }
            return got;
        });
    }

    // ---- blocking API ----------------------------------------------------------------------

    /**
     * {@link #createAsync} with the node's default lifetimes, waiting for the reply.
     *
     * @param attributes initial attributes
     * @return the new session
     */
    public Session create(Map<String, byte[]> attributes) {
        return sync(createAsync(attributes, null, null));
    }

    /**
     * {@link #createAsync}, waiting for the reply.
     *
     * @param attributes initial attributes
     * @param idleTtl idle time to live (null = node default)
     * @param maxLifetime absolute lifetime (null = node default)
     * @return the new session
     */
    public Session create(Map<String, byte[]> attributes, Duration idleTtl, Duration maxLifetime) {
        return sync(createAsync(attributes, idleTtl, maxLifetime));
    }

    /**
     * {@link #getAsync}, waiting for the reply.
     *
     * @param token the token
     * @param names attributes wanted; none = all
     * @return the session
     */
    public Session get(String token, String... names) {
        return sync(getAsync(token, Arrays.asList(names)));
    }

    /**
     * {@link #setAsync}, waiting for the reply.
     *
     * @param token the token
     * @param puts attributes to add or replace
     * @param deletes names to remove
     * @param ifVersion expected version, or null
     * @return the session after the change
     */
    public Session set(String token, Map<String, byte[]> puts, Collection<String> deletes, Long ifVersion) {
        return sync(setAsync(token, puts, deletes, ifVersion));
    }

    /**
     * {@link #touchAsync}, waiting for the reply.
     *
     * @param token the token
     * @return the session
     */
    public Session touch(String token) {
        return sync(touchAsync(token));
    }

    /**
     * {@link #rotateAsync}, waiting for the reply.
     *
     * @param token the token
     * @return the session under its new token
     */
    public Session rotate(String token) {
        return sync(rotateAsync(token));
    }

    /**
     * {@link #destroyAsync}, waiting for the reply.
     *
     * @param token the token
     * @param missingOk whether a session already gone counts as success (a logout)
     */
    public void destroy(String token, boolean missingOk) {
        try {
            sync(destroyAsync(token));
        } catch (SessionNotFound e) {
            if (!missingOk) {
                throw e;
            }
        }
    }

    /** @return the node's counters */
    public Map<String, Long> stats() {
        return sync(statsAsync());
    }

    /**
     * A round trip to the node.
     *
     * @param payload bytes to echo
     * @return the round trip's duration
     */
    public Duration ping(byte[] payload) {
        long t = System.nanoTime();
        sync(pingAsync(payload));
        return Duration.ofNanos(System.nanoTime() - t);
    }
}
