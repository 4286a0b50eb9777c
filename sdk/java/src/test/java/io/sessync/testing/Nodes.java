package io.sessync.testing;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * Real {@code sessync node} processes for the tests, sharing one secret file. Each binds
 * 127.0.0.1:0 for both ports and prints {@code ready client=ADDR peer=ADDR}; the line is read
 * with a bounded wait. {@link #close()} stops every node (SIGTERM, then SIGKILL after 5 s).
 */
public final class Nodes implements AutoCloseable {
    private static final long READY_TIMEOUT_S = 20;

    /** One running node. */
    public static final class Node {
        /** The process. */
        public final Process process;
        /** Its client address. */
        public final String client;
        /** Its peer address. */
        public final String peer;

        Node(Process process, String client, String peer) {
            this.process = process;
            this.client = client;
            this.peer = peer;
        }

        /** Stops the node (bounded). */
        public void stop() {
            if (process.isAlive()) {
                process.destroy();
                try {
                    if (!process.waitFor(5, TimeUnit.SECONDS)) {
                        process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        }
    }

    private final Path dir;
    private final Path secret;
    /** The nodes, in start order. */
    public final List<Node> nodes = new ArrayList<>();

    /**
     * Starts {@code n} nodes.
     *
     * @param n how many
     * @param extra extra arguments for every node
     * @throws Exception when a node does not start
     */
    public Nodes(int n, String... extra) throws Exception {
        dir = Files.createTempDirectory("sessync-java-");
        secret = dir.resolve("secret");
        byte[] key = new byte[32];
        new SecureRandom().nextBytes(key);
        Files.writeString(secret, HexFormat.of().formatHex(key) + "\n");
        try {
            for (int i = 0; i < n; i++) {
                nodes.add(spawn(extra));
            }
        } catch (Exception e) {
            close();
            throw e;
        }
    }

    /** @return {@code $SESSYNC_BIN}, else target/debug/sessync of this repository */
    public static String binary() {
        String explicit = System.getenv("SESSYNC_BIN");
        if (explicit != null && !explicit.isEmpty()) {
            return explicit;
        }
        Path p = Path.of("../../target/debug/sessync").toAbsolutePath().normalize();
        if (!Files.isExecutable(p)) {
            throw new IllegalStateException(p + " is missing: run `cargo build --bin sessync` or set SESSYNC_BIN");
        }
        return p.toString();
    }

    private Node spawn(String... extra) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(binary(), "node", "--client", "127.0.0.1:0", "--peer",
                "127.0.0.1:0", "--secret-file", secret.toString()));
        cmd.addAll(List.of(extra));
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.environment().put("SESSYNC_LOG", System.getenv().getOrDefault("SESSYNC_LOG", "warn"));
        pb.redirectError(ProcessBuilder.Redirect.INHERIT);
        Process p = pb.start();
        BufferedReader out = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
        CompletableFuture<String> line = CompletableFuture.supplyAsync(() -> {
            try {
                return out.readLine();
            } catch (IOException e) {
                return null;
            }
        });
        String ready;
        try {
            ready = line.get(READY_TIMEOUT_S, TimeUnit.SECONDS);
        } catch (Exception e) {
            p.destroyForcibly();
            throw new IllegalStateException("node did not print its ready line within " + READY_TIMEOUT_S + " s", e);
        }
        if (ready == null || !ready.startsWith("ready ")) {
            p.destroyForcibly();
            throw new IllegalStateException("unexpected ready line: " + ready);
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        Thread drain = new Thread(() -> {
            try {
                while (out.readLine() != null) {
                    // discard
                }
            } catch (IOException ignored) {
                // the node exited
            }
        }, "node-stdout");
        drain.setDaemon(true);
        drain.start();
        String client = null;
        String peer = null;
        for (String part : ready.split(" ")) {
            if (part.startsWith("client=")) {
                client = part.substring(7);
            } else if (part.startsWith("peer=")) {
                peer = part.substring(5);
            }
        }
        if (client == null || peer == null) {
            p.destroyForcibly();
            throw new IllegalStateException("unexpected ready line: " + ready);
        }
        return new Node(p, client, peer);
    }

    /**
     * @param i which node
     * @return its client address
     */
    public String client(int i) {
        return nodes.get(i).client;
    }

    @Override
    public void close() {
        for (Node n : nodes) {
            n.stop();
        }
        try (var files = Files.walk(dir)) {
            files.sorted(java.util.Comparator.reverseOrder()).forEach(f -> f.toFile().delete());
        } catch (IOException ignored) {
            // a temp directory left behind
        }
    }
}
