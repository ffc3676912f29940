package intercept_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// The upstream connection dialled and verified before a bumped client's
// handshake is closed once it has waited the idle timeout and no request
// took it up, as a kept connection is: a client that completed its
// handshake and sent nothing kept it as long as the destination allowed.
// The client's connection stays.
func TestFirstUpstreamIdleTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetUpstreamIdleTimeout(timeout)()
	for _, proto := range []string{"http/1.1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, up := r.startUpstreamTCP(r.upLeaf("www.example.test"), proto)
			c, sv := r.connectTCP(upEnd, tlsDest)
			tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{proto}})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			if got := tc.ConnectionState().NegotiatedProtocol; got != proto {
				t.Fatalf("ALPN %q, want %q", got, proto)
			}
			start := time.Now()
			up.waitClosed(t)
			if took := time.Since(start); took < timeout/2 {
				t.Errorf("the upstream connection closed after %v, before the idle timeout (%v)", took, timeout)
			}
			sv.notDone(t)
		})
	}
}
