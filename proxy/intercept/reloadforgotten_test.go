package intercept_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// forgettingChecker is a destination check whose passes rest on an
// observed DNS answer (or, lookedUp, on the appliance's own lookup) until
// forget, as a reload of a changed file forgets the observed answers: the
// check fails from then on, unless lookedUp.
type forgettingChecker struct {
	gen      atomic.Uint64
	lookedUp bool
	checks   atomic.Int32
}

func (f *forgettingChecker) configure(c *intercept.Config) {
	c.DestinationCheck = func(_ context.Context, _, name string, dest netip.Addr) error {
		f.checks.Add(1)
		if f.gen.Load() != 0 && !f.lookedUp {
			return errors.New("no address of " + name + " could be looked up")
		}
		return nil
	}
	c.DNSGeneration = f.gen.Load
	c.DestinationLookedUp = func(string, netip.Addr) bool { return f.lookedUp }
}

// TestForgottenAnswerEndsStreamingRequestBody: a request whose body is
// under way is decided again after a reload as a tunnel is, and so is
// checked again when its destination check passed on an observed answer
// the reload forgot: it used to go on streaming to the address that answer
// named. Now the next piece after the reload ends it, over HTTP/1 and on
// an HTTP/2 stream alike, its record saying the check failed. A pass on the
// appliance's own lookup, or a reload that forgot nothing, lets it go on,
// unchecked.
func TestForgottenAnswerEndsStreamingRequestBody(t *testing.T) {
	const tightened = "# the clients' own DNS servers taken away\n"
	for _, tc := range []struct {
		name             string
		h2, lookedUp     bool
		forget, ends     bool
		checksAfterwards int32
	}{
		{"h1-forgotten", false, false, true, true, 1},
		{"h2c-forgotten", true, false, true, true, 1},
		{"h1-looked-up", false, true, true, false, 0},
		{"h1-kept", false, false, false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := new(forgettingChecker)
			f.lookedUp = tc.lookedUp
			holder := new(policy.Holder)
			r := newRig(t, wwwByName("dns"), func(c *intercept.Config) { c.Policy = holder; f.configure(c) })
			holder.Store(r.pol)
			proxyEnd, originEnd := testnet.TCPPair(t)
			o := startKeptOrigin(t, originEnd, "", "")
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			var write func(i int) error
			var pc *probeClient
			var id uint32
			if tc.h2 {
				pc = newProbeClientOn(t, c, "http")
				id = pc.open("POST", "/upload", false)
				write = func(i int) error { pc.data(id, []byte(piece(i)), false); return nil }
			} else {
				io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n")
				write = func(i int) error {
					_, err := fmt.Fprintf(c, "%x\r\n%s\r\n", len(piece(i)), piece(i))
					return err
				}
			}
			write(0)
			o.waitFor(t, piece(0))
			checks := f.checks.Load()
			if tc.forget {
				f.gen.Add(1)
			}
			after := reloadTo(t, holder, wwwByName("dns")+tightened)
			for i := 1; i <= 5; i++ {
				if write(i) != nil {
					break
				}
			}
			if !tc.ends {
				o.waitFor(t, piece(5))
				if n := f.checks.Load() - checks; n != tc.checksAfterwards {
					t.Errorf("%d checks after the reload, want %d", n, tc.checksAfterwards)
				}
				return
			}
			if tc.h2 {
				if !waitFor(t, "the stream's answer", waitLimit, func() bool { return pc.status(id) != "" }) {
					t.Fatal("the stream the reload ended got no answer")
				}
			} else {
				io.Copy(io.Discard, c)
			}
			o.waitEnded(t)
			for i := 1; i <= 5; i++ {
				if o.has(piece(i)) {
					t.Errorf("%q, written after the reload forgot the answer its check passed on, reached the origin", piece(i))
				}
			}
			c.Close()
			sv.waitDoneOnce(t)
			rec := wwwRecord(t, r)
			if rec.Action != "deny" || rec.Rule != "www" || rec.Policy != after.ID() || rec.Result != "denied" || rec.DestCheck != "mismatch" ||
				!strings.Contains(rec.Error, "ended by a policy reload: its destination fails the destination check, which passed on a DNS answer the reload forgot") ||
				rec.BytesOut != int64(len(piece(0))) {
				t.Errorf("record %+v; want the upload ended by the reload for its destination check, only piece 0 out", rec)
			}
			if n := f.checks.Load() - checks; n != tc.checksAfterwards {
				t.Errorf("%d checks after the reload, want %d", n, tc.checksAfterwards)
			}
		})
	}
}
