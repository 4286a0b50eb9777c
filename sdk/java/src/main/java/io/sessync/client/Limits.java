package io.sessync.client;

/**
 * The receiver limits of protocol.md section 2.2. Every length and count read from the wire
 * is compared with its limit before anything is allocated for it; requests over a limit are
 * refused before they are sent.
 *
 * @param maxFrameLen the longest frame length L (after the 4-byte prefix)
 * @param maxAttributes attributes in one message, names in a GET or a delete list
 * @param maxNameLen one attribute name, in UTF-8 bytes
 * @param maxValueLen one attribute value, and a PING payload, in bytes
 * @param maxTokenLen a token string, in bytes
 * @param maxTextLen client name, password, server name, error message, stat name, in bytes
 */
public record Limits(int maxFrameLen, int maxAttributes, int maxNameLen, int maxValueLen, int maxTokenLen,
        int maxTextLen) {
    /** The protocol's defaults. */
    public static final Limits DEFAULT = new Limits(4 * 1024 * 1024, 1024, 256, 1024 * 1024, 256, 1024);

    /**
     * Checks every limit is at least its smallest useful value.
     *
     * @param maxFrameLen the longest frame length L (at least 16)
     * @param maxAttributes attributes in one message
     * @param maxNameLen one attribute name, in bytes
     * @param maxValueLen one attribute value, in bytes
     * @param maxTokenLen a token string, in bytes
     * @param maxTextLen a text field, in bytes
     */
    public Limits {
        if (maxFrameLen < 16 || maxAttributes < 0 || maxNameLen < 0 || maxValueLen < 0 || maxTokenLen < 0
                || maxTextLen < 0) {
            throw new IllegalArgumentException("limits must not be negative, and maxFrameLen at least 16");
        }
    }
}
