package records

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
)

// Record is one access record: a finished flow, or one HTTP request inside a
// flow. Its JSON field names are the schema that CloudWatch Logs Insights
// queries rely on; the README documents each one. Fields that do not apply to
// a kind are omitted.
type Record struct {
	Time   time.Time `json:"time"`   // when the flow or request ended (UTC)
	Kind   string    `json:"kind"`   // tcp, udp, icmp, http, tls, quic, dns
	Action string    `json:"action"` // allow, deny, bump, splice; undecided: ended before the policy decided
	Rule   string    `json:"rule"`   // policy rule that decided; "default" when none matched
	// Policy is the policy that decided, the one whose rule Rule is, by
	// its ID (policy.Policy.ID: the first 12 hex digits of the SHA-256 of
	// its file's bytes); empty when no policy decided.
	Policy string `json:"policy,omitempty"`

	Endpoint   string `json:"endpoint"`    // GWLB endpoint, e.g. vpce-0123456789abcdef0
	Attachment string `json:"attachment"`  // GWLB attachment ID, 16 hex digits
	FlowCookie string `json:"flow_cookie"` // GWLB flow cookie, 8 hex digits
	ClientIP   string `json:"client_ip"`
	ClientPort uint16 `json:"client_port,omitempty"`
	DestIP     string `json:"dest_ip"`
	DestPort   uint16 `json:"dest_port,omitempty"`
	BytesOut   int64  `json:"bytes_out"` // client → destination (payload bytes)
	BytesIn    int64  `json:"bytes_in"`  // destination → client (payload bytes)
	// BytesOutUnacked is how many of BytesOut the destination had not
	// acknowledged when the appliance let go of its connection (closed it,
	// leaving them to the host's kernel, or reset it): bytes the record
	// cannot vouch the destination got. 0 when none, or not known.
	BytesOutUnacked int64   `json:"bytes_out_unacked,omitempty"`
	DurationMS      float64 `json:"duration_ms"` // flow or request duration
	Result          string  `json:"result"`      // ok, refused, timeout, reset, error, denied
	Error           string  `json:"error,omitempty"`
	// DestCheck is the outcome of tying a name-based decision to the
	// destination address (policy destination_check): ok, or mismatch when
	// the destination is not an address the name resolves to (denied in
	// enforce mode, only recorded in audit mode). Empty when no check ran.
	DestCheck string `json:"dest_check,omitempty"`
	// Truncated is set when the record was shortened to fit the log
	// destination's event size: long fields were cut.
	Truncated bool `json:"truncated,omitempty"`

	// ICMP echo.
	Packets int64 `json:"packets,omitempty"` // echo requests relayed

	// TLS (kind tls, and http requests inside a bumped connection).
	SNI            string `json:"sni,omitempty"`
	ALPN           string `json:"alpn,omitempty"`
	TLSVersion     string `json:"tls_version,omitempty"`
	TLSCipher      string `json:"tls_cipher,omitempty"`
	UpstreamVerify string `json:"upstream_verify,omitempty"` // ok or failed (its certificate failed verification); absent when the handshake failed before one was seen
	// ECH is set when the ClientHello offered Encrypted Client Hello: SNI
	// is then only the cover name, not the server the client means.
	ECH bool `json:"ech,omitempty"`

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

// End stamps r with the time it ended and its duration since start.
func (r *Record) End(start time.Time) {
	r.Time = time.Now()
	r.DurationMS = float64(r.Time.Sub(start).Microseconds()) / 1000
}

// DialResult names why a dial or round trip failed, for the Result field.
func DialResult(err error) string {
	var nerr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &nerr) && nerr.Timeout():
		return "timeout"
	}
	return "error"
}

// Source is the client a record belongs to, as the proxy's per-client
// buckets count it: its address behind its GWLB endpoint, an IPv6 client by
// its prefix (--ipv6-client-prefix, package clientkey: a client with a
// delegated /80 is one client, not millions).
// The zero Source stands for every record without a client: the
// appliance's own. A sink that must share a bounded buffer between clients
// (the CloudWatch shipper) tells them apart by it.
type Source struct {
	Endpoint uint64     // the GWLB endpoint's ID (the hex digits of "vpce-...")
	Client   netip.Addr // the client's address, an IPv6 one masked to its prefix (clientkey.Of)
}

// SourceOf returns the client r belongs to; the zero Source when r names no
// client address. It does not allocate.
func SourceOf(r *Record) Source {
	a, err := netip.ParseAddr(r.ClientIP)
	if err != nil {
		return Source{}
	}
	var s Source
	if hex, ok := strings.CutPrefix(r.Endpoint, "vpce-"); ok {
		s.Endpoint, _ = strconv.ParseUint(hex, 16, 64)
	}
	s.Client = clientkey.Of(a)
	return s
}
