package sniff

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// helloCase is a crypto/tls client configuration whose first flight the
// tests capture, with what ParseClientHello must find in it.
type helloCase struct {
	name       string
	cfg        *tls.Config
	wantSNI    string
	wantALPN   []string
	wantMax    uint16
	wantSV     bool // supported_versions present
	minRecords int
}

func helloCases() []helloCase {
	// 80 protocols of 250 bytes: an ALPN extension of 20 KB, which crypto/tls
	// sends as a ClientHello over two records.
	var bigALPN []string
	for i := range 80 {
		bigALPN = append(bigALPN, strings.Repeat(string(rune('a'+i%26)), 250))
	}
	return []helloCase{
		{name: "sni-alpn-tls13", cfg: &tls.Config{ServerName: "www.Example.com", NextProtos: []string{"h2", "http/1.1"}},
			wantSNI: "www.Example.com", wantALPN: []string{"h2", "http/1.1"}, wantMax: tls.VersionTLS13, wantSV: true, minRecords: 1},
		{name: "no-sni-ip", cfg: &tls.Config{ServerName: "127.0.0.1"},
			wantMax: tls.VersionTLS13, wantSV: true, minRecords: 1},
		{name: "no-sni-insecure", cfg: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
			wantALPN: []string{"http/1.1"}, wantMax: tls.VersionTLS13, wantSV: true, minRecords: 1},
		{name: "tls12-only", cfg: &tls.Config{ServerName: "legacy.example", MaxVersion: tls.VersionTLS12},
			wantSNI: "legacy.example", wantMax: tls.VersionTLS12, wantSV: true, minRecords: 1}, // Go sends supported_versions [0x0303]
		{name: "tls13-only-pq", cfg: &tls.Config{ServerName: "pq.example", MinVersion: tls.VersionTLS13,
			CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}},
			wantSNI: "pq.example", wantMax: tls.VersionTLS13, wantSV: true, minRecords: 1},
		{name: "multi-record", cfg: &tls.Config{ServerName: "big.example", NextProtos: bigALPN},
			wantSNI: "big.example", wantALPN: bigALPN, wantMax: tls.VersionTLS13, wantSV: true, minRecords: 2},
	}
}

// captureHello runs a crypto/tls client handshake into a net.Pipe and
// returns the records carrying its ClientHello, read with a parser of the
// test's own (record by record until the handshake length is covered).
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = tls.Client(c, cfg).Handshake() // fails once s is closed
	}()
	defer func() {
		s.Close()
		c.Close()
		wg.Wait()
	}()
	if err := s.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var out []byte
	hs, want := 0, -1
	for want < 0 || hs < want {
		hdr := make([]byte, 5)
		if _, err := io.ReadFull(s, hdr); err != nil {
			t.Fatalf("reading record header: %v", err)
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(s, body); err != nil {
			t.Fatalf("reading record: %v", err)
		}
		if hs == 0 {
			want = 4 + (int(body[1])<<16 | int(body[2])<<8 | int(body[3]))
		}
		hs += len(body)
		out = append(append(out, hdr...), body...)
	}
	return out
}

// testCert returns a self-signed ECDSA certificate for name, and a pool
// trusting it.
func testCert(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// refragment re-sends the handshake message carried by hello's records in
// records whose payloads have the given sizes (the last size repeats).
func refragment(t testing.TB, hello []byte, sizes ...int) []byte {
	t.Helper()
	var msg []byte
	for p := 0; p < len(hello); {
		n := int(hello[p+3])<<8 | int(hello[p+4])
		msg = append(msg, hello[p+5:p+5+n]...)
		p += 5 + n
	}
	var out []byte
	for i := 0; len(msg) > 0; i++ {
		n := sizes[min(i, len(sizes)-1)]
		n = min(n, len(msg))
		out = append(out, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}
