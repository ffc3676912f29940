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
// proxy's block page, an API Gateway behind a wrong endpoint) answers
// every PutLogEvents with a success of its own and never forwards it: the
// service stores nothing, and the records are not counted shipped. A 2xx
// alone counted them shipped, silently lost (review r4s24 F4); then an
// HTML page with a request ID, an empty 200, a 204 and a bare {} still
// did, the SDK taking the last three for a success (review r1s25 F1).
func TestIntermediaryPageNotShipped(t *testing.T) {
	for _, c := range []struct {
		name string
		page func(w http.ResponseWriter)
	}{
		{"html page", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "<html>blocked by policy</html>")
		}},
		{"html page with a request ID", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/html")
			w.Header().Set("X-Amzn-RequestId", "0b5c7d2e-0000-4000-8000-000000000001")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "<html>blocked by policy</html>")
		}},
		{"empty 200", func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
		}},
		{"204", func(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) }},
		{"plain JSON with a request ID", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Amzn-RequestId", "0b5c7d2e-0000-4000-8000-000000000002")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "{}")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := cwlogstest.NewServer(t)
			client := newFront(t, srv, func(f *front, w http.ResponseWriter, r *http.Request, body []byte) {
				if !isPut(r) {
					f.relay(w, r, body)
					return
				}
				c.page(w)
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
			if st.Shipped > uint64(stored) || st.Failed != n || st.LastError == "" {
				t.Errorf("%d records counted shipped and %d failed, %d stored, last error %q: the rest lost silently", st.Shipped, st.Failed, stored, st.LastError)
			}
		})
	}
}
