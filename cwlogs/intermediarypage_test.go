package cwlogs

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestIntermediaryPageNotShipped: an intermediary (a TLS-inspecting
// proxy's block page, a wrong endpoint) answers every PutLogEvents 200
// with its own HTML and never forwards it: the service stores nothing,
// and the records are not counted shipped, the answer carrying no request
// ID of the service's (a 2xx alone counted them shipped, silently lost;
// review r4s24 F4).
func TestIntermediaryPageNotShipped(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".PutLogEvents") {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(200)
			io.WriteString(w, "<html>blocked by policy</html>")
			return
		}
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
		w.WriteHeader(resp.StatusCode)
		w.Write(rb)
	}))
	t.Cleanup(front.Close)
	client := srv.Client(func(o *cloudwatchlogs.Options) { o.BaseEndpoint = aws.String(front.URL) })
	cfg := testConfig()
	s, err := NewWithClient(t.Context(), client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		s.Ship(time.Now(), line(0, i, 100), records.Source{})
	}
	closeShipper(t, s, 5*time.Second)
	st := s.Stats()
	stored := srv.EventCount(cfg.Group, cfg.Stream)
	t.Logf("stored %d; shipped=%d failed=%d dropped=%d retried=%d last_error=%q", stored, st.Shipped, st.Failed, st.Dropped, st.Retried, st.LastError)
	if st.Shipped > uint64(stored) || st.Failed != n {
		t.Errorf("%d records counted shipped and %d failed, %d stored: the rest lost silently", st.Shipped, st.Failed, stored)
	}
}
