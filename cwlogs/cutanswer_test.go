package cwlogs

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// cutFront is a client of srv through a front that forwards every call;
// the first `cut` PutLogEvents answers that are 200 lose their body's
// second half (the connection breaks after the headers and part of the
// body), or are an intermediary's page (garbage), or, with stall > 0, have
// their body come stall after their head: the service has stored the batch.
func cutFront(t *testing.T, srv *cwlogstest.Server, cut int32, garbage bool, stall time.Duration) *cloudwatchlogs.Client {
	var left atomic.Int32
	left.Store(cut)
	return newFront(t, srv, func(f *front, w http.ResponseWriter, r *http.Request, body []byte) {
		status, answer := f.forward(w, r, body)
		switch {
		case !isPut(r) || status != http.StatusOK || left.Add(-1) < 0:
			w.WriteHeader(status)
			w.Write(answer)
		case stall > 0:
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			time.Sleep(stall)
			w.Write(answer)
		case garbage:
			w.Header().Del("Content-Length")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "<html>ok</html>")
		default:
			cutAnswer(w, answer)
		}
	})
}

// TestCutAnswerCountsStoredAsShipped: a PutLogEvents the service took
// (200) whose answer's body cannot be read (cut by a reset, an
// intermediary's page, or coming after the call's timeout) counts its
// records shipped, not failed: classed as a refusal, 50 of 50 stored
// records were counted failed and logged as lost (review r1cwlogs F1).
func TestCutAnswerCountsStoredAsShipped(t *testing.T) {
	t.Run("cut", func(t *testing.T) { cutAnswerCounted(t, false, 0) })
	t.Run("not the service's JSON", func(t *testing.T) { cutAnswerCounted(t, true, 0) })
	t.Run("body after the timeout", func(t *testing.T) { cutAnswerCounted(t, false, 400*time.Millisecond) })
}

func cutAnswerCounted(t *testing.T, garbage bool, stall time.Duration) {
	srv := cwlogstest.NewServer(t)
	client := cutFront(t, srv, 1, garbage, stall)
	cfg := testConfig()
	if stall > 0 {
		cfg.RequestTimeout = stall / 2
	}
	s, err := NewWithClient(t.Context(), client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := logs.count("their records are lost")
	const n = 50
	for i := range n {
		s.Ship(time.Now(), line(0, i, 100), records.Source{})
	}
	closeShipper(t, s, 5*time.Second)
	st := s.Stats()
	stored := srv.EventCount(cfg.Group, cfg.Stream)
	t.Logf("stored in CloudWatch: %d; stats: shipped=%d failed=%d dropped=%d rejected=%d retried=%d last_error=%q",
		stored, st.Shipped, st.Failed, st.Dropped, st.Rejected, st.Retried, st.LastError)
	t.Logf("'their records are lost' errors logged: %d", logs.count("their records are lost")-before)
	if stored != n {
		t.Fatalf("the service stored %d of %d records", stored, n)
	}
	if st.Failed != 0 || st.Shipped != n || logs.count("their records are lost") != before {
		t.Errorf("the service stored all %d records, but shipped %d, failed %d (refused as invalid, logged as lost)", n, st.Shipped, st.Failed)
	}
}
