package intercept

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/certs"
)

// TestH2FirstResponseByteAfterWholeHeaderBlock is a tripwire on net/http.
// headDeadline.start arms no head timer for an HTTP/2 response
// (headdeadline.go) because net/http's HTTP/2 transport calls httptrace's
// GotFirstResponseByte only once a response's header block is whole
// (h2_bundle.go, processHeaders), so there is no rest of the head left to
// time. A TODO there says the call may move to the first frame's header.
// Should a Go release do that, an origin that sends HEADERS without
// END_HEADERS and trickles the CONTINUATIONs would leave the block untimed
// by the appliance (bounded only by net/http's PING health check), and
// start must arm the timer for HTTP/2 again: this test then fails. The
// origin sends the first half of a header block, pauses, then the rest in
// a CONTINUATION with END_HEADERS; the hook must come once, after that.
func TestH2FirstResponseByteAfterWholeHeaderBlock(t *testing.T) {
	ca, err := certs.Generate("first byte test CA")
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewMinter(ca, certs.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := m.LeafFor([]string{"up.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	endSent := make(chan struct{}) // closed as the CONTINUATION with END_HEADERS goes
	originDone := make(chan struct{})
	go func() {
		defer close(originDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"h2"}})
		splitHeaderBlockOrigin(tc, endSent)
	}()

	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	// As the session's http.Transport reaches an HTTP/2 origin (transport.go).
	tr := &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: "up.example"},
		HTTP2:             &http.HTTP2Config{},
	}
	defer tr.CloseIdleConnections()
	var calls, early atomic.Int32
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() {
		calls.Add(1)
		select {
		case <-endSent:
		default:
			early.Add(1)
		}
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "GET", "https://"+ln.Addr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %s %d, want HTTP/2 200 from the raw origin", resp.Proto, resp.StatusCode)
	}
	if n := early.Load(); n != 0 {
		t.Errorf("GotFirstResponseByte came before the header block's END_HEADERS (%d times): net/http reports a response's first byte earlier now, and headDeadline.start must time the rest of an HTTP/2 head", n)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("GotFirstResponseByte came %d times, want 1", n)
	}
	tr.CloseIdleConnections()
	select {
	case <-originDone:
	case <-time.After(5 * time.Second):
		t.Error("the origin did not end")
	}
}

// splitHeaderBlockOrigin serves one HTTP/2 request on tc with a raw
// framer: its answer's header block goes in two pieces, a HEADERS frame
// without END_HEADERS and, after firstByteGap, a CONTINUATION ending it
// (and the stream); endSent is closed just before that CONTINUATION.
func splitHeaderBlockOrigin(tc *tls.Conn, endSent chan struct{}) {
	sayEnd := sync.OnceFunc(func() { close(endSent) })
	defer sayEnd() // on every path
	if err := tc.Handshake(); err != nil {
		return
	}
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, preface); err != nil {
		return
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	var stream uint32
	for stream == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() && fr.WriteSettingsAck() != nil {
				return
			}
		case *http2.MetaHeadersFrame:
			stream = f.StreamID
		}
	}
	readDone := make(chan struct{})
	go func() { io.Copy(io.Discard, tc); close(readDone) }() // the client's acks and window updates
	defer func() { tc.Close(); <-readDone }()
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	enc.WriteField(hpack.HeaderField{Name: "content-length", Value: "0"})
	enc.WriteField(hpack.HeaderField{Name: "x-padding", Value: "a header field for the CONTINUATION's half"})
	block := b.Bytes()
	half := len(block) / 2
	if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block[:half], EndStream: true}) != nil {
		return
	}
	// Long enough for a hook moved to the first frame to come before the
	// block's end: the client reads that frame at once.
	time.Sleep(firstByteGap)
	sayEnd()
	if fr.WriteContinuation(stream, true, block[half:]) != nil {
		return
	}
	// Until the client closes the connection (the test's
	// CloseIdleConnections) or the deadline.
	<-readDone
}

// firstByteGap is the pause between a header block's two pieces.
const firstByteGap = 100 * time.Millisecond
