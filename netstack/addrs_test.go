package netstack_test

import (
	"testing"
	"time"
)

// TestAddrsAfterClientReset: the conn's addresses are the flow's for its
// whole life. gonet's answer nil once the endpoint is no longer connected,
// and x/net's HTTP/2 server starts serving a connection with
// c.RemoteAddr().String(): a bumped HTTP/2 client that reset right after
// its preface crashed the appliance there (a nil-pointer panic on
// goproxy's goroutine, which nothing recovers).
func TestAddrsAfterClientReset(t *testing.T) {
	r := newConnRig(t)
	_, cep, c := r.dialEndpoint()
	local, remote := c.LocalAddr().String(), c.RemoteAddr().String()
	cep.Abort()
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("not Broken after the client's RST")
		}
	}
	for _, when := range []string{"after the client's reset", "after Close"} {
		if a := c.RemoteAddr(); a == nil || a.String() != remote {
			t.Errorf("RemoteAddr %s: %v, want %s", when, a, remote)
		}
		if a := c.LocalAddr(); a == nil || a.String() != local {
			t.Errorf("LocalAddr %s: %v, want %s", when, a, local)
		}
		c.Close()
	}
}
