package io.sessync.tomcat;

import io.sessync.client.SessyncException;

/**
 * What a servlet sees when the session store fails: thrown from {@code request.getSession()},
 * {@code changeSessionId()} and {@code session.invalidate()} when the sessync node is down,
 * times out, or answers with an error. It is unchecked (an {@link IllegalStateException}, as
 * the Servlet API uses for session failures); catch it to answer, for example, 503. The
 * underlying {@link SessyncException} (code, name, whether applied) is {@link #getCause()}.
 */
public class SessyncSessionException extends IllegalStateException {
    private static final long serialVersionUID = 1L;

    /**
     * @param message what the manager was doing
     * @param cause the client's failure
     */
    public SessyncSessionException(String message, SessyncException cause) {
        super(message + ": " + cause.getMessage(), cause);
    }

    /** @return the client's failure */
    public SessyncException sessyncCause() {
        return (SessyncException) getCause();
    }
}
