package io.sessync.client;

/**
 * SessionMeta (protocol.md section 4): 40 bytes, five u64 fields, times in Unix milliseconds.
 *
 * @param version 1 at CREATE, +1 at every SET and ROTATE
 * @param createdMs when the session was created
 * @param lastAccessMs when it was last read or written
 * @param idleTtlMs the idle time to live
 * @param absoluteDeadlineMs when it ends whatever its activity; 0 = no absolute lifetime
 */
public record Meta(long version, long createdMs, long lastAccessMs, long idleTtlMs, long absoluteDeadlineMs) {
    /** @return when the session ends unless used again: the idle deadline, capped by the absolute one */
    public long deadlineMs() {
        long idle = lastAccessMs + idleTtlMs;
        return absoluteDeadlineMs == 0 ? idle : Math.min(idle, absoluteDeadlineMs);
    }
}
