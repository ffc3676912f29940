package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clsPythonServer starts `python3 -m http.server` on 127.0.0.1, serving a
// directory that holds secret.txt, and returns its address; it skips the
// test without python3.
func clsPythonServer(t *testing.T) netip.AddrPort {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("SECRET-OF-DENIED-NAME\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return startLoopbackServer(t, "python3 -m http.server", func(port int) *exec.Cmd {
		return exec.Command(py, "-m", "http.server", fmt.Sprint(port), "--bind", "127.0.0.1", "--directory", dir)
	})
}

// Python's http.server splits a request line on any whitespace and drops
// it before the method, so "GET\t/secret.txt HTTP/1.1" is an ordinary GET
// to it. Under a deny rule for the name such a line is refused as an
// unreadable head, as two spaces are; it was relayed as tcp, and the
// denied name's file came back.
func TestWhitespaceRequestLineDeniedByName(t *testing.T) {
	py := clsPythonServer(t)
	r := newClsRig(t, clsDenyByName, clsOptions{})
	for _, tc := range []struct{ line, reason string }{
		{"GET /secret.txt HTTP/1.1", "denied by policy"},
		{"GET  /secret.txt HTTP/1.1", "request head could not be read"},
		{"GET\t/secret.txt HTTP/1.1", "request head could not be read"},
		{"GET\t/secret.txt\tHTTP/1.1", "request head could not be read"},
		{" GET /secret.txt HTTP/1.1", "request head could not be read"},
		{"GET\v/secret.txt HTTP/1.1", "request head could not be read"},
		{"\fGET\x1f/secret.txt HTTP/1.1", "request head could not be read"},
	} {
		c := r.dial(t, py)
		fmt.Fprintf(c, "%s\r\nHost: denied.example\r\nConnection: close\r\n\r\n", tc.line)
		c.SetReadDeadline(time.Now().Add(8 * time.Second))
		raw, _ := io.ReadAll(c)
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(raw))), nil)
		switch {
		case strings.Contains(string(raw), "SECRET-OF-DENIED-NAME"):
			t.Errorf("%q: the denied name's file reached the client", tc.line)
		case err != nil || (resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusBadRequest):
			t.Errorf("%q: got %q, want the appliance's 403 or 400", tc.line, raw)
		}
		c.Close()
		rec := r.record(t, c, "http")
		if rec.Action != "deny" || rec.Result != "denied" || !strings.HasPrefix(rec.Error, tc.reason) {
			t.Errorf("%q: record %+v", tc.line, rec)
		}
	}
}
