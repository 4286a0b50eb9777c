package io.sessync.tomcat;

import io.sessync.client.Session;
import io.sessync.client.SessyncClient;
import io.sessync.client.SessyncException;
import io.sessync.client.SessyncException.InvalidToken;
import io.sessync.client.SessyncException.SessionNotFound;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.catalina.Context;
import org.apache.catalina.LifecycleException;
import org.apache.catalina.LifecycleState;
import org.apache.catalina.Pipeline;
import org.apache.catalina.connector.Request;
import org.apache.catalina.connector.Response;
import org.apache.catalina.session.ManagerBase;
import org.apache.catalina.session.StandardSession;
import org.apache.juli.logging.Log;
import org.apache.juli.logging.LogFactory;

/**
 * A Tomcat 10.1 {@link org.apache.catalina.Manager} that keeps sessions in the local sessync
 * node, so that they follow users across Tomcat instances with no sticky sessions:
 *
 * <pre>{@code
 * <Context>
 *   <Manager className="io.sessync.tomcat.SessyncManager"
 *            address="127.0.0.1:7700" password="..." timeoutMillis="2000"
 *            maxLifetimeSeconds="43200"/>
 * </Context>
 * }</pre>
 *
 * <ul>
 *   <li>The session id, and so the session cookie, is the sessync token. Whenever a reply
 *       carries a new token (the session moved to this node, or ROTATE) the cookie is
 *       re-sent with it.
 *   <li>A request that names a session loads it from the node when the request starts (GET,
 *       all attributes); a request that creates one creates it at the node (CREATE) at once,
 *       so the cookie can be set. Attributes are stored one per name, encoded by the
 *       {@link AttributeCodec} (Java serialization by default).
 *   <li>When the request ends ({@link SessyncValve}), changed attributes are saved with
 *       compare-and-set and merged on conflict ({@link SessionStore}); the session then
 *       leaves Tomcat's memory. A save that fails (node down, a conflicting change of the same
 *       attribute) turns a response not yet committed into a 503 (409 for a conflict), and is
 *       logged otherwise.
 *   <li>{@code changeSessionId()} (and Tomcat's own id change at login) is ROTATE;
 *       {@code invalidate()} is DESTROY.
 *   <li>Lifetimes: a new session's idle TTL is the context's session timeout (or
 *       {@code idleTtlSeconds}), its absolute lifetime {@code maxLifetimeSeconds} (0: the
 *       node's default). The node expires sessions; this manager never does.
 *   <li>Every call to the node is bounded by {@code timeoutMillis}, and after one failed call
 *       a request makes no other. Failures reach the servlet as {@link SessyncSessionException}
 *       from {@code getSession(true)}, {@code changeSessionId()} and {@code invalidate()}; a
 *       session that could not be loaded reads as absent to {@code getSession(false)}, with
 *       the exception in the request attribute {@link #ERROR_ATTRIBUTE}.
 * </ul>
 *
 * <p>Requests are tracked per thread: asynchronous servlets that use the session from
 * another thread after the request's first thread returned are not supported.
 */
public class SessyncManager extends ManagerBase {
    private static final Log LOG = LogFactory.getLog(SessyncManager.class);

    /** The sessions one request (one thread) uses, and what its session lookups found. */
    static final class RequestState {
        final Map<String, Object> lookups = new HashMap<>();
        final Set<SessyncSession> used = new LinkedHashSet<>();
        /** Why the session the request named could not be loaded, if it could not. */
        SessyncException failure;
    }

    /**
     * The request attribute that holds the {@link SessyncSessionException} when the session
     * the request names could not be loaded (node down, timeout): {@code getSession(false)}
     * then returns null and {@code getSession(true)} throws that exception rather than
     * replacing the user's session with an empty one.
     */
    public static final String ERROR_ATTRIBUTE = "io.sessync.tomcat.error";

    private static final Object MISSING = new Object();
    private static final ThreadLocal<RequestState> CURRENT = new ThreadLocal<>();

    private String address = "127.0.0.1:7700";
    private String password;
    private long timeoutMillis = 2000;
    private long connectTimeoutMillis;
    private int connections = 2;
    private int idleTtlSeconds = -1;
    private long maxLifetimeSeconds;
    private String codecClass = JavaSerializationCodec.class.getName();

    private volatile SessyncClient client;
    private volatile AttributeCodec codec;
    private SessyncValve valve;
    private Pipeline valvePipeline;

    // ---- configuration (context.xml attributes) ---------------------------------------------

    /** @param address the node's client address, HOST:PORT (default 127.0.0.1:7700) */
    public void setAddress(String address) {
        this.address = address;
    }

    /** @return the node's client address */
    public String getAddress() {
        return address;
    }

    /** @param password the node's client password, if it has one */
    public void setPassword(String password) {
        this.password = password == null || password.isEmpty() ? null : password;
    }

    /** @param ms the bound on each call to the node (default 2000) */
    public void setTimeoutMillis(long ms) {
        this.timeoutMillis = ms;
    }

    /** @return the bound on each call to the node */
    public long getTimeoutMillis() {
        return timeoutMillis;
    }

    /** @param ms the bound on opening a connection (default: timeoutMillis) */
    public void setConnectTimeoutMillis(long ms) {
        this.connectTimeoutMillis = ms;
    }

    /** @param n multiplexed connections to the node (default 2) */
    public void setConnections(int n) {
        this.connections = n;
    }

    /** @param seconds idle TTL of new sessions; negative (default): the context's session timeout */
    public void setIdleTtlSeconds(int seconds) {
        this.idleTtlSeconds = seconds;
    }

    /** @param seconds absolute lifetime of new sessions; 0 (default): the node's default */
    public void setMaxLifetimeSeconds(long seconds) {
        this.maxLifetimeSeconds = seconds;
    }

    /** @param className the {@link AttributeCodec} class (default: Java serialization) */
    public void setCodec(String className) {
        this.codecClass = className;
    }

    /** @return the client (while started) */
    public SessyncClient client() {
        SessyncClient c = client;
        if (c == null) {
            throw new IllegalStateException("the sessync manager is not started");
        }
        return c;
    }

    AttributeCodec codec() {
        return codec;
    }

    void log(String message) {
        LOG.warn(message);
    }

    @Override
    public String getName() {
        return "SessyncManager";
    }

    // ---- lifecycle ---------------------------------------------------------------------------

    @Override
    protected synchronized void startInternal() throws LifecycleException {
        super.startInternal();
        try {
            Class<?> k;
            try {
                // The web application's codec class, else one beside this manager (Tomcat's lib/).
                k = Class.forName(codecClass, true, codecLoader());
            } catch (ClassNotFoundException e) {
                k = Class.forName(codecClass, true, SessyncManager.class.getClassLoader());
            }
            codec = (AttributeCodec) k.getDeclaredConstructor().newInstance();
        } catch (ReflectiveOperationException | ClassCastException e) {
            throw new LifecycleException("sessync: cannot make the codec " + codecClass, e);
        }
        if (codec instanceof JavaSerializationCodec j) {
            j.allow(getSessionAttributeValueClassNamePattern());
        }
        SessyncClient.Builder b = SessyncClient.builder(address).timeout(Duration.ofMillis(timeoutMillis))
                .connections(connections).password(password).clientName("sessync-tomcat/" + SessyncClient.VERSION);
        if (connectTimeoutMillis > 0) {
            b.connectTimeout(Duration.ofMillis(connectTimeoutMillis));
        }
        client = b.build();
        valve = new SessyncValve(this);
        // On the host's pipeline, so the session is loaded before any valve of the context
        // (an authenticator, say) asks for it, and saved after all of them.
        Context ctx = getContext();
        valvePipeline = ctx.getParent() != null ? ctx.getParent().getPipeline() : ctx.getPipeline();
        valvePipeline.addValve(valve);
        setState(LifecycleState.STARTING);
    }

    private ClassLoader codecLoader() {
        Context ctx = getContext();
        if (ctx != null && ctx.getLoader() != null && ctx.getLoader().getClassLoader() != null) {
            return ctx.getLoader().getClassLoader();
        }
        return SessyncManager.class.getClassLoader();
    }

    @Override
    protected synchronized void stopInternal() throws LifecycleException {
        setState(LifecycleState.STOPPING);
        if (valvePipeline != null) {
            valvePipeline.removeValve(valve);
            valvePipeline = null;
        }
        if (client != null) {
            client.close();
            client = null;
        }
        super.stopInternal();
    }

    /** Nothing to load: sessions live in the node. */
    @Override
    public void load() {
    }

    /** Nothing to save: sessions live in the node. */
    @Override
    public void unload() {
    }

    /** The node expires sessions; sessions in this manager's memory are in use by requests. */
    @Override
    public void processExpires() {
    }

    // ---- sessions ------------------------------------------------------------------------------

    @Override
    public StandardSession createEmptySession() {
        return new SessyncSession(this);
    }

    private long idleTtlMillis() {
        int seconds = idleTtlSeconds >= 0 ? idleTtlSeconds : getContext().getSessionTimeout() * 60;
        // 0 or less ("never" in Tomcat): the node's default, since a node always has an idle TTL.
        return Math.max(0, seconds) * 1000L;
    }

    /**
     * Creates the session at the node (CREATE) so that its token, the session id, can go into
     * the cookie now. The id Tomcat proposes (a client's cookie) is never used.
     */
    @Override
    public org.apache.catalina.Session createSession(String ignoredId) {
        RequestState current = CURRENT.get();
        if (current == null) {
            // Nothing would save it: sessions are saved by the valve at the end of a request.
            throw new IllegalStateException("SessyncManager creates sessions only within a request");
        }
        if (current.failure != null) {
            throw new SessyncSessionException("could not load the requested session", current.failure);
        }
        if (maxActiveSessions >= 0 && getActiveSessions() >= maxActiveSessions) {
            rejectedSessions++;
            throw new TooManyActiveSessionsException("too many active sessions", maxActiveSessions);
        }
        Session s;
        try {
            s = client().create(Map.of(), Duration.ofMillis(idleTtlMillis()),
                    Duration.ofSeconds(Math.max(0, maxLifetimeSeconds)));
        } catch (SessyncException e) {
            current.failure = e; // later attempts in this request fail at once
            throw new SessyncSessionException("could not create a session", e);
        }
        SessyncSession session = (SessyncSession) createEmptySession();
        session.load(s, codec, codecLoader());
        session.setNew(true);
        synchronized (this) {
            session.users++;
            current.used.add(session);
        }
        session.setId(s.token()); // adds it to this manager and tells listeners it is new
        return session;
    }

    /**
     * The session a token names: the one a request on this Tomcat is using now, else loaded
     * from the node (GET). Null when the node has no such session (expired, destroyed,
     * rotated, forged token). When the node cannot be asked (down, timeout), null within a
     * request, with the failure recorded for {@link #createSession} and {@link #ERROR_ATTRIBUTE};
     * {@link IOException} outside one (Tomcat treats that as no session). Outside a request
     * the session returned is a detached copy, not kept and never saved.
     */
    @Override
    public org.apache.catalina.Session findSession(String id) throws IOException {
        if (id == null || client == null) {
            return null;
        }
        RequestState st = CURRENT.get();
        if (st != null) {
            Object seen = st.lookups.get(id);
            if (seen == MISSING) {
                return null;
            }
            if (seen instanceof SessyncSession s) {
                return s;
            }
            if (seen instanceof SessyncException) {
                return null; // see the failure case below
            }
            synchronized (this) {
                org.apache.catalina.Session local = sessions.get(id);
                if (local instanceof SessyncSession s && s.alive()) {
                    use(st, id, s);
                    return s;
                }
            }
        }
        Session got;
        try {
            got = client().get(id);
        } catch (SessionNotFound | InvalidToken e) {
            if (st != null) {
                st.lookups.put(id, MISSING);
            }
            return null;
        } catch (SessyncException e) {
            if (st == null) {
                throw new IOException("sessync: could not load the session", e);
            }
            // Not thrown from here: Tomcat's own valves (the authenticator) look the session up
            // too, and would turn it into an error page the application never sees. The
            // session reads as absent; creating one in its place fails with this error (see
            // createSession), and the request carries it in the attribute ERROR_ATTRIBUTE.
            st.lookups.put(id, e);
            st.failure = e;
            return null;
        }
        SessyncSession loaded = (SessyncSession) createEmptySession();
        loaded.load(got, codec, codecLoader());
        if (st == null) {
            // Outside a request (JMX, another context's lookup): a detached copy, not added to
            // this manager (setId adds a session to its manager, if it has one).
            loaded.setManager(null);
            loaded.setId(got.token(), false);
            loaded.setManager(this);
            return loaded;
        }
        synchronized (this) {
            org.apache.catalina.Session local = sessions.get(got.token());
            if (local instanceof SessyncSession s && s.alive()) {
                use(st, id, s);
                return s;
            }
            use(st, id, loaded);
        }
        loaded.setId(got.token(), false); // adds it to this manager's in-use sessions
        return loaded;
    }

    /** Guarded by this. */
    private void use(RequestState st, String id, SessyncSession s) {
        st.lookups.put(id, s);
        if (st.used.add(s)) {
            s.users++;
        }
    }

    /** ROTATE: a new token for the session, keeping its data; the old token stops working. */
    @Override
    public String rotateSessionId(org.apache.catalina.Session session) {
        if (!(session instanceof SessyncSession s)) {
            return super.rotateSessionId(session);
        }
        Session r;
        try {
            r = client().rotate(s.getIdInternal());
        } catch (SessyncException e) {
            failed(e);
            throw new SessyncSessionException("could not rotate the session id", e);
        }
        s.rotated(r);
        changeSessionId(s, r.token(), true, true);
        return r.token();
    }

    /** Sessync chooses session ids (tokens); an id of the caller's choosing cannot be set. */
    @Override
    public void changeSessionId(org.apache.catalina.Session session, String newId) {
        throw new UnsupportedOperationException("sessync session ids are tokens chosen by the node");
    }

    // ---- per request (SessyncValve) ---------------------------------------------------------

    /** Records a failed call: the request makes no other (see {@link #save}). */
    void failed(SessyncException e) {
        RequestState st = CURRENT.get();
        if (st != null) {
            st.failure = e;
        }
    }

    RequestState begin() {
        RequestState st = new RequestState();
        CURRENT.set(st);
        return st;
    }

    /**
     * The end of a request: saves each session it used, re-sends the cookie when the token
     * changed, and lets the session leave memory when no other request uses it.
     */
    void end(RequestState st, Request request, Response response) {
        try {
            save(st, request, response);
        } finally {
            // Only now: request.getSessionInternal below must find the request's lookups.
            CURRENT.remove();
        }
    }

    /**
     * Saves each session the request used (unless one of its calls failed: then changes are
     * reported unsaved without another call), re-sends the cookie when the token changed,
     * and lets sessions no other request uses leave memory.
     */
    private void save(RequestState st, Request request, Response response) {
        List<SessyncSession> used = new ArrayList<>(st.used);
        for (SessyncSession s : used) {
            try {
                if (s.alive()) {
                    if (st.failure != null) {
                        // A call of this request failed already: no other call, and the
                        // changes, if any, are reported unsaved.
                        if (s.changed(this)) {
                            throw st.failure;
                        }
                        continue;
                    }
                    String before = s.getIdInternal();
                    String after = s.commit(this);
                    if (!after.equals(before)) {
                        s.setId(after, false);
                        if (request.getSessionInternal(false) == s && !response.isCommitted()) {
                            request.changeSessionId(after);
                        }
                    }
                }
            } catch (SessyncException | IOException e) {
                boolean conflict = e instanceof SessionStore.SessionConflict;
                LOG.warn("sessync: the session change of " + request.getRequestURI() + " was not saved: " + e);
                if (!response.isCommitted()) {
                    try {
                        response.reset();
                        response.sendError(conflict ? 409 : 503, "the session could not be saved");
                    } catch (IOException | IllegalStateException ignored) {
                        // the response is gone or committed meanwhile: logged above
                    }
                }
            } finally {
                synchronized (this) {
                    if (--s.users <= 0) {
                        String id = s.getIdInternal();
                        if (id != null && sessions.get(id) == s) {
                            sessions.remove(id);
                        }
                    }
                }
            }
        }
    }

    /** Exceeded {@code maxActiveSessions} (sessions in memory, that is, in use by requests). */
    static final class TooManyActiveSessionsException extends IllegalStateException {
        private static final long serialVersionUID = 1L;

        TooManyActiveSessionsException(String message, int max) {
            super(message + " (" + max + ")");
        }
    }
}
