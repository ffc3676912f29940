package sniff

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzParseClientHello checks, on arbitrary input seeded with real
// crypto/tls ClientHellos: no panic; exactly one documented error class; a
// NeedMoreError asks for more than it got; a success is stable when bytes
// are appended, reports a Size within the input, a validated SNI, and is
// preceded by prefixes that all ask for more.
func FuzzParseClientHello(f *testing.F) {
	for _, tc := range helloCases() {
		raw := captureHello(f, tc.cfg)
		f.Add(raw)
		f.Add(refragment(f, raw, 3, 200))
		f.Add(slices.Concat(warningAlert, withRecordVersion(raw, 0)))
	}
	f.Add(record(helloBody(sniExt(hostName("a.example")), alpnExt("h2"))))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseClientHello(b)
		if err != nil {
			if !knownError(err) {
				t.Fatalf("unclassified error %v", err)
			}
			var nm *NeedMoreError
			if errors.As(err, &nm) && nm.Need <= len(b) {
				t.Fatalf("Need %d <= len %d", nm.Need, len(b))
			}
			if _, ok := err.(*NeedMoreError); errors.Is(err, ErrNeedMore) && !ok {
				t.Fatalf("wrapped need-more error %v: classify asserts its type", err)
			}
			return
		}
		if h.Size < 9 || h.Size > len(b) {
			t.Fatalf("Size %d of %d", h.Size, len(b))
		}
		if h.ServerName != "" && !validHostName([]byte(h.ServerName)) {
			t.Fatalf("invalid ServerName %q", h.ServerName)
		}
		h2, err := ParseClientHello(append(slices.Clip(b), 0xff, 0x00))
		if err != nil || h2.ServerName != h.ServerName || h2.Size != h.Size || !slices.Equal(h2.ALPN, h.ALPN) {
			t.Fatalf("appending bytes changed the result: %+v %v", h2, err)
		}
		for _, k := range []int{0, 5, h.Size / 2, h.Size - 1} {
			if _, err := ParseClientHello(b[:k]); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("prefix %d of a %d-byte hello: %v", k, h.Size, err)
			}
		}
	})
}

// fakeConn reads from a fixed byte slice (EOF at its end); deadlines are
// recorded, not enforced.
type fakeConn struct {
	r        io.Reader
	deadline time.Time
}

func (c *fakeConn) Read(p []byte) (int, error)        { return c.r.Read(p) }
func (c *fakeConn) SetReadDeadline(t time.Time) error { c.deadline = t; return nil }

// FuzzSniffHTTP fuzzes the request-line parser and Sniff over it: no
// panic; documented errors only; a success survives appended bytes and
// every prefix of a success is need-more or the same success; Sniff
// consumes nothing and leaves no deadline behind.
func FuzzSniffHTTP(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"GET http://a.example:8080/x?y HTTP/1.1\r\nUser-Agent: f\r\nHost: b.example\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"POST /submit HTTP/1.0\nContent-Length: 0\n\n",
		"OPTIONS * HTTP/1.1\r\nHOST: [::1]:80\r\n\r\n",
		H2Preface,
		"\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"\n\r\n" + H2Preface,
		"GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET\t/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
		" \xa0GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"OPTIONS rtsp://cam/s RTSP/1.0\r\n",
		"SSH-2.0-OpenSSH_9.6\r\n",
		"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
		"\x80\x1c\x01\x03\x03\x00\x03\x00\x00\x00\x10\x00\x00\x2f" + strings.Repeat("\xaa", 16), // SSLv2-format hello
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseHTTPRequest(b)
		switch {
		case err == nil:
			if req.Method == "" || req.Target == "" || req.Proto == "" {
				t.Fatalf("success with empty fields: %+v", req)
			}
			_, _ = req.Authority(), req.Hostname()
			again, err := ParseHTTPRequest(append(slices.Clip(b), "\r\nX: y\r\n"...))
			if err != nil || again != req {
				t.Fatalf("appending changed %+v to %+v, %v", req, again, err)
			}
			for k := range min(len(b), 64) {
				p, err := ParseHTTPRequest(b[:k])
				if err == nil && p != req {
					t.Fatalf("prefix %d: %+v vs %+v", k, p, req)
				}
				if err != nil && !errors.Is(err, ErrNeedMore) {
					t.Fatalf("prefix %d of a request: %v", k, err)
				}
			}
		case errors.Is(err, ErrNeedMore):
			nm, ok := err.(*NeedMoreError) // unwrapped: classify asserts its type
			if !ok || nm.Need <= len(b) {
				t.Fatalf("bad need-more %v for %d bytes", err, len(b))
			}
		case errors.Is(err, ErrMalformedHTTP):
			if req.Method == "" || bytes.IndexByte(b, '\n') < 0 {
				t.Fatalf("malformed without a method or a whole line: %+v", req)
			}
			if _, err := ParseHTTPRequest(append(slices.Clip(b), "\r\nX: y\r\n"...)); !errors.Is(err, ErrMalformedHTTP) {
				t.Fatalf("appending changed malformed to %v", err)
			}
		case errors.Is(err, ErrNotHTTP):
		default:
			t.Fatalf("unexpected error %v", err)
		}

		conn := &fakeConn{r: bytes.NewReader(b)}
		br := bufio.NewReaderSize(conn, 256) // small, to reach ErrTooLarge too
		res, err := sniff(br, conn, time.Millisecond, CompleteTimeout)
		if err != nil {
			t.Fatalf("Sniff: %v", err)
		}
		if !conn.deadline.IsZero() {
			t.Fatal("deadline left set")
		}
		if res.Kind == KindHTTP && res.HTTP.Method == "" && !errors.Is(res.Err, ErrMalformedHTTP) {
			t.Fatalf("KindHTTP without method: %+v", res)
		}
		// Blank counts CR and LF bytes before an HTTP head, nothing else.
		if res.Blank < 0 || res.Blank > res.Peeked || (res.Blank > 0 && res.Kind != KindHTTP && res.Kind != KindHTTP2Cleartext) ||
			strings.Trim(string(b[:res.Blank]), "\r\n") != "" {
			t.Fatalf("Blank %d of %q: %+v", res.Blank, b, res)
		}
		// Skipped blank lines change nothing else.
		if res.Blank > 0 && res.Err == nil {
			again, _ := classify(b[res.Blank:res.Peeked], io.EOF)
			if again.Kind != res.Kind || again.HTTP != res.HTTP {
				t.Fatalf("with blank lines %+v, without %+v", res, again)
			}
		}
		rest, err := io.ReadAll(br)
		if err != nil || !bytes.Equal(rest, b) {
			t.Fatalf("Sniff consumed bytes: %v", err)
		}
	})
}

// memConn is a net.Conn whose reads come from r (EOF at its end) and whose
// writes are discarded: a client that sent r and went quiet, for a
// crypto/tls server to read without any goroutine or socket.
type memConn struct{ r *bytes.Reader }

func (c *memConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// goHello is what a crypto/tls server read from a ClientHello.
type goHello struct {
	serverName string
	alpn       []string
	extensions []uint16
}

var errStopHandshake = errors.New("stop after the ClientHello")

// goServerHello feeds b to a crypto/tls server as the client's bytes. ok
// reports whether the server got as far as GetConfigForClient, i.e. it
// accepted b as the start of a handshake with a ClientHello; the handshake
// stops there.
func goServerHello(b []byte) (h goHello, ok bool) {
	srv := tls.Server(&memConn{r: bytes.NewReader(b)}, &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			h = goHello{serverName: chi.ServerName, alpn: slices.Clone(chi.SupportedProtos), extensions: slices.Clone(chi.Extensions)}
			ok = true
			return nil, errStopHandshake
		},
	})
	_ = srv.Handshake()
	return h, ok
}

// differentialSeeds are real crypto/tls ClientHellos, and the shapes of
// them that servers accept and a strict classifier might not.
func differentialSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	cfgs := []*tls.Config{
		{ServerName: "www.Example.com", NextProtos: []string{"h2", "http/1.1"}},
		{ServerName: "legacy.example", MaxVersion: tls.VersionTLS12},
		{InsecureSkipVerify: true},
		{ServerName: "secret.example", MinVersion: tls.VersionTLS13, EncryptedClientHelloConfigList: echConfigList(t, "public.example")},
	}
	for _, cfg := range cfgs {
		raw := captureHello(t, cfg)
		seeds = append(seeds, raw, refragment(t, raw, 1), refragment(t, raw, 3, 200), refragment(t, raw, 100))
		for _, v := range []uint16{0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0305, 0x0000, 0x0fff, 0xffff} {
			seeds = append(seeds, withRecordVersion(raw, v))
		}
		seeds = append(seeds,
			slices.Concat(warningAlert, raw),
			slices.Concat(bytes.Repeat(warningAlert, 16), raw),
			slices.Concat(bytes.Repeat(warningAlert, 17), raw),
			slices.Concat(warningAlert, withRecordVersion(refragment(t, raw, 50), 0x0000)),
			slices.Concat(refragment(t, raw, 20)[:25], warningAlert, refragment(t, raw, 20)[25:]),
			slices.Concat([]byte{0x16, 0x03, 0x01, 0x00, 0x00}, raw),
			slices.Concat([]byte{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}, raw),
		)
	}
	seeds = append(seeds,
		record(append([]byte{2, 0}, helloBody(sniExt(hostName("v.example")))[2:]...)),
		record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(make([]byte, 200)), vec16(), vec8(), vec16(sniExt(hostName("s.example"))))),
		record(helloBody(ext(extServerName, vec16(hostName("t.example")), []byte{0xde, 0xad}))),
		record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(), vec16([]byte{0x13, 0x01}), vec8([]byte{0}))),
		record(helloBody(sniExt(hostName("a b.example")))),
	)
	return seeds
}

// FuzzDifferentialClientHello holds the classifier to what a real server
// does with the same bytes: whenever crypto/tls accepts them as a
// ClientHello (it gets as far as GetConfigForClient), Sniff says KindTLS,
// without Err, with the same SNI, ALPN and ECH. The one allowed difference
// fails closed: an SNI with bytes no DNS name holds (crypto/tls passes it
// on) is KindTLS with Err, which the proxy refuses.
func FuzzDifferentialClientHello(f *testing.F) {
	for _, s := range differentialSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(differential)
}

// differential checks b against crypto/tls: see FuzzDifferentialClientHello.
func differential(t *testing.T, b []byte) {
	gh, ok := goServerHello(b)
	if !ok {
		return
	}
	conn := &fakeConn{r: bytes.NewReader(b)}
	// A reader that holds all of b: the buffer's own limit (ErrTooLarge)
	// is a documented difference, not the parser's.
	br := bufio.NewReaderSize(conn, max(BufferSize, len(b)))
	res, err := sniff(br, conn, time.Millisecond, CompleteTimeout)
	if err != nil {
		t.Fatalf("sniff: %v", err)
	}
	if gh.serverName != "" && !validHostName([]byte(gh.serverName)) {
		if res.Kind != KindTLS || res.Err == nil {
			t.Fatalf("crypto/tls read SNI %q; sniff = %v, %v; want KindTLS with Err", gh.serverName, res.Kind, res.Err)
		}
		return
	}
	if res.Kind != KindTLS || res.Err != nil {
		t.Fatalf("crypto/tls read a ClientHello (SNI %q); sniff = %v, %v", gh.serverName, res.Kind, res.Err)
	}
	h := res.Hello
	if h.ServerName != gh.serverName || !slices.Equal(h.ALPN, gh.alpn) || h.ECH != offersECH(gh.extensions) {
		t.Fatalf("crypto/tls read SNI %q ALPN %q ECH %v; sniff read %q %q %v",
			gh.serverName, gh.alpn, offersECH(gh.extensions), h.ServerName, h.ALPN, h.ECH)
	}
}

// offersECH reports whether the extensions crypto/tls read include one
// that carries a hidden server name: RFC 9849's encrypted_client_hello, or
// a code point its drafts or draft ESNI used (0xffce, 0xff02, 0xfe08 to
// 0xfe0c), which Sniff reports as ECH since b7faa4c. crypto/tls knows only
// RFC 9849's and lists the others as any unknown extension.
func offersECH(exts []uint16) bool {
	return slices.ContainsFunc(exts, func(e uint16) bool {
		return e == extECH || e == 0xffce || e == 0xff02 || e >= 0xfe08 && e <= 0xfe0c
	})
}

// helloParts is a ClientHello taken apart, so that a fuzz target can
// change one field and rebuild the message with every length consistent:
// raw byte mutations rarely get a length-prefixed structure past its
// length checks, and so rarely reach the differences that matter.
type helloParts struct {
	version      []byte // legacy_version
	random       []byte
	session      []byte
	suites       []byte
	compressions []byte
	exts         []helloExt
	noExtensions bool // no extensions block at all
}

type helloExt struct {
	typ  uint16
	data []byte
}

// splitHello takes apart the ClientHello carried by the records of raw (a
// capture from crypto/tls: trusted, well formed).
func splitHello(raw []byte) helloParts {
	var msg []byte
	for p := 0; p < len(raw); {
		n := int(raw[p+3])<<8 | int(raw[p+4])
		msg = append(msg, raw[p+5:p+5+n]...)
		p += 5 + n
	}
	b := msg[4:]
	var h helloParts
	take := func(n int) []byte { v := b[:n]; b = b[n:]; return v }
	h.version, h.random = take(2), take(32)
	h.session = take(int(take(1)[0]))
	h.suites = take(be16(take(2)))
	h.compressions = take(int(take(1)[0]))
	exts := take(be16(take(2)))
	for len(exts) > 0 {
		typ, n := uint16(be16(exts)), be16(exts[2:])
		h.exts = append(h.exts, helloExt{typ, exts[4 : 4+n]})
		exts = exts[4+n:]
	}
	return h
}

// message rebuilds the handshake message.
func (h helloParts) message() []byte {
	body := slices.Concat(h.version, h.random, vec8(h.session), vec16(h.suites), vec8(h.compressions))
	if !h.noExtensions {
		var exts []byte
		for _, e := range h.exts {
			exts = slices.Concat(exts, u16(int(e.typ)), vec16(e.data))
		}
		body = append(body, vec16(exts)...)
	}
	return slices.Concat([]byte{handshakeTypeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body)
}

// editReader hands out the bytes of a fuzz input as small numbers and
// byte strings, and zeros once it is used up.
type editReader []byte

func (r *editReader) byte() byte {
	if len(*r) == 0 {
		return 0
	}
	c := (*r)[0]
	*r = (*r)[1:]
	return c
}

func (r *editReader) bytes(max int) []byte {
	n := min(int(r.byte())%(max+1), len(*r))
	v := (*r)[:n]
	*r = (*r)[n:]
	return v
}

// applyEdits changes h and chooses the record framing as edits say: a
// few structured edits, each one of the ways servers and this parser
// could disagree (bytes after an extension's data, duplicated or
// reordered extensions, odd vectors, SNI and ALPN lists of any shape,
// record versions, records before and between the fragments).
func applyEdits(h helloParts, edits []byte) []byte {
	r := editReader(edits)
	h.exts = slices.Clone(h.exts) // h shares it with the base, which must stay as it is
	ext := func() *helloExt {
		if len(h.exts) == 0 {
			h.exts = append(h.exts, helloExt{typ: extServerName})
		}
		return &h.exts[int(r.byte())%len(h.exts)]
	}
	for range 4 {
		switch r.byte() % 14 {
		case 0: // bytes after an extension's data
			e := ext()
			e.data = slices.Concat(e.data, r.bytes(8))
		case 1: // an extension twice
			e := *ext()
			h.exts = slices.Insert(h.exts, int(r.byte())%(len(h.exts)+1), e)
		case 2: // one fewer
			if len(h.exts) > 0 {
				i := int(r.byte()) % len(h.exts)
				h.exts = slices.Delete(h.exts, i, i+1)
			}
		case 3: // a new one, of any type, with any data
			typ := uint16(r.byte())<<8 | uint16(r.byte())
			h.exts = append(h.exts, helloExt{typ, r.bytes(40)})
		case 4:
			h.version = []byte{r.byte(), r.byte()}
		case 5:
			h.session = r.bytes(255)
		case 6:
			h.suites = r.bytes(9)
		case 7:
			h.compressions = r.bytes(3)
		case 8: // an SNI list of any entries
			var list []byte
			for range int(r.byte()) % 4 {
				typ := r.byte() % 3
				name := r.bytes(20)
				if r.byte()%2 == 0 {
					name = []byte("sni" + string(rune('a'+len(name)%26)) + ".example")
				}
				list = slices.Concat(list, []byte{typ}, vec16(name))
			}
			ext().data = vec16(list)
		case 9: // an ALPN list of any entries
			var list []byte
			for range int(r.byte()) % 4 {
				list = append(list, vec8(r.bytes(6))...)
			}
			e := ext()
			e.typ, e.data = extALPN, vec16(list)
		case 10: // a supported_versions list of any length
			e := ext()
			e.typ, e.data = extSupportedVersions, vec8(r.bytes(7))
		case 11:
			h.noExtensions = !h.noExtensions
		case 12: // swap two extensions
			a, b := ext(), ext()
			*a, *b = *b, *a
		case 13: // an ECH extension of any content
			e := ext()
			e.typ, e.data = extECH, r.bytes(20)
		}
	}
	// The framing: fragment size, record version, and records before and
	// between the fragments.
	msg := h.message()
	frag := 1 + int(r.byte())*int(r.byte()+1)
	version := uint16(r.byte())<<8 | uint16(r.byte())
	var out []byte
	for range int(r.byte()) % 4 {
		switch r.byte() % 4 {
		case 0:
			out = append(out, warningAlert...)
		case 1:
			out = append(out, 0x15, 3, 1, 0, 2, 2, 40) // fatal
		case 2:
			out = append(out, 0x16, 3, 1, 0, 0) // empty
		case 3:
			out = append(out, 0x14, 3, 3, 0, 1, 1)
		}
	}
	between := r.byte()%3 == 0
	for len(msg) > 0 {
		n := min(frag, len(msg), maxPlaintext)
		out = append(out, 0x16, byte(version>>8), byte(version), byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
		if between && len(msg) > 0 {
			out = append(out, warningAlert...)
		}
	}
	return out
}

// FuzzDifferentialClientHelloEdits is FuzzDifferentialClientHello over
// ClientHellos rebuilt from a real one with structured edits (applyEdits),
// so that the fuzzer spends its time on what both parsers get past their
// length checks.
func FuzzDifferentialClientHelloEdits(f *testing.F) {
	var bases []helloParts
	for _, cfg := range []*tls.Config{
		{ServerName: "www.Example.com", NextProtos: []string{"h2", "http/1.1"}},
		{ServerName: "legacy.example", MaxVersion: tls.VersionTLS12},
		{InsecureSkipVerify: true},
		{ServerName: "secret.example", MinVersion: tls.VersionTLS13, EncryptedClientHelloConfigList: echConfigList(f, "public.example")},
	} {
		bases = append(bases, splitHello(captureHello(f, cfg)))
	}
	for i := range bases {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte{0, 0, 5, 1, 2, 3, 4, 5})
		f.Add(uint8(i), []byte{8, 0, 2, 0, 5, 'a', '.', 'b', 'c', 'd', 1})
		f.Add(uint8(i), []byte{4, 2, 0, 9, 0, 3, 0, 0, 0, 0, 0, 0, 2, 0, 1})
	}
	f.Fuzz(func(t *testing.T, base uint8, edits []byte) {
		b := applyEdits(bases[int(base)%len(bases)], edits)
		differential(t, b)
	})
}
