package intercept_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestCurlHTTP10CutAnswerFails: curl --http1.0 over a bumped connection,
// the origin cutting its chunked answer short (4,000 of 8,000 bytes):
// curl must fail (a reset), not take the close as the body's end, with
// the plaintext tap (--capture-plaintext) or without. With it, curl
// exited 0 with 4,000 bytes: the tap's wrapper hid the TLS connection,
// which ended with a close_notify and a FIN.
func TestCurlHTTP10CutAnswerFails(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	for _, tap := range []bool{false, true} {
		t.Run(fmt.Sprintf("tap=%v", tap), func(t *testing.T) {
			r := newRig(t, testPolicy, func(c *intercept.Config) {
				if tap {
					c.Plaintext = &plainSink{}
				}
			})
			const size = 4000
			up := piecesOrigin(t, r.upLeaf("www.example.test"), true,
				fmt.Sprintf("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s", 2*size, strings.Repeat("a", size)))
			ln := r.listenOnce(up, tlsDest)
			dir := t.TempDir()
			ca := filepath.Join(dir, "ca.pem")
			if err := os.WriteFile(ca, r.ca.TrustPEM(), 0o600); err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			var out bytes.Buffer
			cmd := exec.CommandContext(ctx, "curl", "-sS", "--http1.0", "--cacert", ca,
				"--resolve", fmt.Sprintf("www.example.test:%d:127.0.0.1", port),
				"-o", filepath.Join(dir, "body"), "-w", "code=%{http_code} size=%{size_download}",
				fmt.Sprintf("https://www.example.test:%d/a", port))
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			if rec := awaitRecord(t, r, "/a", waitLimit); rec == nil || rec.Result == "ok" {
				t.Errorf("the cut answer's record: %+v; want one not ok", rec)
			}
			if err == nil {
				t.Errorf("curl exited 0 on a body the origin cut at %d of %d bytes: %s",
					size, 2*size, strings.TrimSpace(out.String()))
			} else if !strings.Contains(out.String(), "reset") {
				t.Errorf("curl: %v: %s; want a reset", err, strings.TrimSpace(out.String()))
			}
		})
	}
}
