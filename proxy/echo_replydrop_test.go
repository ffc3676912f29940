package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// echoSmallMTU is the inner MTU of newEchoRigMTU's server: a ping whose
// data is longer than echoSmallMTU-28 bytes reaches the destination (the
// MTU bounds only what the appliance sends), but its reply is too big to
// go back to the client.
const echoSmallMTU = 1500

// newEchoRigMTU is newEchoRig with a server whose inner MTU is
// echoSmallMTU.
func newEchoRigMTU(t *testing.T, doc string, mutate func(*Config)) *echoRig {
	t.Helper()
	return newEchoRigOn(t, doc, mutate, func(h netstack.Handler) (*netstack.Server, *gwlbsim.Endpoint) {
		return simulatedEndpointWith(t, netstack.Config{Handler: h, MTU: echoSmallMTU})
	})
}

// TestEchoRelayDroppedReplyNotCounted: a reply too big for the inner MTU
// is dropped by the packet stack (reply_too_big), and used to be counted
// all the same: as a reply, and its data in bytes_in. Only the replies
// that went out to the client count now.
func TestEchoRelayDroppedReplyNotCounted(t *testing.T) {
	r := newEchoRigMTU(t, "policy: {default: allow}\n", func(c *Config) { c.EchoIdleTimeout = 500 * time.Millisecond })
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "small")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want one", got)
	}
	big := strings.Repeat("x", echoSmallMTU)
	r.ping(t, echoRigClient, dst, 4242, 2, big)
	rec := r.record(t, dst)
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("%d replies, want the small one only: the big one cannot fit the MTU", len(got))
	}
	if n := r.srv.Stats().Drops["reply_too_big"]; n != 1 {
		t.Fatalf("reply_too_big %d, want the big reply's 1", n)
	}
	if rec.Result != "ok" || rec.Error != "" || rec.Packets != 2 || rec.BytesOut != int64(5+len(big)) || rec.BytesIn != 5 {
		t.Fatalf("record %+v; want ok, both requests relayed, and bytes_in only the small reply's 5", rec)
	}
}

// TestEchoRelayOnlyDroppedRepliesTimeout: a flow whose every reply was
// dropped got none: it is a timeout, as a ping no reply ever reached is,
// and its error says the destination's replies were dropped, and why.
func TestEchoRelayOnlyDroppedRepliesTimeout(t *testing.T) {
	r := newEchoRigMTU(t, "policy: {default: allow}\n", func(c *Config) { c.EchoIdleTimeout = 500 * time.Millisecond })
	dst := netip.MustParseAddr("127.0.0.2")
	big := strings.Repeat("x", echoSmallMTU)
	r.ping(t, echoRigClient, dst, 4242, 1, big)
	r.ping(t, echoRigClient, dst, 4242, 2, big)
	rec := r.record(t, dst)
	if got := r.replies(0); len(got) != 0 {
		t.Fatalf("%d replies reached the client, want none", len(got))
	}
	want := "no reply reached the client: the destination's 2 replies were dropped, the last: " +
		"a reply of 1528 bytes is larger than the inner MTU (1500)"
	if rec.Action != "allow" || rec.Result != "timeout" || rec.Error != want || rec.Packets != 2 || rec.BytesIn != 0 {
		t.Fatalf("record %+v; want a timeout of 2 requests, no bytes_in, error %q", rec, want)
	}
}
