package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// options is everything the appliance is configured with.
type options struct {
	GeneveAddr        string
	AdminAddr         string
	AccessLog         string
	DrainTimeout      time.Duration
	TCPIdleTimeout    time.Duration
	IdleTimeout       time.Duration
	DialTimeout       time.Duration
	MaxFlows          int
	MaxFlowsPerClient int
	Readers           int
	ReturnPath        string
	MTU               int
	LogLevel          string
	StateDir          string
	CACert            string
	CAKey             string
	CASecret          certs.Secret // --ca-secret*: the CA from AWS Secrets Manager
	TrustHost         string
	Config            string
	UpstreamCA        []string
	MaxHeaderBytes    int
	GWLBCIDRs         []netip.Prefix
	CloudWatch        cwlogs.Config // shipping is on when Group is set
	AllowLoopback     bool          // --unsafe-allow-loopback: tests and benchmarks only
	// RecordStall is how long access records may be stuck behind a blocked
	// or slow sink, dropped without a break, or failing on every write,
	// before the health check reports the appliance broken.
	RecordStall time.Duration
}

// defaultRecordStall outlasts the hiccups of a healthy log sink (a rotation,
// a slow fsync, a journald restart) that the record queue rides out; a sink
// stuck for longer leaves every new flow unaudited.
const defaultRecordStall = 30 * time.Second

func defaultOptions() options {
	return options{
		GeneveAddr:     fmt.Sprintf(":%d", netstack.GenevePort),
		AdminAddr:      ":80",
		AccessLog:      "-",
		DrainTimeout:   300 * time.Second,
		TCPIdleTimeout: 350 * time.Second,
		IdleTimeout:    120 * time.Second,
		DialTimeout:    10 * time.Second,
		MaxFlows:       1_000_000,
		ReturnPath:     netstack.ReturnPathAuto,
		LogLevel:       "info",
		MaxHeaderBytes: proxy.DefaultMaxHeaderBytes,
		StateDir:       "/var/lib/gwlbproxy",
		TrustHost:      certs.DefaultTrustHost,
		RecordStall:    defaultRecordStall,
	}
}

func (o *options) validate() error {
	if o.TCPIdleTimeout < 60*time.Second || o.TCPIdleTimeout > 6000*time.Second {
		return fmt.Errorf("--tcp-idle-timeout %s: the GWLB allows 60s to 6000s", o.TCPIdleTimeout)
	}
	if o.IdleTimeout <= 0 {
		return fmt.Errorf("--idle-timeout %s: must be positive", o.IdleTimeout)
	}
	if o.DrainTimeout < 0 {
		return fmt.Errorf("--drain-timeout %s: must not be negative", o.DrainTimeout)
	}
	if o.MaxFlows <= 0 {
		return fmt.Errorf("--max-flows %d: must be positive", o.MaxFlows)
	}
	if o.MaxFlowsPerClient < 0 {
		return fmt.Errorf("--max-flows-per-client %d: must be positive (0: a tenth of --max-flows)", o.MaxFlowsPerClient)
	}
	if o.MTU != 0 && (o.MTU < 1280 || o.MTU > netstack.DefaultMTU) {
		return fmt.Errorf("--mtu %d: must be between 1280 and %d", o.MTU, netstack.DefaultMTU)
	}
	switch o.ReturnPath {
	case netstack.ReturnPathAuto, netstack.ReturnPathRaw, netstack.ReturnPathBound:
	default:
		return fmt.Errorf("--return-path %q: want auto, raw or bound", o.ReturnPath)
	}
	return nil
}

// appliance is one running gwlbproxy: the GENEVE side, the proxy, the
// admin listener, and the record sinks.
type appliance struct {
	opts     options
	ns       *netstack.Server
	px       *proxy.Proxy
	ca       *certs.CA
	minter   *certs.Minter
	policy   *policy.Holder
	shipper  *cwlogs.Shipper
	records  *proxy.RecordWriter
	admin    *http.Server
	adminLn  net.Listener
	closers  []io.Closer
	draining atomic.Bool
	// geneveDown is set when the GENEVE readers have stopped: while not
	// draining, no packet from the GWLB is read any more.
	geneveDown atomic.Bool
	wasBroken  atomic.Bool // for logging changes of the health check only
}

// newAppliance opens every listener; run serves them.
func newAppliance(o options) (*appliance, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.RecordStall <= 0 {
		o.RecordStall = defaultRecordStall
	}
	a := &appliance{opts: o, policy: proxy.AllowAll()}
	if o.Config != "" {
		if err := a.policy.Reload(o.Config); err != nil {
			return nil, fmt.Errorf("--config: %w", err)
		}
	}
	var err error
	// Audit mode decrypts nothing and so needs no CA, unless one is given.
	if a.policy.Load().Mode() != policy.Audit || o.CACert != "" || o.CASecret.ID != "" {
		if a.ca, err = loadCA(&o); err != nil {
			return nil, err
		}
		if a.minter, err = certs.NewMinter(a.ca, certs.MinterOptions{}); err != nil {
			return nil, err
		}
	}
	roots, err := upstreamRoots(o.UpstreamCA)
	if err != nil {
		return nil, err
	}
	var sinks []io.Writer
	switch o.AccessLog {
	case "":
	case "-":
		sinks = append(sinks, os.Stdout)
	default:
		f, err := os.OpenFile(o.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("opening --access-log: %w", err)
		}
		sinks = append(sinks, f)
		a.closers = append(a.closers, f)
	}
	if o.CloudWatch.Group != "" {
		if a.shipper, err = cwlogs.New(context.Background(), o.CloudWatch); err != nil {
			a.closeSinks()
			return nil, fmt.Errorf("CloudWatch Logs: %w", err)
		}
		sinks = append(sinks, a.shipper)
	}
	a.records = proxy.NewRecordWriter(sinks...)
	a.px = proxy.New(proxy.Config{
		DialTimeout:     o.DialTimeout,
		UDPIdleTimeout:  o.IdleTimeout,
		EchoIdleTimeout: o.IdleTimeout,
		Records:         a.records,
		AllowLoopback:   o.AllowLoopback,
		Policy:          a.policy,
		Minter:          a.minter,
		UpstreamRoots:   roots,
		Trust:           a.trustHandler(),
		TrustHost:       o.TrustHost,
		MaxHeaderBytes:  o.MaxHeaderBytes,
	})
	a.ns, err = netstack.Listen(netstack.Config{
		ListenAddr:        o.GeneveAddr,
		Readers:           o.Readers,
		ReturnPath:        o.ReturnPath,
		TCPIdleTimeout:    o.TCPIdleTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxFlows:          o.MaxFlows,
		MaxFlowsPerClient: o.MaxFlowsPerClient,
		MTU:               o.MTU,
		AllowLoopback:     o.AllowLoopback,
		Senders:           o.GWLBCIDRs,
		Handler:           a.px,
	})
	if err != nil {
		a.closeSinks()
		return nil, err
	}
	a.adminLn, err = net.Listen("tcp", o.AdminAddr)
	if err != nil {
		a.ns.Close()
		a.closeSinks()
		return nil, fmt.Errorf("admin listener on %s: %w", o.AdminAddr, err)
	}
	a.admin = &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	return a, nil
}

// run serves until ctx is cancelled, then drains: health turns 503 at once,
// flows keep being served until none remain or drain passes, and the sinks
// are flushed.
func (a *appliance) run(ctx context.Context, drain func() time.Duration) error {
	go func() {
		a.ns.Serve()
		a.geneveDown.Store(true)
		if !a.draining.Load() {
			slog.Error("GENEVE readers stopped: the health check reports broken")
		}
	}()
	go func() {
		if err := a.admin.Serve(a.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("admin listener", "err", err)
		}
	}()
	slog.Info("gwlbproxy serving", "geneve", a.ns.Addr(), "admin", a.adminLn.Addr())
	<-ctx.Done()
	a.draining.Store(true)
	timeout := drain()
	slog.Info("draining", "active_flows", a.px.Active(), "timeout", timeout)
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := a.px.Wait(dctx); err != nil {
		slog.Warn("drain timeout passed with flows still open", "active_flows", a.px.Active())
	}
	a.ns.Close()
	// Closing the stacks ends the flows the drain left open; their records
	// follow within moments.
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = a.px.Wait(wctx)
	wcancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = a.admin.Shutdown(sctx)
	a.closeSinks() // before the shipper's flush below, so that it ships the last records
	if a.shipper != nil {
		// The records of the drain itself are in; what cannot be shipped
		// within the deadline is counted as dropped.
		fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := a.shipper.Close(fctx); err != nil {
			slog.Error("flushing records to CloudWatch Logs", "err", err, "stats", a.shipper.Stats())
		}
		fcancel()
	}
	slog.Info("stopped")
	return nil
}

// reload re-reads --config (SIGHUP). A file with an error is rejected and
// the running policy stays in force; flows in progress keep the policy they
// started with.
func (a *appliance) reload() error {
	if a.opts.Config == "" {
		return nil
	}
	if err := a.policy.Reload(a.opts.Config); err != nil {
		slog.Error("policy reload rejected; the running policy stays", "err", err)
		return err
	}
	slog.Info("policy reloaded", "file", a.opts.Config, "rules", a.policy.Load().Len())
	return nil
}

// trustHandler serves the CA-trust page, or nil without a CA.
func (a *appliance) trustHandler() http.Handler {
	if a.ca == nil {
		return nil
	}
	return certs.TrustHandler(a.ca, a.opts.TrustHost)
}

// upstreamRoots returns the system roots plus the given PEM files.
func upstreamRoots(files []string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--upstream-ca: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--upstream-ca %s: no PEM certificate in it", f)
		}
	}
	return pool, nil
}

// closeSinks writes out the records still queued, then closes the files
// they go to. The CloudWatch shipper is closed (flushed) afterwards, by run.
func (a *appliance) closeSinks() {
	if a.records != nil {
		// A sink stuck for this long will not take the rest: what is still
		// queued is lost, and the log says how much.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.records.Close(ctx); err != nil {
			slog.Error("writing the last access records", "err", err, "records", a.records.Stats())
		}
		cancel()
	}
	for _, c := range a.closers {
		if err := c.Close(); err != nil {
			slog.Warn("closing a record sink", "err", err)
		}
	}
}
