package appliance

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeIMDS is instance metadata as IMDSv2 serves it: a session token from
// PUT /latest/api/token, required on every GET.
type fakeIMDS struct {
	*httptest.Server
	v4, v6    string // the VPC's CIDR blocks, one a line; v6 empty: none (404)
	tokens    atomic.Int64
	tokenless atomic.Int64 // GETs without the token (IMDSv1)
}

const (
	fakeIMDSToken = "AQAEAFake-token=="
	fakeIMDSMAC   = "0e:1f:2a:3b:4c:5d"
)

func newFakeIMDS(t *testing.T, v4, v6 string) *fakeIMDS {
	f := &fakeIMDS{v4: v4, v6: v6}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			ttl := r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds")
			if ttl == "" {
				http.Error(w, "missing TTL", http.StatusBadRequest)
				return
			}
			f.tokens.Add(1)
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl)
			fmt.Fprint(w, fakeIMDSToken)
			return
		}
		if r.Header.Get("X-Aws-Ec2-Metadata-Token") != fakeIMDSToken {
			f.tokenless.Add(1)
			http.Error(w, "", http.StatusUnauthorized)
			return
		}
		macs := "/latest/meta-data/network/interfaces/macs/" + fakeIMDSMAC + "/"
		switch r.URL.Path {
		case "/latest/meta-data/mac":
			fmt.Fprint(w, fakeIMDSMAC)
		case macs + "vpc-ipv4-cidr-blocks":
			fmt.Fprint(w, f.v4)
		case macs + "vpc-ipv6-cidr-blocks":
			if f.v6 == "" {
				http.NotFound(w, r)
				return
			}
			fmt.Fprint(w, f.v6)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

// TestVPCCIDRsFromMetadata: the VPC's IPv4 and IPv6 CIDR blocks come from
// the primary interface's entries, through IMDSv2 only; a VPC without IPv6
// has IPv4 blocks alone.
func TestVPCCIDRsFromMetadata(t *testing.T) {
	for _, tc := range []struct {
		name, v4, v6 string
		want         []netip.Prefix
	}{
		{"IPv4 and IPv6", "10.0.0.0/16\n10.1.0.0/16\n", "2600:1f18:abc:de00::/56", prefixes("10.0.0.0/16", "10.1.0.0/16", "2600:1f18:abc:de00::/56")},
		{"IPv4 only", "172.31.0.0/16", "", prefixes("172.31.0.0/16")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imds := newFakeIMDS(t, tc.v4, tc.v6)
			got, err := vpcCIDRs(ctxT(t, 5*time.Second), imds.URL)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("vpcCIDRs = %v, %v; want %v", got, err, tc.want)
			}
			if imds.tokens.Load() == 0 || imds.tokenless.Load() != 0 {
				t.Errorf("%d session tokens, %d requests without one: want IMDSv2 only", imds.tokens.Load(), imds.tokenless.Load())
			}
		})
	}
	if _, err := vpcCIDRs(ctxT(t, 5*time.Second), newFakeIMDS(t, "not a CIDR", "").URL); err == nil {
		t.Error("a malformed CIDR block was taken")
	}
}

// TestGWLBCIDRsDefaultFromMetadata: without --gwlb-cidrs, GENEVE is
// accepted from the VPC's CIDR blocks that instance metadata names, and
// from nowhere else.
func TestGWLBCIDRsDefaultFromMetadata(t *testing.T) {
	for _, tc := range []struct {
		vpc     string
		allowed bool
	}{
		{"127.0.0.0/8", true},  // the simulator, 127.P.N.2, is in the VPC
		{"10.0.0.0/16", false}, // it is not
	} {
		t.Run(tc.vpc, func(t *testing.T) {
			imds := newFakeIMDS(t, tc.vpc, "")
			r := newRig(t, func(o *Options) { o.GWLBCIDRs, o.MetadataEndpoint = nil, imds.URL }, nil)
			if got := r.app.opts.GWLBCIDRs; !slices.Equal(got, prefixes(tc.vpc)) {
				t.Fatalf("--gwlb-cidrs defaulted to %v, want the VPC's %s", got, tc.vpc)
			}
			srv := serveUDP(t, netip.AddrPortFrom(r.net.server(3), 0), func(b []byte) []byte { return b })
			c := must(r.client.DialUDP(srv))(t)
			defer c.Close()
			must(c.Write([]byte("hello")))(t)
			if !tc.allowed {
				waitFor(t, "the datagram counted as an unknown_sender drop", func() string {
					if d := r.stats().Netstack.Drops; d["unknown_sender"] == 0 {
						return fmt.Sprintf("drops %v", d)
					}
					return ""
				})
				if st := r.stats().Netstack; st.Stacks != 0 || st.Flows != 0 {
					t.Fatalf("GENEVE from outside the VPC made %d stacks and %d flows", st.Stacks, st.Flows)
				}
				return
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "hello" {
				t.Fatalf("echo through the appliance: %q, %v; drops %v", buf[:n], err, r.stats().Netstack.Drops)
			}
		})
	}
}

// TestGWLBCIDRsRequiredOffEC2: with neither --gwlb-cidrs nor instance
// metadata (refused, or silent), the appliance refuses to start within a
// few seconds, naming the flag and its opt-out; nothing stays open.
func TestGWLBCIDRsRequiredOffEC2(t *testing.T) {
	silent := must(net.Listen("tcp", "127.0.0.1:0"))(t) // accepts, never answers
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	refused := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	refusedURL := "http://" + refused.Addr().String()
	refused.Close()
	for _, tc := range []struct{ name, endpoint string }{
		{"refused", refusedURL},
		{"silent", "http://" + silent.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet()
			o := DefaultOptions()
			geneve := netip.AddrPortFrom(tn.appliance, 0).String()
			o.GeneveAddr, o.AdminAddr, o.AccessLog, o.StateDir = geneve, netip.AddrPortFrom(tn.appliance, 0).String(), "", t.TempDir()
			o.MetadataEndpoint = tc.endpoint
			began := time.Now()
			a, err := New(o)
			if err == nil {
				a.Close()
				t.Fatal("started without --gwlb-cidrs and without instance metadata")
			}
			if d := time.Since(began); d > metadataTimeout+2*time.Second {
				t.Errorf("refusing to start took %s", d)
			}
			for _, want := range []string{"--gwlb-cidrs is required", "--gwlb-cidrs any"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// TestGWLBCIDRsAny: --gwlb-cidrs any accepts every sender, asks instance
// metadata nothing, and says at start that it is unsafe.
func TestGWLBCIDRsAny(t *testing.T) {
	imds := newFakeIMDS(t, "10.0.0.0/16", "")
	var logs bytes.Buffer
	old := slog.Default()
	lw := &lockedWriter{w: &logs}
	slog.SetDefault(slog.New(slog.NewTextHandler(lw, nil)))
	r := newRig(t, func(o *Options) { o.GWLBCIDRs, o.AnyGWLBSender, o.MetadataEndpoint = nil, true, imds.URL }, nil)
	slog.SetDefault(old)
	lw.mu.Lock()
	logged := logs.String()
	lw.mu.Unlock()
	if imds.tokens.Load()+imds.tokenless.Load() != 0 {
		t.Error("--gwlb-cidrs any asked instance metadata")
	}
	if !strings.Contains(logged, "level=WARN") || !strings.Contains(logged, "--gwlb-cidrs any") {
		t.Errorf("no warning about --gwlb-cidrs any at start; logs:\n%s", logged)
	}
	srv := serveUDP(t, netip.AddrPortFrom(r.net.server(3), 0), func(b []byte) []byte { return b })
	c := must(r.client.DialUDP(srv))(t)
	defer c.Close()
	must(c.Write([]byte("anyone")))(t)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "anyone" {
		t.Fatalf("echo with --gwlb-cidrs any: %q, %v", buf[:n], err)
	}

	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.AnyGWLBSender, o.GWLBCIDRs = true, prefixes("10.0.0.0/8") }, "--gwlb-cidrs"},
		{func(o *Options) { o.MaxEndpoints = 0 }, "--max-endpoints"},
	} {
		o := DefaultOptions()
		tc.mutate(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want an error naming %s", err, tc.want)
		}
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestMaxEndpoints: beyond --max-endpoints, a new GWLB endpoint's traffic
// is dropped and counted under endpoint_limit, in /stats and /metrics,
// while the endpoints served go on.
func TestMaxEndpoints(t *testing.T) {
	r := newRig(t, func(o *Options) { o.MaxEndpoints = 1 }, nil)
	srv := serveUDP(t, netip.AddrPortFrom(r.net.server(3), 0), func(b []byte) []byte { return b })
	ask := func(c net.Conn, msg string) error {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 32)
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) != msg {
			err = fmt.Errorf("answer %q", buf[:n])
		}
		return err
	}
	first := must(r.client.DialUDP(srv))(t)
	defer first.Close()
	if err := ask(first, "first endpoint"); err != nil {
		t.Fatalf("the first endpoint: %v", err)
	}
	second := must(r.sim.Endpoint(0x0fedcba987654321, 0x5555666677778888).NewClientStack(clientV4, clientV6))(t)
	c := must(second.DialUDP(srv))(t)
	defer c.Close()
	must(c.Write([]byte("second endpoint")))(t)
	waitFor(t, "the second endpoint's datagram counted as an endpoint_limit drop", func() string {
		if d := r.stats().Netstack.Drops; d["endpoint_limit"] == 0 {
			return fmt.Sprintf("drops %v", d)
		}
		return ""
	})
	if st := r.stats().Netstack; st.Stacks != 1 {
		t.Errorf("%d stacks with --max-endpoints 1", st.Stacks)
	}
	if err := ask(first, "still served"); err != nil {
		t.Fatalf("the first endpoint after the second was refused: %v", err)
	}
	_, metrics := httpGet(t, "http://"+r.app.adminLn.Addr().String()+"/metrics")
	if !strings.Contains(metrics, `gwlbproxy_drops_total{reason="endpoint_limit"} `) ||
		strings.Contains(metrics, `gwlbproxy_drops_total{reason="endpoint_limit"} 0`) {
		t.Errorf("/metrics shows no endpoint_limit drop")
	}
	if !strings.Contains(metrics, `gwlbproxy_drops_total{reason="unknown_sender"} 0`) {
		t.Errorf("/metrics has no unknown_sender series")
	}
}

// TestGWLBCIDRsVPCDefaultWarns: the default from instance metadata, the
// whole VPC, is logged at start as a warning that names the risk (any host
// of the VPC can forge GENEVE) and the flag that narrows it, not as news;
// a deployment that passes the GWLB's subnets gets no such warning.
func TestGWLBCIDRsVPCDefaultWarns(t *testing.T) {
	imds := newFakeIMDS(t, "10.0.0.0/16", "")
	resolve := func(o Options) string {
		t.Helper()
		var logs bytes.Buffer
		old := slog.Default()
		slog.SetDefault(slog.New(slog.NewTextHandler(&lockedWriter{w: &logs}, nil)))
		err := resolveGWLBSenders(&o)
		slog.SetDefault(old)
		if err != nil {
			t.Fatal(err)
		}
		return logs.String()
	}
	o := DefaultOptions()
	o.GWLBCIDRs, o.MetadataEndpoint = nil, imds.URL
	logged := resolve(o)
	for _, want := range []string{"level=WARN", "--gwlb-cidrs not set", "forge", "10.0.0.0/16"} {
		if !strings.Contains(logged, want) {
			t.Errorf("start-up logs for the VPC default lack %q:\n%s", want, logged)
		}
	}
	o.GWLBCIDRs = prefixes("10.0.1.0/28")
	if logged := resolve(o); strings.Contains(logged, "level=WARN") {
		t.Errorf("a warning with --gwlb-cidrs set to the GWLB's subnet:\n%s", logged)
	}
}

// TestGWLBCIDRsEmptyVPCBlocksRefused: instance metadata that names no VPC
// CIDR block stops the start (asking for --gwlb-cidrs) rather than leaving
// the senders' list empty. An empty list must never stand for "every
// sender": GENEVE from anyone who reaches the port could forge endpoints
// and clients and use the appliance as an open proxy, and without the
// warning "--gwlb-cidrs any" gives.
func TestGWLBCIDRsEmptyVPCBlocksRefused(t *testing.T) {
	imds := newFakeIMDS(t, "\n", "") // an empty IPv4 entry, no IPv6 one
	o := Options{MetadataEndpoint: imds.URL}
	err := resolveGWLBSenders(&o)
	if err == nil {
		t.Fatalf("empty VPC CIDR blocks accepted: senders %v, from the VPC %v", o.GWLBCIDRs, o.gwlbCIDRsFromVPC)
	}
	if !strings.Contains(err.Error(), "--gwlb-cidrs") {
		t.Errorf("error %q does not name --gwlb-cidrs", err)
	}
}

// TestGeneveSendersNeverEmpty: the senders' list the appliance hands the
// netstack is never empty, since the netstack reads a nil list as "every
// sender": "--gwlb-cidrs any" is spelt out as every address of both
// families, and options that leave no sender at all (whatever bug in
// resolving them would get there) stop the start instead of opening the
// GENEVE port to everyone.
func TestGeneveSendersNeverEmpty(t *testing.T) {
	if s, err := geneveSenders(&Options{}); err == nil {
		t.Errorf("no --gwlb-cidrs, not any: senders %v, want an error", s)
	}
	if s, err := geneveSenders(&Options{GWLBCIDRs: []netip.Prefix{}}); err == nil {
		t.Errorf("an empty --gwlb-cidrs list: senders %v, want an error", s)
	}
	s, err := geneveSenders(&Options{AnyGWLBSender: true})
	if err != nil || len(s) == 0 {
		t.Fatalf("--gwlb-cidrs any: senders %v, %v; want every address spelt out", s, err)
	}
	for _, a := range []string{"192.0.2.1", "10.0.0.1", "2001:db8::1"} {
		addr := netip.MustParseAddr(a)
		if !slices.ContainsFunc(s, func(p netip.Prefix) bool { return p.Contains(addr) }) {
			t.Errorf("--gwlb-cidrs any: senders %v leave out %s", s, addr)
		}
	}
	given := prefixes("10.0.0.0/16")
	if s, err := geneveSenders(&Options{GWLBCIDRs: given}); err != nil || !slices.Equal(s, given) {
		t.Errorf("--gwlb-cidrs 10.0.0.0/16: senders %v, %v; want %v", s, err, given)
	}
}
