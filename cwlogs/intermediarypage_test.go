package cwlogs

import (
	"io"
	"net/http"
	"testing"
	"time"

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
	client := newFront(t, srv, func(f *front, w http.ResponseWriter, r *http.Request, body []byte) {
		if !isPut(r) {
			f.relay(w, r, body)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "<html>blocked by policy</html>")
	})
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
