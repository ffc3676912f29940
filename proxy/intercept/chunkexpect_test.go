package intercept_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestChunkExpectNoContinue: a client sends a chunked POST with "Expect:
// 100-continue" and waits, as RFC 9110 §10.1.1 lets it, for the 100
// before its body. The origin answers before it has read the request
// head (net.Pipe: the appliance's write of the head waits until the
// origin reads it, 150 ms after its answer's head; the answer's body
// ends 300 ms after, with the writer reading the client's body), so
// goproxy sends no 100 and
// answers with "Connection: close"; the transport's writer then reads
// the body the client was never asked to send. The appliance must close
// the connection after that answer, and record the request ok. Before,
// the body's Close waited behind the writer's read for the client (a
// lock held across that read): the connection stayed open until the
// client closed it, and the record blamed the client ("the client went
// away before its request body ended"). Cleartext and bumped.
func TestChunkExpectNoContinue(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		r := newRig(t, testPolicy)
		upA, upB := net.Pipe()
		t.Cleanup(func() { upA.Close(); upB.Close() })
		var origin net.Conn = upB
		if bumped {
			origin = tls.Server(upB, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
		}
		go func() {
			if tc, ok := origin.(*tls.Conn); ok && tc.Handshake() != nil {
				return
			}
			io.WriteString(origin, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
			go func() { time.Sleep(150 * time.Millisecond); io.Copy(io.Discard, origin) }()
			for range 5 { // the answer ends once the writer reads the body
				time.Sleep(60 * time.Millisecond)
				if _, err := io.WriteString(origin, "x"); err != nil {
					return
				}
			}
		}()
		var c net.Conn
		action := "allow"
		if bumped {
			c, _ = bumpedHTTP1(t, r, upA)
			action = "bump"
		} else {
			c, _ = r.connectTCP(upA, httpDest)
		}
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(b) != "xxxxx" || err != nil || !resp.Close {
			t.Fatalf("answer %d %q (%v), close %v: want the origin's 200 with Connection: close", resp.StatusCode, b, err, resp.Close)
		}
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("after the answer: %v after %v, want the connection closed (EOF)", err, time.Since(start).Round(time.Millisecond))
		}
		c.Close()
		recs := ofKind(r.records(), "http")
		if len(recs) != 1 {
			t.Fatalf("%d http records, want 1: %+v", len(recs), recs)
		}
		if rec := recs[0]; rec.Path != "/a" || rec.Action != action || rec.Status != http.StatusOK || rec.Result != "ok" || rec.Error != "" {
			t.Errorf("record %s %s status %d result %s error %q, want %s 200 ok", rec.Path, rec.Action, rec.Status, rec.Result, rec.Error, action)
		}
	})
}
