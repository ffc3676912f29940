package appliance

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// metricsHandler serves /metrics: the gwlbproxy_* counters, and the Go
// runtime's and the process's (memory, goroutines, file descriptors, CPU)
// that client_golang collects.
//
// Each call builds its own Registry, and adminHandler calls it once per
// Appliance: the global DefaultRegisterer would refuse a second appliance's
// collector (tests run several in one process), and would mix in whatever
// any imported package registered there.
func (a *Appliance) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	// MustRegister panics only when descriptors clash, which on a fresh
	// registry with this fixed set would be a programming error that every
	// test starting an appliance catches.
	reg.MustRegister(
		statsCollector{stats: a.stats},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		// A collector that fails (say /proc unreadable in some sandbox)
		// should cost its own metrics only, not the whole scrape: the
		// gwlbproxy_* counters matter most. The failure is logged instead.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      scrapeErrorLog{},
	})
}

// scrapeErrorLog hands promhttp's errors to slog. It looks up the default
// logger at each error rather than when the handler is built, so that it
// follows slog.SetDefault whenever that happens.
type scrapeErrorLog struct{}

// Println logs, as a warning, one error promhttp met serving a scrape:
// a collector that failed (the rest was still served) or a broken
// connection to the scraper. Neither makes the appliance unhealthy.
func (scrapeErrorLog) Println(v ...any) {
	slog.Warn("metrics scrape", "error", strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// statsCollector exports the appliance's counters as Prometheus metrics.
//
// The counters already live in the data path as atomics (netstack, proxy,
// records, leaf cache, CloudWatch shipper) and /stats snapshots them.
// Mirroring each into a prometheus.Counter would add work per packet and
// keep two copies of every number that could drift apart; instead Collect
// takes one snapshot per scrape and turns it into const metrics.
type statsCollector struct {
	// stats returns the snapshot: Appliance.stats, or a fixed value in tests.
	stats func() stats
}

// Describe sends every descriptor Collect may use, the optional leaf cache
// and CloudWatch ones included, so that the registry can check the names
// for clashes once, at registration, and treat this collector as checked.
func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	describeStats(ch, applianceMetrics)
	ch <- dropsDesc
	ch <- endpointFlowsDesc
	ch <- policyInfoDesc
	describeStats(ch, leafMetrics)
	describeStats(ch, caMetrics)
	describeStats(ch, cloudWatchMetrics)
	describeStats(ch, pcapMetrics)
	describeStats(ch, mirrorMetrics)
	describeStats(ch, plaintextMetrics)
}

// Collect reads the counters once and sends them. The leaf cache,
// CloudWatch, pcap and mirror metrics are sent only when those parts run
// (interception on, a log group configured, --pcap-dir, --mirror-tap), as the hand-written renderer did before:
// a constant 0 would read as "running and idle".
func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	collectStats(ch, applianceMetrics, &s)
	// The registry sorts labelled series, so map order does not matter.
	for reason, n := range s.Netstack.Drops {
		ch <- constMetric(dropsDesc, prometheus.CounterValue, float64(n), reason)
	}
	ch <- constMetric(policyInfoDesc, prometheus.GaugeValue, 1, s.Policy.Mode, s.Policy.Default, s.Policy.Hash)
	for ep, n := range s.Netstack.FlowsByEndpoint {
		// Each count is a separate atomic that flow creation and expiry
		// move; clamp as before, since a flow count is never negative.
		ch <- constMetric(endpointFlowsDesc, prometheus.GaugeValue, float64(max(n, 0)), ep)
	}
	if s.Leaves != nil {
		collectStats(ch, leafMetrics, s.Leaves)
	}
	if s.CA != nil {
		collectStats(ch, caMetrics, s.CA)
	}
	if s.CloudWatch != nil {
		collectStats(ch, cloudWatchMetrics, s.CloudWatch)
	}
	if s.Capture != nil && s.Capture.Pcap != nil {
		collectStats(ch, pcapMetrics, s.Capture.Pcap)
	}
	if s.Capture != nil && s.Capture.Mirror != nil {
		collectStats(ch, mirrorMetrics, s.Capture.Mirror)
	}
	if s.Capture != nil && s.Capture.Plaintext != nil {
		collectStats(ch, plaintextMetrics, s.Capture.Plaintext)
	}
}

// statMetric is one unlabelled gwlbproxy_* metric: its descriptor, its
// type, and where its value is in a snapshot of type S. Keeping the three
// together in one table entry means Describe and Collect cannot disagree.
type statMetric[S any] struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*S) float64
}

// newStatMetric defines the metric gwlbproxy_<name>.
func newStatMetric[S any](name string, typ prometheus.ValueType, help string, value func(*S) float64) statMetric[S] {
	return statMetric[S]{desc: prometheus.NewDesc("gwlbproxy_"+name, help, nil, nil), typ: typ, value: value}
}

// describeStats sends the descriptors of ms.
func describeStats[S any](ch chan<- *prometheus.Desc, ms []statMetric[S]) {
	for _, m := range ms {
		ch <- m.desc
	}
}

// collectStats sends the metrics of ms with their values in s.
func collectStats[S any](ch chan<- prometheus.Metric, ms []statMetric[S], s *S) {
	for _, m := range ms {
		ch <- constMetric(m.desc, m.typ, m.value(s))
	}
}

// constMetric is prometheus.MustNewConstMetric without the panic: Collect
// runs in a goroutine of the registry, where a panic would bring the whole
// appliance down over one bad label value (invalid UTF-8). An invalid
// metric fails that series in the scrape and is logged instead.
func constMetric(desc *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(desc, typ, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(desc, err)
	}
	return m
}

// boolGauge is 1 for true, 0 for false.
func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Short names for the two metric types, to keep the tables below readable;
// prefixed, as the package is shared and "counter" too likely to clash.
const (
	promCounter = prometheus.CounterValue
	promGauge   = prometheus.GaugeValue
)

// The metrics below keep the names, types and help texts of the renderer
// /metrics had before client_golang: dashboards and alerts use them.

var (
	// dropsDesc is gwlbproxy_drops_total{reason}: netstack counts every
	// drop reason, so all of them appear, with 0 until one happens.
	dropsDesc = prometheus.NewDesc("gwlbproxy_drops_total", "Packets dropped, by reason.", []string{"reason"}, nil)
	// endpointFlowsDesc is gwlbproxy_endpoint_flows{endpoint}, one series
	// per GWLB endpoint (vpce-…) seen.
	endpointFlowsDesc = prometheus.NewDesc("gwlbproxy_endpoint_flows", "Flows in the flow table per GWLB endpoint.", []string{"endpoint"}, nil)
	// policyInfoDesc is gwlbproxy_policy_info{mode,default,hash}, always 1:
	// which policy is in force, by its ID (the hash of its file, or of a
	// built-in policy's own bytes): the records' policy field.
	policyInfoDesc = prometheus.NewDesc("gwlbproxy_policy_info", "The policy in force: its mode, default action and the first 12 hex digits of its file's SHA-256 (always 1).", []string{"mode", "default", "hash"}, nil)
)

// unixSeconds is t in Unix seconds, 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// applianceMetrics are the unlabelled metrics every appliance has: the
// health state, the GENEVE side (netstack), the proxy and the records.
var applianceMetrics = []statMetric[stats]{
	newStatMetric("draining", promGauge, "1 while the appliance drains before exit.",
		func(s *stats) float64 { return boolGauge(s.Draining) }),
	newStatMetric("broken", promGauge, "1 while the health check fails for a reason other than draining (see /stats).",
		func(s *stats) float64 { return boolGauge(len(s.Broken) > 0) }),
	newStatMetric("own_addresses_known", promGauge, "1 once the appliance's own addresses have been read; 0 until then, while every flow is refused (the health check fails).",
		func(s *stats) float64 { return boolGauge(s.OwnAddrsKnown) }),

	newStatMetric("geneve_packets_in_total", promCounter, "GENEVE datagrams received.",
		func(s *stats) float64 { return float64(s.Netstack.PacketsIn) }),
	newStatMetric("geneve_bytes_in_total", promCounter, "GENEVE bytes received.",
		func(s *stats) float64 { return float64(s.Netstack.BytesIn) }),
	newStatMetric("geneve_packets_out_total", promCounter, "GENEVE datagrams sent back to the GWLB.",
		func(s *stats) float64 { return float64(s.Netstack.PacketsOut) }),
	newStatMetric("geneve_bytes_out_total", promCounter, "GENEVE bytes sent back to the GWLB.",
		func(s *stats) float64 { return float64(s.Netstack.BytesOut) }),
	newStatMetric("flows", promGauge, "Flows in the flow table.",
		func(s *stats) float64 { return float64(s.Netstack.Flows) }),
	newStatMetric("memory_pressure", promGauge, "How short of memory new flows are admitted by: 0 ample, 1 short (clients holding many flows get none), 2 critical (clients holding 16 or more get none, the heaviest client's connections are reset; the health check fails unless the kernel's TCP memory alone is the cause).",
		func(s *stats) float64 { return float64(memoryPressureLevel(s.Netstack.MemoryPressure)) }),
	newStatMetric("memory_reclaimed_total", promCounter, "TCP connections reset while memory was critical because their client's connections could hold the most bytes (buffers), more than 16 new connections' worth.",
		func(s *stats) float64 { return float64(s.Netstack.MemoryReclaimed) }),
	newStatMetric("memory_tcp_in_use_bytes", promGauge, "The kernel's TCP memory in use, host wide (/proc/net/sockstat), at the memory watch's last reading; 0 when unreadable.",
		func(s *stats) float64 { return float64(s.Memory.TCPInUse) }),
	newStatMetric("memory_tcp_pressure_bytes", promGauge, "net.ipv4.tcp_mem's pressure threshold, in bytes; 0 when unreadable.",
		func(s *stats) float64 { return float64(s.Memory.TCPPressure) }),
	newStatMetric("memory_tcp_max_bytes", promGauge, "net.ipv4.tcp_mem's max, in bytes; 0 when unreadable.",
		func(s *stats) float64 { return float64(s.Memory.TCPMax) }),
	newStatMetric("flows_created_total", promCounter, "Flows created.",
		func(s *stats) float64 { return float64(s.Netstack.FlowsCreated) }),
	newStatMetric("flows_expired_total", promCounter, "Flows expired after idling.",
		func(s *stats) float64 { return float64(s.Netstack.FlowsExpired) }),
	newStatMetric("flows_evicted_total", promCounter, "Fresh flows (TCP never established, others never answered) evicted from a full flow table to make room for new ones.",
		func(s *stats) float64 { return float64(s.Netstack.FlowsEvicted) }),
	newStatMetric("stacks", promGauge, "gVisor stacks, one per GWLB endpoint.",
		func(s *stats) float64 { return float64(s.Netstack.Stacks) }),
	newStatMetric("stacks_created_total", promCounter, "gVisor stacks made, one for each GWLB endpoint heard from.",
		func(s *stats) float64 { return float64(s.Netstack.StacksCreated) }),
	newStatMetric("stacks_closed_total", promCounter, "gVisor stacks closed after their endpoint fell silent.",
		func(s *stats) float64 { return float64(s.Netstack.StacksClosed) }),
	newStatMetric("tcp_connection_attempts_total", promCounter, "TCP connections offered to the proxy.",
		func(s *stats) float64 { return float64(s.Netstack.TCPConnections) }),
	newStatMetric("tcp_setups_refused_total", promCounter, "TCP connection attempts refused with a RST: their stack's slots for connections being set up ran short and their client held its share.",
		func(s *stats) float64 { return float64(s.Netstack.TCPSetupsRefused) }),
	newStatMetric("udp_flows_total", promCounter, "UDP flows offered to the proxy.",
		func(s *stats) float64 { return float64(s.Netstack.UDPFlows) }),
	newStatMetric("echo_requests_total", promCounter, "ICMP echo requests received.",
		func(s *stats) float64 { return float64(s.Netstack.EchoRequests) }),
	newStatMetric("acks_delayed_total", promCounter, "Pure ACKs to clients held for a reply to carry (--ack-delay).",
		func(s *stats) float64 { return float64(s.Netstack.AcksDelayed) }),
	newStatMetric("acks_carried_total", promCounter, "Held ACKs that a later packet of their flow carried, so they never left.",
		func(s *stats) float64 { return float64(s.Netstack.AcksCarried) }),
	newStatMetric("acks_replaced_total", promCounter, "Held ACKs that a later ACK of their flow took the place of, keeping their deadline.",
		func(s *stats) float64 { return float64(s.Netstack.AcksReplaced) }),
	newStatMetric("tap_withheld_total", promCounter, "Client TCP segments with data that no connection of their stack could take, not shown to the capture (an IDS decoy).",
		func(s *stats) float64 { return float64(s.Netstack.TapWithheld) }),
	newStatMetric("return_port_fallbacks_total", promCounter, "Replies sent from the listener port because the flow's port could not be bound.",
		func(s *stats) float64 { return float64(s.Netstack.ReturnPortFallbacks) }),
	newStatMetric("geneve_read_errors_total", promCounter, "Failed reads of the GENEVE sockets (retried after a growing wait while they go on failing).",
		func(s *stats) float64 { return float64(s.Netstack.ReadErrors) }),

	newStatMetric("tcp_active", promGauge, "TCP connections being relayed.",
		func(s *stats) float64 { return float64(s.Proxy.TCPActive) }),
	newStatMetric("udp_active", promGauge, "UDP flows being relayed.",
		func(s *stats) float64 { return float64(s.Proxy.UDPActive) }),
	newStatMetric("quic_gate_active", promGauge, "QUIC flows held while they are decided (at the gate for the rest of their ClientHello, or in their destination check), with no host socket yet: not in udp_active.",
		func(s *stats) float64 { return float64(s.Proxy.QUICGateActive) }),
	newStatMetric("echo_active", promGauge, "ICMP echo flows being relayed.",
		func(s *stats) float64 { return float64(s.Proxy.EchoActive) }),
	newStatMetric("tcp_dial_errors_total", promCounter, "Destinations that could not be dialled.",
		func(s *stats) float64 { return float64(s.Proxy.TCPDialErrors) }),
	newStatMetric("udp_dial_errors_total", promCounter, "UDP and QUIC flows whose destination could not be reached: no host socket could be opened, or it answered unreachable before sending anything and the client sent nothing after the flow's opening datagrams.",
		func(s *stats) float64 { return float64(s.Proxy.UDPDialErrors) }),
	newStatMetric("dial_errors_unrecorded_total", promCounter, "Failed dials that cost their client one packet (a TCP dial before the handshake, a UDP flow refused before any answer whose client sent at most 512 bytes) and got no record of their own: their client's bucket of such records was empty; its next record says how many.",
		func(s *stats) float64 { return float64(s.Proxy.DialErrorsUnrecorded) }),
	newStatMetric("dial_errors_unrecorded_bytes_total", promCounter, "Payload bytes those failed dials with no record of their own sent their destinations (a UDP flow's opening datagrams reach a closed port's host); each client's next failed dial recorded says how many and which hosts they went to.",
		func(s *stats) float64 { return float64(s.Proxy.DialErrorsUnrecordedBytes) }),
	newStatMetric("denied_total", promCounter, "Flows denied.",
		func(s *stats) float64 { return float64(s.Proxy.Denied) }),
	newStatMetric("echo_denied_unrecorded_total", promCounter, "ICMP echo requests of denied flows dropped without an access record: too many denied echo flows remembered.",
		func(s *stats) float64 { return float64(s.Proxy.EchoUnrecorded) }),
	newStatMetric("udp_share_drops_total", promCounter, "New UDP flows dropped because their client already held --max-udp-flows-per-client flows.",
		func(s *stats) float64 { return float64(s.Proxy.UDPShareDrops) }),
	newStatMetric("quic_smuggled_drops_total", promCounter, "Client datagrams dropped because they would have started a QUIC connection the policy never decided on.",
		func(s *stats) float64 { return float64(s.Proxy.QUICSmuggled) }),
	newStatMetric("udp_check_drops_total", promCounter, "Client datagrams dropped while their QUIC flow waited for its destination check: a flow holds 16 of them, 24 KiB at most.",
		func(s *stats) float64 { return float64(s.Proxy.UDPCheckDrops) }),
	newStatMetric("udp_denied_unheld_total", promCounter, "Denied UDP flows closed instead of held, their client holding 256 held already or the appliance 16,384: each further datagram of one is decided again.",
		func(s *stats) float64 { return float64(s.Proxy.UDPDeniedUnheld) }),
	newStatMetric("tcp_waiting_drops_total", promCounter, "New TCP connections refused because their client already had 1,024 waiting for their first bytes.",
		func(s *stats) float64 { return float64(s.Proxy.TCPWaitingDrops) }),
	newStatMetric("linger_share_cuts_total", promCounter, "Lingers (relayed flows, WebSocket tunnels) cut short, the upload's tail undelivered, because their client already had 1,024 connections lingering after their flows ended.",
		func(s *stats) float64 { return float64(s.Proxy.LingerShareCuts) }),
	newStatMetric("denied_unrecorded_total", promCounter, "Denied flows that got no record of their own: their client's bucket of such records was empty.",
		func(s *stats) float64 { return float64(s.Proxy.DeniedUnrecorded) }),
	newStatMetric("dns_unrecorded_total", promCounter, "DNS queries relayed without a record of their own: their client's bucket of dns records was empty.",
		func(s *stats) float64 { return float64(s.Proxy.DNSUnrecorded) }),
	newStatMetric("trust_unrecorded_total", promCounter, "Trust-page requests answered without a record of their own: their client's bucket of trust-page records was empty.",
		func(s *stats) float64 { return float64(s.Proxy.TrustUnrecorded) }),
	newStatMetric("request_text_cut_total", promCounter, "Records of intercepted requests whose path, user_agent or method were cut to 256 bytes and marked truncated: their client had had its share of long ones recorded whole (16 MiB, then 1 MiB a second).",
		func(s *stats) float64 { return float64(s.Proxy.RequestTextCut) }),
	newStatMetric("echo_share_drops_total", promCounter, "Echo requests of new flows dropped because their client already held 64 relayed echo flows.",
		func(s *stats) float64 { return float64(s.Proxy.EchoShareDrops) }),
	newStatMetric("echo_foreign_replies_total", promCounter, "Echo replies dropped because they came from another address than their flow's destination.",
		func(s *stats) float64 { return float64(s.Proxy.EchoForeignReplies) }),
	newStatMetric("tcp_stalled_total", promCounter, "TCP flows and intercepted connections reset because a write made no progress for the write-stall timeout.",
		func(s *stats) float64 { return float64(s.Proxy.TCPStalled) }),
	newStatMetric("tls_keylog_errors_total", promCounter, "Failed writes to --tls-keylog.",
		func(s *stats) float64 { return float64(s.TLSKeyLogErrors) }),
	newStatMetric("tls_keylog_dropped_total", promCounter, "Writes to --tls-keylog left out because the file was at its 1 GiB cap.",
		func(s *stats) float64 { return float64(s.TLSKeyLogDropped) }),

	newStatMetric("policy_rules", promGauge, "Rules of the policy in force.",
		func(s *stats) float64 { return float64(s.Policy.Rules) }),
	newStatMetric("policy_reloads_total", promCounter, "Policy reloads (SIGHUP) that loaded the file.",
		func(s *stats) float64 { return float64(s.Policy.Reloads) }),
	newStatMetric("policy_reload_errors_total", promCounter, "Policy reloads rejected (an error in the file, or a policy the appliance cannot carry out): the policy in force stayed.",
		func(s *stats) float64 { return float64(s.Policy.ReloadErrors) }),
	newStatMetric("policy_last_reload_success", promGauge, "0 while the last policy reload was rejected (see policy.last_error in /stats), 1 otherwise.",
		func(s *stats) float64 { return boolGauge(s.Policy.LastError == "") }),
	newStatMetric("policy_loaded_timestamp_seconds", promGauge, "When the policy in force was loaded (at start or by a reload), in Unix time.",
		func(s *stats) float64 { return unixSeconds(s.Policy.LoadedAt) }),
	newStatMetric("policy_last_reload_timestamp_seconds", promGauge, "When a policy reload was last tried, accepted or not, in Unix time; 0 before the first.",
		func(s *stats) float64 { return unixSeconds(s.Policy.LastReload) }),
	newStatMetric("policy_default_explicit", promGauge, "0 when the policy file in force has no default key, so that unmatched flows are allowed by omission.",
		func(s *stats) float64 { return boolGauge(s.Policy.DefaultExplicit) }),

	newStatMetric("records_written_total", promCounter, "Access records every file (--access-log, stdout) took whole; without a file, those handed to the CloudWatch shipper, which counts its own (cloudwatch_*).",
		func(s *stats) float64 { return float64(s.Records.Written) }),
	newStatMetric("records_dropped_total", promCounter, "Access records dropped: the queue was full (a sink slow or stuck), or at exit.",
		func(s *stats) float64 { return float64(s.Records.Dropped) }),
	newStatMetric("records_failed_total", promCounter, "Access records a file sink did not take whole: its write failed (a full disk, a closed stdout).",
		func(s *stats) float64 { return float64(s.Records.Failed) }),
	newStatMetric("records_loss_markers_total", promCounter, "records_lost lines the access log files took, each telling of records they lost (not records).",
		func(s *stats) float64 { return float64(s.Records.LossMarkers) }),
	newStatMetric("access_log_reopens_total", promCounter, "Times --access-log was opened anew because its path named another file or none (rotated, removed).",
		func(s *stats) float64 { return float64(accessLogStats(s).Reopens) }),
	newStatMetric("access_log_reopen_failures_total", promCounter, "Looks that found --access-log's path moved on and could not open it (records went on to the file open).",
		func(s *stats) float64 { return float64(accessLogStats(s).ReopenFailures) }),
	newStatMetric("access_log_rotations_total", promCounter, "Times --access-log reached --access-log-max-size or --access-log-max-age and the appliance rotated it.",
		func(s *stats) float64 { return float64(accessLogStats(s).Rotations) }),
	newStatMetric("access_log_rotation_failing_seconds", promGauge, "How long --access-log's rotation has failed at every try (with rotated_by other: how long the file has held twice --access-log-max-size, logrotate not rotating it); 0 while it works.",
		func(s *stats) float64 { return accessLogStats(s).RotationFailingSeconds }),
	newStatMetric("access_log_rotation_names_skipped_total", promCounter, "Names of --access-log's rotated chain the rotation found it could not use (a file it cannot move, a .dropping it cannot remove), each counted once since start however many rotations find it, and not again after it was fixed and broke anew.",
		func(s *stats) float64 { return float64(accessLogStats(s).NamesSkipped) }),
	newStatMetric("access_log_rotated_by_other", promGauge, "1 when a logrotate configuration names --access-log (other_rotators in /stats): the appliance follows its renames and does not rotate the file, but refuses records once it has held twice --access-log-max-size for 10s until logrotate first renames or copytruncates it (a backstop, in case logrotate never applies the stanza); 0 otherwise.",
		func(s *stats) float64 { return boolGauge(accessLogStats(s).RotatedBy == records.RotatedByOther) }),
	newStatMetric("access_log_writes_refused_total", promCounter, "Batches of records refused because --access-log held twice --access-log-max-size and its rotation (or, with rotated_by other, logrotate's) had failed for 10s.",
		func(s *stats) float64 { return float64(accessLogStats(s).WritesRefused) }),
	newStatMetric("records_queued", promGauge, "Access records waiting for the sinks.",
		func(s *stats) float64 { return float64(s.Records.Queued) }),
	newStatMetric("record_sink_errors_total", promCounter, "Sink writes (of one or more access records) that failed.",
		func(s *stats) float64 { return float64(s.Records.SinkErrors) }),
	newStatMetric("records_lag_seconds", promGauge, "How long the oldest access record not yet written has waited.",
		func(s *stats) float64 { return s.Records.LagSeconds }),
	newStatMetric("records_dropping_seconds", promGauge, "How long access records have been dropped without a break of a second; 0 when not dropping.",
		func(s *stats) float64 { return s.Records.DroppingSeconds }),
	newStatMetric("records_failing_seconds", promGauge, "How long sink writes have failed with no record taken by every sink since; 0 when writing.",
		func(s *stats) float64 { return s.Records.FailingSeconds }),
}

// leafMetrics are the leaf cache's, sent while interception runs.
var leafMetrics = []statMetric[certs.Stats]{
	newStatMetric("leaf_cache_hits_total", promCounter, "Bumped connections served a cached leaf.",
		func(l *certs.Stats) float64 { return float64(l.Hits) }),
	newStatMetric("leaf_cache_misses_total", promCounter, "Bumped connections that needed a new leaf.",
		func(l *certs.Stats) float64 { return float64(l.Misses) }),
	newStatMetric("leaves_minted_total", promCounter, "Leaves signed by the CA.",
		func(l *certs.Stats) float64 { return float64(l.Mints) }),
	newStatMetric("leaves_mint_errors_total", promCounter, "Leaves the CA failed to sign.",
		func(l *certs.Stats) float64 { return float64(l.MintErrors) }),
	newStatMetric("leaves_invalid_names_total", promCounter, "Leaf requests refused for a malformed name.",
		func(l *certs.Stats) float64 { return float64(l.InvalidNames) }),
	newStatMetric("leaf_cache_entries", promGauge, "Leaves in the cache.",
		func(l *certs.Stats) float64 { return float64(l.Cached) }),
	newStatMetric("leaf_cache_capacity", promGauge, "How many leaves the cache holds at most.",
		func(l *certs.Stats) float64 { return float64(l.Capacity) }),
	newStatMetric("leaf_cache_evictions_total", promCounter, "Leaves dropped from the cache to respect its bound.",
		func(l *certs.Stats) float64 { return float64(l.Evictions) }),
	newStatMetric("leaf_cache_expired_total", promCounter, "Leaves dropped from the cache for age.",
		func(l *certs.Stats) float64 { return float64(l.Expired) }),
}

// caMetrics are the interception CA's, sent while one is loaded: alert on
// gwlbproxy_ca_expires_in_seconds falling under the weeks a new CA takes
// to reach every client.
var caMetrics = []statMetric[caStats]{
	newStatMetric("ca_not_after_timestamp_seconds", promGauge, "When the interception CA expires (the earliest NotAfter of its chain), in Unix time: after it every connection to be bumped is refused, and a restart refuses the CA.",
		func(c *caStats) float64 { return unixSeconds(c.NotAfter) }),
	newStatMetric("ca_expires_in_seconds", promGauge, "Seconds until the interception CA expires; negative once it has.",
		func(c *caStats) float64 { return c.ExpiresInSeconds }),
}

// cloudWatchMetrics are the CloudWatch shipper's, sent while it runs.
var cloudWatchMetrics = []statMetric[cwlogs.Stats]{
	newStatMetric("cloudwatch_records_received_total", promCounter, "Records handed to the CloudWatch shipper.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Received) }),
	newStatMetric("cloudwatch_records_queued", promGauge, "Records held in memory, waiting to be shipped.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.QueuedRecords) }),
	newStatMetric("cloudwatch_bytes_queued", promGauge, "Bytes held in memory against --cloudwatch-buffer.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.QueuedBytes) }),
	newStatMetric("cloudwatch_records_shipped_total", promCounter, "Records CloudWatch Logs accepted.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Shipped) }),
	newStatMetric("cloudwatch_bytes_shipped_total", promCounter, "Message bytes of the records CloudWatch Logs accepted.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.ShippedBytes) }),
	newStatMetric("cloudwatch_batches_total", promCounter, "PutLogEvents calls that succeeded.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Batches) }),
	newStatMetric("cloudwatch_buffer_bytes", promGauge, "The bound of cloudwatch_bytes_queued (--cloudwatch-buffer).",
		func(cw *cwlogs.Stats) float64 { return float64(cw.BufferBytes) }),
	newStatMetric("cloudwatch_records_truncated_total", promCounter, "Records cut to CloudWatch's largest event (shipped with a marker, and counted under their fate too).",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Truncated) }),
	newStatMetric("cloudwatch_retries_total", promCounter, "API calls repeated after a transient failure.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Retried) }),
	newStatMetric("cloudwatch_records_rejected_total", promCounter, "Records CloudWatch Logs refused (too old or new).",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Rejected) }),
	newStatMetric("cloudwatch_records_failed_total", promCounter, "Records in batches refused for good.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Failed) }),
	newStatMetric("cloudwatch_records_dropped_total", promCounter, "Records dropped: buffer full (the oldest of the client holding the most), or unshipped at exit.",
		func(cw *cwlogs.Stats) float64 { return float64(cw.Dropped) }),
	newStatMetric("cloudwatch_loss_events_total", promCounter, "records_lost events CloudWatch Logs accepted, each telling of records dropped for a full buffer (not records).",
		func(cw *cwlogs.Stats) float64 { return float64(cw.LossEvents) }),
}

// pcapMetrics are the pcap writer's, sent while --pcap-dir is set.
var pcapMetrics = []statMetric[capture.PcapStats]{
	newStatMetric("pcap_packets_total", promCounter, "Inner packets written to the pcap files.",
		func(p *capture.PcapStats) float64 { return float64(p.Packets) }),
	newStatMetric("pcap_bytes_total", promCounter, "Bytes of the inner packets written to the pcap files.",
		func(p *capture.PcapStats) float64 { return float64(p.Bytes) }),
	newStatMetric("pcap_dropped_total", promCounter, "Inner packets not written to the pcap files because their queue was full (the disk too slow).",
		func(p *capture.PcapStats) float64 { return float64(p.Dropped) }),
	newStatMetric("pcap_errors_total", promCounter, "Inner packets not written to the pcap files because writing failed (see last_error in /stats).",
		func(p *capture.PcapStats) float64 { return float64(p.Errors) }),
	newStatMetric("pcap_files", promGauge, "pcap files in --pcap-dir, the one being written included.",
		func(p *capture.PcapStats) float64 { return float64(p.Files) }),
	newStatMetric("pcap_disk_bytes", promGauge, "Bytes of the pcap files in --pcap-dir, held under --pcap-max-bytes.",
		func(p *capture.PcapStats) float64 { return float64(p.DiskBytes) }),
	newStatMetric("pcap_rotations_total", promCounter, "pcap files finished (by size, age, or a write error).",
		func(p *capture.PcapStats) float64 { return float64(p.Rotations) }),
	newStatMetric("pcap_files_deleted_total", promCounter, "Oldest pcap files deleted to stay under --pcap-max-bytes or keep the file system from filling.",
		func(p *capture.PcapStats) float64 { return float64(p.FilesDeleted) }),
}

// mirrorMetrics are the mirror device's, sent while --mirror-tap is set.
var mirrorMetrics = []statMetric[capture.MirrorStats]{
	newStatMetric("mirror_packets_total", promCounter, "Inner packets written to the mirror device.",
		func(m *capture.MirrorStats) float64 { return float64(m.Packets) }),
	newStatMetric("mirror_bytes_total", promCounter, "Bytes of the inner packets written to the mirror device.",
		func(m *capture.MirrorStats) float64 { return float64(m.Bytes) }),
	newStatMetric("mirror_dropped_total", promCounter, "Inner packets not mirrored because their queue was full.",
		func(m *capture.MirrorStats) float64 { return float64(m.Dropped) }),
	newStatMetric("mirror_errors_total", promCounter, "Inner packets not mirrored because writing to the device failed.",
		func(m *capture.MirrorStats) float64 { return float64(m.Errors) }),
	newStatMetric("mirror_no_vlan_total", promCounter, "Inner packets not mirrored because every VLAN ID was taken by an endpoint heard from within the hour.",
		func(m *capture.MirrorStats) float64 { return float64(m.NoVLAN) }),
	newStatMetric("mirror_endpoints", promGauge, "GWLB endpoints given a VLAN on the mirror device.",
		func(m *capture.MirrorStats) float64 { return float64(len(m.VLANs)) }),
}

// plaintextMetrics are the synthesized plaintext's, sent while
// --capture-plaintext is on.
var plaintextMetrics = []statMetric[capture.PlaintextStats]{
	newStatMetric("plaintext_streams_total", promCounter, "Bumped connections whose decrypted side was synthesized into the capture outputs.",
		func(p *capture.PlaintextStats) float64 { return float64(p.Streams) }),
	newStatMetric("plaintext_packets_total", promCounter, "Packets synthesized for the decrypted side of bumped connections.",
		func(p *capture.PlaintextStats) float64 { return float64(p.Packets) }),
	newStatMetric("plaintext_bytes_total", promCounter, "Decrypted bytes of bumped connections carried in synthesized packets.",
		func(p *capture.PlaintextStats) float64 { return float64(p.Bytes) }),
	newStatMetric("plaintext_dropped_total", promCounter, "Synthesized packets an output's queue had no room for (also counted in that output's dropped).",
		func(p *capture.PlaintextStats) float64 { return float64(p.Dropped) }),
	newStatMetric("plaintext_collisions_total", promCounter, "Synthesized streams written on a 5-tuple a wire flow or another stream held, every port tried being taken.",
		func(p *capture.PlaintextStats) float64 { return float64(p.Collisions) }),
}

// accessLogStats is the access log file's counts; zero without one.
func accessLogStats(s *stats) records.LogFileStats {
	if s.AccessLog == nil {
		return records.LogFileStats{}
	}
	return *s.AccessLog
}

// memoryPressureLevel is the number /metrics gives a memory pressure that
// /stats names.
func memoryPressureLevel(name string) netstack.MemoryPressure {
	for p := netstack.MemoryAmple; p <= netstack.MemoryCritical; p++ {
		if p.String() == name {
			return p
		}
	}
	return -1
}
