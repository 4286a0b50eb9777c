package io.sessync.tomcat;

import io.sessync.client.Session;
import io.sessync.client.SessyncException;
import java.io.IOException;
import java.util.HashMap;
import java.util.Map;
import org.apache.catalina.session.StandardSession;

/**
 * A Tomcat session whose id is its sessync token and whose attributes live at the node.
 *
 * <p>It exists in Tomcat's memory only while requests use it: loaded (GET) when a request
 * names it, saved (SET with compare-and-set, see {@link SessionStore}) when the request ends,
 * then dropped. {@link #invalidate()} destroys it at the node first; expiry is the node's
 * (idle TTL and absolute lifetime, fixed when the session is created).
 */
public class SessyncSession extends StandardSession {
    private static final long serialVersionUID = 1L;

    /** What was loaded or last written; guarded by this. */
    private transient SessionStore.Snapshot snapshot;
    /** Stored values the codec could not decode: written back as they are, never deleted. */
    private transient Map<String, byte[]> undecodable = new HashMap<>();
    /** Requests using this object now; guarded by the manager. */
    transient int users;

    /** @param manager the owning manager */
    public SessyncSession(SessyncManager manager) {
        super(manager);
    }

    private SessyncManager sessync() {
        return (SessyncManager) manager;
    }

    /** Fills this session from a node's reply, without firing attribute listeners. */
    void load(Session s, AttributeCodec codec, ClassLoader loader) {
        this.creationTime = s.meta().createdMs();
        this.lastAccessedTime = s.meta().lastAccessMs();
        this.thisAccessedTime = s.meta().lastAccessMs();
        this.maxInactiveInterval = (int) Math.min(Integer.MAX_VALUE, s.meta().idleTtlMs() / 1000);
        this.isValid = true;
        this.isNew = false;
        this.attributes.clear();
        this.undecodable = new HashMap<>();
        for (Map.Entry<String, byte[]> e : s.attributes().entrySet()) {
            try {
                attributes.put(e.getKey(), codec.decode(e.getKey(), e.getValue(), loader));
            } catch (IOException | RuntimeException x) {
                undecodable.put(e.getKey(), e.getValue());
                sessync().log("attribute " + e.getKey() + " could not be decoded (kept as stored): " + x);
            }
        }
        this.snapshot = new SessionStore.Snapshot(s.token(), s.version(), new HashMap<>(s.attributes()), false);
    }

    /**
     * After ROTATE. When nobody wrote since this session was loaded (ROTATE took the version
     * up by exactly one), the node's data under the new token is the new baseline. Otherwise
     * the old baseline is kept with the old version: the save at the end of the request then
     * meets VERSION_CONFLICT and merges (or refuses) exactly as for any concurrent write,
     * rather than deleting what the other writer added.
     */
    synchronized void rotated(Session s) {
        if (s.version() == snapshot.version() + 1) {
            this.snapshot = new SessionStore.Snapshot(s.token(), s.version(), new HashMap<>(s.attributes()), true);
        } else {
            this.snapshot = new SessionStore.Snapshot(s.token(), snapshot.version(), snapshot.raw(), true);
        }
    }

    synchronized SessionStore.Snapshot snapshot() {
        return snapshot;
    }

    /**
     * Saves changed attributes (values compared encoded, so objects changed in place are
     * saved too).
     *
     * @return the token after the save
     */
    synchronized String commit(SessyncManager m) throws IOException {
        snapshot = SessionStore.save(m.client(), snapshot, encoded(m));
        return snapshot.token();
    }

    /** @return whether the attributes differ from what was loaded or last written */
    synchronized boolean changed(SessyncManager m) throws IOException {
        Map<String, byte[]> puts = new HashMap<>();
        java.util.List<String> deletes = new java.util.ArrayList<>();
        SessionStore.diff(snapshot.raw(), encoded(m), puts, deletes);
        return !puts.isEmpty() || !deletes.isEmpty();
    }

    /** Every attribute, encoded, plus those that could not be decoded, as stored. */
    private Map<String, byte[]> encoded(SessyncManager m) throws IOException {
        Map<String, byte[]> next = new HashMap<>();
        for (Map.Entry<String, byte[]> u : undecodable.entrySet()) {
            if (!attributes.containsKey(u.getKey())) {
                next.put(u.getKey(), u.getValue());
            }
        }
        for (Map.Entry<String, Object> a : attributes.entrySet()) {
            next.put(a.getKey(), m.codec().encode(a.getKey(), a.getValue()));
        }
        return next;
    }

    boolean alive() {
        return isValidInternal();
    }

    @Override
    public boolean isValid() {
        // Expiry is the node's: a session here is in use by a request, and the node refreshed
        // its idle deadline when the request loaded it.
        return this.isValid || this.expiring;
    }

    /** Destroys the session at the node, then invalidates it here (listeners run). */
    @Override
    public void invalidate() {
        if (!isValidInternal()) {
            super.invalidate(); // throws IllegalStateException as the API says
            return;
        }
        try {
            sessync().client().destroy(getIdInternal(), true);
        } catch (SessyncException e) {
            sessync().failed(e);
            throw new SessyncSessionException("could not destroy the session", e);
        }
        super.invalidate();
    }

    /** Only for logging: {@code SessyncSession[<first 8 characters of the token>...]}. */
    @Override
    public String toString() {
        String id = getIdInternal();
        return "SessyncSession[" + (id == null ? "new" : id.substring(0, Math.min(8, id.length())) + "...") + "]";
    }
}
