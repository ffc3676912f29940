package proxy

import (
	"context"
	"crypto/tls"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A bump only its name lets through dials its destination once the
// destination check has passed (intercept/bumpcheck.go). A client that
// sends its ClientHello and resets while the check runs is aborted by the
// watch on its connection (clientwatch.go) from another goroutine than
// the one that dials: the abort must not race the dial (run with -race),
// and the session must not dial after it and send the gone client's SNI
// in a handshake held until the handshake timeout. The session ends as
// soon as the check returns, nothing reaching the destination, and its
// record says reset.
func TestNamedOnlyBumpClientResetDuringCheck(t *testing.T) {
	checking, release := make(chan struct{}, 1), make(chan struct{})
	check := func(ctx context.Context, _, _ string, _ netip.Addr) error {
		checking <- struct{}{}
		select { // no sync with the abort: the race detector sees its accesses
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}
	dest, accepts := countingListener(t)
	r := &stallRig{sink: new(recordSink)}
	ca := clsMust(certs.Generate("abort test appliance CA"))(t)
	h := new(policy.Holder)
	h.Store(clsMust(policy.Parse("test.yaml", []byte(bumpStallByName)))(t))
	r.p = New(Config{Records: records.NewWriter(nil, r.sink), Policy: h, AllowLoopback: true,
		DialTimeout: 5 * time.Second, DestinationCheck: check,
		Intercept: intercept.Config{Minter: clsMust(certs.NewMinter(ca, certs.MinterOptions{}))(t)}})
	t.Cleanup(r.p.Close)
	ns, ep := simulatedEndpoint(t, r.p, true)
	r.ns = ns
	var err error
	if r.client, err = ep.NewClientStack(netip.MustParseAddr("198.18.0.5")); err != nil {
		t.Fatal(err)
	}

	c := dialRaw(t, r.client, dest)
	go tls.Client(c, &tls.Config{ServerName: "big.example", InsecureSkipVerify: true}).Handshake()
	wait(t, checking, 5*time.Second, "the bump's destination check did not start")
	c.reset()
	time.Sleep(200 * time.Millisecond) // the watch aborts the session meanwhile
	released := time.Now()
	close(release)

	for end := time.Now().Add(5 * time.Second); r.p.Stats().TCPActive != 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if got, took := r.p.Stats().TCPActive, time.Since(released); got != 0 || took > time.Second {
		t.Errorf("tcp_active %d %v after the check returned, want 0 within 1 s", got, took.Round(time.Millisecond))
	}
	time.Sleep(100 * time.Millisecond) // an accept in flight would land by now
	if n := accepts.Load(); n != 0 {
		t.Errorf("the destination accepted %d connections after the client had gone, want none", n)
	}
	var tlsRec *records.Record
	for _, rec := range r.sink.parse(t) {
		if rec.Kind == "tls" {
			tlsRec = &rec
		}
	}
	if tlsRec == nil {
		t.Fatalf("no tls record: %+v", r.sink.parse(t))
	}
	if tlsRec.Result != "reset" || tlsRec.Action != "bump" {
		t.Errorf("record %+v, want the bump's, reset", *tlsRec)
	}
}
