package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A spliced connection that a reload would now bump, on an appliance
// without a CA (so it goes on spliced, as serveTLS splices a bump it
// cannot carry out), still meets the new policy's destination check.
// (Kills the mutant that drops tcpReload.decide's Bump-to-Splice step:
// the bump decision then skipped destCheckApplies and the connection, to
// an address the name does not resolve to, went on.) Defence in depth:
// internal/appliance refuses a bump policy on an appliance without a CA.
func TestReloadBumpNoCAStillChecked(t *testing.T) {
	fail := func(ctx context.Context, endpoint, name string, dest netip.Addr) error {
		return errors.New("allowed.example does not resolve to " + dest.String())
	}
	r := newClsRig(t, spliceOK("enforce", "off"), clsOptions{check: fail})
	c := r.dial(t, rawEchoServer(t))
	defer c.Close()
	hello := captureClientHello(t, &tls.Config{ServerName: "allowed.example"})
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
		t.Fatalf("not relayed before the reload: %v", err)
	}
	r.reloadPolicy(t, strings.Replace(spliceOK("enforce", "dns"), "action: splice", "action: bump", 1))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("exfil"))
	if _, err := io.ReadFull(c, make([]byte, 5)); err == nil {
		t.Fatal("relayed after a reload whose destination check the connection fails")
	}
	c.Close()
	if rec := r.record(t, c, "tls"); rec.DestCheck != "mismatch" || rec.Result != "denied" {
		t.Errorf("record %+v, want dest_check mismatch and denied", rec)
	}
}
