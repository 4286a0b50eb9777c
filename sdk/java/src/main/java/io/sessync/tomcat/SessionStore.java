package io.sessync.tomcat;

import io.sessync.client.Session;
import io.sessync.client.SessyncClient;
import io.sessync.client.SessyncException.VersionConflict;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * Saving a session's attributes with compare-and-set, and merging on conflict: the same
 * policy as the Python SDK's adapters (sdk/python/src/sessync/store.py).
 *
 * <p>One sessync attribute per session attribute, holding the encoded value. A save is
 * {@code SET ifVersion=<version loaded>} with the difference against what was loaded (puts
 * for values that changed, deletes for names that went away), so two requests that change
 * different attributes both keep their change. On VERSION_CONFLICT the session is read
 * again: when none of the names this request changed was changed by the other writer, the
 * difference is re-applied on the new version (up to {@link #MAX_MERGES} times). When the
 * other writer changed one of the same names to something else, {@link SessionConflict} is
 * raised and this request's change is not written: last-writer-wins would be a silent lost
 * update.
 */
public final class SessionStore {
    private SessionStore() {
    }

    /** Times a save is merged onto a newer version before giving up. */
    public static final int MAX_MERGES = 3;

    /**
     * What the store knows of one session.
     *
     * @param token the newest token the node gave
     * @param version the version raw is at
     * @param raw encoded values as last read or written
     * @param tokenChanged whether token differs from the one the request came with
     */
    public record Snapshot(String token, long version, Map<String, byte[]> raw, boolean tokenChanged) {
    }

    /** Another request changed the same attribute(s) meanwhile; this request's change was not written. */
    public static final class SessionConflict extends VersionConflict {
        private static final long serialVersionUID = 1L;

        SessionConflict(String message) {
            super(message);
        }
    }

    /**
     * Writes {@code next} (encoded values by name) over the session {@code snap} describes.
     *
     * @param client the node's client
     * @param snap what was loaded
     * @param next every attribute as it should be now
     * @return the snapshot after the write (its token may be new)
     * @throws SessionConflict per the merge policy; any client failure as it is
     */
    public static Snapshot save(SessyncClient client, Snapshot snap, Map<String, byte[]> next) {
        Map<String, byte[]> puts = new HashMap<>();
        List<String> deletes = new ArrayList<>();
        diff(snap.raw(), next, puts, deletes);
        if (puts.isEmpty() && deletes.isEmpty()) {
            return snap;
        }
        String token = snap.token();
        long version = snap.version();
        Map<String, byte[]> base = snap.raw();
        boolean changed = snap.tokenChanged();
        Set<String> mine = new LinkedHashSet<>(puts.keySet());
        mine.addAll(deletes);
        for (int attempt = 0;; attempt++) {
            Session w;
            try {
                w = client.set(token, puts, deletes, version);
            } catch (VersionConflict e) {
                if (attempt == MAX_MERGES) {
                    throw new SessionConflict("session kept changing under " + MAX_MERGES + " merges");
                }
                Session fresh = client.get(token);
                changed |= fresh.tokenChanged();
                token = fresh.token();
                Set<String> real = new TreeSet<>();
                for (String k : mine) {
                    byte[] theirs = fresh.attributes().get(k);
                    // Changed by the other writer, to something other than our own value.
                    if (!Arrays.equals(theirs, base.get(k)) && !Arrays.equals(theirs, next.get(k))) {
                        real.add(k);
                    }
                }
                if (!real.isEmpty()) {
                    throw new SessionConflict("another request changed " + real + " meanwhile");
                }
                version = fresh.version();
                base = new HashMap<>(fresh.attributes());
                puts = new HashMap<>();
                deletes = new ArrayList<>();
                for (String k : mine) {
                    if (next.containsKey(k)) {
                        if (!Arrays.equals(base.get(k), next.get(k))) {
                            puts.put(k, next.get(k));
                        }
                    } else if (base.containsKey(k)) {
                        deletes.add(k);
                    }
                }
                if (puts.isEmpty() && deletes.isEmpty()) {
                    return new Snapshot(token, version, base, changed);
                }
                continue;
            }
            Map<String, byte[]> raw = new HashMap<>(base);
            raw.putAll(puts);
            deletes.forEach(raw::remove);
            return new Snapshot(w.token(), w.version(), raw, changed || w.tokenChanged());
        }
    }

    static void diff(Map<String, byte[]> old, Map<String, byte[]> next, Map<String, byte[]> puts,
            List<String> deletes) {
        for (Map.Entry<String, byte[]> e : next.entrySet()) {
            if (!Arrays.equals(old.get(e.getKey()), e.getValue())) {
                puts.put(e.getKey(), e.getValue());
            }
        }
        for (String k : old.keySet()) {
            if (!next.containsKey(k)) {
                deletes.add(k);
            }
        }
    }
}
