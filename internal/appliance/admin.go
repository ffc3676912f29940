package appliance

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// stats is what /stats returns.
type stats struct {
	Draining   bool           `json:"draining"`
	Broken     []string       `json:"broken,omitempty"` // why the health check fails, besides draining
	Netstack   netstack.Stats `json:"netstack"`
	Proxy      proxy.Stats    `json:"proxy"`
	Records    records.Stats  `json:"records"`
	CloudWatch *cwlogs.Stats  `json:"cloudwatch,omitempty"`
	Leaves     *certs.Stats   `json:"leaves,omitempty"`
}

func (a *Appliance) stats() stats {
	s := stats{Draining: a.draining.Load(), Netstack: a.netstack.Stats(), Proxy: a.proxy.Stats(), Records: a.records.Stats()}
	s.Broken = a.broken(s.Records)
	if a.shipper != nil {
		cw := a.shipper.Stats()
		s.CloudWatch = &cw
	}
	if a.minter != nil {
		l := a.minter.Stats()
		s.Leaves = &l
	}
	return s
}

// broken says why the appliance cannot do its job, or nothing while it
// can. Only what is known for sure counts: the GENEVE readers have stopped
// (no packet from the GWLB is read; during a drain that is expected), or
// for longer than RecordStall (--record-stall, 30 s) the access records have waited behind a
// blocked or slow sink, been dropped without a break, or failed on every
// write. Then new flows would go unaudited, and the GWLB should send them
// to another target. Idleness is not broken: no traffic is normal.
func (a *Appliance) broken(rs records.Stats) []string {
	var why []string
	if a.geneveDown.Load() && !a.draining.Load() {
		why = append(why, "GENEVE readers stopped")
	}
	limit := a.opts.RecordStall.Seconds()
	if rs.LagSeconds > limit {
		why = append(why, fmt.Sprintf("access records waiting %.1fs for a blocked or slow sink", rs.LagSeconds))
	}
	if rs.DroppingSeconds > limit {
		why = append(why, fmt.Sprintf("access records dropped for %.1fs (%d in all): the queue is full", rs.DroppingSeconds, rs.Dropped))
	}
	if rs.FailingSeconds > limit {
		why = append(why, fmt.Sprintf("access record sink failing for %.1fs: %s", rs.FailingSeconds, rs.LastError))
	}
	return why
}

// adminHandler serves health (the GWLB target group's check), /stats,
// /metrics, and the CA for clients (/ca.pem, /ca.crt, the page at /ca/).
func (a *Appliance) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if a.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "gwlbproxy: draining")
			return
		}
		why := a.broken(a.records.Stats())
		// The GWLB checks several times an interval: log changes only.
		if was := a.wasBroken.Swap(len(why) > 0); was != (len(why) > 0) {
			if was {
				slog.Info("health check passes again")
			} else {
				slog.Error("health check fails: broken", "why", why)
			}
		}
		if len(why) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "gwlbproxy: broken: %s\n", strings.Join(why, "; "))
			return
		}
		fmt.Fprintln(w, "gwlbproxy: serving")
	})
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
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, a.stats())
	})
	return mux
}

// writeMetrics renders the counters in the Prometheus text format.
func writeMetrics(w io.Writer, s stats) {
	m := func(name, typ, help string, v any) {
		fmt.Fprintf(w, "# HELP gwlbproxy_%s %s\n# TYPE gwlbproxy_%s %s\ngwlbproxy_%s %v\n", name, help, name, typ, name, v)
	}
	labelled := func(name, typ, help, label string, vals map[string]uint64) {
		fmt.Fprintf(w, "# HELP gwlbproxy_%s %s\n# TYPE gwlbproxy_%s %s\n", name, help, name, typ)
		keys := make([]string, 0, len(vals))
		for k := range vals {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "gwlbproxy_%s{%s=%q} %d\n", name, label, k, vals[k])
		}
	}
	n := s.Netstack
	draining := 0
	if s.Draining {
		draining = 1
	}
	m("draining", "gauge", "1 while the appliance drains before exit.", draining)
	m("broken", "gauge", "1 while the health check fails for a reason other than draining (see /stats).", min(len(s.Broken), 1))
	m("geneve_packets_in_total", "counter", "GENEVE datagrams received.", n.PacketsIn)
	m("geneve_bytes_in_total", "counter", "GENEVE bytes received.", n.BytesIn)
	m("geneve_packets_out_total", "counter", "GENEVE datagrams sent back to the GWLB.", n.PacketsOut)
	m("geneve_bytes_out_total", "counter", "GENEVE bytes sent back to the GWLB.", n.BytesOut)
	labelled("drops_total", "counter", "Packets dropped, by reason.", "reason", n.Drops)
	m("flows", "gauge", "Flows in the flow table.", n.Flows)
	m("flows_created_total", "counter", "Flows created.", n.FlowsCreated)
	m("flows_expired_total", "counter", "Flows expired after idling.", n.FlowsExpired)
	byEP := make(map[string]uint64, len(n.FlowsByEndpoint))
	for k, v := range n.FlowsByEndpoint {
		byEP[k] = uint64(max(v, 0))
	}
	labelled("endpoint_flows", "gauge", "Flows in the flow table per GWLB endpoint.", "endpoint", byEP)
	m("stacks", "gauge", "gVisor stacks, one per GWLB endpoint.", n.Stacks)
	m("tcp_connection_attempts_total", "counter", "TCP connections offered to the proxy.", n.TCPConnections)
	m("udp_flows_total", "counter", "UDP flows offered to the proxy.", n.UDPFlows)
	m("echo_requests_total", "counter", "ICMP echo requests received.", n.EchoRequests)
	m("return_port_fallbacks_total", "counter", "Replies sent from the listener port because the flow's port could not be bound.", n.ReturnPortFallbacks)
	p := s.Proxy
	m("tcp_active", "gauge", "TCP connections being relayed.", p.TCPActive)
	m("udp_active", "gauge", "UDP flows being relayed.", p.UDPActive)
	m("echo_active", "gauge", "ICMP echo flows being relayed.", p.EchoActive)
	m("tcp_dial_errors_total", "counter", "Destinations that could not be dialled.", p.TCPDialErrors)
	m("denied_total", "counter", "Flows denied.", p.Denied)
	m("echo_denied_unrecorded_total", "counter", "ICMP echo requests of denied flows dropped without an access record: too many denied echo flows remembered.", p.EchoUnrecorded)
	r := s.Records
	m("records_written_total", "counter", "Access records handed to the sinks (access log, CloudWatch shipper).", r.Written)
	m("records_dropped_total", "counter", "Access records dropped: the queue was full (a sink slow or stuck), or at exit.", r.Dropped)
	m("records_queued", "gauge", "Access records waiting for the sinks.", r.Queued)
	m("record_sink_errors_total", "counter", "Sink writes (of one or more access records) that failed.", r.SinkErrors)
	m("records_lag_seconds", "gauge", "How long the oldest access record not yet written has waited.", r.LagSeconds)
	if l := s.Leaves; l != nil {
		m("leaf_cache_hits_total", "counter", "Bumped connections served a cached leaf.", l.Hits)
		m("leaf_cache_misses_total", "counter", "Bumped connections that needed a new leaf.", l.Misses)
		m("leaves_minted_total", "counter", "Leaves signed by the CA.", l.Mints)
	}
	if cw := s.CloudWatch; cw != nil {
		m("cloudwatch_records_received_total", "counter", "Records handed to the CloudWatch shipper.", cw.Received)
		m("cloudwatch_records_queued", "gauge", "Records held in memory, waiting to be shipped.", cw.QueuedRecords)
		m("cloudwatch_bytes_queued", "gauge", "Bytes held in memory against --cloudwatch-buffer.", cw.QueuedBytes)
		m("cloudwatch_records_shipped_total", "counter", "Records CloudWatch Logs accepted.", cw.Shipped)
		m("cloudwatch_retries_total", "counter", "API calls repeated after a transient failure.", cw.Retried)
		m("cloudwatch_records_rejected_total", "counter", "Records CloudWatch Logs refused (too old or new).", cw.Rejected)
		m("cloudwatch_records_failed_total", "counter", "Records in batches refused for good.", cw.Failed)
		m("cloudwatch_records_dropped_total", "counter", "Records dropped: buffer full, or unshipped at exit.", cw.Dropped)
	}
}
