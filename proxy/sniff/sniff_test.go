package sniff

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// bufConn is a net.Conn whose reads go through the bufio.Reader Sniff
// peeked into, as the proxy hands connections on.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tcpPair returns both ends of a TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// A real TLS handshake: Sniff finds SNI and ALPN, and afterwards a TLS
// server reading through the same bufio.Reader completes the handshake, so
// nothing was consumed.
func TestSniffTLSThenHandshake(t *testing.T) {
	cert, pool := testCert(t, "tls.example")
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	var clientErr error
	var reply []byte
	go func() {
		defer wg.Done()
		tc := tls.Client(c, &tls.Config{ServerName: "tls.example", RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
		if clientErr = tc.Handshake(); clientErr != nil {
			return
		}
		reply, clientErr = io.ReadAll(tc)
	}()

	br := NewReader(s)
	res, err := sniff(br, s, time.Second, CompleteTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != KindTLS || res.Err != nil || res.Hello.ServerName != "tls.example" || !slices.Equal(res.Hello.ALPN, []string{"h2", "http/1.1"}) {
		t.Fatalf("Sniff = %+v", res)
	}
	if br.Buffered() != res.Peeked || res.Peeked != res.Hello.Size {
		t.Fatalf("buffered %d, peeked %d, hello %d", br.Buffered(), res.Peeked, res.Hello.Size)
	}
	srv := tls.Server(&bufConn{Conn: s, r: br}, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err := srv.Handshake(); err != nil {
		t.Fatalf("server handshake after Sniff: %v", err)
	}
	if _, err := srv.Write([]byte("hello over TLS")); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	wg.Wait()
	if clientErr != nil || string(reply) != "hello over TLS" {
		t.Fatalf("client: %q, %v", reply, clientErr)
	}
}

// An HTTP request: Sniff finds method, target and Host; net/http then
// reads the same request from the reader.
func TestSniffHTTPThenReadRequest(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	const req = "GET http://abs.example/x HTTP/1.1\r\nUser-Agent: t\r\nHost: abs.example\r\nAccept: */*\r\n\r\n"
	go func() { _, _ = c.Write([]byte(req)) }()
	br := NewReader(s)
	res, err := sniff(br, s, time.Second, CompleteTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != KindHTTP || res.Err != nil || res.HTTP.Method != "GET" || res.HTTP.Target != "http://abs.example/x" || res.HTTP.Host != "abs.example" {
		t.Fatalf("Sniff = %+v", res)
	}
	r, err := http.ReadRequest(br)
	if err != nil {
		t.Fatalf("ReadRequest after Sniff: %v", err)
	}
	if r.Method != "GET" || r.Host != "abs.example" || r.URL.Path != "/x" || r.Header.Get("Accept") != "*/*" {
		t.Fatalf("request after Sniff: %s %s %v", r.Method, r.URL, r.Header)
	}
}

// A silent client (server speaks first) is KindOther after the wait, and
// the deadline is cleared: a later read succeeds although the wait passed.
func TestSniffSilentClient(t *testing.T) {
	for _, tr := range []string{"pipe", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			var c, s net.Conn
			if tr == "pipe" {
				c, s = net.Pipe()
				defer c.Close()
				defer s.Close()
			} else {
				c, s = tcpPair(t)
			}
			const wait = 150 * time.Millisecond
			br := NewReader(s)
			start := time.Now()
			res, err := sniff(br, s, wait, CompleteTimeout)
			el := time.Since(start)
			if err != nil || res.Kind != KindOther || res.Peeked != 0 {
				t.Fatalf("Sniff = %+v, %v", res, err)
			}
			if el < wait || el > wait+2*time.Second {
				t.Fatalf("Sniff returned after %v, want about %v", el, wait)
			}
			// The server speaks, then the client answers, well after the wait.
			go func() {
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				time.Sleep(wait)
				_, _ = c.Write(append([]byte("reply to "), buf[:n]...))
			}()
			if _, err := s.Write([]byte("220 banner")); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len("reply to 220 banner"))
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatalf("read after Sniff (deadline not cleared?): %v", err)
			}
			if string(got) != "reply to 220 banner" {
				t.Fatalf("got %q", got)
			}
		})
	}
}

// A ClientHello split over two TCP writes 50 ms apart is waited for, and
// TLS 1.2 vs 1.3 is told from the hello.
func TestSniffSegmentedHelloTCP(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "seg.example", MaxVersion: tls.VersionTLS12})
	c, s := tcpPair(t)
	go func() {
		_, _ = c.Write(raw[:7])
		time.Sleep(50 * time.Millisecond)
		_, _ = c.Write(raw[7:])
	}()
	br := NewReader(s)
	res, err := sniff(br, s, 30*time.Millisecond, CompleteTimeout)
	if err != nil || res.Kind != KindTLS || res.Err != nil || res.Hello.ServerName != "seg.example" || res.Hello.MaxVersion() != tls.VersionTLS12 {
		t.Fatalf("Sniff = %+v, %v", res, err)
	}
	got := make([]byte, len(raw))
	if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("bytes after Sniff differ: %v", err)
	}
}

// Anything else is decided at once, without waiting out the deadline.
func TestSniffOtherIsImmediate(t *testing.T) {
	for _, in := range []string{"SSH-2.0-OpenSSH_9.6\r\n", "\x00\x00\x00\x01", "get / HTTP/1.1\r\n", "\r\nSSH-2.0-x\r\n", "OPTIONS rtsp://c/s RTSP/1.0\r\n"} {
		c, s := net.Pipe()
		go func() { _, _ = c.Write([]byte(in)) }()
		br := NewReader(s)
		start := time.Now()
		res, err := sniff(br, s, 5*time.Second, CompleteTimeout)
		if err != nil || res.Kind != KindOther || res.Err != nil {
			t.Errorf("%q: Sniff = %+v, %v", in, res, err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("%q: took %v", in, el)
		}
		got := make([]byte, len(in))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != in {
			t.Errorf("%q: read back %q, %v", in, got, err)
		}
		c.Close()
		s.Close()
	}
}

func TestSniffH2C(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { _, _ = c.Write([]byte(H2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00")) }()
	res, err := sniff(NewReader(s), s, time.Second, CompleteTimeout)
	if err != nil || res.Kind != KindHTTP2Cleartext || res.HTTP.Method != "PRI" || res.Kind.String() != "h2c" {
		t.Fatalf("Sniff = %+v, %v", res, err)
	}
}

// A client that closes (EOF) mid-message is classified on what it sent.
func TestSniffEOF(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "eof.example"})
	for _, tc := range []struct {
		in      string
		kind    Kind
		wantErr bool
	}{
		{"", KindOther, false},
		{"GET / HTTP/1.1\r\n", KindHTTP, true},
		{"GET / HTTP/1.0\r\n\r\n", KindHTTP, false},
		{"GE", KindOther, false},
		{"PRI * HTTP/2.0\r\n", KindHTTP2Cleartext, true},
		{string(raw[:100]), KindTLS, true},
		{"\x16\x03", KindOther, false},
		{"\x16\x03\x01", KindTLS, true},
	} {
		// A TCP half-close: net.Pipe cannot, and refuses deadlines once
		// its peer has closed.
		c, s := tcpPair(t)
		_, _ = c.Write([]byte(tc.in))
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		br := NewReader(s)
		res, err := sniff(br, s, time.Second, CompleteTimeout)
		if err != nil || res.Kind != tc.kind || (res.Err != nil) != tc.wantErr {
			t.Errorf("%.20q: Sniff = %+v, %v; want kind %v, Err %v", tc.in, res, err, tc.kind, tc.wantErr)
		}
		if tc.wantErr && !errors.Is(res.Err, io.EOF) {
			t.Errorf("%.20q: Err = %v, want io.EOF inside", tc.in, res.Err)
		}
		if got, err := io.ReadAll(br); err != nil || string(got) != tc.in {
			t.Errorf("%.20q: read back %.20q, %v", tc.in, got, err)
		}
	}
}

// A client that stalls mid-hello is classified when the completion timeout
// expires, with the timeout in Err.
func TestSniffStalledHello(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "stall.example"})
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { _, _ = c.Write(raw[:50]) }()
	br := NewReader(s)
	start := time.Now()
	res, err := sniff(br, s, 50*time.Millisecond, 200*time.Millisecond)
	if err != nil || res.Kind != KindTLS || !errors.Is(res.Err, os.ErrDeadlineExceeded) || res.Peeked != 50 {
		t.Fatalf("sniff = %+v, %v", res, err)
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > 3*time.Second {
		t.Fatalf("took %v, want about 200ms", el)
	}
}

// With a long wait for the first byte, the rest still has only the
// completion timeout: a client that sends one byte and stalls is
// classified that long after its byte, not after the wait again.
func TestSniffWaitBoundsFirstByteOnly(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { _, _ = c.Write([]byte{0x16}) }()
	start := time.Now()
	res, err := sniff(NewReader(s), s, 5*time.Second, 200*time.Millisecond)
	if err != nil || res.Kind != KindOther || res.Peeked != 1 {
		t.Fatalf("sniff = %+v, %v", res, err)
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Fatalf("took %v, want about 200ms (the completion timeout), not the 5s wait", el)
	}
}

// A ClientHello larger than the buffer (20 KB ALPN over two records) is
// KindTLS with ErrTooLarge with the standard reader, and parsed whole with a
// larger one.
func TestSniffHelloLargerThanBuffer(t *testing.T) {
	var big *tls.Config
	for _, hc := range helloCases() {
		if hc.name == "multi-record" {
			big = hc.cfg
		}
	}
	raw := captureHello(t, big)
	for _, size := range []int{BufferSize, 2 * len(raw)} {
		c, s := net.Pipe()
		go func() { _, _ = c.Write(raw) }()
		br := bufio.NewReaderSize(s, size)
		res, err := sniff(br, s, time.Second, CompleteTimeout)
		if err != nil || res.Kind != KindTLS {
			t.Fatalf("size %d: Sniff = %+v, %v", size, res.Kind, err)
		}
		if size == BufferSize && !errors.Is(res.Err, ErrTooLarge) {
			t.Errorf("size %d: Err = %v, want ErrTooLarge", size, res.Err)
		}
		if size > BufferSize && (res.Err != nil || res.Hello.ServerName != "big.example" || len(res.Hello.ALPN) != 80) {
			t.Errorf("size %d: Err = %v, SNI %q, %d ALPN", size, res.Err, res.Hello.ServerName, len(res.Hello.ALPN))
		}
		got := make([]byte, len(raw))
		if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, raw) {
			t.Errorf("size %d: bytes after Sniff differ: %v", size, err)
		}
		c.Close()
		s.Close()
	}
}

// Bytes the caller already buffered are used without waiting.
func TestSniffAlreadyBuffered(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { _, _ = c.Write([]byte("HEAD / HTTP/1.1\r\nHost: b.example\r\n\r\n")) }()
	br := NewReader(s)
	if _, err := br.Peek(1); err != nil {
		t.Fatal(err)
	}
	res, err := sniff(br, s, time.Second, CompleteTimeout)
	if err != nil || res.Kind != KindHTTP || res.HTTP.Host != "b.example" {
		t.Fatalf("Sniff = %+v, %v", res, err)
	}
}

// A reset is an error, not a classification.
func TestSniffResetIsError(t *testing.T) {
	c, s := tcpPair(t)
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\n"))
	time.Sleep(20 * time.Millisecond)
	c.Close() // RST because of linger 0
	res, err := sniff(NewReader(s), s, time.Second, CompleteTimeout)
	if err == nil {
		// Some kernels deliver the data and then EOF; both are fine as long
		// as what arrived is classified.
		if res.Kind != KindHTTP {
			t.Fatalf("Sniff = %+v", res)
		}
		return
	}
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a reset", err)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindOther: "other", KindTLS: "tls", KindHTTP: "http", KindHTTP2Cleartext: "h2c", Kind(99): "other"} {
		if k.String() != want {
			t.Errorf("%d: %q", k, k.String())
		}
	}
}

// With no wait, a client silent for longer than any short timeout is still
// classified by its first bytes when they come: a pause must not turn a
// ClientHello into opaque bytes the domain rules never see.
func TestSniffNoWaitLimit(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "late.example"})
	c, s := tcpPair(t)
	go func() {
		time.Sleep(400 * time.Millisecond)
		_, _ = c.Write(raw)
	}()
	res, err := Sniff(NewReader(s), s)
	if err != nil || res.Kind != KindTLS || res.Err != nil || res.Hello.ServerName != "late.example" {
		t.Fatalf("Sniff = %+v, %v", res, err)
	}
}

// A client that stalls after the first bytes of a ClientHello or of a
// request is classified as what those bytes surely begin, with a timeout
// in Err; too few bytes to be sure are "other".
func TestSniffStalledPrefixFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind Kind
	}{
		{"\x16", KindOther},
		{"\x16\x03\x01\x02", KindTLS},
		{"G", KindOther},
		{"CONNE", KindOther},
		{"GET /", KindHTTP},
		{"PRI * HTTP/2", KindHTTP2Cleartext},
		{"SSH-2", KindOther},
	} {
		c, s := tcpPair(t)
		_, _ = c.Write([]byte(tc.in))
		res, err := sniff(NewReader(s), s, 20*time.Millisecond, 50*time.Millisecond)
		if err != nil || res.Kind != tc.kind {
			t.Errorf("%q: sniff = %+v, %v; want kind %v", tc.in, res, err, tc.kind)
		}
		if tc.kind != KindOther && !errors.Is(res.Err, os.ErrDeadlineExceeded) {
			t.Errorf("%q: Err = %v, want a timeout inside", tc.in, res.Err)
		}
	}
}

// BenchmarkClassify is the per-connection classification of a whole
// ClientHello or request head, as Sniff runs it once the bytes are in.
func BenchmarkClassify(b *testing.B) {
	hello := captureHello(b, &tls.Config{ServerName: "bench.example", NextProtos: []string{"h2", "http/1.1"}})
	for _, bc := range []struct {
		name string
		in   []byte
	}{
		{"tls", hello},
		{"http", []byte("GET /index.html HTTP/1.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\nHost: www.example.com\r\n\r\n")},
		{"other", []byte("SSH-2.0-OpenSSH_9.6\r\n")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, need := classify(bc.in, nil); need != 0 {
					b.Fatal(need)
				}
			}
		})
	}
}
