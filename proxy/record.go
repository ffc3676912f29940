package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Record is one access record: a finished flow, or one HTTP request inside a
// flow. Its JSON field names are the schema that CloudWatch Logs Insights
// queries rely on; the README documents each one. Fields that do not apply to
// a kind are omitted.
type Record struct {
	Time       time.Time `json:"time"`        // when the flow or request ended (UTC)
	Kind       string    `json:"kind"`        // tcp, udp, icmp, http, tls, dns
	Action     string    `json:"action"`      // allow, deny, bump, splice
	Rule       string    `json:"rule"`        // policy rule that decided; "default" when none matched
	Endpoint   string    `json:"endpoint"`    // GWLB endpoint, e.g. vpce-0123456789abcdef0
	Attachment string    `json:"attachment"`  // GWLB attachment ID, 16 hex digits
	FlowCookie string    `json:"flow_cookie"` // GWLB flow cookie, 8 hex digits
	ClientIP   string    `json:"client_ip"`
	ClientPort uint16    `json:"client_port,omitempty"`
	DestIP     string    `json:"dest_ip"`
	DestPort   uint16    `json:"dest_port,omitempty"`
	BytesOut   int64     `json:"bytes_out"`   // client → destination (payload bytes)
	BytesIn    int64     `json:"bytes_in"`    // destination → client (payload bytes)
	DurationMS float64   `json:"duration_ms"` // flow or request duration
	Result     string    `json:"result"`      // ok, refused, timeout, reset, error, denied
	Error      string    `json:"error,omitempty"`

	// ICMP echo.
	Packets int64 `json:"packets,omitempty"` // echo requests relayed

	// TLS (kind tls, and http requests inside a bumped connection).
	SNI            string `json:"sni,omitempty"`
	ALPN           string `json:"alpn,omitempty"`
	TLSVersion     string `json:"tls_version,omitempty"`
	TLSCipher      string `json:"tls_cipher,omitempty"`
	UpstreamVerify string `json:"upstream_verify,omitempty"` // ok, failed, skipped

	// HTTP requests (kind http).
	Method    string `json:"method,omitempty"`
	Scheme    string `json:"scheme,omitempty"`
	Host      string `json:"host,omitempty"`
	Path      string `json:"path,omitempty"` // without the query string
	Status    int    `json:"status,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
	WebSocket bool   `json:"websocket,omitempty"`

	// DNS queries (kind dns).
	QueryName string `json:"query_name,omitempty"`
	QueryType string `json:"query_type,omitempty"`
	RCode     string `json:"rcode,omitempty"`
}

// RecordWriter serialises records as JSON lines to one or more sinks. It is
// safe for concurrent use. A sink that fails is logged, never retried here:
// sinks that need delivery guarantees (cwlogs) buffer on their own side.
type RecordWriter struct {
	mu    sync.Mutex
	sinks []io.Writer
	buf   []byte
}

// NewRecordWriter returns a writer that copies every record line to each sink.
func NewRecordWriter(sinks ...io.Writer) *RecordWriter {
	return &RecordWriter{sinks: sinks}
}

// Write encodes r as one JSON line and hands it to every sink.
func (w *RecordWriter) Write(r *Record) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	line, err := json.Marshal(r)
	if err != nil {
		slog.Error("encoding access record", "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(append(w.buf[:0], line...), '\n')
	for _, s := range w.sinks {
		if _, err := s.Write(w.buf); err != nil {
			slog.Warn("writing access record", "sink", fmt.Sprintf("%T", s), "err", err)
		}
	}
}
