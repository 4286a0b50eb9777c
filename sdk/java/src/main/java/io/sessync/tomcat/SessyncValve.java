package io.sessync.tomcat;

import jakarta.servlet.ServletException;
import java.io.IOException;
import org.apache.catalina.Session;
import org.apache.catalina.connector.Request;
import org.apache.catalina.connector.Response;
import org.apache.catalina.valves.ValveBase;

/**
 * Brackets each request of a {@link SessyncManager}'s context: before it, loads the session
 * the request names (so a new token reaches the cookie before the response is written);
 * after it, saves what the request changed. Added to the host's pipeline by the manager
 * itself; nothing to configure.
 */
final class SessyncValve extends ValveBase {
    private final SessyncManager manager;

    SessyncValve(SessyncManager manager) {
        super(true);
        this.manager = manager;
    }

    @Override
    public void invoke(Request request, Response response) throws IOException, ServletException {
        if (request.getContext() == null || request.getContext().getManager() != manager) {
            getNext().invoke(request, response);
            return;
        }
        SessyncManager.RequestState st = manager.begin();
        try {
            String id = request.getRequestedSessionId();
            if (id != null) {
                Session s = manager.findSession(id);
                if (s != null && !id.equals(s.getIdInternal())) {
                    // The session moved to this node: the cookie gets the new token.
                    request.changeSessionId(s.getIdInternal());
                }
                if (st.failure != null) {
                    request.setAttribute(SessyncManager.ERROR_ATTRIBUTE,
                            new SessyncSessionException("could not load the session", st.failure));
                }
            }
            getNext().invoke(request, response);
        } finally {
            manager.end(st, request, response);
        }
    }
}
