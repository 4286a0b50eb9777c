package io.sessync.tomcat;

import java.io.IOException;

/**
 * Turns one session attribute's value into the bytes stored under its name in sessync, and
 * back. The default is {@link JavaSerializationCodec}; name another class (public, with a
 * public no-argument constructor) in context.xml: {@code <Manager codec="com.example.MyCodec" .../>}.
 * Implementations must be thread-safe.
 */
public interface AttributeCodec {
    /**
     * @param name the attribute's name
     * @param value its value (not null)
     * @return the stored bytes
     * @throws IOException when the value cannot be encoded (the save fails)
     */
    byte[] encode(String name, Object value) throws IOException;

    /**
     * @param name the attribute's name
     * @param bytes the stored bytes
     * @param loader the web application's class loader
     * @return the value (not null)
     * @throws IOException when the bytes cannot be decoded: the attribute is then left out of
     *     the session and written back unchanged, never deleted
     */
    Object decode(String name, byte[] bytes, ClassLoader loader) throws IOException;
}
