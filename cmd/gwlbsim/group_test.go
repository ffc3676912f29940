package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

func TestParseGroupFlags(t *testing.T) {
	base := []string{"--addr", "198.18.1.2", "--tun", "tun0"}
	t.Run("targets", func(t *testing.T) {
		o, err := parseFlags(append(base[:4:4], "--target", "198.18.1.11", "--target", "198.18.1.12:7000,198.18.1.13",
			"--stickiness", "source_ip_dest_ip_proto", "--health-port", "8080", "--health-path", "/healthz",
			"--health-interval", "250ms", "--health-timeout", "200ms", "--healthy-threshold", "2", "--unhealthy-threshold", "3",
			"--on-unhealthy", "rebalance", "--on-deregistration", "rebalance", "--deregistration-delay", "20s",
			"--tcp-idle-timeout", "60s", "--idle-timeout", "30s", "--admin-addr", "127.0.0.1:9081"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		want := groupOptions{
			Targets: []netip.AddrPort{
				netip.MustParseAddrPort("198.18.1.11:6081"), netip.MustParseAddrPort("198.18.1.12:7000"), netip.MustParseAddrPort("198.18.1.13:6081"),
			},
			Stickiness: gwlbsim.ThreeTuple,
			Health: gwlbsim.HealthCheck{Port: 8080, Path: "/healthz", Interval: 250 * time.Millisecond, Timeout: 200 * time.Millisecond,
				HealthyThreshold: 2, UnhealthyThreshold: 3},
			Attributes:     gwlbsim.Attributes{OnUnhealthy: gwlbsim.Rebalance, OnDeregistration: gwlbsim.Rebalance, DeregistrationDelay: 20 * time.Second},
			TCPIdleTimeout: time.Minute, IdleTimeout: 30 * time.Second,
		}
		if o.Group == nil || o.Appliance.IsValid() || o.AdminAddr != "127.0.0.1:9081" {
			t.Fatalf("got %+v: want a group, no --appliance, the admin address", o)
		}
		g := *o.Group
		if len(g.Targets) != 3 || g.Targets[0] != want.Targets[0] || g.Targets[1] != want.Targets[1] || g.Targets[2] != want.Targets[2] {
			t.Errorf("targets %v, want %v", g.Targets, want.Targets)
		}
		g.Targets, want.Targets = nil, nil
		if g.Stickiness != want.Stickiness || g.Health != want.Health || g.Attributes != want.Attributes ||
			g.TCPIdleTimeout != want.TCPIdleTimeout || g.IdleTimeout != want.IdleTimeout {
			t.Errorf("group %+v\nwant %+v", g, want)
		}
		cfg := o.simConfig()
		if len(cfg.Targets) != 3 || cfg.Appliance.IsValid() || cfg.HealthCheck != want.Health {
			t.Errorf("simulator config %+v", cfg)
		}
	})
	t.Run("appliance and a target", func(t *testing.T) {
		o, err := parseFlags(append(base[:4:4], "--appliance", "198.18.1.1", "--target", "198.18.1.11"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if o.Appliance != netip.MustParseAddrPort("198.18.1.1:6081") || o.Group == nil || len(o.Group.Targets) != 1 {
			t.Errorf("got %+v", o)
		}
	})
	t.Run("one appliance: the defaults", func(t *testing.T) {
		o, err := parseFlags(append(base[:4:4], "--appliance", "198.18.1.1"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		cfg := o.simConfig()
		if o.Group != nil || cfg.HealthCheck.Port != 0 || cfg.Stickiness != gwlbsim.FiveTuple ||
			cfg.Attributes.DeregistrationDelay != 300*time.Second || cfg.TCPIdleTimeout != 350*time.Second || cfg.IdleTimeout != 120*time.Second {
			t.Errorf("config %+v: want one target with the GWLB's defaults", cfg)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no target", nil, "--appliance is required"},
		{"bad target", []string{"--target", "::1"}, "--target"},
		{"same address twice", []string{"--target", "198.18.1.11", "--target", "198.18.1.11:7000"}, "already a target"},
		{"appliance again", []string{"--appliance", "198.18.1.11", "--target", "198.18.1.11"}, "already a target"},
		{"stickiness", []string{"--target", "198.18.1.11", "--stickiness", "4-tuple"}, "--stickiness"},
		{"failover", []string{"--target", "198.18.1.11", "--on-unhealthy", "maybe"}, "--on-unhealthy"},
		{"deregistration failover", []string{"--target", "198.18.1.11", "--on-deregistration", "maybe"}, "--on-deregistration"},
		{"delay", []string{"--target", "198.18.1.11", "--deregistration-delay", "2h"}, "--deregistration-delay"},
		{"health flag without a port", []string{"--target", "198.18.1.11", "--health-interval", "1s"}, "needs --health-port"},
		{"health timeout", []string{"--target", "198.18.1.11", "--health-port", "80", "--health-interval", "1s", "--health-timeout", "2s"}, "--health-timeout"},
		{"health path", []string{"--target", "198.18.1.11", "--health-port", "80", "--health-path", "x"}, "--health-path"},
		{"threshold", []string{"--target", "198.18.1.11", "--health-port", "80", "--unhealthy-threshold", "0"}, "--unhealthy-threshold"},
		{"health port", []string{"--target", "198.18.1.11", "--health-port", "70000"}, "--health-port"},
		{"idle", []string{"--target", "198.18.1.11", "--idle-timeout", "0s"}, "--idle-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(append(append([]string{}, base...), tc.args...), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// TestHelpDocumentsGroupFlags: -help names the target group's flags and the
// admin endpoints.
func TestHelpDocumentsGroupFlags(t *testing.T) {
	var out bytes.Buffer
	if err := runMain([]string{"-help"}, io.Discard, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("runMain(-help) = %v", err)
	}
	for _, f := range []string{"-target", "-stickiness", "-health-port", "-health-path", "-health-interval", "-health-timeout",
		"-healthy-threshold", "-unhealthy-threshold", "-on-unhealthy", "-on-deregistration", "-deregistration-delay",
		"-tcp-idle-timeout", "-idle-timeout", "-admin-addr", "/deregister", "/register", "/stats", "/flows", "/route", "/attributes", "fail-open"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("-help output does not mention %s", f)
		}
	}
}

// The admin tests' addresses: the simulator and two fake appliances.
var (
	adminSimAddr = netip.MustParseAddr("127.86.82.2")
	adminTargetA = netip.MustParseAddr("127.86.82.11")
	adminTargetB = netip.MustParseAddr("127.86.82.12")
)

// startFakeAt is newFakeAppliance on a chosen address.
func startFakeAt(t *testing.T, addr netip.Addr, sim netip.AddrPort) *fakeAppliance {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatalf("fake appliance: %v", err)
	}
	return startFake(t, c, sim)
}

// TestAdminEndpoints drives the admin handler of a simulator in front of
// two fake appliances: /stats, /route, /flows, /deregister, /register and
// /attributes.
func TestAdminEndpoints(t *testing.T) {
	simAP := netip.AddrPortFrom(adminSimAddr, netstack.GenevePort)
	fa, fb := startFakeAt(t, adminTargetA, simAP), startFakeAt(t, adminTargetB, simAP)
	sim, err := gwlbsim.New(gwlbsim.Config{Addr: adminSimAddr, Targets: []netip.AddrPort{fa.addr(), fb.addr()}, Senders: 2,
		Attributes: gwlbsim.Attributes{DeregistrationDelay: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	dev, peer := packetPair(t)
	ep := sim.Endpoint(0x0123456789abcdef0, 0x0a1b2c3d4e5f6071)
	p := newPump(packetDevice{dev}, ep)
	go p.readLoop()
	srv := httptest.NewServer(adminHandler(sim, ep.ID(), p))
	defer srv.Close()

	do := func(method, path string, wantCode int, into any) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantCode {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, body, wantCode)
		}
		if into != nil {
			if err := json.Unmarshal(body, into); err != nil {
				t.Fatalf("%s %s: %v in %s", method, path, err, body)
			}
		}
	}

	// A flow through the pump: /route names its target, /flows lists it.
	src, dst := netip.AddrPortFrom(testClient, 40000), netip.AddrPortFrom(testDest, 53)
	var route struct {
		Target   netip.AddrPort `json:"target"`
		Existing bool           `json:"existing"`
	}
	do("GET", "/route?proto=udp&src="+src.String()+"&dst="+dst.String(), 200, &route)
	if route.Existing || (route.Target != fa.addr() && route.Target != fb.addr()) {
		t.Fatalf("route of a new flow %+v", route)
	}
	pkt := udpPacket(src, dst, []byte("q"))
	if _, err := writePeer(peer, pkt); err != nil {
		t.Fatal(err)
	}
	if got := readPeer(t, peer); !bytes.Equal(got, reflectPacket(pkt)) {
		t.Fatalf("reply %x", got)
	}
	var flows []gwlbsim.FlowInfo
	do("GET", "/flows", 200, &flows)
	if len(flows) != 1 || flows[0].Src != src || flows[0].Dst != dst || flows[0].Target != route.Target || flows[0].Proto != "udp" ||
		flows[0].Endpoint != "vpce-0123456789abcdef0" {
		t.Fatalf("flows %+v: want the one flow, on %s", flows, route.Target)
	}
	do("GET", "/route?proto=udp&src="+src.String()+"&dst="+dst.String(), 200, &route)
	if !route.Existing {
		t.Errorf("route of the flow just made: %+v, want existing", route)
	}

	// The simulator counts a datagram once its send returns, and the
	// reply can come back first: wait for the count (5 s at most).
	var st simStats
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st = simStats{}
		do("GET", "/stats", 200, &st)
		if st.Sent == 1 || time.Now().After(end) {
			break
		}
	}
	if st.Sent != 1 || st.Received != 1 || st.Flows != 1 || len(st.Targets) != 2 || st.Stickiness != gwlbsim.FiveTuple ||
		st.Attributes.DeregistrationDelay != "1h0m0s" || st.TUN.FromDevice != 1 || st.HealthCheck != nil {
		t.Fatalf("stats %+v", st)
	}
	for _, ts := range st.Targets {
		if ts.State != gwlbsim.StateHealthy {
			t.Errorf("target %+v: want healthy without health checks", ts)
		}
	}

	// Deregister the flow's target: draining, then unknown and state errors.
	var ts gwlbsim.TargetStats
	do("POST", "/deregister?target="+route.Target.Addr().String(), 200, &ts)
	if ts.State != gwlbsim.StateDraining || ts.Flows != 1 {
		t.Fatalf("deregistered target %+v: want draining with its flow", ts)
	}
	do("POST", "/deregister?target="+route.Target.String(), 409, nil)
	do("POST", "/deregister?target=127.86.82.99", 404, nil)
	do("POST", "/deregister?target=nonsense", 400, nil)
	do("GET", "/deregister", 405, nil)
	do("POST", "/register?target="+route.Target.String(), 409, nil)

	// Attributes: a shorter delay applies to the next deregistration.
	var attrs attributesJSON
	do("POST", "/attributes?on_deregistration=rebalance&deregistration_delay=0s&on_unhealthy=rebalance", 200, &attrs)
	if attrs.OnDeregistration != gwlbsim.Rebalance || attrs.OnUnhealthy != gwlbsim.Rebalance || attrs.DeregistrationDelay != "0s" {
		t.Fatalf("attributes %+v", attrs)
	}
	do("POST", "/attributes?on_unhealthy=sometimes", 400, nil)
	do("POST", "/attributes?on_unhealthy=no_rebalance", 400, nil) // the GWLB refuses mixed target_failover values
	do("POST", "/attributes?colour=blue", 400, nil)
	do("GET", "/attributes", 200, &attrs)
	if attrs.OnDeregistration != gwlbsim.Rebalance {
		t.Errorf("attributes after a refused change %+v", attrs)
	}
	other := fa.addr()
	if other == route.Target {
		other = fb.addr()
	}
	do("POST", "/deregister?target="+other.String(), 200, &ts)
	if ts.State != gwlbsim.StateUnused {
		t.Errorf("deregistered without delay: %+v, want unused", ts)
	}
	// A new target, registered by address alone (port 6081).
	do("POST", "/register?target=127.86.82.13", 200, &ts)
	if ts.Addr != netip.MustParseAddrPort("127.86.82.13:6081") || ts.State != gwlbsim.StateHealthy {
		t.Errorf("registered target %+v", ts)
	}
	do("POST", "/register?target="+other.String(), 200, &ts)
	if ts.State != gwlbsim.StateHealthy {
		t.Errorf("registered again: %+v", ts)
	}
	var routes []struct {
		Src    netip.AddrPort `json:"src"`
		Target netip.AddrPort `json:"target"`
	}
	do("GET", "/route?proto=tcp&src=198.18.50.2:50000&dst=198.18.2.3:80&count=40", 200, &routes)
	seen := map[netip.AddrPort]bool{}
	for i, r := range routes {
		if r.Src.Port() != 50000+uint16(i) {
			t.Fatalf("route %d for %s, want port %d", i, r.Src, 50000+i)
		}
		seen[r.Target] = true
	}
	if len(routes) != 40 || len(seen) < 2 {
		t.Errorf("40 routes over %d targets: %+v", len(seen), routes)
	}
	do("GET", "/route?proto=tcp&src=198.18.50.2:65530&dst=198.18.2.3:80&count=10", 400, nil)
	do("GET", "/route?proto=sctp&src=1.2.3.4:1&dst=1.2.3.4:2", 400, nil)
	do("GET", "/route?proto=tcp&src=1.2.3.4&dst=1.2.3.4:2", 400, nil)
}

func writePeer(fd int, pkt []byte) (int, error) { return unix.Write(fd, pkt) }

func readPeer(t *testing.T, fd int) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue // the runtime's preemption signal, not the device
		}
		if err != nil {
			t.Fatalf("reading a reply from the fake device: %v", err)
		}
		return buf[:n]
	}
}
