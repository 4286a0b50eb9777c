package io.sessync.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/** protocol.md section 4: deadline sums saturate; the wire's u64 values arrive as longs. */
class MetaTest {
    /** 2^64 - 1 on the wire, as a Java long. */
    static final long U64_MAX = -1L;

    @Test
    void deadlinesAreTheIdleDeadlineCappedByTheAbsoluteOne() {
        assertEquals(65_000, new Meta(1, 0, 5_000, 60_000, 0).deadlineMs());
        assertEquals(7_000, new Meta(1, 0, 5_000, 60_000, 7_000).deadlineMs());
    }

    @Test
    void endlessTtlsAndLifetimesSaturateInsteadOfWrapping() {
        assertEquals(Long.MAX_VALUE, new Meta(1, 0, 5_000, U64_MAX, 0).deadlineMs());
        assertEquals(Long.MAX_VALUE, new Meta(1, 0, 5_000, U64_MAX, U64_MAX).deadlineMs());
        assertEquals(Long.MAX_VALUE, new Meta(1, 0, 5_000, Long.MAX_VALUE, 0).deadlineMs());
        assertEquals(7_000, new Meta(1, 0, 5_000, U64_MAX, 7_000).deadlineMs());
        assertEquals(65_000, new Meta(1, 0, 5_000, 60_000, U64_MAX).deadlineMs());
    }
}
