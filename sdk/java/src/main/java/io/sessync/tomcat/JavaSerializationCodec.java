package io.sessync.tomcat;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InvalidClassException;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.io.ObjectStreamClass;

/**
 * Attribute values as Java serialization, classes resolved with the web application's class
 * loader. Values must be {@link java.io.Serializable}. The bytes come only from the sessync
 * node (written by this manager), never from the user; still, the manager's
 * {@code sessionAttributeValueClassNameFilter} (a regular expression, as for Tomcat's own
 * managers) is applied when it is set.
 */
public class JavaSerializationCodec implements AttributeCodec {
    private volatile java.util.regex.Pattern allowed;

    /** @param pattern class names that may be deserialized, or null for all */
    void allow(java.util.regex.Pattern pattern) {
        this.allowed = pattern;
    }

    @Override
    public byte[] encode(String name, Object value) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try (ObjectOutputStream o = new ObjectOutputStream(out)) {
            o.writeObject(value);
        }
        return out.toByteArray();
    }

    @Override
    public Object decode(String name, byte[] bytes, ClassLoader loader) throws IOException {
        java.util.regex.Pattern filter = allowed;
        try (ObjectInputStream in = new LoaderInputStream(new ByteArrayInputStream(bytes), loader, filter)) {
            Object v = in.readObject();
            if (v == null) {
                throw new IOException("attribute " + name + " decodes to null");
            }
            return v;
        } catch (ClassNotFoundException e) {
            throw new IOException("attribute " + name + ": class not found: " + e.getMessage(), e);
        }
    }

    private static final class LoaderInputStream extends ObjectInputStream {
        private final ClassLoader loader;
        private final java.util.regex.Pattern filter;

        LoaderInputStream(InputStream in, ClassLoader loader, java.util.regex.Pattern filter) throws IOException {
            super(in);
            this.loader = loader;
            this.filter = filter;
        }

        @Override
        protected Class<?> resolveClass(ObjectStreamClass desc) throws IOException, ClassNotFoundException {
            String n = desc.getName();
            if (filter != null && !filter.matcher(n).matches()) {
                throw new InvalidClassException(n, "not allowed by sessionAttributeValueClassNameFilter");
            }
            try {
                return Class.forName(n, false, loader);
            } catch (ClassNotFoundException e) {
                return super.resolveClass(desc);
            }
        }
    }
}
