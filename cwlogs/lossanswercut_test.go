package cwlogs

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestLossReportedOnceWhenAnswerCut: the first batch carrying a
// records_lost event has its answer cut after the service stored it: the
// stream tells of the losses once. Counted failed, the batch gave its
// loss count back, and the stream told of the same losses twice (4,118
// for 2,059 dropped; review r1cwlogs F1).
func TestLossReportedOnceWhenAnswerCut(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	var cut atomic.Int32
	cut.Store(1)
	client := newFront(t, srv, func(f *front, w http.ResponseWriter, r *http.Request, body []byte) {
		status, answer := f.forward(w, r, body)
		if status == http.StatusOK && bytes.Contains(body, []byte(`records_lost`)) && cut.Add(-1) >= 0 {
			cutAnswer(w, answer)
		}
		w.WriteHeader(status)
		w.Write(answer)
	})
	cfg := testConfig()
	cfg.BufferBytes = MinBufferBytes
	srv.Throttle(1 << 30)
	s, err := NewWithClient(t.Context(), client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 6000
	for i := range n {
		s.Ship(time.Now(), line(0, i, 1000), records.Source{})
	}
	time.Sleep(100 * time.Millisecond)
	srv.ClearFaults()
	closeShipper(t, s, 10*time.Second)
	st := s.Stats()
	var told uint64
	events := 0
	for _, e := range srv.Events(cfg.Group, cfg.Stream) {
		if !strings.Contains(e.Message, `"records_lost"`) {
			continue
		}
		var v struct{ Lost uint64 }
		json.Unmarshal([]byte(e.Message), &v)
		told += v.Lost
		events++
	}
	t.Logf("dropped %d; stream: %d records_lost events telling of %d lost; stats shipped=%d failed=%d loss_events=%d stored=%d",
		st.Dropped, events, told, st.Shipped, st.Failed, st.LossEvents, srv.EventCount(cfg.Group, cfg.Stream))
	if told != st.Dropped {
		t.Errorf("the stream tells of %d records lost, %d were", told, st.Dropped)
	}
}
