package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// TestPlaintextOfLingeringCloseAtShutdown: a bumped HTTP/1 answer with
// Connection: close, read whole by the client, and the appliance's end
// of its side (close_notify, FIN) read too; the appliance lingers for the
// client's end (lingerClose) when the stacks close, resetting the
// connection. The client got the whole answer and the appliance's FIN,
// and the plaintext must show that FIN, before any RST: it showed only
// the appliance's RST, as though the answer had been cut, while the tls
// record said ok (4 of 4 in review r1s25 F2).
func TestPlaintextOfLingeringCloseAtShutdown(t *testing.T) {
	sink := &endSink{}
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, plaintext: sink,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello") }})
	tc := tls.Client(r.dial0(t, r.dest), &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(tc, "GET /x HTTP/1.1\r\nHost: big.example\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err != io.EOF || string(body) != "hello" {
		t.Fatalf("the client read %q, then %v; want hello and the appliance's end", body, err)
	}
	time.Sleep(100 * time.Millisecond) // the appliance lingers for the client's end
	r.p.StacksClosing()
	r.ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.p.Wait(ctx)
	rec, ok := r.tlsRecord(t, 5*time.Second)
	if !ok {
		t.Fatal("the session was never recorded")
	}
	ev := sink.ends(t)
	t.Logf("tls record %s %q; plaintext %v", rec.Result, rec.Error, ev)
	fin := slices.Index(ev, "ServerClosed")
	if rst := slices.Index(ev, "ServerReset"); fin < 0 || rst >= 0 && rst < fin {
		t.Errorf("plaintext %v: want the appliance's FIN (ServerClosed), which the client read, before any RST", ev)
	}
	if rec.Result != "ok" {
		t.Errorf("tls record %s %q, want ok: the client had the whole answer", rec.Result, rec.Error)
	}
}
