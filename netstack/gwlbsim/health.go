package gwlbsim

// Health checks, as the GWLB makes them: HTTP GET on each target's health
// port and path, from the simulator's address, a new connection each time,
// a response with a status of 200 to 399 within the timeout passes.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HealthCheck configures the targets' health checks.
type HealthCheck struct {
	// Port is the HTTP port checked on each target's address; 0: no
	// health checks, every registered target is healthy.
	Port int
	// Path is the path requested (default /).
	Path string
	// Interval is the time between two checks of a target (default 10 s;
	// the GWLB allows 5 s to 300 s, the simulator anything from 10 ms for
	// tests). It must be at least Timeout.
	Interval time.Duration
	// Timeout is how long a check may take (default 5 s).
	Timeout time.Duration
	// HealthyThreshold is how many consecutive passes turn an unhealthy
	// target healthy (default 5). A target in state initial needs one.
	HealthyThreshold int
	// UnhealthyThreshold is how many consecutive failures turn a target
	// unhealthy (default 2).
	UnhealthyThreshold int
}

// The GWLB's health check defaults.
const (
	DefaultHealthPath         = "/"
	DefaultHealthInterval     = 10 * time.Second
	DefaultHealthTimeout      = 5 * time.Second
	DefaultHealthyThreshold   = 5
	DefaultUnhealthyThreshold = 2
)

// healthUserAgent is what the load balancers' checks send.
const healthUserAgent = "ELB-HealthChecker/2.0"

// HealthCheckError says which setting of a HealthCheck is out of range.
type HealthCheckError struct {
	Setting string // port, path, interval, timeout, healthy threshold, unhealthy threshold
	Value   any
	Reason  string
}

func (e *HealthCheckError) Error() string {
	return fmt.Sprintf("gwlbsim: health check %s %v: %s", e.Setting, e.Value, e.Reason)
}

// Check applies the defaults to a copy of h and reports the first setting
// out of range, as New would.
func (h HealthCheck) Check() error { return h.normalize() }

func (h *HealthCheck) normalize() error {
	if h.Path == "" {
		h.Path = DefaultHealthPath
	}
	if h.Interval == 0 {
		h.Interval = DefaultHealthInterval
	}
	if h.Timeout == 0 {
		h.Timeout = min(DefaultHealthTimeout, h.Interval)
	}
	if h.HealthyThreshold == 0 {
		h.HealthyThreshold = DefaultHealthyThreshold
	}
	if h.UnhealthyThreshold == 0 {
		h.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	bad := func(setting string, value any, reason string) error {
		return &HealthCheckError{Setting: setting, Value: value, Reason: reason}
	}
	switch {
	case h.Port < 1 || h.Port > 65535:
		return bad("port", h.Port, "want 1-65535")
	case !strings.HasPrefix(h.Path, "/"):
		return bad("path", strconv.Quote(h.Path), "must start with /")
	case h.Interval < 10*time.Millisecond:
		return bad("interval", h.Interval, "want at least 10ms")
	case h.Timeout <= 0 || h.Timeout > h.Interval:
		return bad("timeout", h.Timeout, fmt.Sprintf("must be positive and at most the interval (%s)", h.Interval))
	case h.HealthyThreshold < 1 || h.HealthyThreshold > 10:
		return bad("healthy threshold", h.HealthyThreshold, "want 1-10")
	case h.UnhealthyThreshold < 1 || h.UnhealthyThreshold > 10:
		return bad("unhealthy threshold", h.UnhealthyThreshold, "want 1-10")
	}
	return nil
}

// healthRun is a target's health state machine:
//
//	initial   ── 1 pass ──────────────────▶ healthy
//	initial   ── UnhealthyThreshold fails ▶ unhealthy
//	healthy   ── UnhealthyThreshold fails ▶ unhealthy
//	unhealthy ── HealthyThreshold passes ─▶ healthy
//
// counting consecutive results only. A newly registered target needs one
// passing check to be healthy, as the load balancers document for a
// target's first checks; one that failed needs HealthyThreshold in a row.
type healthRun struct {
	state    TargetState
	ok, fail int // consecutive passes and failures
}

// reset puts the machine in its first state: initial, or healthy for good
// when there are no health checks.
func (r *healthRun) reset(checked bool) {
	*r = healthRun{state: StateInitial}
	if !checked {
		r.state = StateHealthy
	}
}

// observe counts one check and reports whether the state changed.
func (r *healthRun) observe(pass bool, healthyAfter, unhealthyAfter int) bool {
	if pass {
		r.ok, r.fail = r.ok+1, 0
	} else {
		r.ok, r.fail = 0, r.fail+1
	}
	old := r.state
	switch {
	case pass && r.state == StateInitial:
		r.state = StateHealthy
	case pass && r.state == StateUnhealthy && r.ok >= healthyAfter:
		r.state = StateHealthy
	case !pass && r.state != StateUnhealthy && r.fail >= unhealthyAfter:
		r.state = StateUnhealthy
	}
	return r.state != old
}

// healthChecker runs one goroutine per checked target.
type healthChecker struct {
	sim    *Sim
	cfg    HealthCheck
	client *http.Client
	wg     sync.WaitGroup
}

func newHealthChecker(s *Sim, cfg HealthCheck) *healthChecker {
	d := &net.Dialer{Timeout: cfg.Timeout}
	if s.cfg.Addr.IsValid() {
		// Checks come from the GWLB's own address, as its GENEVE does.
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.cfg.Addr, 0))
	}
	return &healthChecker{sim: s, cfg: cfg, client: &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           d.DialContext,
			DisableKeepAlives:     true, // the GWLB closes each check's connection
			ResponseHeaderTimeout: cfg.Timeout,
		},
		Timeout: cfg.Timeout,
		// A redirect is an answer (3xx passes), never followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (h *healthChecker) wait() { h.wg.Wait() }

// startChecksLocked starts checking t, if the simulator checks at all.
func (s *Sim) startChecksLocked(t *target) {
	if s.health == nil || t.stopChecks != nil || s.closed.Load() {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.stopChecks = cancel
	t.checkGen++
	s.health.wg.Add(1)
	go s.health.run(ctx, t, t.checkGen)
}

func (s *Sim) stopChecksLocked(t *target) {
	if t.stopChecks != nil {
		t.stopChecks()
		t.stopChecks = nil
	}
}

func (h *healthChecker) run(ctx context.Context, t *target, gen uint64) {
	defer h.wg.Done()
	checkURL := "http://" + netip.AddrPortFrom(t.addr.Addr(), uint16(h.cfg.Port)).String() + h.cfg.Path
	tick := time.NewTicker(h.cfg.Interval)
	defer tick.Stop()
	for {
		pass, why := h.check(ctx, checkURL)
		if ctx.Err() != nil {
			return
		}
		h.sim.observe(t, gen, pass, why)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// check makes one health check: whether it passed, and if not, why.
func (h *healthChecker) check(ctx context.Context, checkURL string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, checkURL, nil)
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("User-Agent", healthUserAgent)
	resp, err := h.client.Do(req)
	if err != nil {
		var ue *url.Error
		switch {
		case errors.As(err, &ue) && ue.Timeout():
			return false, fmt.Sprintf("no answer within %s", h.cfg.Timeout)
		case errors.As(err, &ue):
			return false, ue.Err.Error()
		}
		return false, err.Error()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 399 {
		return true, ""
	}
	return false, fmt.Sprintf("HTTP %d", resp.StatusCode)
}

// observe applies one check's result to t (unless its checks were
// restarted since this one began) and, when t turns unhealthy, the
// on_unhealthy failover.
func (s *Sim) observe(t *target, gen uint64, pass bool, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != t.checkGen || t.stopChecks == nil {
		return
	}
	t.checks.Add(1)
	if !pass {
		t.checksFailed.Add(1)
		t.lastErr = why
	}
	if !t.run.observe(pass, s.health.cfg.HealthyThreshold, s.health.cfg.UnhealthyThreshold) {
		return
	}
	t.lastChange = time.Now()
	slog.Info("gwlbsim: target health changed", "target", t.addr, "health", t.run.state, "state", t.state(), "reason", why)
	if t.run.state == StateUnhealthy {
		s.onUnhealthyLocked(t)
	}
}
