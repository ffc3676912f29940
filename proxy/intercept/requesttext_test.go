package intercept_test

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestFirstHeadRecordPaysForText: a cleartext connection whose first,
// sniffed, head is never served (it cannot be read, is left unfinished
// past its deadline, or is cut short by the client's FIN) has a record
// that copies that head's method, path and User-Agent: it goes through
// Config.RequestText, the client's budget of text recorded whole, as
// every request's record does. Here the hook cuts every record, as a
// client whose budget is spent has them cut. goproxy.go wrote that
// record straight to Records: a 10 KB path and a 3 KB User-Agent went
// whole into it, once a connection, whatever the client's budget.
func TestFirstHeadRecordPaysForText(t *testing.T) {
	defer intercept.SetRequestHeadTimeout(300 * time.Millisecond)()
	path, ua := "/"+strings.Repeat("a", 10000), strings.Repeat("u", 3000)
	start := "GET " + path + " HTTP/1.1\r\nHost: www.example.test\r\nUser-Agent: " + ua + "\r\n"
	for _, tc := range []struct {
		name, head string
		fin        bool
		result     string
	}{
		{"unreadable", start + "no colon here\r\n\r\n", false, "denied"},
		{"timed out", start + "Accept: */*", false, "timeout"},
		{"cut by FIN", start + "Accept: */*", true, "denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen atomic.Int32
			r := newRig(t, testPolicy, func(c *intercept.Config) {
				c.RequestText = func(rec *records.Record) { seen.Add(1); rec.CutClientText(256) }
			})
			upEnd, _ := startHeadOrigin(t, nil)
			c, sv := r.connectTCP(upEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			if _, err := io.WriteString(c, tc.head); err != nil {
				t.Fatal(err)
			}
			if tc.fin {
				c.CloseWrite()
			}
			io.Copy(io.Discard, c)
			c.Close()
			sv.waitDoneOnce(t)
			recs := ofKind(r.records(), "http")
			if len(recs) != 1 {
				t.Fatalf("%d http records, want 1", len(recs))
			}
			rec := recs[0]
			if rec.Result != tc.result {
				t.Errorf("result %q (%q), want %q", rec.Result, rec.Error, tc.result)
			}
			if !strings.HasPrefix(rec.Path, "/aaa") || len(rec.Path) > 256 || len(rec.UserAgent) > 256 || !rec.Truncated {
				t.Errorf("record with a %d-byte path %.8q, a %d-byte user_agent, truncated %v: want both cut to 256 bytes, truncated (RequestText called %d times)",
					len(rec.Path), rec.Path, len(rec.UserAgent), rec.Truncated, seen.Load())
			}
		})
	}
}
