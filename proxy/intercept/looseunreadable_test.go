package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestLostBoundsThenUnreadableHeadRecorded: a head that cannot be read,
// whole in the bytes the bounds took for a chunked trailer net/http ended
// at a bare LF (up to the CRLF CRLF that ends the head), gets the http
// deny record records.md promises, "no request could be read", and
// reaches nothing. Those bytes sat in goproxy's reader with none kept
// back: no read after the response brought a byte of the head, nothing
// armed its deadline that marks a head begun, and goproxy's refusal of it
// closed the connection with no record.
func TestLostBoundsThenUnreadableHeadRecorded(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{true: "bumped", false: "cleartext"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, o := pipelineAfterBareLFTrailer(t, r, bumped, "GET /a%zz HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			io.Copy(io.Discard, c) // one answer, then the close
			c.Close()
			sv.waitDoneOnce(t)
			if denied := httpDenials(r); len(denied) != 1 || !strings.HasPrefix(denied[0], "denied: no request could be read") {
				t.Errorf("deny records %q, want one: denied, no request could be read", denied)
			}
			if got, want := o.got(), []string{`POST /one "abc"`}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("the destination got %q, want %q", got, want)
			}
		})
	}
}

// looseThenPOST pipelines, behind a chunked POST /one whose trailer
// net/http ends at a bare LF, a POST /two of "wxyz" (read from the bytes
// the bounds took for that trailer: the boundaries are given up at its
// head, boundLoose) and then rest, in one write.
func looseThenPOST(t *testing.T, r *rig, bumped bool, rest string) (net.Conn, *served, *pipeOrigin) {
	t.Helper()
	return pipelineAfterBareLFTrailer(t, r, bumped,
		"POST /two HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4\r\n\r\nwxyz"+rest)
}

// TestLooseBoundsThenUnreadableHeadRecorded: once the HTTP/1 request
// boundaries are given up for a connection (boundLoose), a head that
// cannot be read, pipelined behind a body, still gets the http deny
// record records.md promises, "no request could be read", and reaches
// nothing. Loose bounds hand goproxy the head with the body before it,
// in a read while no head is awaited: no read after the response armed
// the head's deadline that marks a head begun, and the connection closed
// with no record.
func TestLooseBoundsThenUnreadableHeadRecorded(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{true: "bumped", false: "cleartext"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, o := looseThenPOST(t, r, bumped, "GET /a%zz HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			io.Copy(io.Discard, c) // two answers, then the close
			c.Close()
			sv.waitDoneOnce(t)
			if denied := httpDenials(r); len(denied) != 1 || !strings.HasPrefix(denied[0], "denied: no request could be read") {
				t.Errorf("deny records %q, want one: denied, no request could be read", denied)
			}
			if got, want := o.got(), []string{`POST /one "abc"`, `POST /two "wxyz"`}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("the destination got %q, want %q", got, want)
			}
		})
	}
}

// TestLooseBoundsCleanCloseNoDeny: with the boundaries given up, a client
// that closes its connection after its last answer sent no head: no deny
// record, only its two requests'.
func TestLooseBoundsCleanCloseNoDeny(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{true: "bumped", false: "cleartext"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, _ := looseThenPOST(t, r, bumped, "")
			br := bufio.NewReader(c)
			for i := range 2 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i+1, err)
				}
				io.Copy(io.Discard, resp.Body)
			}
			c.Close()
			sv.waitDoneOnce(t)
			if denied := httpDenials(r); len(denied) != 0 {
				t.Errorf("deny records %q, want none", denied)
			}
			if n := len(ofKind(r.records(), "http")); n != 2 {
				t.Errorf("%d http records, want 2", n)
			}
		})
	}
}

// TestLooseBoundsFailedAnswerNoDeny: with the boundaries given up, an
// answer whose body the destination cuts short ends goproxy's loop on
// its failed write, with the client's connection open and a head behind
// it unread: that head was never read, so no deny record says it could
// not be.
func TestLooseBoundsFailedAnswerNoDeny(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{true: "bumped", false: "cleartext"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, _ := connectHTTP1To(t, r, bumped, startCutOrigin)
			go io.WriteString(c, "POST /one HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n"+
				"POST /two HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4\r\n\r\nwxyz"+
				"GET /three HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			io.Copy(io.Discard, c) // an answer, part of one, then the close
			c.Close()
			sv.waitDoneOnce(t)
			if denied := httpDenials(r); len(denied) != 0 {
				t.Errorf("deny records %q, want none", denied)
			}
		})
	}
}

// startCutOrigin is startBodyOrigin's destination but for POST /two, whose
// answer it cuts short: 2 bytes of a Content-Length of 10, then its close.
func startCutOrigin(t *testing.T, cert *tls.Certificate) (net.Conn, *pipeOrigin) {
	t.Helper()
	return startPipeOrigin(t, cert, func(o *pipeOrigin, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			o.keep(req.Method + " " + req.URL.Path)
			if req.URL.Path == "/two" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
				c.Close()
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
}
