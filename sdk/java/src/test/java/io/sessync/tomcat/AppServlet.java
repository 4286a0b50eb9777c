package io.sessync.tomcat;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpSession;
import java.io.IOException;

/** The test application: a counter, a login that changes the session id, a logout. */
public class AppServlet extends HttpServlet {
    private static final long serialVersionUID = 1L;

    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        resp.setContentType("text/plain");
        String path = req.getPathInfo() == null ? req.getServletPath() : req.getServletPath() + req.getPathInfo();
        try {
            switch (path) {
                case "/count": {
                    HttpSession s = req.getSession(true);
                    Integer n = (Integer) s.getAttribute("n");
                    n = n == null ? 1 : n + 1;
                    s.setAttribute("n", n);
                    resp.getWriter().print(n);
                    return;
                }
                case "/peek": {
                    HttpSession s = req.getSession(false);
                    resp.getWriter().print(s == null ? "none" : String.valueOf(s.getAttribute("n")));
                    return;
                }
                case "/login": {
                    HttpSession s = req.getSession(true);
                    s.setAttribute("user", req.getParameter("user"));
                    resp.getWriter().print(req.changeSessionId());
                    return;
                }
                case "/whoami": {
                    HttpSession s = req.getSession(false);
                    Object u = s == null ? null : s.getAttribute("user");
                    resp.getWriter().print(u == null ? "anonymous" : u);
                    return;
                }
                case "/logout": {
                    HttpSession s = req.getSession(false);
                    if (s != null) {
                        s.invalidate();
                    }
                    resp.getWriter().print("bye");
                    return;
                }
                case "/put": {
                    HttpSession s = req.getSession(true);
                    s.setAttribute(req.getParameter("k"), req.getParameter("v"));
                    String sleep = req.getParameter("sleep");
                    if (sleep != null) {
                        Thread.sleep(Long.parseLong(sleep));
                    }
                    resp.getWriter().print("ok");
                    return;
                }
                case "/get": {
                    HttpSession s = req.getSession(false);
                    resp.getWriter().print(s == null ? "none" : String.valueOf(s.getAttribute(req.getParameter("k"))));
                    return;
                }
                default:
                    resp.sendError(404, "no page " + path);
            }
        } catch (SessyncSessionException e) {
            // The store is unavailable: an error the application handles.
            resp.setStatus(503);
            resp.getWriter().print("session store unavailable: " + e.sessyncCause().name());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            resp.sendError(500);
        }
    }
}
