package intercept_test

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestReloadDeniesUploadEnd: an upload whose data went before a reload
// denied its name, and whose end (the last chunk; an HTTP/2 END_STREAM)
// the client sends after it, was completed at the origin by that end (a
// whole request, after the deny), and recorded allow under the old rule
// when the origin did not answer. The read that brings only the body's
// end is decided again too: the end does not go, the record says deny.
func TestReloadDeniesUploadEnd(t *testing.T) {
	t.Run("chunked", func(t *testing.T) {
		r, holder := newReloadableRig(t)
		proxyEnd, originEnd := testnet.TCPPair(t)
		o := startKeptOrigin(t, originEnd, "", "")
		c, sv := r.connectTCP(proxyEnd, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		chunk := fmt.Sprintf("%x\r\n%s\r\n", len(piece(0)), piece(0))
		io.WriteString(c, "POST /commit HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"+chunk)
		o.waitFor(t, piece(0))
		after := reloadTo(t, holder, tightenedPolicy)
		io.WriteString(c, "0\r\n\r\n")
		io.ReadAll(c)
		o.waitEnded(t)
		o.mu.Lock()
		got := o.got.String()
		o.mu.Unlock()
		if strings.HasSuffix(got, "0\r\n\r\n") {
			t.Errorf("the origin got %q: the upload's end, sent after the deny", got)
		}
		c.Close()
		sv.waitDoneOnce(t)
		checkReloadDenied(t, wwwRecord(t, r), after, int64(len(piece(0))))
	})
	t.Run("h2c", func(t *testing.T) {
		r, holder := newReloadableRig(t)
		proxyEnd, originEnd := testnet.TCPPair(t)
		o := startKeptOrigin(t, originEnd, "", "")
		c, sv := r.connectTCP(proxyEnd, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		pc := newProbeClientOn(t, c, "http")
		id := pc.open("POST", "/commit", false)
		pc.data(id, []byte(piece(0)), false)
		o.waitFor(t, piece(0))
		after := reloadTo(t, holder, tightenedPolicy)
		pc.data(id, nil, true)
		if !waitFor(t, "the stream's answer", waitLimit, func() bool { return pc.status(id) != "" }) {
			t.Fatal("the stream the reload denied got no answer")
		}
		if s := pc.status(id); s != "403" {
			t.Errorf("the stream the reload denied got %q, want 403", s)
		}
		o.waitEnded(t)
		o.mu.Lock()
		got := o.got.String()
		o.mu.Unlock()
		if strings.HasSuffix(got, "0\r\n\r\n") {
			t.Errorf("the origin got %q: the upload's end, sent after the deny", got)
		}
		c.Close()
		sv.waitDoneOnce(t)
		checkReloadDenied(t, wwwRecord(t, r), after, int64(len(piece(0))))
	})
}
