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
	"time"
)

// startBodyOrigin returns the appliance's end of a pipeOrigin that reads
// whole requests as net/http does and keeps each as "METHOD path body",
// over TLS with cert when it is not nil.
func startBodyOrigin(t *testing.T, cert *tls.Certificate) (net.Conn, *pipeOrigin) {
	t.Helper()
	return startPipeOrigin(t, cert, keepBodies)
}

func keepBodies(o *pipeOrigin, c net.Conn, br *bufio.Reader) {
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		o.keep(fmt.Sprintf("%s %s %q", req.Method, req.URL.Path, body))
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// pipelineAfterBareLFTrailer connects an HTTP/1 client, bumped or
// cleartext, through the appliance to a startBodyOrigin, and sends it a
// chunked POST /one of "abc" whose trailer net/http ends at a bare LF,
// then rest, pipelined.
func pipelineAfterBareLFTrailer(t *testing.T, r *rig, bumped bool, rest string) (net.Conn, *served, *pipeOrigin) {
	t.Helper()
	c, sv, o := connectHTTP1To(t, r, bumped, startBodyOrigin)
	c.SetDeadline(time.Now().Add(waitLimit))
	go io.WriteString(c, "POST /one HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n"+rest)
	return c, sv, o
}

// TestBareLFTrailerKeepsNextBody: a chunked body whose trailer net/http
// ends at a bare LF (the bounds read it up to the CRLF CRLF, which is the
// next request's head end), then a request whose body is CR and LF bytes,
// then a third: each reaches the destination as the client sent it.
func TestBareLFTrailerKeepsNextBody(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{true: "bumped", false: "cleartext"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, o := pipelineAfterBareLFTrailer(t, r, bumped,
				"POST /two HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4\r\n\r\n\r\n\r\n"+
					"GET /three HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			br := bufio.NewReader(c)
			for i := range 3 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Errorf("response %d: %v", i+1, err)
					break
				}
				io.Copy(io.Discard, resp.Body)
			}
			c.Close()
			sv.waitDoneOnce(t)
			for _, rec := range ofKind(r.records(), "http") {
				t.Logf("record: %s %s %s %d %s %q", rec.Action, rec.Method, rec.Path, rec.Status, rec.Result, rec.Error)
			}
			want := []string{`POST /one "abc"`, `POST /two "\r\n\r\n"`, `GET /three ""`}
			if got := o.got(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("the destination got %q, want %q", got, want)
			}
		})
	}
}

// TestBareLFTrailerThenUnreadableHeadRecorded: after a chunked body whose
// trailer net/http ends at a bare LF and a request read from the bytes the
// bounds took for that trailer, a head that cannot be read still gets the
// http deny record records.md promises, "no request could be read", and
// reaches nothing. Bounds given up at the bare LF (boundLoose) handed
// everything to goproxy's buffers, where no read armed the head's deadline
// that marks a head begun, and the record was lost; read to the CRLF CRLF
// and marked lost, they keep it as they did before the drop came.
func TestBareLFTrailerThenUnreadableHeadRecorded(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{true: "bumped", false: "cleartext"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, o := pipelineAfterBareLFTrailer(t, r, bumped,
				"GET /two HTTP/1.1\r\nHost: www.example.test\r\n\r\n"+
					"GET /a%zz HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			io.Copy(io.Discard, c) // two answers, then the close
			c.Close()
			sv.waitDoneOnce(t)
			if denied := httpDenials(r); len(denied) != 1 || !strings.HasPrefix(denied[0], "denied: no request could be read") {
				t.Errorf("deny records %q, want one: denied, no request could be read", denied)
			}
			if got, want := o.got(), []string{`POST /one "abc"`, `GET /two ""`}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("the destination got %q, want %q", got, want)
			}
		})
	}
}
