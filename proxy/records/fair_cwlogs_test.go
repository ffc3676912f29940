package records_test

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestFloodDoesNotCrowdOutOthers: one client's allowed HTTP requests with
// 60 KB paths (under --max-header-bytes) come far faster than CloudWatch, at
// a real round trip, takes their records; another client's deny records,
// among them, must all reach CloudWatch: the buffer drops the flooding
// client's records, not the oldest of anyone's. The stream then holds
// records_lost events that add up to what was dropped.
func TestFloodDoesNotCrowdOutOthers(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	srv := cwlogstest.NewServer(t)
	srv.SetLatency(50 * time.Millisecond)
	cfg := cwlogs.Config{Group: "g", Stream: "s", FlushInterval: 20 * time.Millisecond,
		RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond, BufferBytes: cwlogs.MinBufferBytes}
	sh, err := cwlogs.NewWithClient(t.Context(), srv.Client(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := records.NewWriter(sh, io.Discard)
	path := "/" + strings.Repeat("a", 60000)
	n, victims := 0, 0
	// Counted, not timed: a loaded machine floods slowly.
	for n < 300 || sh.Stats().Dropped < 200 {
		w.Write(&records.Record{Kind: "http", Action: "allow", Rule: "default", Endpoint: "vpce-0a", ClientIP: "10.0.0.9",
			DestIP: "203.0.113.10", DestPort: 80, Result: "ok", Method: "GET", Host: "flood.example", Path: path, Status: 204})
		n++
		if n%5 == 0 {
			w.Write(&records.Record{Kind: "tls", Action: "deny", Rule: "block-bad", Endpoint: "vpce-0a", ClientIP: "10.0.0.5",
				DestIP: "198.51.100.7", DestPort: 443, Result: "denied", Error: "denied by policy", SNI: "exfil.example"})
			victims++
		}
		if n%4 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	stored, flood := 0, 0
	var lost uint64
	for _, e := range srv.Events("g", "s") {
		var r struct {
			Kind     string `json:"kind"`
			ClientIP string `json:"client_ip"`
			Lost     uint64 `json:"lost"`
		}
		if err := json.Unmarshal([]byte(e.Message), &r); err != nil {
			t.Fatalf("event %.80q: %v", e.Message, err)
		}
		switch {
		case r.Kind == cwlogs.LossKind:
			lost += r.Lost
		case r.ClientIP == "10.0.0.5":
			stored++
		case r.ClientIP == "10.0.0.9":
			flood++
		}
	}
	st := sh.Stats()
	t.Logf("flood records %d (%.0f MB), stored %d; other client's deny records %d, stored %d; dropped %d, loss events tell of %d",
		n, float64(n)*60e3/1e6, flood, victims, stored, st.Dropped, lost)
	if stored != victims {
		t.Errorf("%d of another client's %d deny records crowded out by one client's flood", victims-stored, victims)
	}
	if st.Dropped == 0 || uint64(flood)+st.Dropped != uint64(n) {
		t.Errorf("flood: %d records, %d stored, %d dropped: the drops were not all the flooder's", n, flood, st.Dropped)
	}
	if lost != st.Dropped {
		t.Errorf("loss events tell of %d lost records, %d were dropped", lost, st.Dropped)
	}
}
