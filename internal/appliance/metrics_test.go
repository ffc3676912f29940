package appliance

import (
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// metricsStats is a snapshot with every part present and every field a
// different value, so that a metric wired to the wrong field shows.
func metricsStats() stats {
	return stats{
		Draining: true,
		Broken:   []string{"one", "two"},
		Netstack: netstack.Stats{PacketsIn: 101, BytesIn: 102, PacketsOut: 103, BytesOut: 104,
			Drops: map[string]uint64{"truncated": 105, "no_stack": 106}, Flows: 107, FlowsCreated: 108, FlowsExpired: 109,
			FlowsByEndpoint: map[string]int64{"vpce-0a": 110, "vpce-0b": -1}, Stacks: 111, TCPConnections: 112, UDPFlows: 113,
			EchoRequests: 114, ReturnPortFallbacks: 115, AcksDelayed: 116, AcksCarried: 117, MemoryPressure: "short"},
		Proxy:      proxy.Stats{TCPActive: 201, UDPActive: 202, EchoActive: 203, TCPDialErrors: 204, Denied: 205, EchoUnrecorded: 206, UDPShareDrops: 207, QUICSmuggled: 208},
		Records:    records.Stats{Written: 301, Dropped: 302, Queued: 303, SinkErrors: 304, LagSeconds: 3.25},
		Leaves:     &certs.Stats{Hits: 401, Misses: 402, Mints: 403},
		CloudWatch: &cwlogs.Stats{Received: 501, QueuedRecords: 502, QueuedBytes: 503, Shipped: 504, Retried: 505, Rejected: 506, Failed: 507, Dropped: 508},
	}
}

// metricsBefore is what the hand-written renderer that /metrics had before
// client_golang wrote for metricsStats, verbatim: the names, types, help
// texts, labels and values dashboards and alerts were built on.
const metricsBefore = `# HELP gwlbproxy_draining 1 while the appliance drains before exit.
# TYPE gwlbproxy_draining gauge
gwlbproxy_draining 1
# HELP gwlbproxy_broken 1 while the health check fails for a reason other than draining (see /stats).
# TYPE gwlbproxy_broken gauge
gwlbproxy_broken 1
# HELP gwlbproxy_geneve_packets_in_total GENEVE datagrams received.
# TYPE gwlbproxy_geneve_packets_in_total counter
gwlbproxy_geneve_packets_in_total 101
# HELP gwlbproxy_geneve_bytes_in_total GENEVE bytes received.
# TYPE gwlbproxy_geneve_bytes_in_total counter
gwlbproxy_geneve_bytes_in_total 102
# HELP gwlbproxy_geneve_packets_out_total GENEVE datagrams sent back to the GWLB.
# TYPE gwlbproxy_geneve_packets_out_total counter
gwlbproxy_geneve_packets_out_total 103
# HELP gwlbproxy_geneve_bytes_out_total GENEVE bytes sent back to the GWLB.
# TYPE gwlbproxy_geneve_bytes_out_total counter
gwlbproxy_geneve_bytes_out_total 104
# HELP gwlbproxy_drops_total Packets dropped, by reason.
# TYPE gwlbproxy_drops_total counter
gwlbproxy_drops_total{reason="no_stack"} 106
gwlbproxy_drops_total{reason="truncated"} 105
# HELP gwlbproxy_flows Flows in the flow table.
# TYPE gwlbproxy_flows gauge
gwlbproxy_flows 107
# HELP gwlbproxy_memory_pressure How short of memory new flows are admitted by: 0 ample, 1 short (clients holding many flows get none), 2 critical (clients holding 16 or more get none, the heaviest client's connections are reset; the health check fails unless the kernel's TCP memory alone is the cause).
# TYPE gwlbproxy_memory_pressure gauge
gwlbproxy_memory_pressure 1
# HELP gwlbproxy_flows_created_total Flows created.
# TYPE gwlbproxy_flows_created_total counter
gwlbproxy_flows_created_total 108
# HELP gwlbproxy_flows_expired_total Flows expired after idling.
# TYPE gwlbproxy_flows_expired_total counter
gwlbproxy_flows_expired_total 109
# HELP gwlbproxy_endpoint_flows Flows in the flow table per GWLB endpoint.
# TYPE gwlbproxy_endpoint_flows gauge
gwlbproxy_endpoint_flows{endpoint="vpce-0a"} 110
gwlbproxy_endpoint_flows{endpoint="vpce-0b"} 0
# HELP gwlbproxy_stacks gVisor stacks, one per GWLB endpoint.
# TYPE gwlbproxy_stacks gauge
gwlbproxy_stacks 111
# HELP gwlbproxy_tcp_connection_attempts_total TCP connections offered to the proxy.
# TYPE gwlbproxy_tcp_connection_attempts_total counter
gwlbproxy_tcp_connection_attempts_total 112
# HELP gwlbproxy_udp_flows_total UDP flows offered to the proxy.
# TYPE gwlbproxy_udp_flows_total counter
gwlbproxy_udp_flows_total 113
# HELP gwlbproxy_echo_requests_total ICMP echo requests received.
# TYPE gwlbproxy_echo_requests_total counter
gwlbproxy_echo_requests_total 114
# HELP gwlbproxy_acks_delayed_total Pure ACKs to clients held for a reply to carry (--ack-delay).
# TYPE gwlbproxy_acks_delayed_total counter
gwlbproxy_acks_delayed_total 116
# HELP gwlbproxy_acks_carried_total Held ACKs that a later packet of their flow carried, so they never left.
# TYPE gwlbproxy_acks_carried_total counter
gwlbproxy_acks_carried_total 117
# HELP gwlbproxy_return_port_fallbacks_total Replies sent from the listener port because the flow's port could not be bound.
# TYPE gwlbproxy_return_port_fallbacks_total counter
gwlbproxy_return_port_fallbacks_total 115
# HELP gwlbproxy_tcp_active TCP connections being relayed.
# TYPE gwlbproxy_tcp_active gauge
gwlbproxy_tcp_active 201
# HELP gwlbproxy_udp_active UDP flows being relayed.
# TYPE gwlbproxy_udp_active gauge
gwlbproxy_udp_active 202
# HELP gwlbproxy_echo_active ICMP echo flows being relayed.
# TYPE gwlbproxy_echo_active gauge
gwlbproxy_echo_active 203
# HELP gwlbproxy_tcp_dial_errors_total Destinations that could not be dialled.
# TYPE gwlbproxy_tcp_dial_errors_total counter
gwlbproxy_tcp_dial_errors_total 204
# HELP gwlbproxy_denied_total Flows denied.
# TYPE gwlbproxy_denied_total counter
gwlbproxy_denied_total 205
# HELP gwlbproxy_echo_denied_unrecorded_total ICMP echo requests of denied flows dropped without an access record: too many denied echo flows remembered.
# TYPE gwlbproxy_echo_denied_unrecorded_total counter
gwlbproxy_echo_denied_unrecorded_total 206
# HELP gwlbproxy_udp_share_drops_total New UDP flows dropped because their client already held --max-udp-flows-per-client flows.
# TYPE gwlbproxy_udp_share_drops_total counter
gwlbproxy_udp_share_drops_total 207
# HELP gwlbproxy_quic_smuggled_drops_total Client datagrams dropped because they would have started a QUIC connection the policy never decided on.
# TYPE gwlbproxy_quic_smuggled_drops_total counter
gwlbproxy_quic_smuggled_drops_total 208
# HELP gwlbproxy_records_written_total Access records every file (--access-log, stdout) took whole; without a file, those handed to the CloudWatch shipper, which counts its own (cloudwatch_*).
# TYPE gwlbproxy_records_written_total counter
gwlbproxy_records_written_total 301
# HELP gwlbproxy_records_dropped_total Access records dropped: the queue was full (a sink slow or stuck), or at exit.
# TYPE gwlbproxy_records_dropped_total counter
gwlbproxy_records_dropped_total 302
# HELP gwlbproxy_records_queued Access records waiting for the sinks.
# TYPE gwlbproxy_records_queued gauge
gwlbproxy_records_queued 303
# HELP gwlbproxy_record_sink_errors_total Sink writes (of one or more access records) that failed.
# TYPE gwlbproxy_record_sink_errors_total counter
gwlbproxy_record_sink_errors_total 304
# HELP gwlbproxy_records_lag_seconds How long the oldest access record not yet written has waited.
# TYPE gwlbproxy_records_lag_seconds gauge
gwlbproxy_records_lag_seconds 3.25
# HELP gwlbproxy_leaf_cache_hits_total Bumped connections served a cached leaf.
# TYPE gwlbproxy_leaf_cache_hits_total counter
gwlbproxy_leaf_cache_hits_total 401
# HELP gwlbproxy_leaf_cache_misses_total Bumped connections that needed a new leaf.
# TYPE gwlbproxy_leaf_cache_misses_total counter
gwlbproxy_leaf_cache_misses_total 402
# HELP gwlbproxy_leaves_minted_total Leaves signed by the CA.
# TYPE gwlbproxy_leaves_minted_total counter
gwlbproxy_leaves_minted_total 403
# HELP gwlbproxy_cloudwatch_records_received_total Records handed to the CloudWatch shipper.
# TYPE gwlbproxy_cloudwatch_records_received_total counter
gwlbproxy_cloudwatch_records_received_total 501
# HELP gwlbproxy_cloudwatch_records_queued Records held in memory, waiting to be shipped.
# TYPE gwlbproxy_cloudwatch_records_queued gauge
gwlbproxy_cloudwatch_records_queued 502
# HELP gwlbproxy_cloudwatch_bytes_queued Bytes held in memory against --cloudwatch-buffer.
# TYPE gwlbproxy_cloudwatch_bytes_queued gauge
gwlbproxy_cloudwatch_bytes_queued 503
# HELP gwlbproxy_cloudwatch_records_shipped_total Records CloudWatch Logs accepted.
# TYPE gwlbproxy_cloudwatch_records_shipped_total counter
gwlbproxy_cloudwatch_records_shipped_total 504
# HELP gwlbproxy_cloudwatch_retries_total API calls repeated after a transient failure.
# TYPE gwlbproxy_cloudwatch_retries_total counter
gwlbproxy_cloudwatch_retries_total 505
# HELP gwlbproxy_cloudwatch_records_rejected_total Records CloudWatch Logs refused (too old or new).
# TYPE gwlbproxy_cloudwatch_records_rejected_total counter
gwlbproxy_cloudwatch_records_rejected_total 506
# HELP gwlbproxy_cloudwatch_records_failed_total Records in batches refused for good.
# TYPE gwlbproxy_cloudwatch_records_failed_total counter
gwlbproxy_cloudwatch_records_failed_total 507
# HELP gwlbproxy_cloudwatch_records_dropped_total Records dropped: buffer full (the oldest of the client holding the most), or unshipped at exit.
# TYPE gwlbproxy_cloudwatch_records_dropped_total counter
gwlbproxy_cloudwatch_records_dropped_total 508
`

// TestMetricsCollector: the collector exports exactly what the old renderer
// did, passes the pedantic registry's checks (what it collects matches what
// it describes), and leaves out the leaf cache and CloudWatch metrics when
// those parts do not run.
func TestMetricsCollector(t *testing.T) {
	s := metricsStats()
	// The old renderer's metrics, as it wrote them; those added since are
	// held to /stats by TestMetricsExportEveryCounter.
	old := slices.Collect(maps.Keys(parseMetrics(t, strings.NewReader(metricsBefore))))
	if err := testutil.CollectAndCompare(statsCollector{stats: func() stats { return s }}, strings.NewReader(metricsBefore), old...); err != nil {
		t.Errorf("metrics differ from the old renderer's:\n%v", err)
	}

	var want []string
	for name := range collectMetrics(t, s) {
		if optionalPart(name) == "" {
			want = append(want, name)
		}
	}
	slices.Sort(want)
	s.Leaves, s.CloudWatch = nil, nil
	var got []string
	for name := range collectMetrics(t, s) {
		got = append(got, name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("without leaf cache and CloudWatch, metrics\n%q\nwant\n%q", got, want)
	}
}

// optionalPart names the part of the appliance that the metric name
// belongs to when that part may be off: "leaves" (interception) or
// "cloudwatch"; "" for the metrics every appliance has.
func optionalPart(name string) string {
	switch {
	case strings.HasPrefix(name, "gwlbproxy_leaf_cache_"), strings.HasPrefix(name, "gwlbproxy_leaves_"):
		return "leaves"
	case strings.HasPrefix(name, "gwlbproxy_cloudwatch_"):
		return "cloudwatch"
	}
	return ""
}

// parseMetrics parses the text exposition format.
func parseMetrics(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("parsing metrics: %v", err)
	}
	return mfs
}

// scrapeMetrics GETs /metrics of the rig's appliance and parses it.
func scrapeMetrics(t *testing.T, r *rig) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + r.app.adminLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("GET /metrics: %d, %q", resp.StatusCode, ct)
	}
	return parseMetrics(t, resp.Body)
}

// collectMetrics is what the collector makes of the snapshot s.
func collectMetrics(t *testing.T, s stats) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(statsCollector{stats: func() stats { return s }})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		m[mf.GetName()] = mf
	}
	return m
}

// single is the value of the one series of the unlabelled family name, and
// false (with the test failed) when it is missing or not of type typ.
func single(t *testing.T, mfs map[string]*dto.MetricFamily, name string, typ dto.MetricType) (float64, bool) {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Errorf("/metrics lacks %s", name)
		return 0, false
	}
	if mf.GetType() != typ || len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
		t.Errorf("/metrics %s: type %v, %d series, want one %v without labels", name, mf.GetType(), len(mf.GetMetric()), typ)
		return 0, false
	}
	m := mf.GetMetric()[0]
	if typ == dto.MetricType_COUNTER {
		return m.GetCounter().GetValue(), true
	}
	return m.GetGauge().GetValue(), true
}

// TestMetricsScrape: after a connection through a real appliance, /metrics
// serves every gwlbproxy_* metric the old renderer did, with its type and
// help, counters with values between those of /stats just before and just
// after the scrape, the labelled families with their labels, and the Go
// runtime and process metrics. A second appliance in the same process has
// its own registry and counters.
func TestMetricsScrape(t *testing.T) {
	r := newRig(t, nil, nil)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	must(c.Write([]byte("ping")))(t)
	must(io.ReadFull(c, make([]byte, 4)))(t)
	c.Close()
	r.records(func(rs []records.Record) bool { return findRecord(rs, "tcp", srv) != nil })

	before := r.app.stats()
	mfs := scrapeMetrics(t, r)
	after := r.app.stats()

	// The names, types and help texts come from the old renderer's output;
	// the bounds from the collector run over the two snapshots (counters
	// only grow, so the scraped value lies between).
	lo, hi := collectMetrics(t, before), collectMetrics(t, after)
	old := parseMetrics(t, strings.NewReader(metricsBefore))
	for _, name := range slices.Sorted(maps.Keys(old)) {
		want := old[name]
		switch part := optionalPart(name); {
		case part == "leaves" && before.Leaves == nil, part == "cloudwatch" && before.CloudWatch == nil:
			continue // that part does not run in the rig
		case name == "gwlbproxy_drops_total", name == "gwlbproxy_endpoint_flows":
			continue // labelled: below
		}
		got, ok := single(t, mfs, name, want.GetType())
		if !ok {
			continue
		}
		if mfs[name].GetHelp() != want.GetHelp() {
			t.Errorf("%s help %q, want %q", name, mfs[name].GetHelp(), want.GetHelp())
		}
		if want.GetType() != dto.MetricType_COUNTER {
			continue
		}
		low, _ := single(t, lo, name, want.GetType())
		high, _ := single(t, hi, name, want.GetType())
		if got < low || got > high {
			t.Errorf("%s %v, /stats had %v before the scrape and %v after", name, got, low, high)
		}
	}

	// What this one connection makes exactly.
	for name, want := range map[string]float64{
		"gwlbproxy_tcp_connection_attempts_total": 1, "gwlbproxy_records_written_total": 1, "gwlbproxy_stacks": 1,
		"gwlbproxy_udp_flows_total": 0, "gwlbproxy_denied_total": 0, "gwlbproxy_records_dropped_total": 0,
		"gwlbproxy_draining": 0, "gwlbproxy_broken": 0, "gwlbproxy_memory_pressure": 0,
	} {
		if got, ok := single(t, mfs, name, mfs[name].GetType()); ok && got != want {
			t.Errorf("%s %v, want %v", name, got, want)
		}
	}
	if got, ok := single(t, mfs, "gwlbproxy_geneve_packets_in_total", dto.MetricType_COUNTER); ok && got < 4 {
		t.Errorf("gwlbproxy_geneve_packets_in_total %v after a TCP connection with data", got)
	}

	// Drops: one series per reason netstack counts, labelled reason.
	drops := mfs["gwlbproxy_drops_total"]
	if drops.GetType() != dto.MetricType_COUNTER || len(drops.GetMetric()) != len(before.Netstack.Drops) || len(before.Netstack.Drops) == 0 {
		t.Errorf("gwlbproxy_drops_total: %v with %d series, want a counter with %d", drops.GetType(), len(drops.GetMetric()), len(before.Netstack.Drops))
	}
	for _, m := range drops.GetMetric() {
		l := m.GetLabel()
		if len(l) != 1 || l[0].GetName() != "reason" {
			t.Errorf("gwlbproxy_drops_total series labelled %v, want reason", l)
			continue
		}
		reason, v := l[0].GetValue(), m.GetCounter().GetValue()
		if low, ok := before.Netstack.Drops[reason]; !ok {
			t.Errorf("gwlbproxy_drops_total{reason=%q}: no such reason in /stats", reason)
		} else if high := after.Netstack.Drops[reason]; v < float64(low) || v > float64(high) {
			t.Errorf("gwlbproxy_drops_total{reason=%q} %v, /stats had %v before the scrape and %v after", reason, v, low, high)
		}
		if reason == "truncated" && v != 0 { // the simulator sends only whole packets
			t.Errorf("gwlbproxy_drops_total{reason=\"truncated\"} %v", v)
		}
	}

	// Flows per endpoint: the rig's one endpoint, with the flow just made.
	eps := mfs["gwlbproxy_endpoint_flows"]
	if eps.GetType() != dto.MetricType_GAUGE || len(eps.GetMetric()) != 1 {
		t.Fatalf("gwlbproxy_endpoint_flows: %v with %d series, want a gauge with 1", eps.GetType(), len(eps.GetMetric()))
	}
	m := eps.GetMetric()[0]
	if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "endpoint" || l[0].GetValue() != "vpce-00123456789abcdef" {
		t.Errorf("gwlbproxy_endpoint_flows labelled %v, want endpoint=\"vpce-00123456789abcdef\"", l)
	}
	if v := m.GetGauge().GetValue(); v < 1 {
		t.Errorf("gwlbproxy_endpoint_flows %v, want the connection's flow", v)
	}

	// What client_golang's Go and process collectors add.
	for _, name := range []string{"process_resident_memory_bytes", "process_open_fds", "go_goroutines"} {
		if v, ok := single(t, mfs, name, dto.MetricType_GAUGE); ok && v <= 0 {
			t.Errorf("%s %v", name, v)
		}
	}

	// A second appliance: its own registry (registering on a shared one
	// would panic in New) and its own, untouched, counters.
	r2 := newRig(t, nil, nil)
	mfs2 := scrapeMetrics(t, r2)
	if got, ok := single(t, mfs2, "gwlbproxy_tcp_connection_attempts_total", dto.MetricType_COUNTER); ok && got != 0 {
		t.Errorf("second appliance: gwlbproxy_tcp_connection_attempts_total %v, want 0", got)
	}
	single(t, mfs2, "go_goroutines", dto.MetricType_GAUGE)
}

// TestMetricsCapture: with pcap files and the mirror on, their counters
// are exported with the values of /stats, and pass the pedantic registry's
// checks; with one of them off, its metrics are left out.
func TestMetricsCapture(t *testing.T) {
	s := metricsStats()
	s.Capture = &capture.Stats{
		Pcap: &capture.PcapStats{SinkStats: capture.SinkStats{Packets: 601, Bytes: 602, Dropped: 603, Errors: 604},
			Files: 605, DiskBytes: 606, Rotations: 607, FilesDeleted: 608},
		Mirror: &capture.MirrorStats{SinkStats: capture.SinkStats{Packets: 701, Bytes: 702, Dropped: 703, Errors: 704},
			Device: "ids0", VLANs: map[string]uint16{"vpce-0a": 1, "vpce-0b": 2}},
		Plaintext: &capture.PlaintextStats{Streams: 801, Packets: 802, Bytes: 803, Dropped: 804},
	}
	mfs := collectMetrics(t, s)
	for name, want := range map[string]float64{
		"gwlbproxy_pcap_packets_total": 601, "gwlbproxy_pcap_bytes_total": 602, "gwlbproxy_pcap_dropped_total": 603,
		"gwlbproxy_pcap_errors_total": 604, "gwlbproxy_pcap_rotations_total": 607, "gwlbproxy_pcap_files_deleted_total": 608,
		"gwlbproxy_mirror_packets_total": 701, "gwlbproxy_mirror_bytes_total": 702, "gwlbproxy_mirror_dropped_total": 703,
		"gwlbproxy_mirror_errors_total":     704,
		"gwlbproxy_plaintext_streams_total": 801, "gwlbproxy_plaintext_packets_total": 802,
		"gwlbproxy_plaintext_bytes_total": 803, "gwlbproxy_plaintext_dropped_total": 804,
	} {
		if v, ok := single(t, mfs, name, dto.MetricType_COUNTER); ok && v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	for name, want := range map[string]float64{"gwlbproxy_pcap_files": 605, "gwlbproxy_pcap_disk_bytes": 606, "gwlbproxy_mirror_endpoints": 2} {
		if v, ok := single(t, mfs, name, dto.MetricType_GAUGE); ok && v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	s.Capture.Mirror, s.Capture.Plaintext = nil, nil
	mfs = collectMetrics(t, s)
	if mfs["gwlbproxy_mirror_packets_total"] != nil || mfs["gwlbproxy_plaintext_packets_total"] != nil || mfs["gwlbproxy_pcap_packets_total"] == nil {
		t.Error("with the mirror and plaintext off, their metrics are still sent, or the pcap ones are not")
	}
}

// TestMetricsAccessLogRotatedBy: the access log's rotator, decided at
// start, is a gauge: 1 while a logrotate configuration names the file
// (the appliance does not rotate it, a backstop aside), 0 while the appliance
// rotates it, and /stats names the configurations (review r7s26 F2).
func TestMetricsAccessLogRotatedBy(t *testing.T) {
	s := metricsStats()
	for by, want := range map[string]float64{records.RotatedByOther: 1, records.RotatedByAppliance: 0, records.RotatedByNone: 0} {
		s.AccessLog = &records.LogFileStats{RotatedBy: by, OtherRotators: []string{"/etc/logrotate.d/gwlbproxy"}}
		if v, ok := single(t, collectMetrics(t, s), "gwlbproxy_access_log_rotated_by_other", dto.MetricType_GAUGE); ok && v != want {
			t.Errorf("rotated_by %s: gwlbproxy_access_log_rotated_by_other %v, want %v", by, v, want)
		}
	}
}
