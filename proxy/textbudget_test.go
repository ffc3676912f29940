package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestRequestTextBudget: allowed requests with a long path and User-Agent
// made records as long as the client liked, so one client's pipelined
// GETs made 30-37 MB/s of them. Each is still recorded, but the text a
// client chooses is recorded whole only while its bucket can pay for it:
// past that, client A's records keep their decision, host, method,
// status and result, with path and user_agent cut to 256 bytes (their
// start and end, "…" between) and truncated set, and are counted in
// request_text_cut; client B's, from another address at the same time,
// are whole.
func TestRequestTextBudget(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n", clsOptions{})
	// Room for two of A's records: each is 3,000 + 1,000 bytes of text,
	// about 3,500 of it past the cut. Refilled slowly enough that no
	// third fits during the test.
	r.p.text.rate = recordRate{burst: 8 << 10, perSecond: 1}
	origin := textOrigin(t)
	path := "/" + strings.Repeat("p", 3000)
	ua := strings.Repeat("u", 1000)
	clientA, clientB := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	const fromA, fromB = 6, 2
	textRequests(t, r.dialFrom(t, clientA, origin), fromA, path, ua)
	textRequests(t, r.dialFrom(t, clientB, origin), fromB, path, ua)

	var recs []records.Record
	for deadline := time.Now().Add(5 * time.Second); len(recs) < fromA+fromB && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		recs = recs[:0]
		for _, rec := range r.recs.parse(t) {
			if rec.Kind == "http" {
				recs = append(recs, rec)
			}
		}
	}
	var wholeA, cutA, wholeB int
	for _, rec := range recs {
		if rec.Action != "allow" || rec.Rule != "default" || rec.Host != "text.example" || rec.Method != "GET" || rec.Status != http.StatusNoContent || rec.Result != "ok" {
			t.Fatalf("record lost what it must keep: %+v", rec)
		}
		whole := rec.Path == path && rec.UserAgent == ua && !rec.Truncated
		cut := rec.Truncated && len(rec.Path) <= requestTextCut && len(rec.UserAgent) <= requestTextCut &&
			endsOf(path, rec.Path) && endsOf(ua, rec.UserAgent)
		switch {
		case rec.ClientIP == clientA.String() && whole:
			wholeA++
		case rec.ClientIP == clientA.String() && cut:
			cutA++
		case rec.ClientIP == clientB.String() && whole:
			wholeB++
		default:
			t.Fatalf("client %s's record: path of %d bytes, user_agent of %d, truncated %v", rec.ClientIP, len(rec.Path), len(rec.UserAgent), rec.Truncated)
		}
	}
	if wholeA != 2 || cutA != fromA-2 || wholeB != fromB {
		t.Fatalf("client A: %d records whole, %d cut (want 2 and %d); client B: %d whole (want %d)", wholeA, cutA, fromA-2, wholeB, fromB)
	}
	if got := r.p.Stats().RequestTextCut; got != uint64(cutA) {
		t.Fatalf("request_text_cut %d, want %d", got, cutA)
	}
}

// endsOf reports whether cut is whole's start and end with "…" between,
// as a field past its client's budget is cut.
func endsOf(whole, cut string) bool {
	head, tail, ok := strings.Cut(cut, "…")
	return ok && head != "" && tail != "" && strings.HasPrefix(whole, head) && strings.HasSuffix(whole, tail)
}

// dialFrom is dial, with the flow's client address client.
func (r *clsRig) dialFrom(t *testing.T, client netip.Addr, dest netip.AddrPort) net.Conn {
	c, proxySide := testnet.TCPPair(t)
	flow := netstack.FlowInfo{
		Endpoint: 0x0123456789abcdef, Attachment: 0x1111222233334444, FlowCookie: 0xabcd,
		Client: netip.AddrPortFrom(client, c.LocalAddr().(*net.TCPAddr).AddrPort().Port()), Dest: dest,
	}
	go r.p.handleTCP(flow, &clsAcceptor{conn: proxySide})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// textOrigin is a kept-alive HTTP origin on loopback answering 204.
func textOrigin(t *testing.T) netip.AddrPort {
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// textRequests sends n GETs for path with User-Agent ua on c, one after
// another, each answered before the next, and closes c.
func textRequests(t *testing.T, c net.Conn, n int, path, ua string) {
	t.Helper()
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range n {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: text.example\r\nUser-Agent: %s\r\n\r\n", path, ua)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
}

// TestRequestTextBudgetHostAndError: a Host that cannot be read stood
// whole in its deny record's host (up to the head's 64 KiB) and quoted in
// its error, whatever its client's budget: text of the client's outside
// it (review rev30b / left31b). Now the host and the error keep 1,024
// bytes of JSON whole, as they always have for a name and the
// appliance's words; past it they are paid for, and cut, keeping both
// ends, once the client's budget is spent, as path and user_agent are.
func TestRequestTextBudgetHostAndError(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n", clsOptions{})
	r.p.text.rate = recordRate{burst: 1, perSecond: 1} // spent at once
	origin := textOrigin(t)
	client := netip.MustParseAddr("10.0.0.3")
	long := strings.Repeat("h", 5000) + ".example"       // longer than any name and port
	quoted := "text.example:" + strings.Repeat("9", 900) // quoted twice in the error: "port ... is not a number"
	for _, host := range []string{long, quoted} {
		c := r.dialFrom(t, client, origin)
		br := bufio.NewReader(c)
		// The connection's first request names a host that can be read:
		// the second's is decided on its own.
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: text.example\r\n\r\nGET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		for i := range 2 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("Host of %d bytes, response %d: %v", len(host), i, err)
			}
			resp.Body.Close()
		}
		c.Close()
	}
	var denies []records.Record
	for deadline := time.Now().Add(5 * time.Second); len(denies) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		denies = denies[:0]
		for _, rec := range r.recs.parse(t) {
			if rec.Kind == "http" && rec.Status == http.StatusBadRequest {
				denies = append(denies, rec)
			}
		}
	}
	if len(denies) != 2 {
		t.Fatalf("%d deny records of a Host that cannot be read, want 2", len(denies))
	}
	for _, rec := range denies {
		whole := long
		if strings.HasPrefix(rec.Host, "text.example:") {
			whole = quoted
		}
		// A host within 1,024 bytes of JSON stays whole.
		hostKept := rec.Host == whole && jsonLen(whole) <= 4*requestTextCut || endsOf(whole, rec.Host) && jsonLen(rec.Host) <= 4*requestTextCut
		if rec.Action != "deny" || !rec.Truncated || !hostKept {
			t.Errorf("deny record of a Host of %d bytes: action %q, truncated %v, host of %d bytes of JSON (%.40q…)", len(whole), rec.Action, rec.Truncated, jsonLen(rec.Host), rec.Host)
		}
		if jsonLen(rec.Error) > 4*requestTextCut || !strings.HasPrefix(rec.Error, "Host ") || whole == quoted && !strings.HasSuffix(rec.Error, "9\" is not a number") {
			t.Errorf("deny record of a Host of %d bytes: error of %d bytes of JSON (%.60q…)", len(whole), jsonLen(rec.Error), rec.Error)
		}
	}
}

// jsonLen is the length of s as encoding/json writes it, quotes left out.
func jsonLen(s string) int {
	b, _ := json.Marshal(s)
	return len(b) - 2
}
