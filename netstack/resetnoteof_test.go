package netstack_test

import (
	"errors"
	"io"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestReadAfterWriteTookResetNotEOF: once a Write has taken the stack's
// one report of the client's reset, the stack says "closed for receive"
// to reads, which gonet, and TryRead before it looks, call the end of the
// stream. Read and TryRead must say the reset instead: a relay that read
// io.EOF passed a clean FIN on to the destination (a cut upload that
// looked whole) and recorded a FIN the client never sent.
func TestReadAfterWriteTookResetNotEOF(t *testing.T) {
	for _, tc := range []struct {
		name string
		read func(c *netstack.Conn, b []byte) (int, error)
	}{
		{"Read", (*netstack.Conn).Read},
		{"TryRead", (*netstack.Conn).TryRead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newConnRig(t)
			_, cep, c := r.dialEndpoint()
			resetAndWaitBroken(t, c, cep.Abort)
			if _, err := c.Write([]byte("the response")); err == nil {
				t.Fatal("a write after the client's RST returned no error")
			}
			_, err := tc.read(c, make([]byte, 8))
			if err == nil || errors.Is(err, io.EOF) || errors.Is(err, netstack.ErrWouldBlock) {
				t.Fatalf("%s after a Write took the client's reset: %v, want the reset", tc.name, err)
			}
			if why := c.ClientBroke(); why == nil || !errors.Is(err, why) {
				t.Errorf("%s said %v, want the break ClientBroke keeps (%v)", tc.name, err, why)
			}
		})
	}
}

// TestTryReadKeepsClientReset: a TryRead (a relay's, on the stack's
// readiness) that takes the client's reset from the stack, which reports
// it once, keeps it: ClientBroke and BrokenError say it after. Unkept,
// the client watch, asking later, was told nothing, and the flow's record
// said the client closed cleanly.
func TestTryReadKeepsClientReset(t *testing.T) {
	r := newConnRig(t)
	_, cep, c := r.dialEndpoint()
	resetAndWaitBroken(t, c, cep.Abort)
	_, err := c.TryRead(make([]byte, 8))
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("TryRead after the client's RST: %v, want the reset", err)
	}
	if why := c.ClientBroke(); why == nil {
		t.Errorf("ClientBroke after TryRead took the client's reset (%v): nil", err)
	}
	if why := c.BrokenError(); why == nil || errors.Is(why, netstack.ErrResetAfterFIN) {
		t.Errorf("BrokenError after TryRead took the client's reset: %v, want the reset", why)
	}
}
