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
    /**
     * When the session ends unless used again: the idle deadline, capped by the absolute one.
     * The fields hold the wire's unsigned 64-bit values; deadline sums saturate (protocol.md
     * section 4), and a deadline past {@link Long#MAX_VALUE} (an idle TTL of 2^64 - 1, say)
     * is returned as {@link Long#MAX_VALUE}: never, in practice.
     *
     * @return the deadline in Unix milliseconds, at most {@link Long#MAX_VALUE}
     */
    public long deadlineMs() {
        long idle = saturatingAdd(lastAccessMs, idleTtlMs);
        return absoluteDeadlineMs == 0 ? idle : Math.min(idle, signedOrMax(absoluteDeadlineMs));
    }

    /** An unsigned 64-bit value as a long, those over {@link Long#MAX_VALUE} as that. */
    private static long signedOrMax(long u64) {
        return u64 < 0 ? Long.MAX_VALUE : u64;
    }

    private static long saturatingAdd(long a, long b) {
        long sum = signedOrMax(a) + signedOrMax(b);
        // Both terms are non-negative: an overflow shows as a negative sum.
        return sum < 0 ? Long.MAX_VALUE : sum;
    }
}
