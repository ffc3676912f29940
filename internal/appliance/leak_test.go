package appliance

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// flowGoroutines returns the goroutines running the proxy's or goproxy's
// code, the ones each flow starts, with their stacks.
func flowGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		// The watcher of the host's own addresses lives as long as the
		// proxy, and may not have started yet when the baseline is taken
		// (a goroutine not yet run shows only sync.WaitGroup's wrapper).
		if strings.Contains(g, "proxy.(*ownAddrs)") {
			continue
		}
		if strings.Contains(g, "gwlbproxy/proxy.") || strings.Contains(g, "elazarl/goproxy") {
			out = append(out, g)
		}
	}
	return out
}

// TestFlowsLeaveNothingBehind: once its client is gone, every kind of flow
// ends for good: no goroutine of the proxy stays, no upstream connection
// stays open, nothing is counted active. Kinds: bumped HTTP/1.1 and HTTP/2
// keep-alive, a bumped upload cut short, splice, deny, plain HTTP, other
// TCP, a client that never speaks, and UDP.
func TestFlowsLeaveNothingBehind(t *testing.T) {
	tn := newTestNet()
	up := startUpstream(t, tn.server(3), false)
	var plainOpen atomic.Int64
	plain := &http.Server{ConnState: func(_ net.Conn, s http.ConnState) { countConn(&plainOpen, s) }, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, "plain ok")
	})}
	plainLn := must(net.Listen("tcp", netip.AddrPortFrom(tn.server(4), 0).String()))(t)
	go plain.Serve(plainLn)
	t.Cleanup(func() { plain.Close() })
	plainAddr := plainLn.Addr().(*net.TCPAddr).AddrPort()
	echo := listenTCP(t, netip.AddrPortFrom(tn.server(5), 0), func(c net.Conn) { io.Copy(c, c) })
	udp := serveUDP(t, netip.AddrPortFrom(tn.server(5), 0), func(b []byte) []byte { return b })

	cfg := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	os.WriteFile(cfg, []byte(interceptPolicy), 0o644)
	r := newRig(t, func(o *Options) {
		o.Config = cfg
		o.UpstreamCA = []string{up.caFile}
		o.IdleTimeout = 500 * time.Millisecond // UDP flows end soon after their last datagram
	}, nil)
	r.dns.Set("*.example.test", 60, up.addr.Addr()) // the spliced name's address, for the destination check
	base := len(flowGoroutines())

	// Bumped keep-alive, HTTP/1.1 and HTTP/2: a few requests each.
	for _, h2 := range []bool{false, true} {
		c := r.httpClient(t, up.addr, h2)
		for i := range 3 {
			resp, err := c.Get(fmt.Sprintf("https://www.example.test/hello?who=%d", i))
			if err != nil {
				t.Fatalf("h2=%v: %v", h2, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		c.CloseIdleConnections()
	}
	// A bumped request whose client goes away with the upload half sent.
	tc := must(r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}))(t)
	fmt.Fprintf(tc, "POST /hello HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 100000\r\n\r\n%s", bytes.Repeat([]byte("x"), 5000))
	time.Sleep(50 * time.Millisecond)
	tc.Close()
	// Splice, and deny.
	tc = must(r.tlsDial(t, up.addr, &tls.Config{ServerName: "bank.example.test", InsecureSkipVerify: true}))(t)
	tc.Close()
	if _, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "evil.example.test", RootCAs: r.caPool()}); err == nil {
		t.Fatal("a denied name was let through")
	}
	// Plain HTTP, keep-alive.
	pc := must(r.client.DialTCP(ctxT(t, 5*time.Second), plainAddr))(t)
	br := bufio.NewReader(pc)
	for range 2 {
		fmt.Fprintf(pc, "POST /x HTTP/1.1\r\nHost: plain.example.test\r\nContent-Length: 3\r\n\r\nabc")
		resp := must(http.ReadResponse(br, nil))(t)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	pc.Close()
	// Other TCP, and a client that connects and never speaks.
	ec := must(r.client.DialTCP(ctxT(t, 5*time.Second), echo))(t)
	ec.Write([]byte("\x00\x01 not http, not tls"))
	io.ReadFull(ec, make([]byte, 20))
	ec.Close()
	silent := must(r.client.DialTCP(ctxT(t, 5*time.Second), echo))(t)
	waitFor(t, "a proxy goroutine for the silent flow (what the end is checked with must see a flow)", func() string {
		if n := len(flowGoroutines()); n <= base {
			return fmt.Sprintf("%d proxy goroutines with a flow waiting, %d without", n, base)
		}
		return ""
	})
	silent.Close()
	// UDP, until it idles.
	uc := must(r.client.DialUDP(udp))(t)
	uc.Write([]byte("ping"))
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	uc.Read(make([]byte, 16))
	uc.Close()

	deadline := time.Now().Add(15 * time.Second)
	for {
		gs := flowGoroutines()
		active := r.app.proxy.Active()
		if len(gs) <= base && active == 0 && up.open.Load() == 0 && plainOpen.Load() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s after the clients left: %d proxy goroutines (%d before), %d flows active, "+
				"%d upstream TLS and %d plain HTTP connections open; goroutines:\n%s",
				len(gs), base, active, up.open.Load(), plainOpen.Load(), strings.Join(gs, "\n\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// countConn keeps open up to date with an http.Server's connection states.
func countConn(open *atomic.Int64, s http.ConnState) {
	switch s {
	case http.StateNew:
		open.Add(1)
	case http.StateClosed, http.StateHijacked:
		open.Add(-1)
	}
}
