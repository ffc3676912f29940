package sniff

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// sslv2 builds an SSLv2-format ClientHello (RFC 5246 appendix E.2) with
// the given version and fields, every length consistent; extra is appended
// to the message without being counted in the record length.
func sslv2(version uint16, specs, session, challenge []byte) []byte {
	body := []byte{1, byte(version >> 8), byte(version)}
	body = binary.BigEndian.AppendUint16(body, uint16(len(specs)))
	body = binary.BigEndian.AppendUint16(body, uint16(len(session)))
	body = binary.BigEndian.AppendUint16(body, uint16(len(challenge)))
	body = slices.Concat(body, specs, session, challenge)
	return append([]byte{0x80 | byte(len(body)>>8), byte(len(body))}, body...)
}

// aes128sha is TLS_RSA_WITH_AES_128_CBC_SHA as an SSLv2 cipher spec.
var aes128sha = []byte{0x00, 0x00, 0x2f}

// sslv2Case is a message and whether it is an SSLv2-format ClientHello a
// server answers (sniff: KindTLS); javaOnly says OpenSSL refuses it and
// OpenJDK answers it: bytes after the challenge, a version above 3.x.
type sslv2Case struct {
	name     string
	msg      []byte
	hello    bool
	javaOnly bool
}

func sslv2Cases() []sslv2Case {
	chal := bytes.Repeat([]byte{0xaa}, 16)
	withLen := func(m []byte, delta int) []byte {
		m = slices.Clone(m)
		n := int(m[0]&0x7f)<<8 | int(m[1]) + delta
		m[0], m[1] = 0x80|byte(n>>8), byte(n)
		return m
	}
	std := sslv2(0x0303, aes128sha, nil, chal)
	return []sslv2Case{
		{"TLS 1.2, one spec, 16-byte challenge", std, true, false},
		{"TLS 1.0", sslv2(0x0301, aes128sha, nil, chal), true, false},
		{"two specs, one SSLv2", sslv2(0x0303, slices.Concat([]byte{0x01, 0x00, 0x80}, aes128sha), nil, chal), true, false},
		{"32-byte session ID", sslv2(0x0303, aes128sha, make([]byte, 32), chal), true, false},
		{"1-byte challenge", sslv2(0x0303, aes128sha, nil, []byte{7}), true, false},
		{"40-byte challenge", sslv2(0x0303, aes128sha, nil, make([]byte, 40)), true, false},
		{"version 3.9", sslv2(0x0309, aes128sha, nil, chal), true, false},
		{"session ID 1", sslv2(0x0303, aes128sha, []byte{1}, chal), true, false},
		{"empty challenge", sslv2(0x0303, aes128sha, nil, nil), true, false},
		// SSL 3.0: this openssl refuses the version only; another server
		// may not, and sniff reads it as TLS.
		{"version 3.0", sslv2(0x0300, aes128sha, nil, chal), true, false},
		{name: "version 4.0", msg: sslv2(0x0400, aes128sha, nil, chal), hello: true, javaOnly: true},
		{name: "version 255.255", msg: sslv2(0xffff, aes128sha, nil, chal), hello: true, javaOnly: true},
		{"version 2.255", sslv2(0x02ff, aes128sha, nil, chal), false, false},
		{"3-byte hello in a 3-byte-header record", append([]byte{0x00}, std...), false, false},
		// Near misses: one field out of what OpenSSL accepts.
		{"msg type 2", append(slices.Clone(std[:2]), append([]byte{2}, std[3:]...)...), false, false},
		{"version 2.0", sslv2(0x0002, aes128sha, nil, chal), false, false},
		{"specs not a multiple of 3", sslv2(0x0303, []byte{0, 0, 0x2f, 0}, nil, chal), false, false},
		{"no specs", sslv2(0x0303, nil, nil, chal), false, false},
		{"33-byte session ID", sslv2(0x0303, aes128sha, make([]byte, 33), chal), false, false},
		{"record shorter than the fields", withLen(std, -1)[:len(std)-1], false, false},
		// Bytes after the challenge, counted in the record length.
		{name: "1 byte of padding", msg: append(withLen(std, 1), 0), hello: true, javaOnly: true},
		{name: "100 bytes of padding", msg: append(withLen(std, 100), make([]byte, 100)...), hello: true, javaOnly: true},
		{name: "padding, empty challenge", msg: append(withLen(sslv2(0x0303, aes128sha, nil, nil), 16), chal...), hello: true, javaOnly: true},
	}
}

// TestSniffSSLv2Hello plays a client that sends an SSLv2-format
// ClientHello, which has no SNI yet which OpenSSL answers with a TLS 1.2
// ServerHello (OpenJDK one padded after its challenge): it is KindTLS with
// ErrSSLv2Hello, so the proxy refuses it where names matter, and nothing
// is consumed. Near misses and random bytes whose first byte has its high
// bit set stay KindOther at once. A hello is decided on its fixed fields:
// one whose record claims 32 KiB is TLS once 11 bytes are in.
func TestSniffSSLv2Hello(t *testing.T) {
	for _, tc := range sslv2Cases() {
		c, s := net.Pipe()
		go func() { _, _ = c.Write(tc.msg) }()
		br := NewReader(s)
		start := time.Now()
		res, err := sniff(br, s, 5*time.Second, CompleteTimeout)
		want := KindOther
		if tc.hello {
			want = KindTLS
		}
		if err != nil || res.Kind != want || (tc.hello && !errors.Is(res.Err, ErrSSLv2Hello)) || (!tc.hello && res.Err != nil) {
			t.Errorf("%s: sniff = %v, %v, %v; want %v", tc.name, res.Kind, res.Err, err, want)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("%s: took %v", tc.name, el)
		}
		if got := make([]byte, len(tc.msg)); func() error { _, err := io.ReadFull(br, got); return err }() != nil || !bytes.Equal(got, tc.msg) {
			t.Errorf("%s: bytes consumed", tc.name)
		}
		c.Close()
		s.Close()
	}

	// The longest record, of which the client sends the fixed fields and
	// then waits: decided at once, not after CompleteTimeout.
	c, s := net.Pipe()
	long := sslv2(0x0303, aes128sha, nil, nil)[:sslv2Fixed]
	long[0], long[1] = 0xff, 0xff
	go func() { _, _ = c.Write(long) }()
	start := time.Now()
	if res, err := sniff(NewReader(s), s, 5*time.Second, CompleteTimeout); err != nil || res.Kind != KindTLS || !errors.Is(res.Err, ErrSSLv2Hello) {
		t.Errorf("fixed fields of a 32 KiB record: %v, %v, %v", res.Kind, res.Err, err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("fixed fields of a 32 KiB record: took %v", el)
	}
	c.Close()
	s.Close()

	// A client that stops once the message type and version are in is
	// TLS, as three bytes of a TLS record are; before that, other.
	msg := sslv2Cases()[0].msg
	for n := 1; n < sslv2Fixed; n++ {
		res, _ := classify(msg[:n], io.EOF)
		if want := n > sslv2Major; (res.Kind == KindTLS) != want || (want && !errors.Is(res.Err, io.EOF)) {
			t.Errorf("%d bytes then EOF: %v, %v", n, res.Kind, res.Err)
		}
	}

	// Random binary: KindTLS only when it fits the signature, as this
	// reference reads it.
	fits := func(b []byte) bool {
		f := func(i int) int { return int(binary.BigEndian.Uint16(b[i:])) }
		specs, session, challenge := f(5), f(7), f(9)
		return b[2] == 1 && b[3] >= 3 && specs > 0 && specs%3 == 0 && session <= 32 &&
			f(0)&0x7fff >= 9+specs+session+challenge
	}
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := range 200000 {
		b := make([]byte, 11+r.IntN(40))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		b[0] |= 0x80
		if i%2 == 0 { // make the early fields fit more often
			b[2], b[3] = 1, 3
		}
		res, need := classify(b, nil)
		if need != 0 || (res.Kind == KindTLS) != fits(b) || (res.Kind != KindTLS && res.Kind != KindOther) {
			t.Fatalf("% x: %v, need %d; fits %v", b, res.Kind, need, fits(b))
		}
	}
}

// TestSSLv2HelloOpenSSL holds the signature to what a real OpenSSL server
// does: it answers every case marked hello with a TLS ServerHello (but SSL
// 3.0, whose version alone it refuses, and the javaOnly ones) and none of
// the near misses, and
// sniff reads every one it answers as TLS.
func TestSSLv2HelloOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeRSACert(t, certFile, keyFile)
	// SECLEVEL 0: an SSLv2-format hello has no signature_algorithms, so
	// TLS 1.2 falls back to SHA-1 signatures; a server that allows them
	// answers with a ServerHello, one that does not with an alert after
	// reading the hello all the same.
	srv := exec.Command(bin, "s_server", "-accept", "127.0.0.1:0", "-cert", certFile, "-key", keyFile,
		"-cipher", "DEFAULT:@SECLEVEL=0", "-no_tls1_3")
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := srv.StdinPipe() // held open: s_server ends at EOF on its input
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = srv.Process.Kill(); _ = srv.Wait() })
	addr := acceptAddr(t, out, "openssl s_server")

	for _, tc := range sslv2Cases() {
		answered, resp, rerr := serverHelloTo(t, addr, tc.msg)
		if want := tc.hello && !tc.javaOnly && binary.BigEndian.Uint16(tc.msg[3:]) != 0x0300; answered != want {
			t.Errorf("%s: openssl answered % x (%v); case says hello=%v", tc.name, resp, rerr, tc.hello)
		}
		if res, _ := classify(tc.msg, io.EOF); answered && res.Kind != KindTLS {
			t.Errorf("%s: openssl answered, sniff %v %v", tc.name, res.Kind, res.Err)
		}
	}
}

// writeRSACert writes a self-signed RSA certificate and its key as PEM:
// the cipher the SSLv2 hellos offer needs an RSA key.
func writeRSACert(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sslv2.example"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// sslv2JavaServer is an OpenJDK TLS server that accepts SSLv2-format
// hellos (SSLv2Hello enabled, as an application may still do for old
// clients), every cipher suite allowed; it prints its address.
const sslv2JavaServer = `
import java.io.FileInputStream;
import java.net.InetAddress;
import java.security.KeyStore;
import java.security.Security;
import javax.net.ssl.*;

public class SSLv2Server {
    public static void main(String[] args) throws Exception {
        Security.setProperty("jdk.tls.disabledAlgorithms", "");
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(args[0])) { ks.load(in, "changeit".toCharArray()); }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance("SunX509");
        kmf.init(ks, "changeit".toCharArray());
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), null, null);
        SSLServerSocket ss = (SSLServerSocket) ctx.getServerSocketFactory().createServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        ss.setEnabledProtocols(new String[]{"SSLv2Hello", "TLSv1", "TLSv1.1", "TLSv1.2"});
        ss.setEnabledCipherSuites(ss.getSupportedCipherSuites());
        System.out.println("ACCEPT 127.0.0.1:" + ss.getLocalPort());
        System.out.flush();
        while (true) {
            SSLSocket s = (SSLSocket) ss.accept();
            new Thread(() -> {
                try { s.setSoTimeout(5000); s.startHandshake(); } catch (Exception e) {}
                try { s.close(); } catch (Exception e) {}
            }).start();
        }
    }
}
`

// TestSSLv2HelloJava holds the signature to what OpenJDK's TLS server
// does with SSLv2Hello enabled: it answers hellos whose record holds
// bytes after the challenge, which OpenSSL refuses, and sniff reads every
// hello it answers as TLS, not as an uninspected tcp channel.
func TestSSLv2HelloJava(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("java not installed")
	}
	keytool, err := exec.LookPath("keytool")
	if err != nil {
		t.Skip("keytool not installed")
	}
	dir := t.TempDir()
	ks, src := filepath.Join(dir, "ks.p12"), filepath.Join(dir, "SSLv2Server.java")
	if out, err := exec.Command(keytool, "-genkeypair", "-keyalg", "RSA", "-keysize", "2048", "-alias", "k",
		"-dname", "CN=sslv2.example", "-validity", "1", "-keystore", ks, "-storetype", "PKCS12",
		"-storepass", "changeit", "-keypass", "changeit").CombinedOutput(); err != nil {
		t.Fatalf("keytool: %v\n%s", err, out)
	}
	if err := os.WriteFile(src, []byte(sslv2JavaServer), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command(java, src, ks)
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	addr := acceptAddr(t, out, "the java server")

	for _, tc := range sslv2Cases() {
		answered, resp, rerr := serverHelloTo(t, addr, tc.msg)
		t.Logf("%s: java answered %v", tc.name, answered)
		if tc.javaOnly && !answered {
			t.Errorf("%s: java answered % x (%v), want a ServerHello", tc.name, resp, rerr)
		}
		if res, _ := classify(tc.msg, io.EOF); answered && res.Kind != KindTLS {
			t.Errorf("%s: java answered, sniff %v %v", tc.name, res.Kind, res.Err)
		}
	}
}

// acceptAddr reads a test server's output up to its "ACCEPT host:port"
// line and returns the address; the rest is read away, so that the server
// never blocks on it.
func acceptAddr(t *testing.T, out io.Reader, who string) string {
	t.Helper()
	addr := ""
	sc := bufio.NewScanner(out)
	for addr == "" && sc.Scan() {
		if a, ok := bytes.CutPrefix(sc.Bytes(), []byte("ACCEPT ")); ok {
			addr = string(a)
		}
	}
	if addr == "" {
		t.Fatalf("%s printed no ACCEPT line: %v", who, sc.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return addr
}

// serverHelloTo sends msg to the server at addr and reports whether it
// answered with a ServerHello (a handshake record whose first message is
// type 2), with the first bytes of its answer and the read's error.
func serverHelloTo(t *testing.T, addr string, msg []byte) (bool, []byte, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 6)
	_, err = io.ReadFull(c, resp)
	return err == nil && resp[0] == 0x16 && resp[5] == 2, resp, err
}
