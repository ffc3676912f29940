package intercept

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// A bump only a name let through whose session Abort ends while its
// destination's dial is under way (the client's connection broke): the
// dial finds no Upstream for Abort to have reset, so it resets what it
// dialled itself and ends the session, sending nothing (the gone client's
// SNI in a ClientHello) to the destination. Before, the bump went on to
// the upstream handshake and held it until the handshake timeout.
func TestAbortDuringBumpDial(t *testing.T) {
	ca, err := certs.Generate("abort dial test CA")
	if err != nil {
		t.Fatal(err)
	}
	minter, err := certs.NewMinter(ca, certs.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dialling, release := make(chan struct{}), make(chan struct{})
	upEnd, destEnd := net.Pipe()
	defer destEnd.Close()
	ic := New(Config{Minter: minter, HandshakeTimeout: 5 * time.Second,
		Dial: func(context.Context, string) (net.Conn, error) {
			close(dialling)
			<-release
			return upEnd, nil
		}})
	pol, err := policy.Parse("p.yaml", []byte("policy:\n  default: deny\n  rules:\n    - {name: named, domains: [www.example.test], action: bump}\n"))
	if err != nil {
		t.Fatal(err)
	}
	client, proxySide := net.Pipe()
	defer client.Close()
	done := make(chan struct{})
	rec := &records.Record{Kind: "tls", Action: "bump", Result: "ok"}
	s := &Session{Client: proxySide, Policy: pol, Record: rec, Start: time.Now(), Done: func() { close(done) },
		Hello:    &sniff.ClientHello{ServerName: "www.example.test"},
		Decision: policy.Decision{Action: policy.Bump, Rule: "named", ByName: true},
		Subject:  policy.Subject{Dest: netip.MustParseAddrPort("192.0.2.10:443")}}
	go ic.Serve(s)
	<-dialling
	if !s.Abort("reset", errors.New("test: the client's connection broke")) {
		t.Fatal("Abort did not abort")
	}
	close(release)
	got := make(chan int64, 1)
	go func() { n, _ := io.Copy(io.Discard, destEnd); got <- n }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the session has not ended 1 s after the dial returned")
	}
	select {
	case n := <-got:
		if n != 0 {
			t.Errorf("the destination received %d bytes from a session aborted before its handshake", n)
		}
	case <-time.After(time.Second):
		t.Error("the dialled connection is still open")
	}
	if rec.Result != "reset" {
		t.Errorf("record %+v, want reset", rec)
	}
}
