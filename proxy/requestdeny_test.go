package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestRequestDenyRecordsBounded plays an h2c client that sends request
// after request for a denied name: a few bytes each (the HPACK table
// names the rest), and each was a deny record of its own, with no bound,
// so one client could fill the records queue for everyone. Its records
// now come from a bucket of its own: every denial is counted, those past
// the bucket in denied_unrecorded, and its next record says how many went
// before it unrecorded.
func TestRequestDenyRecordsBounded(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n  rules:\n    - name: no-evil\n      domains: [evil.example]\n      action: deny\n", clsOptions{})
	request := h2cRequests(t, r.dial(t, r.plainDest), "evil.example", "403")
	const n = 1000
	start := time.Now()
	for range n / 100 { // within the server's 250 streams at once
		request(100)
	}
	elapsed := time.Since(start)
	time.Sleep(100 * time.Millisecond) // the bucket refills a little
	request(1)

	st := r.p.Stats()
	recorded := n + 1 - int(st.DeniedUnrecorded)
	most := requestDenyRecordBurst + int((elapsed.Seconds()+0.2)*requestDenyRecordRate) + 2
	if st.Denied != n+1 || recorded < requestDenyRecordBurst || recorded > most {
		t.Fatalf("denied %d, unrecorded %d: %d recorded, want all %d counted and %d to %d recorded",
			st.Denied, st.DeniedUnrecorded, recorded, n+1, requestDenyRecordBurst, most)
	}
	// Every denial unrecorded is told of by the client's next record; the
	// last request, after the bucket refilled, is recorded.
	var got, told int
	for deadline := time.Now().Add(3 * time.Second); got < recorded && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got, told = 0, 0
		for _, rec := range r.recs.parse(t) {
			if rec.Kind != "http" || rec.Action != "deny" {
				continue
			}
			got++
			if _, after, ok := strings.Cut(rec.Error, "; "); ok {
				var k int
				if _, err := fmt.Sscanf(after, "%d more requests denied from this client before this one", &k); err == nil {
					told += k
				}
			}
		}
	}
	if got != recorded || told != int(st.DeniedUnrecorded) || told == 0 {
		t.Fatalf("%d deny records (want %d), telling of %d unrecorded (want %d)", got, recorded, told, st.DeniedUnrecorded)
	}
}

// TestTrustPageRecordsBounded: the trust page is answered from memory
// inside any intercepted connection, and each request for it is an allow
// record, as cheap for an HTTP/2 client to make as a denied request's:
// its records come from a bucket per client too, and the record after a
// gap says how many went unrecorded.
func TestTrustPageRecordsBounded(t *testing.T) {
	const trustHost = "gwlbproxy.internal"
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{config: func(c *Config) {
		c.Intercept.TrustHost = trustHost
		c.Intercept.Trust = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "trust me") })
	}})
	request := h2cRequests(t, r.dial(t, r.plainDest), trustHost, "200")
	const n = 1000
	start := time.Now()
	for range n / 100 {
		request(100)
	}
	elapsed := time.Since(start)
	time.Sleep(100 * time.Millisecond)
	request(1)

	unrecorded := int(r.p.Stats().TrustUnrecorded)
	recorded := n + 1 - unrecorded
	most := requestDenyRecordBurst + int((elapsed.Seconds()+0.2)*requestDenyRecordRate) + 2
	if recorded < requestDenyRecordBurst || recorded > most {
		t.Fatalf("trust_unrecorded %d: %d of %d recorded, want %d to %d", unrecorded, recorded, n+1, requestDenyRecordBurst, most)
	}
	var got, told int
	for deadline := time.Now().Add(3 * time.Second); got < recorded && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got, told = 0, 0
		for _, rec := range r.recs.parse(t) {
			if rec.Kind != "http" || rec.Host != trustHost {
				continue
			}
			got++
			var k int
			if _, err := fmt.Sscanf(rec.Error, "%d more trust-page requests from this client before this one", &k); err == nil {
				told += k
			}
		}
	}
	if got != recorded || told != unrecorded || told == 0 {
		t.Fatalf("%d trust-page records (want %d), telling of %d unrecorded (want %d)", got, recorded, told, unrecorded)
	}
}

// h2cRequests starts an HTTP/2 (h2c) client on c and returns a function
// that sends n GET requests for authority, each a few bytes (the HPACK
// table names the rest), and reads their responses, failing t unless each
// has status.
func h2cRequests(t *testing.T, c net.Conn, authority, status string) func(n int) {
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.Write([]byte(http2.ClientPreface))
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	fr.WriteWindowUpdate(0, 1<<30)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	stream := uint32(1)
	return func(n int) {
		t.Helper()
		for range n {
			hb.Reset()
			for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
				{Name: ":authority", Value: authority}, {Name: ":path", Value: "/"}} {
				enc.WriteField(f)
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
			stream += 2
		}
		for got := 0; got < n; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("after %d of %d responses: %v", got, n, err)
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if s := f.PseudoValue("status"); s != status {
					t.Fatalf("stream %d: status %s, want %s", f.StreamID, s, status)
				}
				got++
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.GoAwayFrame:
				t.Fatalf("GOAWAY %v after %d of %d responses", f.ErrCode, got, n)
			}
		}
	}
}
