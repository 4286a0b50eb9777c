package io.sessync.client;

import java.util.Collections;
import java.util.Map;

/**
 * A session as the node served it.
 *
 * <p>The one rule of the token: after every call, store {@link #token()} (in the user's
 * cookie) in place of the one you passed. It differs ({@link #tokenChanged()}) after create
 * and rotate, and whenever the session moved to the node that served the request.
 *
 * @param token the token to keep from now on
 * @param tokenChanged whether token differs from the token passed in (always true after create)
 * @param meta version and times after the request
 * @param attributes the attributes the reply carried: all for create, rotate and get without
 *     names; the named ones that exist for get with names; none for set and touch. Sorted by
 *     name (UTF-8 byte order), unmodifiable.
 */
public record Session(String token, boolean tokenChanged, Meta meta, Map<String, byte[]> attributes) {
    /**
     * Makes the attribute map unmodifiable.
     *
     * @param token the token to keep
     * @param tokenChanged whether it differs from the token passed in
     * @param meta version and times
     * @param attributes the attributes the reply carried
     */
    public Session {
        attributes = Collections.unmodifiableMap(attributes);
    }

    /** @return the version after this request: what to pass as ifVersion */
    public long version() {
        return meta.version();
    }
}
