package io.sessync.testing;

import io.sessync.client.Limits;
import io.sessync.client.Wire;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A fake node on 127.0.0.1:0 for bad-input tests: answers HELLO properly, then hands every
 * other request to a {@link Behaviour} that may answer anything (or nothing). Each connection
 * runs on its own daemon thread; {@link #close()} closes the listener and every connection.
 */
public final class FakeNode implements AutoCloseable {
    /** What the fake does with one request after HELLO. */
    public interface Behaviour {
        /**
         * @param frame the request's frame
         * @param out the connection's output
         * @param connection which connection (0, 1, ... in accept order)
         * @return false to close the connection
         * @throws IOException on write failure
         */
        boolean handle(Wire.Frame frame, OutputStream out, int connection) throws IOException;
    }

    private final ServerSocket server;
    private final List<Socket> sockets = new ArrayList<>();
    /** Requests received after HELLO, over all connections. */
    public final AtomicInteger requests = new AtomicInteger();
    /** Connections accepted. */
    public final AtomicInteger connections = new AtomicInteger();

    /**
     * @param behaviour what to do with requests after HELLO
     * @throws IOException when the listener cannot bind
     */
    public FakeNode(Behaviour behaviour) throws IOException {
        server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        Thread t = new Thread(() -> {
            while (!server.isClosed()) {
                try {
                    Socket s = server.accept();
                    int n = connections.getAndIncrement();
                    synchronized (sockets) {
                        sockets.add(s);
                    }
                    Thread c = new Thread(() -> serve(s, behaviour, n), "fake-node-conn");
                    c.setDaemon(true);
                    c.start();
                } catch (IOException e) {
                    return;
                }
            }
        }, "fake-node");
        t.setDaemon(true);
        t.start();
    }

    private void serve(Socket s, Behaviour behaviour, int n) {
        try (s) {
            DataInputStream in = new DataInputStream(s.getInputStream());
            OutputStream out = s.getOutputStream();
            while (true) {
                long len = in.readInt() & 0xFFFFFFFFL;
                Wire.checkLength(len, Limits.DEFAULT.maxFrameLen());
                byte[] rest = new byte[(int) len];
                in.readFully(rest);
                Wire.Frame f = Wire.parseFrame(rest);
                if (f.opcode() == Wire.HELLO) {
                    out.write(Wire.encode(new Wire.HelloOk(1, "fake/0", Limits.DEFAULT.maxFrameLen()), f.requestId(),
                            Limits.DEFAULT));
                    out.flush();
                    continue;
                }
                requests.incrementAndGet();
                if (!behaviour.handle(f, out, n)) {
                    return;
                }
                out.flush();
            }
        } catch (IOException | Wire.WireException e) {
            // the client went away, or sent something this fake does not read
        }
    }

    /** @return the address, HOST:PORT */
    public String address() {
        return "127.0.0.1:" + server.getLocalPort();
    }

    @Override
    public void close() throws IOException {
        server.close();
        synchronized (sockets) {
            for (Socket s : sockets) {
                s.close();
            }
        }
    }
}
