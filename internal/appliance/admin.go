package appliance

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/internal/memwatch"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// stats is what /stats returns.
type stats struct {
	Draining bool     `json:"draining"`
	Broken   []string `json:"broken,omitempty"` // why the health check fails, besides draining
	// OwnAddrsKnown is whether the appliance's own addresses have been
	// read: until they are, every flow is refused (and Broken says so).
	OwnAddrsKnown bool `json:"own_addresses_known"`
	// MemoryPressureCause names the measure that made memory short or
	// critical (netstack's memory_pressure): go_memory, available_memory,
	// cgroup_memory or kernel_tcp_memory; absent while memory is ample.
	MemoryPressureCause string `json:"memory_pressure_cause,omitempty"`
	// Memory is the last reading of the measures not shown elsewhere.
	Memory     memoryStats    `json:"memory"`
	Netstack   netstack.Stats `json:"netstack"`
	Proxy      proxy.Stats    `json:"proxy"`
	Records    records.Stats  `json:"records"`
	CloudWatch *cwlogs.Stats  `json:"cloudwatch,omitempty"`
	Leaves     *certs.Stats   `json:"leaves,omitempty"`
	// CA is the interception CA's expiry, while one is loaded.
	CA *caStats `json:"ca,omitempty"`
	// Capture is there while pcap files or the mirror are on.
	Capture *capture.Stats `json:"capture,omitempty"`
	// Policy is the policy in force and how its reloads went.
	Policy policy.Status `json:"policy"`
	// TLSKeyLogErrors counts failed writes to --tls-keylog.
	TLSKeyLogErrors uint64 `json:"tls_keylog_errors,omitempty"`
	// TLSKeyLogDropped counts writes to --tls-keylog left out because the
	// file was at its cap (capture.KeyLogMaxBytes).
	TLSKeyLogDropped uint64 `json:"tls_keylog_dropped,omitempty"`
	// AccessLog is the --access-log file's, when it is a file.
	AccessLog *records.LogFileStats `json:"access_log,omitempty"`
}

// caStats is when the interception CA ends, and its key. Nothing else
// tells a running appliance's operator of the end: after it every
// connection the policy bumps is refused, and a restart refuses the CA.
type caStats struct {
	// NotAfter is the earliest NotAfter of the CA's chain: no leaf it
	// signs is valid later.
	NotAfter time.Time `json:"not_after"`
	// ExpiresInSeconds is the time left until NotAfter; negative once past.
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
	// Fingerprint is the trust anchor's SHA-256, as the trust page shows it.
	Fingerprint string `json:"fingerprint"`
	// KeyType is the CA's key (caKeyType): an RSA one makes every leaf
	// minted 6 to 40 times dearer than ecdsa-p256, the appliance's own.
	KeyType string `json:"key_type"`
}

// memoryStats is the memory watch's last reading of the kernel's TCP
// memory, host wide, and net.ipv4.tcp_mem's pressure threshold and max,
// in bytes; 0 when they cannot be read.
type memoryStats struct {
	TCPInUse    uint64 `json:"tcp_in_use"`
	TCPPressure uint64 `json:"tcp_pressure"`
	TCPMax      uint64 `json:"tcp_max"`
}

// stats takes a snapshot of every counter: /stats encodes it, and the
// metrics collector (metrics.go) reads it once per scrape.
func (a *Appliance) stats() stats {
	s := stats{Draining: a.draining.Load(), Netstack: a.netstack.Stats(), Proxy: a.proxy.Stats(), Records: a.records.Stats()}
	s.Broken, s.OwnAddrsKnown = a.broken(s.Records), a.proxy.OwnAddrsKnown()
	s.MemoryPressureCause = memwatch.Cause(a.memoryCause.Load()).String()
	if m := a.tcpMem.Load(); m != nil {
		s.Memory = *m
	}
	if a.accessLog != nil {
		l := a.accessLog.Stats()
		s.AccessLog = &l
	}
	s.Policy = a.policy.Status()
	if a.shipper != nil {
		cw := a.shipper.Stats()
		s.CloudWatch = &cw
	}
	if a.minter != nil {
		l := a.minter.Stats()
		s.Leaves = &l
	}
	if a.ca != nil {
		na := a.ca.NotAfter()
		s.CA = &caStats{NotAfter: na.UTC(), ExpiresInSeconds: time.Until(na).Seconds(), Fingerprint: a.ca.Fingerprint(), KeyType: caKeyType(a.ca)}
	}
	if a.capture != nil {
		c := a.capture.Stats()
		s.Capture = &c
	}
	if a.keyLog != nil {
		s.TLSKeyLogErrors = a.keyLog.Errors()
		s.TLSKeyLogDropped = a.keyLog.Dropped()
	}
	return s
}

// The admin server's bounds. Its peers are the GWLB's health checks and
// whoever scrapes /stats and /metrics, but whoever else the security group
// lets in could otherwise hold a goroutine per connection for as long as
// they liked: by a head sent slowly, a body announced and never sent (the
// server reads what a handler left of it before the next request, with no
// deadline but this one), a response not read, or a kept connection left
// idle. No admin request has a body, so the whole request gets the head's
// time.
//
// There is no cap on connections: with every one of them bounded in time, a
// cap would only let whoever fills it shut out the GWLB's health checks.
var (
	adminHeaderTimeout = 10 * time.Second
	adminReadTimeout   = 10 * time.Second
	adminWriteTimeout  = time.Minute
	adminIdleTimeout   = 2 * time.Minute
)

// adminServer is the admin listener's server.
func (a *Appliance) adminServer() *http.Server {
	return &http.Server{
		Handler:           a.adminHandler(),
		ReadHeaderTimeout: adminHeaderTimeout,
		ReadTimeout:       adminReadTimeout,
		WriteTimeout:      adminWriteTimeout,
		IdleTimeout:       adminIdleTimeout,
	}
}

// adminHandler serves health (the GWLB target group's check), /stats,
// /metrics, and the CA for clients (/ca.pem, /ca.crt, the page at /ca/).
func (a *Appliance) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.serveHealth) // health.go
	if trust := a.trustHandler(); trust != nil {
		for _, p := range []string{"/ca.pem", "/ca.crt", "/ca.der"} {
			mux.Handle("GET "+p, trust)
		}
		mux.Handle("/ca/", http.StripPrefix("/ca", trust))
	}
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.stats())
	})
	mux.Handle("GET /metrics", a.metricsHandler()) // metrics.go
	return mux
}

// checkAdminAddr refuses an --admin-addr with no port, or with port 0
// anywhere but on loopback. Either makes the admin listener take a random
// port (an empty value, from an empty variable in the flags file, binds
// every address so): the GWLB's health check, on a port of its target
// group, never gets an answer, and the senders' admin port is not refused
// (senderAdminPort reads the port given). Port 0 on a loopback address is
// out of the GWLB's reach anyway, and what tests and local runs use.
func checkAdminAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("--admin-addr %q: want host:port or :port, such as :80", addr)
	}
	n, err := net.LookupPort("tcp", port)
	if err != nil {
		return fmt.Errorf("--admin-addr %q: %w", addr, err)
	}
	if a, err := netip.ParseAddr(host); n == 0 && (err != nil || !a.IsLoopback()) {
		return fmt.Errorf("--admin-addr %q: port 0 would be a random port, which the GWLB's health check cannot find (allowed, for tests, only on a loopback IP address such as 127.0.0.1, not a name)", addr)
	}
	return nil
}
