package io.sessync.client;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

/**
 * TLS contexts for {@link SessyncClient.Builder#tls}, from PEM files: the CA that signed the
 * node's certificate and, for a node started with {@code --client-tls-ca}, a client
 * certificate and its PKCS#8 key ({@code -----BEGIN PRIVATE KEY-----}, EC or RSA).
 */
public final class Tls {
    private Tls() {
    }

    /**
     * @param caPem the CA certificate(s) the node's certificate must chain to (PEM)
     * @return a TLS context that trusts only that CA
     */
    public static SSLContext context(Path caPem) {
        return context(caPem, null, null);
    }

    /**
     * @param caPem the CA certificate(s) the node's certificate must chain to (PEM)
     * @param certPem the client certificate chain (PEM), or null for none
     * @param keyPem the client certificate's PKCS#8 private key (PEM), or null for none
     * @return a TLS context that trusts only that CA and presents the client certificate
     */
    public static SSLContext context(Path caPem, Path certPem, Path keyPem) {
        try {
            CertificateFactory cf = CertificateFactory.getInstance("X.509");
            KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
            trust.load(null, null);
            int i = 0;
            for (Certificate c : cf.generateCertificates(new ByteArrayInputStream(Files.readAllBytes(caPem)))) {
                trust.setCertificateEntry("ca" + i++, c);
            }
            TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            tmf.init(trust);
            KeyManagerFactory kmf = null;
            if (certPem != null && keyPem != null) {
                List<Certificate> chain = new ArrayList<>(
                        cf.generateCertificates(new ByteArrayInputStream(Files.readAllBytes(certPem))));
                PrivateKey key = privateKey(Files.readString(keyPem, StandardCharsets.US_ASCII));
                KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
                ks.load(null, null);
                char[] none = new char[0];
                ks.setKeyEntry("client", key, none, chain.toArray(new Certificate[0]));
                kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
                kmf.init(ks, none);
            }
            SSLContext ctx = SSLContext.getInstance("TLSv1.3");
            ctx.init(kmf == null ? null : kmf.getKeyManagers(), tmf.getTrustManagers(), null);
            return ctx;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } catch (GeneralSecurityException e) {
            throw new IllegalArgumentException("unusable TLS files: " + e.getMessage(), e);
        }
    }

    private static PrivateKey privateKey(String pem) throws GeneralSecurityException {
        String begin = "-----BEGIN PRIVATE KEY-----";
        int a = pem.indexOf(begin);
        int b = pem.indexOf("-----END PRIVATE KEY-----");
        if (a < 0 || b < a) {
            throw new GeneralSecurityException("the key file holds no PKCS#8 PRIVATE KEY block");
        }
        byte[] der = Base64.getMimeDecoder().decode(pem.substring(a + begin.length(), b));
        PKCS8EncodedKeySpec spec = new PKCS8EncodedKeySpec(der);
        try {
            return KeyFactory.getInstance("EC").generatePrivate(spec);
        } catch (GeneralSecurityException notEc) {
            return KeyFactory.getInstance("RSA").generatePrivate(spec);
        }
    }
}
