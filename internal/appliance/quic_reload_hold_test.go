package appliance

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// TestQUICDeniedByReloadStaysDenied: a QUIC connection to www.example.test
// is established, then a reload denies the name. The flow ends and its
// client end is held as denied. A second reload of the same file (a
// periodic SIGHUP) must not let it go: the client's next datagram, a
// short-header packet, would start a flow decided as plain udp on no name,
// and the denied connection would resume (stress review s12, finding 2).
// A reload back to a policy that allows the name does let it go.
//
// The rig's UDP idle timeout is 2 s, shorter than the client's backed-off
// retransmissions once nothing answers: the client also sends a
// short-header datagram every 250 ms, as an active one would, so that the
// held flow does not idle out (a flow idle that long is decided afresh by
// design; in production the idle timeout, 120 s, outlasts QUIC's).
func TestQUICDeniedByReloadStaysDenied(t *testing.T) {
	e := newQUICE2E(t)
	laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(clientV4.As4())}
	pc := must(gonet.DialUDP(e.r.client.Stack, &laddr, nil, ipv4.ProtocolNumber))(t)
	defer pc.Close()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := must(quicgo.Dial(ctx, pc, net.UDPAddrFromAddrPort(e.dest),
		&tls.Config{ServerName: "www.example.test", RootCAs: e.destCAs, NextProtos: []string{"echo-test"}},
		&quicgo.Config{MaxIdleTimeout: 30 * time.Second}))(t)
	defer conn.CloseWithError(0, "done")
	echo := func(msg string, within time.Duration) (string, error) {
		c, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		s, err := conn.OpenStreamSync(c)
		if err != nil {
			return "", err
		}
		_ = s.SetDeadline(time.Now().Add(within))
		_, _ = io.WriteString(s, msg)
		_ = s.Close()
		b, err := io.ReadAll(s)
		return string(b), err
	}
	if got, err := echo("before", 3*time.Second); err != nil || got != "before" {
		t.Fatalf("echo before the reload: %q %v", got, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		junk := make([]byte, 60)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			_, _ = rand.Read(junk)
			junk[0] = 0x40 // a short header: fixed bit set
			_, _ = pc.WriteTo(junk, net.UDPAddrFromAddrPort(e.dest))
		}
	}()
	defer wg.Wait()
	defer close(stop)

	deny := strings.Replace(quicE2EPolicy, `domains: ["blocked.example.test"]`, `domains: ["blocked.example.test", "www.example.test"]`, 1)
	must(0, os.WriteFile(e.r.app.opts.Config, []byte(deny), 0o644))(t)
	must(0, e.r.app.Reload())(t)
	if got, err := echo("after the deny", 2*time.Second); err == nil {
		t.Fatalf("echo after the denying reload: %q", got)
	}
	time.Sleep(200 * time.Millisecond) // datagrams under way when the flow ended
	received := e.received.Load()
	must(0, e.r.app.Reload())(t) // the same file again
	if got, err := echo("after the second reload", 4*time.Second); err == nil {
		t.Errorf("the connection denied by the policy in force resumed after a reload of the same file: echoed %q", got)
	}
	if n := e.received.Load() - received; n != 0 {
		t.Errorf("the destination read %d datagrams of the denied connection after the second reload", n)
	}
	for _, rec := range e.r.readRecords() {
		if rec.ClientPort == port && rec.Action != "deny" && rec.Kind != "quic" {
			t.Errorf("record %s action=%s rule=%q policy=%q: the denied connection went on as %s", rec.Kind, rec.Action, rec.Rule, rec.Policy, rec.Kind)
		}
	}

	// A reload that allows the name again lets the held flow go: the
	// connection resumes on a flow decided afresh.
	must(0, os.WriteFile(e.r.app.opts.Config, []byte(quicE2EPolicy), 0o644))(t)
	must(0, e.r.app.Reload())(t)
	if got, err := echo("allowed again", 8*time.Second); err != nil || got != "allowed again" {
		t.Errorf("echo after a reload that allows the name again: %q %v", got, err)
	}
}
