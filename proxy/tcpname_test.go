package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// clsStrictAllowList lets out one name and nothing else: only a name can
// open a flow, and every address:port is denied without one.
const clsStrictAllowList = `
policy:
  default: deny
  rules:
    - name: web
      domains: [allowed.example]
      action: %s
    - name: internal
      dest_cidrs: ["127.0.0.0/8"]
      action: deny
`

// countingListener is a destination, such as a database, that counts the
// connections it accepts and holds them open, silent, until the test ends.
func countingListener(t *testing.T) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	var n atomic.Int32
	held := make(chan net.Conn, 64)
	t.Cleanup(func() {
		ln.Close()
		for len(held) > 0 {
			(<-held).Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			held <- c
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), &n
}

// Under a strict allow-list, a ClientHello or a request for a name it does
// not allow is denied without its destination ever being dialled: the
// appliance tells a client nothing about which denied destinations are
// open, and holds no connection to them.
func TestNamedOnlyDeniedNotDialled(t *testing.T) {
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	dest, accepts := countingListener(t)

	c := r.dial(t, dest)
	err := tls.Client(c, &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("handshake: %v, want an access_denied alert", err)
	}
	if rec := r.record(t, c, "tls"); rec.Action != "deny" || rec.Result != "denied" || rec.SNI != "denied.example" || rec.BytesIn != 0 || rec.BytesOut != 0 {
		t.Errorf("record %+v, want tls denied for denied.example with no bytes", rec)
	}

	h := r.dial(t, dest)
	body, err := clsGet(h, "denied.example")
	if err != nil || !strings.Contains(body, "denied") {
		t.Errorf("HTTP for a denied name: %q, %v; want the 403 page", body, err)
	}
	if rec := r.record(t, h, "http"); rec.Action != "deny" || rec.Status != 403 {
		t.Errorf("record %+v, want http denied with a 403", rec)
	}

	// Bytes that are neither TLS nor HTTP have no name: denied, not dialled.
	o := r.dial(t, dest)
	o.Write([]byte("\x00hello"))
	if _, err := o.Read(make([]byte, 1)); err == nil {
		t.Error("opaque bytes: the connection stayed open")
	}
	if rec := r.record(t, o, "tcp"); rec.Action != "deny" || rec.Rule != "internal" {
		t.Errorf("record %+v, want tcp denied by rule internal", rec)
	}

	time.Sleep(100 * time.Millisecond) // an accept in flight would land by now
	if n := accepts.Load(); n != 0 {
		t.Errorf("the denied destination accepted %d connections, want none", n)
	}
}

// Under the same allow-list, the allowed name is dialled once decided, and
// works end to end, spliced or bumped as the rule says; cleartext HTTP for
// it too, dialled for its request.
func TestNamedOnlyAllowedWorks(t *testing.T) {
	for _, action := range []string{"splice", "bump"} {
		t.Run(action, func(t *testing.T) {
			r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, action), clsOptions{bump: action == "bump"})
			roots := r.upRoots
			if action == "bump" {
				roots = clsRoots(r)
			}
			c := r.dial(t, r.tlsDest)
			tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: roots, NextProtos: []string{"http/1.1"}})
			body, err := clsGet(tc, "allowed.example")
			if err != nil || body != "hello host=allowed.example" {
				t.Fatalf("GET over %s: %q, %v", action, body, err)
			}
			tc.Close()
			if rec := r.record(t, c, "tls"); rec.Action != action || rec.Rule != "web" {
				t.Errorf("record %+v, want %s by rule web", rec, action)
			}
		})
	}
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "allow"), clsOptions{})
	h := r.dial(t, r.plainDest)
	body, err := clsGet(h, "allowed.example")
	if err != nil || !strings.Contains(body, "hello host=allowed.example") {
		t.Fatalf("HTTP GET: %q, %v", body, err)
	}
	if rec := r.record(t, h, "http"); rec.Action != "allow" || rec.Rule != "web" || rec.Status != 200 {
		t.Errorf("record %+v, want http allowed by rule web", rec)
	}
}

// clsRoots trusts the rig's interception CA.
func clsRoots(r *clsRig) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(r.ca.Certificate())
	return p
}

// An allowed name whose destination refuses the dial: the client, whose
// handshake is done, gets a RST, and the record says how the dial ended.
func TestNamedOnlyAllowedDialFails(t *testing.T) {
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	c := r.dial(t, closed)
	err := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots}).Handshake()
	if err == nil || !isReset(err) {
		t.Errorf("handshake: %v, want a reset", err)
	}
	if rec := r.record(t, c, "tls"); rec.Result != "refused" || rec.Rule != "web" || rec.Error == "" {
		t.Errorf("record %+v, want result refused with the dial's error, rule web", rec)
	}
}

func isReset(err error) bool {
	return errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "broken pipe")
}

// A client that sends nothing to a destination only a name could open is
// reset once nameWait has passed, its destination never dialled, and the
// record says why; its waiting slot is freed.
func TestNamedOnlySilentClientReset(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 300 * time.Millisecond
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	dest, accepts := countingListener(t)
	c := r.dial(t, dest)
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("silent client: read %v after %v, want it reset after %v", err, time.Since(start), nameWait)
	}
	if waited := time.Since(start); waited < nameWait {
		t.Errorf("reset after %v, before nameWait %v", waited, nameWait)
	}
	rec := r.record(t, c, "tcp")
	if rec.Action != "deny" || rec.Result != "denied" || !strings.Contains(rec.Error, "sent nothing") || !strings.Contains(rec.Error, "not dialled") {
		t.Errorf("record %+v, want denied, saying nothing was sent nor dialled", rec)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("the destination accepted %d connections, want none", n)
	}
	if n := r.p.Stats().TCPActive; n != 0 {
		t.Errorf("%d TCP connections still active", n)
	}
}

// A client that sends one byte to a destination only a name could open,
// then stalls, is classified on that byte (no name: denied) within about
// CompleteTimeout of it, as on the path dialled first, not after nameWait
// again: the long wait is for the first byte only.
func TestNamedOnlyStalledAfterFirstByte(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 10 * time.Second
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	dest, accepts := countingListener(t)
	c := r.dial(t, dest)
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write([]byte{0x16}); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	_, err := c.Read(make([]byte, 1))
	took := time.Since(sent)
	if err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("stalled client: read %v after %v, want it reset", err, took)
	}
	if took > sniff.CompleteTimeout+time.Second {
		t.Errorf("reset %v after the first byte, want about %v (sniff.CompleteTimeout), not nameWait %v", took, sniff.CompleteTimeout, nameWait)
	}
	if rec := r.record(t, c, "tcp"); rec.Action != "deny" || rec.Rule != "internal" {
		t.Errorf("record %+v, want tcp denied by rule internal", rec)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("the destination accepted %d connections, want none", n)
	}
}

// A server-first destination that the addresses alone allow is dialled
// first as before: its banner reaches a client that sends nothing.
func TestNamedOnlyServerFirstByAddress(t *testing.T) {
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "SSH-2.0-test\r\n")
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	dest := ln.Addr().(*net.TCPAddr).AddrPort()
	r := newClsRig(t, fmt.Sprintf(`
policy:
  default: deny
  rules:
    - name: web
      domains: [allowed.example]
      action: splice
    - name: ssh
      dest_cidrs: ["127.0.0.1/32"]
      ports: [%d]
      action: allow
`, dest.Port()), clsOptions{})
	c := r.dial(t, dest)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "SSH-2.0-test\r\n" {
		t.Fatalf("banner: %q, %v", buf[:n], err)
	}
	c.Close()
	if rec := r.record(t, c, "tcp"); rec.Action != "allow" || rec.Rule != "ssh" {
		t.Errorf("record %+v, want tcp allowed by rule ssh", rec)
	}
}

// HTTP/2 with prior knowledge names nothing until its streams do: under
// the strict allow-list nothing is dialled for the connection, a stream
// for the allowed name is served through a connection dialled for it, and
// one for another name gets a 403 and dials nothing.
func TestNamedOnlyH2C(t *testing.T) {
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "allow"), clsOptions{})
	get := func(dest netip.AddrPort, host string) (int, string, net.Conn) {
		t.Helper()
		var conn net.Conn
		tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(context.Context, string, string, *tls.Config) (net.Conn, error) {
			conn = r.dial(t, dest)
			return conn, nil
		}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + host + "/")
		if err != nil {
			t.Fatalf("h2c GET %s: %v", host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), conn
	}
	if status, body, _ := get(r.plainDest, "allowed.example"); status != 200 || !strings.Contains(body, "hello host=allowed.example") {
		t.Errorf("allowed stream: %d %q", status, body)
	}
	dest, accepts := countingListener(t)
	if status, _, _ := get(dest, "denied.example"); status != 403 {
		t.Errorf("denied stream: status %d, want 403", status)
	}
	time.Sleep(100 * time.Millisecond)
	if n := accepts.Load(); n != 0 {
		t.Errorf("the destination of a denied stream accepted %d connections, want none", n)
	}
}
