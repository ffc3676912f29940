package appliance

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAdminIdleConnectionsClosed: a peer of the admin listener cannot hold
// a connection, and the goroutine serving it, for as long as it likes: a
// kept connection left idle is closed after the idle timeout, and one that
// never sends its head after the header timeout.
func TestAdminIdleConnectionsClosed(t *testing.T) {
	idle, header := adminIdleTimeout, adminHeaderTimeout
	adminIdleTimeout, adminHeaderTimeout = 300*time.Millisecond, 300*time.Millisecond
	t.Cleanup(func() { adminIdleTimeout, adminHeaderTimeout = idle, header })
	r := newRig(t, nil, nil)
	addr := r.app.adminLn.Addr().String()

	kept, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	kept.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(kept, "GET / HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(kept)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF || time.Since(start) > 3*time.Second {
		t.Fatalf("a kept, idle connection: %v after %s, want it closed after the idle timeout", err, time.Since(start))
	}

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetDeadline(time.Now().Add(5 * time.Second))
	start = time.Now()
	if _, err := silent.Read(make([]byte, 1)); err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("a connection that sends nothing: %v after %s, want it closed after the header timeout", err, time.Since(start))
	}
}

// TestAdminSilentBodyClosed: a request announcing a body that never comes
// cannot hold its connection: the server reads what the handler left of
// the body before the next request, and before ReadTimeout was set that
// read had no deadline at all.
func TestAdminSilentBodyClosed(t *testing.T) {
	idle, header, read := adminIdleTimeout, adminHeaderTimeout, adminReadTimeout
	adminIdleTimeout, adminHeaderTimeout, adminReadTimeout = 300*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond
	t.Cleanup(func() { adminIdleTimeout, adminHeaderTimeout, adminReadTimeout = idle, header, read })
	r := newRig(t, nil, nil)
	c, err := net.Dial("tcp", r.app.adminLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: admin\r\nContent-Length: 100\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = io.Copy(io.Discard, c) // the response, if any, then the end
	if took := time.Since(start); err != nil || took > 3*time.Second {
		t.Fatalf("a body that never comes: %v after %s, want the connection closed after the read timeout", err, took)
	}
}

// TestAdminUnreadResponsesEndTheConnection: a peer that asks and never
// reads its answers cannot hold an admin connection, and the goroutine
// and buffers serving it, for good (configuration.md "Admin listener": a
// response must be read within a minute). Here, with a small receive
// buffer and the write timeout shortened, it pipelines more requests than
// the buffers hold and stalls past the timeout: the connection must end
// before it has every answer.
func TestAdminUnreadResponsesEndTheConnection(t *testing.T) {
	w := adminWriteTimeout
	adminWriteTimeout = 500 * time.Millisecond
	t.Cleanup(func() { adminWriteTimeout = w })
	r := newRig(t, nil, nil)
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", r.app.adminLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 2000
	if _, err := io.WriteString(c, strings.Repeat("GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n", n)); err != nil {
		t.Fatal(err)
	}
	// The stall is the behaviour under test, not a wait for an event:
	// the peer reads nothing for well past the write timeout.
	const stall = 3 * time.Second
	time.Sleep(stall)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	got := 0
	for ; got < n; got++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			break
		}
	}
	if got == n {
		t.Fatalf("all %d responses came after the peer read nothing for %s: the write timeout (%s) did not end the connection", n, stall, adminWriteTimeout)
	}
}

// TestAdminAnswersOnlyItsPathsAndGET: the admin listener answers GET (and
// HEAD) on its own paths only (configuration.md "Admin listener"). The
// health check is "/" exactly, so a target group whose check path is wrong
// (/healthz) fails instead of passing whatever the path, and other methods
// get 405 rather than an answer.
func TestAdminAnswersOnlyItsPathsAndGET(t *testing.T) {
	r := newRig(t, nil, nil)
	admin := "http://" + r.app.adminLn.Addr().String()
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/", 200},
		{"HEAD", "/", 200},
		{"GET", "/healthz", 404},
		{"GET", "/nothing/here", 404},
		{"POST", "/", 405},
		{"POST", "/stats", 405},
		{"DELETE", "/metrics", 405},
	} {
		req, err := http.NewRequest(tc.method, admin+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}
