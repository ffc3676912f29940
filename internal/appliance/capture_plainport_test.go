package appliance

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestCapturePlaintextPortTaken: a client holds a wire connection from
// 7550 to the destination, then makes a bumped request from 40318, whose
// flipped port is 7550. Sharing that 5-tuple, Zeek or tshark (keying
// connections without the VLAN or interface) would take the two for one
// connection with two ISNs and garble both. The synthesized stream takes
// the next free port, 7551, and no plaintext packet uses 7550.
func TestCapturePlaintextPortTaken(t *testing.T) {
	requireTool(t, "tshark", "tshark")
	up := startUpstream(t, newTestNet().server(3), false)
	r, _, pcapDir := captureRig(t, up, func(o *Options) { o.Capture.Plaintext = true })
	const port = 40318
	taken := uint16(port ^ capture.PlaintextPortFlip)
	wire, err := r.client.DialTCPFrom(ctxT(t, 5*time.Second), netip.AddrPortFrom(clientV4, taken), up.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer wire.Close()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return r.client.DialTCPFrom(ctx, netip.AddrPortFrom(clientV4, port), up.addr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://www.example.test/hello?who=collide")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	tr.CloseIdleConnections()
	r.records(func(rs []records.Record) bool { return countKind(rs, "tls") >= 1 && countKind(rs, "http") >= 1 })
	awaitCaptureIdle(t, r)
	var plain, onTaken string
	for _, f := range pcapFilesIn(t, pcapDir) {
		plain += tshark(t, "-r", f, "-Y", "http.request", "-o", "tcp.try_heuristic_first:TRUE", "-T", "fields",
			"-e", "frame.interface_name", "-e", "tcp.srcport", "-e", "http.request.uri")
		onTaken += tshark(t, "-r", f, "-Y", fmt.Sprintf(`frame.interface_name contains "-plaintext" && tcp.port == %d`, taken),
			"-T", "fields", "-e", "frame.number")
	}
	want := fmt.Sprintf("vpce-00123456789abcdef-plaintext\t%d\t/hello?who=collide\n", taken+1)
	if plain != want {
		t.Errorf("the plaintext request: %q, want %q", plain, want)
	}
	if onTaken != "" {
		t.Errorf("plaintext packets on the wire connection's port %d: frames %q", taken, onTaken)
	}
}
