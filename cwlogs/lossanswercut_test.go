package cwlogs

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

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
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	var cut atomic.Int32
	cut.Store(1)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequest(r.Method, srv.URL+r.URL.Path, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		rb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		if resp.StatusCode == 200 && bytes.Contains(body, []byte(`records_lost`)) && cut.Add(-1) >= 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(rb)))
			w.WriteHeader(200)
			w.Write(rb[:len(rb)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		w.WriteHeader(resp.StatusCode)
		w.Write(rb)
	}))
	t.Cleanup(front.Close)
	client := srv.Client(func(o *cloudwatchlogs.Options) { o.BaseEndpoint = aws.String(front.URL) })
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
