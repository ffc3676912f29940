package proxy

import (
	"bytes"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestBumpH2ClientGrantsNoWindow: a bumped HTTP/2 client that opens many
// streams for large bodies and never grants a stream window keeps reading
// the connection (no TCP write of the appliance ever waits, so the write-
// stall bound never sees it), while the appliance's HTTP/2 transport takes
// each stream's body from the destination into memory. x/net's default
// windows (4 MiB a stream, 1 GiB a connection) let 20 streams pin 80 MiB,
// 250 a gigabyte; the upstream windows are capped now
// (upstreamH2ReceivePerConnection), so the destination gets to send that
// much and no more, however many streams.
func TestBumpH2ClientGrantsNoWindow(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, (*bumpStallRig).flood, "h2", "http/1.1")
	c := r.dialTLS(t, "h2")
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q with the appliance, want h2", p)
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	const streams = 20
	for i := range streams {
		hb.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "big.example"}, {Name: ":path", Value: "/big"}} {
			enc.WriteField(f)
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Read the connection for 5 s, answering what keeps it alive, never
	// granting a window.
	deadline := time.Now().Add(5 * time.Second)
	c.SetReadDeadline(deadline)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break // the deadline
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
	}
	served := r.served.Load()
	t.Logf("%d streams with no window for 5 s: the destination served %d KiB", streams, served>>10)
	// The connection window, plus what the sockets between the destination
	// and the appliance hold: far less than the 4 MiB a stream the
	// defaults took.
	if served > 24<<20 {
		t.Errorf("the destination served %d MiB into streams the client never opened a window on", served>>20)
	}
}
