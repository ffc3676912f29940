package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestReclaimWeighsWaitingStreams: at critical memory, a client whose few
// bumped HTTP/2 connections each hold 100 streams waiting on an origin of
// its own that takes them and never answers (each stream a handler, its
// request and a header list of tiny fields, about 150 KB, outside the
// stack) is reclaimed first, before a client with more ordinary relayed
// connections, whose stack buffers are all its connections hold: the
// client sees the hoarder's connections reset before any of the other's.
// Weighed by stack buffers alone, the few connections weighed less than
// the floor and only the ordinary client was reset. The waiting streams
// end, and their records say the appliance reset them.
func TestReclaimWeighsWaitingStreams(t *testing.T) { testReclaimWeighsHoardedStreams(t, false) }

// TestReclaimWeighsStreamsPastTheirHead is TestReclaimWeighsWaitingStreams
// with one change on the hoarder's origin: it answers each stream with a
// response head and a first event, then nothing (an event stream that
// stalls). Each stream holds as much as one waiting, and more (the
// response, goproxy's buffer copying its body), until its record is
// written; charged only until the head, the hoarder weighed its stack
// buffers alone again, and the ordinary client was reset instead.
func TestReclaimWeighsStreamsPastTheirHead(t *testing.T) { testReclaimWeighsHoardedStreams(t, true) }

// testReclaimWeighsHoardedStreams is TestReclaimWeighsWaitingStreams, its
// origin answering each stream with a head first if headFirst.
func testReclaimWeighsHoardedStreams(t *testing.T, headFirst bool) {
	const hoardConns, streams, bulkN = 3, 100, 20
	var atOrigin atomic.Int64 // streams the origin holds
	r := newBumpStallRig(t, 15*time.Minute, func(_ *bumpStallRig, w http.ResponseWriter, req *http.Request) {
		if headFirst {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, ":\n")
			w.(http.Flusher).Flush()
		}
		atOrigin.Add(1)
		<-req.Context().Done()
	}, "h2")
	bulk := netip.MustParseAddr("198.18.0.6") // the same endpoint, another client
	if err := r.client.Stack.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(bulk.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatalf("adding the bulk client's address: %s", err)
	}

	// ends are when the client saw each client's connections end.
	var mu sync.Mutex
	ends := map[string][]time.Time{}
	ended := func(who string) {
		mu.Lock()
		ends[who] = append(ends[who], time.Now())
		mu.Unlock()
	}
	endsOf := func(who string) []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ends[who])
	}

	// The ordinary client: relayed connections, 20 new ones, past the
	// floor of 16 (each 512 KiB of buffers: 10 MiB).
	var relayed atomic.Int64
	dst := destination(t, func(c *net.TCPConn) { relayed.Add(1); _, _ = io.Copy(io.Discard, c) })
	for range bulkN {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := r.client.DialTCPFrom(ctx, netip.AddrPortFrom(bulk, 0), dst)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		go func() { // nothing comes but the end
			_, _ = c.Read(make([]byte, 1))
			ended("bulk")
		}()
	}
	waitUntil(t, 5*time.Second, func() bool { return relayed.Load() == bulkN }, "the bulk client's relays")

	// The hoarder: a few connections, 100 streams each.
	var heads atomic.Int64 // response heads the hoarder has read
	for range hoardConns {
		c := r.dialTLS(t, "h2")
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if err := writeTinyFieldStreams(c, streams); err != nil {
			t.Fatal(err)
		}
		go func() { // read, so that the appliance's frames never wait
			fr := http2.NewFramer(io.Discard, c)
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					break
				}
				if _, ok := f.(*http2.HeadersFrame); ok {
					heads.Add(1)
				}
			}
			ended("hoarder")
		}()
	}
	waitUntil(t, 30*time.Second, func() bool { return atOrigin.Load() == hoardConns*streams }, "the streams at the origin")
	if headFirst { // past their heads: goproxy's handlers copy the bodies
		waitUntil(t, 10*time.Second, func() bool { return heads.Load() == hoardConns*streams }, "the heads at the client")
	}
	before := len(r.sink.parse(t))

	// Critical until both clients are down to the floor: each hoarder
	// connection holds about 8 MB (its streams, and its buffers), so the
	// hoarder keeps one or none; the ordinary client keeps 16.
	r.ns.SetMemoryPressure(netstack.MemoryCritical)
	r.p.SetMemoryPressure(netstack.MemoryCritical)
	const bulkReset = bulkN - netstack.CriticalMemoryClientFlows
	down := func() bool {
		h := len(endsOf("hoarder"))
		return h > 0 && len(endsOf("bulk")) == bulkReset && r.ns.Stats().MemoryReclaimed == uint64(h+bulkReset)
	}
	for end := time.Now().Add(10 * time.Second); !down(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the client saw %d of the hoarder's connections reset and %d of the ordinary client's (memory_reclaimed %d); want the hoarder's, then %d of the other's",
				len(endsOf("hoarder")), len(endsOf("bulk")), r.ns.Stats().MemoryReclaimed, bulkReset)
		}
	}
	r.ns.SetMemoryPressure(netstack.MemoryAmple)
	r.p.SetMemoryPressure(netstack.MemoryAmple)
	hoarded, bulked := endsOf("hoarder"), endsOf("bulk")
	t.Logf("%d of the hoarder's connections reset, the last %v before the ordinary client's first",
		len(hoarded), slices.MinFunc(bulked, time.Time.Compare).Sub(slices.MaxFunc(hoarded, time.Time.Compare)).Round(time.Millisecond))
	if last, first := slices.MaxFunc(hoarded, time.Time.Compare), slices.MinFunc(bulked, time.Time.Compare); !last.Before(first) {
		t.Errorf("the ordinary client's first connection was reset %v before the hoarder's last", last.Sub(first))
	}

	// Every stream of the hoarder's reset connections ends, recorded as
	// the appliance's reset; so does every connection reset.
	k := len(hoarded)
	waitUntil(t, 5*time.Second, func() bool {
		recs := r.sink.parse(t)[before:]
		return countKind(recs, "http") == k*streams && countKind(recs, "tls") == k && countKind(recs, "tcp") == bulkReset
	}, "the records of the reset connections and their streams")
	var sample string
	for _, rec := range r.sink.parse(t)[before:] {
		if rec.Result != "reset" || !strings.Contains(rec.Error, netstack.ErrMemoryReclaimed.Error()) {
			t.Errorf("%s record: result %q, error %q; want reset, naming %q", rec.Kind, rec.Result, rec.Error, netstack.ErrMemoryReclaimed)
		}
		if rec.Kind == "http" {
			sample = rec.Result + " " + rec.Error
		}
	}
	t.Logf("a waiting stream's record: %s", sample)
	if got, want := r.p.Stats().TCPActive, int64(bulkN-bulkReset+hoardConns-k); got != want {
		t.Errorf("%d connections active, want %d", got, want)
	}
}

// tinyFields is the fields of each hoarding stream: empty fields of 26
// one-letter names, about as many as the header list limit (64 KiB and
// 10 fields' allowance, at 33 bytes a field as HTTP/2 counts these) lets
// through: about 77 KB held a stream (intercept/held.go). Indexed in the
// HPACK table, each costs the client a byte.
const tinyFields = 1900

// writeTinyFieldStreams sends on c, an HTTP/2 connection's client end,
// the preface, SETTINGS and n GETs of big.example, each with tinyFields
// tiny fields.
func writeTinyFieldStreams(c *tls.Conn, n int) error {
	var buf, hb bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	enc := hpack.NewEncoder(&hb)
	for i := range n {
		hb.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "big.example"}, {Name: ":path", Value: "/poll"}} {
			_ = enc.WriteField(f)
		}
		for j := range tinyFields {
			_ = enc.WriteField(hpack.HeaderField{Name: string(rune('a' + j%26))})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(),
			EndStream: true, EndHeaders: true}); err != nil {
			return err
		}
	}
	_, err := c.Write(buf.Bytes())
	return err
}
