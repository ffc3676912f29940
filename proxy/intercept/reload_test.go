package intercept_test

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// tightenedPolicy is testPolicy after an operator denied www.example.test.
const tightenedPolicy = `
policy:
  default: bump
  rules:
    - name: no-evil
      domains: ["evil.example.test"]
      action: deny
    - name: no-www
      domains: ["www.example.test"]
      action: deny
`

// A reload reaches a connection opened before it: the next request on a
// keep-alive (or bumped) connection is decided by the policy in force when
// it arrives, so a name the reload denies is denied there too, with the
// usual 403 and deny record; the connection itself stays as it was.
// The reload comes once the client has the whole response before it,
// while the appliance is still reading that response's body once more
// (net/http's Response.Write, past its Content-Length, to find its end):
// that read, which relays nothing, decided the response again and reset
// the connection, in about 1 run of 100 under -race on a loaded machine.
func TestReloadDecidesOpenConnectionsRequests(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			var reads atomic.Int32
			atEnd, reloaded := make(chan struct{}), make(chan struct{})
			var reloadOnce sync.Once
			reload := func() { reloadOnce.Do(func() { close(reloaded) }) }
			defer reload()
			defer intercept.OnBodyRead(func() {
				if reads.Add(1) == 2 { // the /before body's end
					close(atEnd)
					select {
					case <-reloaded:
					case <-time.After(waitLimit):
					}
				}
			})()
			r, holder := newReloadableRig(t)
			var (
				upEnd  net.Conn
				up     *upstream
				c      net.Conn
				sv     *served
				action = "allow"
			)
			if bumped {
				upEnd, up = r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
				var raw net.Conn
				raw, sv = r.connect(upEnd, tlsDest)
				c = bumpClient(t, r, raw, "www.example.test", "http/1.1")
				action = "bump"
			} else {
				upEnd, up = r.startUpstream(nil)
				c, sv = r.connect(upEnd, httpDest)
			}
			hc := newHTTPClient(t, c)
			if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("request before the reload: %d %q", resp.StatusCode, body)
			}
			tightened, err := policy.Parse("policy.yaml", []byte(tightenedPolicy))
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-atEnd:
			case <-time.After(waitLimit):
				t.Fatal("the appliance read the /before response's body no further than its bytes")
			}
			holder.Store(tightened) // the reload
			reload()
			if resp, body := hc.do("GET /after HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no-www") {
				t.Fatalf("request after the reload denied it: %d %q", resp.StatusCode, body)
			}
			c.Close()
			sv.waitDoneOnce(t)
			if got := up.requests(); len(got) != 1 {
				t.Errorf("the upstream served %q, want the request before the reload only", got)
			}
			recs := ofKind(r.records(), "http")
			if len(recs) != 2 {
				t.Fatalf("http records %+v, want two", recs)
			}
			if rec := recs[0]; rec.Path != "/before" || rec.Action != action || rec.Rule != "default" || rec.Status != 200 {
				t.Errorf("record before the reload: %+v", rec)
			}
			if rec := recs[1]; rec.Path != "/after" || rec.Action != "deny" || rec.Rule != "no-www" ||
				rec.Status != http.StatusForbidden || rec.Result != "denied" || rec.Error != "denied by policy" {
				t.Errorf("record after the reload: %+v, want a deny by no-www", rec)
			}
		})
	}
}
