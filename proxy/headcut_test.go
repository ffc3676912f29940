package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHTTPHeadCutDecidedWhole: a cleartext request whose Host comes after
// classification stopped reading (a pause longer than its wait, or 16 KiB
// of other fields first) was decided on no name: under a policy where only
// the name lets it through, the client got a 403 naming no host and a deny
// record with an empty Host, for a request the policy allows. It is
// decided once the head is whole.
func TestHTTPHeadCutDecidedWhole(t *testing.T) {
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "allow"), clsOptions{})
	for _, tc := range []struct {
		name        string
		first, rest string
		pause       time.Duration
	}{
		{"Host after a pause", "GET / HTTP/1.1\r\n", "Host: allowed.example\r\nConnection: close\r\n\r\n", 3500 * time.Millisecond},
		{"Host after 17 KB", "GET / HTTP/1.1\r\nCookie: " + strings.Repeat("a", 17000) + "\r\n", "Host: allowed.example\r\nConnection: close\r\n\r\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := r.dial(t, r.plainDest)
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			io.WriteString(c, tc.first)
			time.Sleep(tc.pause)
			io.WriteString(c, tc.rest)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d %q, want the allowed request served", resp.StatusCode, body)
			}
			rec := r.record(t, c, "http")
			if rec.Action != "allow" || rec.Rule != "web" || rec.Host != "allowed.example" || rec.Status != http.StatusOK {
				t.Errorf("record action %q rule %q host %q status %d, want allow by web for allowed.example, 200", rec.Action, rec.Rule, rec.Host, rec.Status)
			}
		})
	}
}
