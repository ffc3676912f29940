package intercept_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// pipeOrigin is a destination on a pipe that keeps a string for each
// request it reads and answers each 200 "ok".
type pipeOrigin struct {
	mu   sync.Mutex
	kept []string
}

func (o *pipeOrigin) keep(s string) {
	o.mu.Lock()
	o.kept = append(o.kept, s)
	o.mu.Unlock()
}

// got returns what the origin has kept.
func (o *pipeOrigin) got() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.kept...)
}

// startPipeOrigin returns the appliance's end of a pipe whose other end
// serve reads as a pipeOrigin, over TLS with cert (offering http/1.1)
// when it is not nil; both ends close when the test ends.
func startPipeOrigin(t *testing.T, cert *tls.Certificate, serve func(o *pipeOrigin, c net.Conn, br *bufio.Reader)) (net.Conn, *pipeOrigin) {
	t.Helper()
	proxyEnd, serverEnd := net.Pipe()
	t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	o := &pipeOrigin{}
	go func() {
		var c net.Conn = serverEnd
		if cert != nil {
			tc := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}})
			if err := tc.Handshake(); err != nil {
				return
			}
			c = tc
		}
		serve(o, c, bufio.NewReader(c))
	}()
	return proxyEnd, o
}

// startHeadOrigin returns the appliance's end of a pipeOrigin that keeps
// each request head as it arrived (request line and fields), over TLS
// with cert when it is not nil.
func startHeadOrigin(t *testing.T, cert *tls.Certificate) (net.Conn, *pipeOrigin) {
	t.Helper()
	return startPipeOrigin(t, cert, keepHeads)
}

func keepHeads(o *pipeOrigin, c net.Conn, br *bufio.Reader) {
	for {
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		o.keep(head.String())
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// connectHTTP1 connects an HTTP/1 client through the appliance to a
// pipeOrigin that keeps request heads: bumped (TLS for www.example.test)
// or cleartext.
func connectHTTP1(t *testing.T, r *rig, bumped bool) (net.Conn, *served, *pipeOrigin) {
	t.Helper()
	return connectHTTP1To(t, r, bumped, startHeadOrigin)
}

// connectHTTP1To connects an HTTP/1 client through the appliance to the
// pipeOrigin start returns: bumped (TLS for www.example.test, start given
// its leaf) or cleartext (start given nil).
func connectHTTP1To(t *testing.T, r *rig, bumped bool, start func(*testing.T, *tls.Certificate) (net.Conn, *pipeOrigin)) (net.Conn, *served, *pipeOrigin) {
	t.Helper()
	if bumped {
		upEnd, o := start(t, r.upLeaf("www.example.test"))
		raw, sv := r.connect(upEnd, tlsDest)
		return bumpClient(t, r, raw, "www.example.test", "http/1.1"), sv, o
	}
	upEnd, o := start(t, nil)
	c, sv := r.connect(upEnd, httpDest)
	return c, sv, o
}

// httpDenials returns "result: error" of each http deny record r wrote.
func httpDenials(r *rig) []string {
	var denied []string
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Action == "deny" {
			denied = append(denied, rec.Result+": "+rec.Error)
		}
	}
	return denied
}

// TestUnreadableHeadRecorded: an HTTP/1 request head net/http cannot
// read (a bad escape, an unclosed bracket in the target), as a bumped
// connection's first request or as any connection's second, gets the
// record docs/records.md promises for plain HTTP: an http deny, "no
// request could be read", and nothing reaches the destination. Before,
// only a cleartext connection's first head got it; the others left no
// trace (a bumped connection's tls record said ok, with no error).
func TestUnreadableHeadRecorded(t *testing.T) {
	for _, mode := range []string{"bumped first", "bumped second", "cleartext second"} {
		for _, target := range []string{"/a%zz", "http://[::1/"} {
			t.Run(mode+" "+target, func(t *testing.T) {
				r := newRig(t, testPolicy)
				c, sv, o := connectHTTP1(t, r, strings.HasPrefix(mode, "bumped"))
				c.SetDeadline(time.Now().Add(waitLimit))
				br := bufio.NewReader(c)
				want := 0
				if strings.HasSuffix(mode, "second") {
					io.WriteString(c, "GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					want = 1
				}
				io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
				io.Copy(io.Discard, br) // until the appliance closes
				c.Close()
				sv.waitDoneOnce(t)
				var denied []string
				for _, rec := range ofKind(r.records(), "http") {
					if rec.Action == "deny" {
						denied = append(denied, rec.Result+": "+rec.Error)
						if rec.Path != "" || rec.Method != "" || rec.BytesOut != 0 {
							t.Errorf("the deny record names method %q path %q, bytes_out %d: want none (no request was read)", rec.Method, rec.Path, rec.BytesOut)
						}
					}
				}
				if len(denied) != 1 || !strings.HasPrefix(denied[0], "denied: no request could be read") {
					t.Errorf("deny records %q, want one: denied, no request could be read", denied)
				}
				if got := o.got(); len(got) != want {
					t.Errorf("the destination got %d heads, want %d: %q", len(got), want, got)
				}
			})
		}
	}
}

// TestClosingResponseLeavesNextHeadUnrecorded: bytes a client pipelined
// behind a request whose response closes the connection are never read as
// a request, and no record says one could not be read.
func TestClosingResponseLeavesNextHeadUnrecorded(t *testing.T) {
	for _, bumped := range []bool{true, false} {
		r := newRig(t, testPolicy)
		c, sv, _ := connectHTTP1(t, r, bumped)
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "GET /first HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\nGET /a%zz HTTP/1.1\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		c.Close()
		sv.waitDoneOnce(t)
		for _, rec := range ofKind(r.records(), "http") {
			if rec.Action == "deny" {
				t.Errorf("bumped %v: a deny record for bytes never read as a request: %s %q", bumped, rec.Result, rec.Error)
			}
		}
	}
}

// TestEmptyLinesBeforeHeadIgnored: empty lines a client sends after a
// request (some send a CRLF after a POST body) are skipped before its next
// head, as RFC 9112 §2.2 asks of a server and net/http's does (up to four
// CR or LF bytes): the next request is served, and no record says a
// request could not be read. Before, goproxy read the empty line as a
// malformed request line: the connection closed and an http deny record,
// counted as a denial, said "no request could be read". More empty lines
// than that are still a head that cannot be read.
func TestEmptyLinesBeforeHeadIgnored(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		for _, tc := range []struct {
			name, withBody, later string
			deny                  bool
		}{
			{name: "with the body", withBody: "\r\n"},
			{name: "two with the body", withBody: "\r\n\r\n"},
			{name: "later", later: "\r\n"},
			{name: "split", withBody: "\r", later: "\n"},
			{name: "three", withBody: "\r\n\r\n\r\n", deny: true},
		} {
			t.Run(map[bool]string{true: "bumped ", false: "cleartext "}[bumped]+tc.name, func(t *testing.T) {
				r := newRig(t, testPolicy)
				c, sv, o := connectHTTP1(t, r, bumped)
				c.SetDeadline(time.Now().Add(waitLimit))
				br := bufio.NewReader(c)
				io.WriteString(c, "POST /first HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4\r\n\r\nabcd"+tc.withBody)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				if tc.later != "" {
					io.WriteString(c, tc.later)
				}
				if tc.deny {
					io.Copy(io.Discard, br) // until the appliance closes
				} else {
					io.WriteString(c, "GET /second HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
					if resp, err = http.ReadResponse(br, nil); err != nil {
						t.Errorf("the second request: %v", err)
					} else if resp.StatusCode != http.StatusOK {
						t.Errorf("the second request: status %d", resp.StatusCode)
					}
				}
				c.Close()
				sv.waitDoneOnce(t)
				denied := httpDenials(r)
				want, heads := 0, 2
				if tc.deny {
					want, heads = 1, 1
				}
				if len(denied) != want {
					t.Errorf("deny records %q, want %d", denied, want)
				}
				if got := o.got(); len(got) != heads {
					t.Errorf("the destination got %d heads, want %d: %q", len(got), heads, got)
				}
			})
		}
	}
}
