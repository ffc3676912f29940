package intercept

import (
	"net/http"
	"testing"
)

// TestDropConnectionOptionsAllocatesNothing: dropConnectionOptions made
// an allocation for every request with a Connection field (the WebSocket
// check split its values), though most HTTP/1.1 clients send
// "Connection: keep-alive" on every request, and its comment says none.
func TestDropConnectionOptionsAllocatesNothing(t *testing.T) {
	for _, conn := range []string{"", "keep-alive", "close", "Keep-Alive", "keep-alive, close", "Upgrade"} {
		req, _ := http.NewRequest("GET", "http://www.example.test/", nil)
		vals := []string{conn}
		n := testing.AllocsPerRun(200, func() {
			if conn != "" {
				req.Header["Connection"] = vals // goproxy drops it after the filter
			}
			dropConnectionOptions(req, nil)
		})
		if n > 0 {
			t.Errorf("Connection %q: %.1f allocations per request, want none", conn, n)
		}
	}
}
