package intercept_test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// curlThrough runs curl against a loopback listener whose one accepted
// connection the rig serves as a cleartext flow to httpDest, and returns
// what curl printed: only the status code, beside any message.
func curlThrough(t *testing.T, r *rig, o *earlyOrigin, args ...string) string {
	t.Helper()
	full := append([]string{"-sS", "-o", "/dev/null", "-w", "code=%{http_code}", "--max-time", "15"}, args...)
	return curlRun(t, r, o, full...)
}

// curlRun is curlThrough with all of curl's arguments but the URL.
func curlRun(t *testing.T, r *rig, o *earlyOrigin, args ...string) string {
	t.Helper()
	ln := r.listenOnce(o.conn(), httpDest)
	r.offerRedial(o.conn())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	full := append(args[:len(args):len(args)], "http://"+ln.Addr().String()+"/a")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "curl", full...)
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // its code is in out
	return strings.TrimSpace(out.String())
}

// uploadFile writes an 8 MiB file to upload.
func uploadFile(t *testing.T) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(file, bytes.Repeat([]byte("z"), 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestCurlUploadGetsItsAnswer: curl uploads 8 MiB with a Content-Length
// (no "Expect: 100-continue"), 20 times each: as a cleartext
// connection's first request, to a host the policy denies; and to an
// origin that answers 413 from the head. The appliance reads at most
// 256 KiB of the body it left unread and closes: curl must get the 403
// or 413 every time, as the record says, not a reset that discards it
// ("Send failure: Connection reset by peer"). Before, the first request's
// deny closed at once with the body unread: about half the runs got the
// reset.
func TestCurlUploadGetsItsAnswer(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	file := uploadFile(t)
	for _, tc := range []struct {
		name, host, want string
	}{
		{"first-request-denied", "evil.example.test", "code=403"},
		{"origin-413", "www.example.test", "code=413"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const runs = 20
			failed := 0
			for i := range runs {
				o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
				r := newRig(t, testPolicy)
				out := curlThrough(t, r, o, "-H", "Host: "+tc.host, "-H", "Expect:", "--data-binary", "@"+file)
				if !strings.Contains(out, tc.want) {
					failed++
					t.Logf("run %d: curl %q", i, out)
				}
			}
			if failed > 0 {
				t.Errorf("%d of %d uploads never got their answer (%s)", failed, runs, tc.want)
			}
		})
	}
}

// TestGoClientFirstRequestDeniedUpload: as TestCurlUploadGetsItsAnswer's
// first request, with Go's http.Client, 20 times: each must get its 403.
// Before, most got "connection reset by peer".
func TestGoClientFirstRequestDeniedUpload(t *testing.T) {
	body := bytes.Repeat([]byte("z"), 8<<20)
	failed := 0
	const runs = 20
	for i := range runs {
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
		r := newRig(t, testPolicy)
		ln := r.listenOnce(o.conn(), httpDest)
		cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/a", bytes.NewReader(body))
		req.Host = "evil.example.test"
		resp, err := cl.Do(req)
		ln.Close()
		if err != nil {
			failed++
			t.Logf("run %d: %v", i, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			failed++
			t.Logf("run %d: %d", i, resp.StatusCode)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d denied uploads never got their 403", failed, runs)
	}
}
