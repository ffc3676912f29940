package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"golang.org/x/net/http2"
)

// TestReloadNameCheckRefusedRedialRecord: a request decided before a
// reload, waiting for its upstream connection's dial, is refused when the
// reload makes the connection's name fail its destination check (the
// bump's upstream certificate did not verify, so nothing proved the name).
// Its record is what the verdict that refused the dial makes it, as for a
// request refused before its dial: for the connection's own name, that
// check is its own (dest_check mismatch, the check's error); for another
// Host, the check's error after the note. It used to say neither, and took
// its rule and policy from the name decided again (review r8s27). A Host
// of the connection's name with a trailing dot is that name: it was taken
// for another Host's, its record dest_check ok next to "fails the
// destination check" (review r4s28 F1).
func TestReloadNameCheckRefusedRedialRecord(t *testing.T) {
	const checkErr = "www.example.test resolves to 203.0.113.9"
	for _, tc := range []struct {
		host      string
		destCheck string
	}{
		{"www.example.test", "mismatch"},
		// The connection's own name, as the policy and the check take
		// it: not another Host's (review r4s28 F1).
		{"www.example.test.", "mismatch"},
		{"api.example.test", ""},
	} {
		t.Run(tc.host, func(t *testing.T) {
			hd := newHeldDial()
			r, holder := wwwCheckFailsRig(t, func(c *intercept.Config) { c.Dial = hd.dial })
			// Not verified (the rule accepts it): nothing proves the name.
			upEnd, up := r.startUpstreamTCP(r.strangerLeaf("www.example.test"), "http/1.1")
			up.drop.Store(true) // the kept connection ends after its answer
			raw, sv := r.connect(upEnd, tlsDest)
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
			}
			up.waitClosed(t)
			io.WriteString(hc.c, "GET /waiting HTTP/1.1\r\nHost: "+tc.host+"\r\n\r\n")
			hd.await(t, r)
			after := reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
			originEnd := hd.complete(t)
			resp, body := hc.read("the request waiting for its dial")
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("the request waiting for its dial: %d %q, want 403", resp.StatusCode, body)
			}
			wantNothingSent(t, originEnd, "want none")
			raw.Close()
			sv.waitDoneOnce(t)
			recs := ofKind(r.records(), "http")
			if len(recs) != 2 {
				t.Fatalf("%d http records, want 2", len(recs))
			}
			rec := recs[1]
			if rec.Path != "/waiting" || rec.Action != "deny" || rec.Rule != "legacy" || rec.Policy != after.ID() ||
				rec.Result != "denied" || rec.Status != http.StatusForbidden || rec.DestCheck != tc.destCheck || !strings.Contains(rec.Error, checkErr) {
				t.Errorf("record of the request waiting for its dial: action %s rule %q policy %q status %d result %s dest_check %q error %q; want denied by legacy under %q, dest_check %q, the check's error",
					rec.Action, rec.Rule, rec.Policy, rec.Status, rec.Result, rec.DestCheck, rec.Error, after.ID(), tc.destCheck)
			}
			if tc.destCheck == "" && !strings.Contains(rec.Error, `not dialled again: the connection's name (SNI "www.example.test") is no longer allowed`) {
				t.Errorf("record of the request for another Host: error %q, want the note before the check's error", rec.Error)
			}
		})
	}
}

// TestReloadNameCheckRefusedRedialH2GoAway is
// TestReloadNameCheckRefusedRedialRecord over HTTP/2: the request waiting
// for its upstream's redial, refused for the connection's name's failed
// check, has the record of the verdict that refused its dial, and the
// connection is sent a GOAWAY, as one refused before its dial is: the
// check is not made again on it, while the client's next connection is
// checked afresh (review r8s27 F1). It got none, and only the next
// request's refusal sent one (review r4s28 F2).
func TestReloadNameCheckRefusedRedialH2GoAway(t *testing.T) {
	const checkErr = "www.example.test resolves to 203.0.113.9"
	for _, tc := range []struct{ host, destCheck string }{
		{"www.example.test", "mismatch"},
		{"api.example.test", ""},
	} {
		t.Run(tc.host, func(t *testing.T) {
			hd := newHeldDial()
			r, holder := wwwCheckFailsRig(t, func(c *intercept.Config) { c.Dial = hd.dial })
			h := func(w http.ResponseWriter, req *http.Request) { io.WriteString(w, "hello") }
			upEnd, originEnd := signalClosePair(t)
			first := h2OriginWith(t, r.strangerLeaf("www.example.test"), originEnd, h)
			c, sv := r.connect(upEnd, tlsDest)
			cc, err := (&http2.Transport{}).NewClientConn(bumpClient(t, r, c, "www.example.test", "h2"))
			if err != nil {
				t.Fatal(err)
			}
			if resp, err := h2GetHost(cc, tc.host, "/before"); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("before the reload: %v %v", resp, err)
			}
			endFirstH2(t, first, upEnd)
			done := goH2GetHost(cc, tc.host, "/waiting")
			hd.await(t, r)
			after := reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
			originEnd2 := hd.complete(t)
			got := <-done
			if got.err != nil || got.resp.StatusCode != http.StatusForbidden {
				t.Fatalf("the request waiting for its dial: %v %v, want 403", got.resp, got.err)
			}
			// The GOAWAY follows the 403's head; not the connection's end
			// for idleness, seconds later.
			awaitGoAway(t, cc, "no GOAWAY within 1 s of the 403 that refused the redial: %+v")
			wantNothingSent(t, originEnd2, "want none")
			cc.Close()
			sv.waitDoneOnce(t)
			var found bool
			for _, rec := range ofKind(r.records(), "http") {
				if rec.Path != "/waiting" {
					continue
				}
				found = true
				if rec.Action != "deny" || rec.Rule != "legacy" || rec.Policy != after.ID() || rec.DestCheck != tc.destCheck || !strings.Contains(rec.Error, checkErr) {
					t.Errorf("/waiting record: action %s rule %q policy %q dest_check %q error %q; want denied by legacy under %q, dest_check %q, the check's error",
						rec.Action, rec.Rule, rec.Policy, rec.DestCheck, rec.Error, after.ID(), tc.destCheck)
				}
			}
			if !found {
				t.Fatalf("no record of /waiting: %+v", r.records())
			}
		})
	}
}

// heldDial is a Config.Dial whose dials wait: each is told on dialing,
// and gets the connection sent on redial.
type heldDial struct {
	redial  chan net.Conn
	dialing chan struct{}
}

func newHeldDial() *heldDial {
	return &heldDial{redial: make(chan net.Conn), dialing: make(chan struct{}, 4)}
}

func (d *heldDial) dial(ctx context.Context, _ string) (net.Conn, error) {
	d.dialing <- struct{}{}
	select {
	case c := <-d.redial:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// await waits for a dial: the second request's, decided under the old
// policy.
func (d *heldDial) await(t *testing.T, r *rig) {
	t.Helper()
	select {
	case <-d.dialing: // decided under the old policy, dialling
	case <-time.After(waitLimit):
		t.Fatalf("no dial for the second request: %+v", r.records())
	}
}

// complete gives the waiting dial its connection, and returns the
// destination's end of it.
func (d *heldDial) complete(t *testing.T) net.Conn {
	proxyEnd, originEnd := testnet.TCPPair(t)
	d.redial <- proxyEnd
	return originEnd
}

// wwwCheckFailsRig is a rig of legacyPolicy, destination_check off, whose
// policy a test reloads through the holder, and whose check fails for
// www.example.test; configure as newRig's.
func wwwCheckFailsRig(t *testing.T, configure ...func(*intercept.Config)) (*rig, *policy.Holder) {
	holder := new(policy.Holder)
	dc := &destCheck{bad: map[string]bool{"www.example.test": true}}
	r := newRig(t, fmt.Sprintf(legacyPolicy, "destination_check: off"), append([]func(*intercept.Config){func(c *intercept.Config) {
		c.Policy = holder
		c.DestinationCheck = dc.check
	}}, configure...)...)
	holder.Store(r.pol)
	return r, holder
}

// h2GetHost gets path of host on cc, its body read, within waitLimit.
func h2GetHost(cc *http2.ClientConn, host, path string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+host+path, nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// h2Result is an HTTP/2 request's outcome.
type h2Result struct {
	resp *http.Response
	err  error
}

// goH2GetHost is h2GetHost off the test's goroutine.
func goH2GetHost(cc *http2.ClientConn, host, path string) <-chan h2Result {
	done := make(chan h2Result, 1)
	go func() { resp, err := h2GetHost(cc, host, path); done <- h2Result{resp, err} }()
	return done
}

// awaitGoAway fails the test unless cc is sent a GOAWAY (or closed) within
// 1 s; failed formats cc's state.
func awaitGoAway(t *testing.T, cc *http2.ClientConn, failed string) {
	t.Helper()
	for end := time.Now().Add(time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st := cc.State(); st.Closing || st.Closed {
			break
		}
		if time.Now().After(end) {
			t.Fatalf(failed, cc.State())
		}
	}
}

// tlsH1Origin answers each HTTP/1.1 request over TLS on serverEnd (as
// leaf, a certificate of www.example.test) with "hello", unless take
// answers it, returning true: then it serves no more.
func tlsH1Origin(leaf *tls.Certificate, serverEnd net.Conn, take func(end *tls.Conn, br *bufio.Reader, req *http.Request) bool) {
	serverEnd.SetDeadline(time.Now().Add(2 * waitLimit))
	end := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}})
	br := bufio.NewReader(end)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if take(end, br, req) {
			return
		}
		io.WriteString(end, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	}
}

// connectSlowH1Origin connects a client of r over loopback TCP (tlsDest)
// to a tlsH1Origin with leaf that holds a request for /slow, once it has
// said on arrived that one came, until release is closed.
func connectSlowH1Origin(t *testing.T, r *rig, leaf *tls.Certificate) (raw *net.TCPConn, sv *served, arrived <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	came, free := make(chan struct{}, 1), make(chan struct{})
	proxyEnd, serverEnd := testnet.TCPPair(t)
	go tlsH1Origin(leaf, serverEnd, func(_ *tls.Conn, _ *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/slow" {
			came <- struct{}{}
			<-free
		}
		return false
	})
	raw, sv = r.connectTCP(proxyEnd, tlsDest)
	return raw, sv, came, free
}

// wantNothingSent checks the destination got no byte on originEnd, the
// connection dialled after the reload.
func wantNothingSent(t *testing.T, originEnd net.Conn, want string) {
	t.Helper()
	originEnd.SetReadDeadline(time.Now().Add(waitLimit))
	if b, _ := io.ReadAll(originEnd); len(b) != 0 {
		t.Errorf("the destination got %d bytes on the connection dialled after the reload, %s", len(b), want)
	}
}
