package sniff

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests written as a hostile client would evade classification: bytes a
// real server accepts as a ClientHello or a request, shaped so that a
// stricter classifier calls them "other" and relays them past the rules
// about names.

// sniffBytes classifies in as a client that sends it and half-closes.
func sniffBytes(t *testing.T, in []byte, size int) (Result, *bufio.Reader) {
	t.Helper()
	conn := &fakeConn{r: bytes.NewReader(in)}
	br := bufio.NewReaderSize(conn, size)
	res, err := sniff(br, conn, time.Second, CompleteTimeout)
	if err != nil {
		t.Fatalf("sniff: %v", err)
	}
	return res, br
}

// rewriteConn rewrites the version of the first record a crypto/tls client
// writes, and can send records of its own before it: what a hostile client
// does to a real ClientHello.
type rewriteConn struct {
	net.Conn
	version uint16 // written into the first record header
	before  []byte // written before the first record
	done    bool
}

func (c *rewriteConn) Write(b []byte) (int, error) {
	if c.done || len(b) < 5 {
		return c.Conn.Write(b)
	}
	c.done = true
	out := slices.Concat(c.before, b)
	out[len(c.before)+1], out[len(c.before)+2] = byte(c.version>>8), byte(c.version)
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// A crypto/tls client whose first record says version 0x0305 or 0x0000, or
// comes after a warning alert: Sniff reads its SNI, and a crypto/tls server
// reading through the same reader afterwards completes the handshake, so
// these are ClientHellos a real server accepts, and nothing was consumed.
func TestSniffRewrittenHelloThenHandshake(t *testing.T) {
	cert, pool := testCert(t, "hidden.example")
	for name, rc := range map[string]rewriteConn{
		"version 0x0305":      {version: 0x0305},
		"version 0x0000":      {version: 0x0000},
		"warning alert first": {version: 0x0301, before: warningAlert},
		"two alerts, 0x0000":  {version: 0x0000, before: slices.Concat(warningAlert, warningAlert)},
	} {
		t.Run(name, func(t *testing.T) {
			c, s := net.Pipe()
			defer c.Close()
			defer s.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			var clientErr error
			go func() {
				defer wg.Done()
				rc.Conn = c
				tc := tls.Client(&rc, &tls.Config{ServerName: "hidden.example", RootCAs: pool})
				clientErr = tc.Handshake()
				c.Close() // no close_notify: nobody reads the pipe any more
			}()
			br := NewReader(s)
			res, err := sniff(br, s, time.Second, CompleteTimeout)
			if err != nil || res.Kind != KindTLS || res.Err != nil || res.Hello.ServerName != "hidden.example" {
				t.Fatalf("Sniff = %+v, %v", res, err)
			}
			srv := tls.Server(&bufConn{Conn: s, r: br}, &tls.Config{Certificates: []tls.Certificate{cert}})
			if err := srv.Handshake(); err != nil {
				t.Fatalf("crypto/tls server after Sniff: %v", err)
			}
			wg.Wait()
			if clientErr != nil {
				t.Fatalf("client: %v", clientErr)
			}
		})
	}
}

// Whatever starts with a TLS record type is TLS-like: read as a ClientHello
// when it is one, and otherwise KindTLS with Err, never KindOther (which
// the proxy would relay past the domain rules).
func TestSniffTLSLikeNeverOther(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "x.example"})
	for name, in := range map[string][]byte{
		"length over 2^14":             []byte("\x16\x03\x07junk"),
		"server hello":                 slices.Concat([]byte{0x16, 3, 3, 0, 4, 2, 0, 0, 0}),
		"alert, then not TLS":          slices.Concat(warningAlert, []byte("GET / HTTP/1.1\r\n\r\n")),
		"33 alerts":                    slices.Concat(bytes.Repeat(warningAlert, 33), raw),
		"alert, then stops":            warningAlert,
		"change_cipher_spec, stops":    {0x14, 0x03, 0x03, 0x00, 0x01, 0x01},
		"application data, stops":      {0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb},
		"half a hello, version 0x0000": withRecordVersion(raw, 0)[:len(raw)/2],
		"NUL in the SNI":               record(helloBody(sniExt(hostName("a\x00b.example")))),
		"SNI with two trailing dots":   record(helloBody(sniExt(hostName("bad.example..")))),
	} {
		res, _ := sniffBytes(t, in, BufferSize)
		if res.Kind != KindTLS || res.Err == nil {
			t.Errorf("%s: %+v; want KindTLS with Err", name, res)
		}
	}
	// Fewer than three bytes from a client that stopped stay "other".
	for _, in := range []string{"\x16", "\x17\x03"} {
		if res, _ := sniffBytes(t, []byte(in), BufferSize); res.Kind != KindOther {
			t.Errorf("%q: %+v", in, res)
		}
	}
}

// Blank lines before a request line are skipped, as servers skip them (RFC
// 9112 §2.2): the request is classified with its Host, Blank says how many
// bytes to drop, and net/http, which does not skip them, reads the request
// once they are dropped.
func TestSniffBlankLinesBeforeRequest(t *testing.T) {
	for _, tc := range []struct {
		in    string
		blank int
		kind  Kind
	}{
		{"\r\nGET / HTTP/1.1\r\nHost: denied.example\r\n\r\n", 2, KindHTTP},
		{"\nGET / HTTP/1.1\nHost: denied.example\n\n", 1, KindHTTP},
		{"\r\n\r\n\n\r\r\nPOST /x HTTP/1.0\r\nHost: denied.example\r\n\r\n", 8, KindHTTP},
		{strings.Repeat("\r\n", 4000) + "GET / HTTP/1.1\r\nHost: denied.example\r\n\r\n", 8000, KindHTTP},
		{"\r\n" + H2Preface, 2, KindHTTP2Cleartext},
	} {
		res, br := sniffBytes(t, []byte(tc.in), BufferSize)
		if res.Kind != tc.kind || res.Err != nil || res.Blank != tc.blank {
			t.Errorf("%.30q: %+v", tc.in, res)
			continue
		}
		if tc.kind != KindHTTP {
			continue
		}
		if res.HTTP.Host != "denied.example" {
			t.Errorf("%.30q: Host %q", tc.in, res.HTTP.Host)
		}
		// net/http refuses the blank line, so the proxy drops it first.
		if _, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.in))); err == nil {
			t.Errorf("%.30q: net/http read it with the blank line; dropping it would not be needed", tc.in)
		}
		if _, err := br.Discard(res.Blank); err != nil {
			t.Fatal(err)
		}
		r, err := http.ReadRequest(br)
		if err != nil || r.Host != "denied.example" {
			t.Errorf("%.30q: after dropping the blank bytes: %v", tc.in, err)
		}
	}
	// Only blank lines, then the client stops: nothing to go on ("other",
	// like a lone "G"). A buffer full of them is unreadable HTTP.
	if res, _ := sniffBytes(t, []byte("\r\n\r\n"), BufferSize); res.Kind != KindOther || res.Blank != 0 {
		t.Errorf("blank lines, then EOF: %+v", res)
	}
	res, _ := sniffBytes(t, []byte(strings.Repeat("\r\n", 200)+"GET / HTTP/1.1\r\nHost: denied.example\r\n\r\n"), 256)
	if res.Kind != KindHTTP || !errors.Is(res.Err, ErrMalformedHTTP) {
		t.Errorf("a buffer full of blank lines: %+v", res)
	}
}

// A request line that lenient servers accept and this parser does not is
// HTTP with Err, never "other".
func TestSniffMalformedRequestLine(t *testing.T) {
	for _, in := range []string{
		"GET  / HTTP/1.1\r\nHost: denied.example\r\n\r\n",
		"GET / HTTP/1.1 \r\nHost: denied.example\r\n\r\n",
		"\r\nGET /\tx HTTP/1.1\r\nHost: denied.example\r\n\r\n",
	} {
		res, _ := sniffBytes(t, []byte(in), BufferSize)
		if res.Kind != KindHTTP || !errors.Is(res.Err, ErrMalformedHTTP) || res.HTTP.Method != "GET" {
			t.Errorf("%q: %+v", in, res)
		}
	}
}

// echConfigList returns an ECHConfigList (RFC 9849 §4) with one X25519,
// HKDF-SHA256, AES-128-GCM configuration whose public name is publicName,
// for a crypto/tls client to encrypt its real ClientHello to.
func echConfigList(t testing.TB, publicName string) []byte {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var c []byte
	c = append(c, 7)            // config_id
	c = append(c, u16(0x20)...) // DHKEM(X25519, HKDF-SHA256)
	c = append(c, vec16(key.PublicKey().Bytes())...)
	c = append(c, vec16(u16(1), u16(1))...) // HKDF-SHA256, AES-128-GCM
	c = append(c, 0)                        // maximum_name_length
	c = append(c, vec8([]byte(publicName))...)
	c = append(c, vec16()...) // no extensions
	config := slices.Concat(u16(extECH), vec16(c))
	return vec16(config)
}

// A crypto/tls client offering ECH: its outer SNI is the public name, and
// ECH is reported.
func TestSniffECH(t *testing.T) {
	raw := captureHello(t, &tls.Config{
		ServerName: "secret.example", MinVersion: tls.VersionTLS13,
		EncryptedClientHelloConfigList: echConfigList(t, "public.example"),
	})
	h, err := ParseClientHello(raw)
	if err != nil || !h.ECH || h.ServerName != "public.example" {
		t.Fatalf("ECH hello: %+v, %v", h, err)
	}
	if h, _ := ParseClientHello(captureHello(t, &tls.Config{ServerName: "plain.example"})); h.ECH {
		t.Fatal("ECH reported for a hello without it")
	}
}

// The evasions are real: a crypto/tls server accepts each of these as a
// ClientHello (what FuzzDifferentialClientHello holds the classifier to),
// and refuses the last ones, which the classifier still calls TLS-like.
func TestCryptoTLSAcceptsEvasions(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "hidden.example"})
	for name, in := range map[string][]byte{
		"version 0x0305":      withRecordVersion(raw, 0x0305),
		"version 0x0000":      withRecordVersion(raw, 0x0000),
		"version 0x0fff":      withRecordVersion(raw, 0x0fff),
		"warning alert first": slices.Concat(warningAlert, raw),
		"16 alerts first":     slices.Concat(bytes.Repeat(warningAlert, 16), raw),
		"alert between fragments": slices.Concat(refragment(t, raw, 20)[:25], warningAlert,
			withRecordVersion(refragment(t, raw, 20)[25:], 0)),
		// RFC 8446 forbids these; crypto/tls reads the SNI all the same.
		"legacy_version 2.0": record(append([]byte{2, 0}, helloBody(sniExt(hostName("hidden.example")))[2:]...)),
		"session id of 200": record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(make([]byte, 200)),
			vec16([]byte{0x13, 0x01}), vec8([]byte{0}), vec16(sniExt(hostName("hidden.example"))))),
		"no cipher suites, no compression": record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(), vec16(), vec8(),
			vec16(sniExt(hostName("hidden.example"))))),
	} {
		if gh, ok := goServerHello(in); !ok || gh.serverName != "hidden.example" {
			t.Errorf("%s: crypto/tls refused it (%v, %+v): not an evasion", name, ok, gh)
		}
	}
	for name, in := range map[string][]byte{
		"version 0x1000":  withRecordVersion(raw, 0x1000),
		"17 alerts first": slices.Concat(bytes.Repeat(warningAlert, 17), raw),
		"empty record":    slices.Concat([]byte{0x16, 3, 1, 0, 0}, raw),
		"ccs first":       slices.Concat([]byte{0x14, 3, 3, 0, 1, 1}, raw),
	} {
		if _, ok := goServerHello(in); ok {
			t.Errorf("%s: crypto/tls accepts it now; the comments that say otherwise need updating", name)
		}
		if res, _ := sniffBytes(t, in, BufferSize); res.Kind != KindTLS {
			t.Errorf("%s: %v, want TLS-like", name, res.Kind)
		}
	}
}
