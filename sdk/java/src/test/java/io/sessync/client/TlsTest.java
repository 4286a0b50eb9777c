package io.sessync.client;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.sessync.testing.Nodes;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * TLS to a real node's client port: verified by default, a wrong name or an unknown CA
 * refused, client certificates when the node asks. Certificates are made here with the
 * openssl command (.ci/java.sh installs it with the JDK when missing).
 */
class TlsTest {
    static Path dir;
    static Path ca;
    static Path[] node;
    static Nodes plainClients;
    static Nodes mtls;

    static void openssl(String... args) throws Exception {
        List<String> cmd = new ArrayList<>();
        cmd.add("openssl");
        cmd.addAll(Arrays.asList(args));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), "openssl did not finish");
        assertEquals(0, p.exitValue(), "openssl " + cmd);
    }

    static Path makeCa(String name) throws Exception {
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=" + name, "-keyout", dir.resolve(name + ".key").toString(), "-out",
                dir.resolve(name + ".crt").toString());
        return dir.resolve(name + ".crt");
    }

    static Path[] leaf(String caName, String cn) throws Exception {
        String base = dir.resolve(caName + "-" + cn).toString();
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=" + cn,
                "-keyout", base + ".key", "-out", base + ".csr");
        Files.writeString(Path.of(base + ".ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
        openssl("x509", "-req", "-in", base + ".csr", "-CA", dir.resolve(caName + ".crt").toString(), "-CAkey",
                dir.resolve(caName + ".key").toString(), "-CAcreateserial", "-days", "2", "-extfile", base + ".ext",
                "-out", base + ".crt");
        return new Path[] {Path.of(base + ".crt"), Path.of(base + ".key")};
    }

    @BeforeAll
    static void start() throws Exception {
        dir = Files.createTempDirectory("sessync-java-tls-");
        ca = makeCa("ca");
        node = leaf("ca", "node");
        plainClients = new Nodes(1, "--client-tls-cert", node[0].toString(), "--client-tls-key", node[1].toString());
        mtls = new Nodes(1, "--client-tls-cert", node[0].toString(), "--client-tls-key", node[1].toString(),
                "--client-tls-ca", ca.toString());
    }

    @AfterAll
    static void stop() {
        if (plainClients != null) {
            plainClients.close();
        }
        if (mtls != null) {
            mtls.close();
        }
    }

    @Test
    void aVerifiedTlsConnectionServesRequests() throws Exception {
        for (String name : new String[] {null, "localhost"}) {
            try (SessyncClient c = SessyncClient.builder(plainClients.client(0)).tls(Tls.context(ca))
                    .tlsServerName(name).timeout(Duration.ofSeconds(10)).build()) {
                byte[] blob = new byte[300_000];
                Arrays.fill(blob, (byte) 7);
                Session s = c.create(Map.of("user", "alice".getBytes(UTF_8), "blob", blob));
                Session got = c.get(s.token());
                assertArrayEquals("alice".getBytes(UTF_8), got.attributes().get("user"));
                assertEquals(300_000, got.attributes().get("blob").length);
                List<CompletableFuture<Session>> many = new ArrayList<>();
                for (int i = 0; i < 200; i++) {
                    many.add(c.getAsync(s.token(), List.of()));
                }
                for (CompletableFuture<Session> f : many) {
                    assertEquals(1, f.get(10, TimeUnit.SECONDS).version());
                }
            }
        }
    }

    @Test
    void aWrongNameOrAnUnknownCaIsRefused() throws Exception {
        try (SessyncClient c = SessyncClient.builder(plainClients.client(0)).tls(Tls.context(ca))
                .tlsServerName("wrong.example").timeout(Duration.ofSeconds(3)).build()) {
            SessyncException.ConnectionLost e = assertThrows(SessyncException.ConnectionLost.class, () -> c.ping(new byte[0]));
            assertTrue(e.getMessage().contains("TLS handshake failed"), e.getMessage());
        }
        Path other = makeCa("other");
        try (SessyncClient c = SessyncClient.builder(plainClients.client(0)).tls(Tls.context(other))
                .timeout(Duration.ofSeconds(3)).build()) {
            SessyncException.ConnectionLost e = assertThrows(SessyncException.ConnectionLost.class, () -> c.ping(new byte[0]));
            assertTrue(e.getMessage().contains("TLS handshake failed"), e.getMessage());
        }
    }

    @Test
    void clientCertificatesWhenTheNodeAsks() throws Exception {
        try (SessyncClient c = SessyncClient.builder(mtls.client(0)).tls(Tls.context(ca))
                .timeout(Duration.ofSeconds(3)).build()) {
            assertThrows(SessyncException.class, () -> c.ping(new byte[0]));
        }
        Path[] app = leaf("ca", "app");
        try (SessyncClient c = SessyncClient.builder(mtls.client(0)).tls(Tls.context(ca, app[0], app[1]))
                .timeout(Duration.ofSeconds(5)).build()) {
            c.ping(new byte[0]);
        }
    }
}
