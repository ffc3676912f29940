package intercept_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// reloadOrigin is an HTTP/1 origin, on the session's first connection and
// every one the appliance dials, that notes the path of every request head it
// reads and answers as its answer function says.
type reloadOrigin struct {
	ln     net.Listener
	answer func(c net.Conn, req *http.Request) (keep bool)
	mu     sync.Mutex
	paths  []string
	heads  chan string // each path, as it comes
	conns  sync.WaitGroup
	// gate, when set, holds the next dial until it is closed; dialling
	// is told each dial that begins.
	gate      chan struct{}
	dialling  chan struct{}
	gateMu    sync.Mutex
	closeOnce sync.Once
}

// newReloadOrigin starts a reloadOrigin and a rig whose policy is holder's and
// whose dials go to it; it returns them and the origin's end of the
// session's first connection, served.
func newReloadOrigin(t *testing.T, holder *policy.Holder, answer func(net.Conn, *http.Request) bool) (*reloadOrigin, *rig, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &reloadOrigin{ln: ln, answer: answer, heads: make(chan string, 64), dialling: make(chan struct{}, 64)}
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.Policy = holder
		c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			o.dialling <- struct{}{}
			o.gateMu.Lock()
			g := o.gate
			o.gateMu.Unlock()
			if g != nil {
				select {
				case <-g:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
		}
	})
	holder.Store(r.pol)
	o.conns.Add(1)
	go func() {
		defer o.conns.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.conns.Add(1)
			go o.serve(c)
		}
	}()
	proxyEnd, originEnd := testnet.TCPPair(t)
	o.conns.Add(1)
	go o.serve(originEnd)
	t.Cleanup(o.close)
	return o, r, proxyEnd
}

// close stops the origin and waits for its connections to end.
func (o *reloadOrigin) close() {
	o.closeOnce.Do(func() {
		o.ln.Close()
		o.conns.Wait()
	})
}

func (o *reloadOrigin) serve(c net.Conn) {
	defer o.conns.Done()
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * waitLimit))
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		o.mu.Lock()
		o.paths = append(o.paths, req.URL.Path)
		o.mu.Unlock()
		o.heads <- req.URL.Path
		if !o.answer(c, req) {
			return
		}
	}
}

// holdDials makes the dials from now on wait until the returned function
// is called.
func (o *reloadOrigin) holdDials() (release func()) {
	g := make(chan struct{})
	o.gateMu.Lock()
	o.gate = g
	o.gateMu.Unlock()
	return sync.OnceFunc(func() { close(g) })
}

// waitHead waits, within waitLimit, for the origin to read a head of path.
func (o *reloadOrigin) waitHead(t *testing.T, path string) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case p := <-o.heads:
			if p == path {
				return
			}
		case <-deadline:
			t.Fatalf("the origin never got a request for %s", path)
		}
	}
}

// waitDial waits, within waitLimit, for a dial to begin.
func (o *reloadOrigin) waitDial(t *testing.T) {
	t.Helper()
	select {
	case <-o.dialling:
	case <-time.After(waitLimit):
		t.Fatal("no dial began")
	}
}

// count returns how many heads of path the origin read.
func (o *reloadOrigin) count(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, p := range o.paths {
		if p == path {
			n++
		}
	}
	return n
}

// pathRecord returns the one http record of path.
func pathRecord(t *testing.T, r *rig, path string) records.Record {
	t.Helper()
	var out []records.Record
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Path == path {
			out = append(out, rec)
		}
	}
	if len(out) != 1 {
		t.Fatalf("http records of %s %+v, want one", path, out)
	}
	return out[0]
}

// endAndCheck ends the client's connection c and the origin, then checks
// that the origin got the head of /secret, the request the reload denied,
// want times (those before the reload), and that its record is the
// reload's deny.
func (o *reloadOrigin) endAndCheck(t *testing.T, c net.Conn, sv *served, r *rig, after *policy.Policy, want int) {
	t.Helper()
	c.Close()
	sv.waitDoneOnce(t)
	o.close()
	if n := o.count("/secret"); n != want {
		t.Errorf("the origin got the head of /secret %d times, want %d (none after the reload denied its name)", n, want)
	}
	checkHeadDenied(t, pathRecord(t, r, "/secret"), after)
}

// checkHeadDenied fails unless rec says the reload to after denied the
// request before it went upstream: 403, rule no-www, nothing sent.
func checkHeadDenied(t *testing.T, rec records.Record, after *policy.Policy) {
	t.Helper()
	if rec.Status != http.StatusForbidden || rec.Action != "deny" || rec.Rule != "no-www" || rec.Policy != after.ID() ||
		rec.Result != "denied" || !strings.Contains(rec.Error, "ended by a policy reload: denied by policy") || rec.BytesOut != 0 {
		t.Errorf("record %+v; want status 403, action deny by rule no-www of the reload's policy %q, result denied, "+
			"error ended by a policy reload, bytes_out 0", rec, after.ID())
	}
}

// answerOK answers 200 "ok", and on close ends the connection (unsaid,
// as an origin's idle timeout does: a "Connection: close" would end the
// client's too).
func answerOK(c net.Conn, close bool) bool {
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	return !close
}

// TestReloadDeniesHeadAfterDial: an HTTP/1 client's request decided
// before a reload, whose upstream connection was still being dialled when
// the reload denied its name, had its head written to the name once the
// dial completed. Now it is decided again once it has its connection,
// before its head goes: the client gets a 403, the origin never sees the
// request, and its record says the reload denied it.
func TestReloadDeniesHeadAfterDial(t *testing.T) {
	var holder policy.Holder
	o, r, proxyEnd := newReloadOrigin(t, &holder, func(c net.Conn, req *http.Request) bool {
		return answerOK(c, req.URL.Path == "/first")
	})
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	release := o.holdDials()
	defer release()
	io.WriteString(c, "GET /secret HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	o.waitDial(t) // the first connection closed: /secret dials
	after := reloadTo(t, &holder, tightenedPolicy)
	release()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the request the reload denied: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("the request the reload denied got %d, want 403", resp.StatusCode)
	}
	o.endAndCheck(t, c, sv, r, after, 0)
}

// TestReloadDeniesH2StreamWaitingForSlot: an HTTP/2 client's stream that
// waited for one of its session's maxUpstreamConns HTTP/1 connections,
// all busy, went upstream once one came free, though a reload had denied
// its name meanwhile. Now it gets a 403, and only it: the client's
// connection serves on.
func TestReloadDeniesH2StreamWaitingForSlot(t *testing.T) {
	var holder policy.Holder
	hold := make(chan struct{})
	o, r, proxyEnd := newReloadOrigin(t, &holder, func(c net.Conn, req *http.Request) bool {
		if strings.HasPrefix(req.URL.Path, "/hold") {
			<-hold
			return answerOK(c, true)
		}
		return answerOK(c, false)
	})
	var holdOnce sync.Once
	unhold := func() { holdOnce.Do(func() { close(hold) }) }
	defer unhold()
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	pc := newProbeClientOn(t, c, "http")
	for i := 0; i < maxUpstreamConns; i++ {
		pc.open("GET", fmt.Sprintf("/hold-%d", i), true)
	}
	for i := 0; i < maxUpstreamConns; i++ {
		<-o.heads // each on a connection of its own, all busy
	}
	for len(o.dialling) > 0 {
		<-o.dialling
	}
	release := o.holdDials()
	defer release()
	id := pc.open("GET", "/secret", true)
	// The origin answers the held requests and closes their connections:
	// a slot goes to /secret, which dials (the event that says it was
	// decided, and is waiting).
	unhold()
	o.waitDial(t)
	after := reloadTo(t, &holder, tightenedPolicy)
	release()
	if !waitFor(t, "the stream's answer", waitLimit, func() bool { return pc.status(id) != "" }) {
		t.Fatal("the stream the reload denied got no answer")
	}
	if s := pc.status(id); s != "403" {
		t.Errorf("the stream the reload denied got %q, want 403", s)
	}
	select {
	case <-pc.dead:
		t.Error("the client's connection ended with the stream")
	default:
	}
	o.endAndCheck(t, c, sv, r, after, 0)
}

// TestReloadDeniesExpectRequestSentAgain: an Expect: 100-continue request
// whose kept connection ended with no answer while its body waited goes
// again on a new connection (h1Transport); a reload that denied its name
// meanwhile did not stop its head going to the name a second time. Now
// the second try is decided again first: the client gets a 403, and the
// body never goes.
func TestReloadDeniesExpectRequestSentAgain(t *testing.T) {
	var holder policy.Holder
	cut := make(chan struct{})
	o, r, proxyEnd := newReloadOrigin(t, &holder, func(c net.Conn, req *http.Request) bool {
		if req.URL.Path == "/secret" {
			<-cut
			return false // no answer: the kept connection ends
		}
		return answerOK(c, false)
	})
	var cutOnce sync.Once
	defer cutOnce.Do(func() { close(cut) })
	defer intercept.SetExpectContinueTimeout(waitLimit)()
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	// A PUT: idempotent, so it may go again (a POST would not: h1retry.go).
	io.WriteString(c, "PUT /secret HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
	o.waitHead(t, "/first")
	o.waitHead(t, "/secret") // allowed then: its body waits for the 100
	after := reloadTo(t, &holder, tightenedPolicy)
	cutOnce.Do(func() { close(cut) })
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the request the reload denied: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("the request the reload denied got %d, want 403", resp.StatusCode)
	}
	o.endAndCheck(t, c, sv, r, after, 1) // once, before the reload
}
