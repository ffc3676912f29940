package intercept_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestEvasionDestinationCheckBump: a bump decided on the SNI has its
// destination checked before the appliance's own ClientHello, which
// carries the client's SNI, leaves: a mismatch reaches the destination
// with not one byte. Before, the ClientHello went first, and only the
// certificate's verification failed after it, so a client could send a
// name of its choosing (data.allowed.example) to any address it liked. A
// destination that verified a certificate for the name is not checked
// again.
func TestEvasionDestinationCheckBump(t *testing.T) {
	const sni = "www.example.test"
	for _, tc := range []struct {
		name, settings string
		sni            string
		bad            bool
		dest           netip.AddrPort
		bumped         bool   // the client gets its leaf
		check          string // the tls record's dest_check
		calls          int
	}{
		{"mismatch", "", sni, true, tlsDest, false, "mismatch", 1},
		{"match", "", sni, false, tlsDest, true, "ok", 1},
		{"check off", "destination_check: off", sni, true, tlsDest, true, "", 0},
		// Decided on the address, not the name: nothing to check.
		{"not by name", "", "other.example.test", true, netip.MustParseAddrPort("192.0.2.99:443"), true, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc := &destCheck{bad: map[string]bool{tc.sni: tc.bad}}
			r := newRig(t, fmt.Sprintf(namedPolicy, tc.settings), func(c *intercept.Config) { c.DestinationCheck = dc.check })
			upEnd := r.startUpstreamOrSilent(tc.bumped, tc.sni)
			c, sv := r.connect(upEnd.conn, tc.dest)
			client := tls.Client(c, &tls.Config{ServerName: tc.sni, RootCAs: r.caPool()})
			client.SetDeadline(time.Now().Add(waitLimit))
			err := client.Handshake()
			if tc.bumped != (err == nil) {
				t.Fatalf("client handshake: %v", err)
			}
			if !tc.bumped && !strings.Contains(err.Error(), "access denied") {
				t.Errorf("client handshake: %v, want an access denied alert", err)
			}
			client.Close()
			sv.waitDoneOnce(t)
			if !tc.bumped {
				if got := upEnd.received(t); got != 0 {
					t.Errorf("the unchecked destination received %d bytes", got)
				}
			}
			if got := dc.called(); len(got) != tc.calls || (tc.calls > 0 && got[0] != testEndpoint+" "+tc.sni+" "+tc.dest.Addr().String()) {
				t.Errorf("checks %q, want %d", got, tc.calls)
			}
			rec := ofKind(r.records(), "tls")[0]
			wantAction, wantResult := "bump", "ok"
			if !tc.bumped {
				wantAction, wantResult = "deny", "denied"
			}
			if rec.Action != wantAction || rec.Result != wantResult || rec.DestCheck != tc.check ||
				(tc.check == "mismatch") != strings.Contains(rec.Error, "resolves to 203.0.113.9") {
				t.Errorf("record %+v", rec)
			}
		})
	}
	// Once the destination verified a certificate for the name, the next
	// bump for it there needs no lookup.
	t.Run("proven", func(t *testing.T) {
		dc := &destCheck{}
		r := newRig(t, fmt.Sprintf(namedPolicy, ""), func(c *intercept.Config) { c.DestinationCheck = dc.check })
		for i, want := range []string{"ok", ""} {
			upEnd, _ := r.startUpstream(r.upLeaf(sni), "http/1.1")
			raw, sv := r.connect(upEnd, tlsDest)
			bumpClient(t, r, raw, strings.ToUpper(sni)).Close()
			sv.waitDoneOnce(t)
			if rec := ofKind(r.records(), "tls")[i]; rec.DestCheck != want || rec.UpstreamVerify != "ok" {
				t.Errorf("connection %d: record %+v", i, rec)
			}
		}
		if got := dc.called(); len(got) != 1 {
			t.Errorf("checks %q, want one", got)
		}
	})
}

// upstreamEnd is the interceptor's end of an upstream connection, with
// either a TLS server for name behind it or a silent peer that counts what
// arrives.
type upstreamEnd struct {
	conn net.Conn
	got  chan int // what the silent peer read before the interceptor closed
}

func (r *rig) startUpstreamOrSilent(serve bool, name string) *upstreamEnd {
	if serve {
		c, _ := r.startUpstream(r.upLeaf(name), "http/1.1")
		return &upstreamEnd{conn: c}
	}
	proxyEnd, far := testnet.TCPPair(r.t)
	u := &upstreamEnd{conn: proxyEnd, got: make(chan int, 1)}
	go func() {
		far.SetReadDeadline(time.Now().Add(waitLimit))
		n, _ := io.Copy(io.Discard, far)
		u.got <- int(n)
	}()
	return u
}

// received waits for the silent peer's connection to end and returns the
// bytes it read.
func (u *upstreamEnd) received(t *testing.T) int {
	t.Helper()
	select {
	case n := <-u.got:
		return n
	case <-time.After(2 * waitLimit):
		t.Fatal("the upstream connection is still open")
		return 0
	}
}
