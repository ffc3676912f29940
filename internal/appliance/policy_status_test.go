package appliance

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestReloadStatus: /stats and /metrics show which policy is in force (its
// file's hash, mode, default, rules) and how reloads went. A bad file and
// a file cut short before its `default: deny` are both rejected, counted
// and named in last_error, and the deny policy stays in force for new
// flows; a good file is loaded, counted, and its hash replaces the old.
func TestReloadStatus(t *testing.T) {
	const first = "policy:\n  mode: enforce\n  default: deny\n"
	r := newRig(t, func(o *Options) {
		o.Config = filepath.Join(t.TempDir(), "gwlbproxy.yaml")
		if err := os.WriteFile(o.Config, []byte(first), 0o644); err != nil {
			t.Fatal(err)
		}
	}, nil)
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(r.app.opts.Config, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	dial := func() error {
		c, err := r.client.DialTCP(ctxT(t, 5*time.Second), srv)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	}
	metrics := func() string {
		_, m := httpGet(t, "http://"+r.app.adminLn.Addr().String()+"/metrics")
		return m
	}

	st := r.stats().Policy
	if st.Hash != policy.FileHash([]byte(first)) || st.Mode != "enforce" || st.Default != "deny" || st.Rules != 0 ||
		st.Reloads != 0 || st.ReloadErrors != 0 || st.LoadedAt.IsZero() {
		t.Fatalf("/stats policy at start: %+v", st)
	}
	if err := dial(); err == nil {
		t.Fatal("default deny let a flow through")
	}

	write("policy:\n  default: deny\n  rules:\n    - {name: x, dest_cidrs: [\"10.0.0.0/33\"], action: allow}\n")
	if err := r.app.Reload(); err == nil {
		t.Fatal("a bad file was loaded")
	}
	write("policy:\n  mode: enforce\n") // the first file, cut short
	if err := r.app.Reload(); err == nil {
		t.Fatal("a file without default replaced default deny")
	}
	st = r.stats().Policy
	if st.ReloadErrors != 2 || st.Reloads != 0 || !strings.Contains(st.LastError, "no `default`") ||
		st.Hash != policy.FileHash([]byte(first)) || st.Default != "deny" || st.LastReload.IsZero() {
		t.Fatalf("/stats policy after two rejected reloads: %+v", st)
	}
	if err := dial(); err == nil {
		t.Fatal("after rejected reloads a flow got through: the deny policy is not in force")
	}
	if m := metrics(); !strings.Contains(m, "\ngwlbproxy_policy_reload_errors_total 2\n") ||
		!strings.Contains(m, "\ngwlbproxy_policy_last_reload_success 0\n") ||
		!strings.Contains(m, `gwlbproxy_policy_info{default="deny",hash="`+st.Hash+`",mode="enforce"} 1`) {
		t.Errorf("/metrics after rejected reloads:\n%s", grepLines(m, "gwlbproxy_policy_"))
	}

	second := "policy:\n  mode: enforce\n  default: deny\n  rules:\n    - {name: echo, dest_cidrs: [\"" + srv.Addr().String() + "\"], action: allow}\n"
	write(second)
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	st = r.stats().Policy
	if st.Reloads != 1 || st.ReloadErrors != 2 || st.LastError != "" || st.Rules != 1 ||
		st.Hash != policy.FileHash([]byte(second)) || st.Hash == policy.FileHash([]byte(first)) {
		t.Fatalf("/stats policy after a good reload: %+v", st)
	}
	if err := dial(); err != nil {
		t.Fatalf("the reloaded rule does not let the flow through: %v", err)
	}
	if m := metrics(); !strings.Contains(m, "\ngwlbproxy_policy_reloads_total 1\n") ||
		!strings.Contains(m, "\ngwlbproxy_policy_rules 1\n") ||
		!strings.Contains(m, "\ngwlbproxy_policy_last_reload_success 1\n") ||
		!strings.Contains(m, `hash="`+st.Hash+`"`) {
		t.Errorf("/metrics after a good reload:\n%s", grepLines(m, "gwlbproxy_policy_"))
	}
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}
