package records

import (
	"strings"
	"time"
)

// Query is a CloudWatch Logs Insights query over the access records
// (Record, one JSON object per event; Insights discovers its fields by
// their JSON names).
type Query struct {
	Name        string
	Description string
	Query       string
	// Since is the default time range of `gwlbproxy query` ("1h" if empty).
	Since string
	// NewWithin, when set, keeps only result rows whose first_seen lies
	// within this long before the end of the range. Logs Insights has no
	// "now" to compare with, so this last step of new-destinations runs
	// here; saved in the console, the query shows the newest first.
	NewWithin time.Duration
}

// Destination names used below: the HTTP Host, else the TLS SNI, else the
// destination IP (for DNS records, the name asked about before the
// resolver's address).
//
// Counting: a bumped TLS connection yields one tls record for the
// connection plus one http record (scheme https) per request inside it. So
// request counts leave out the tls record of bumped connections, and byte
// sums leave out the https request records (their bytes are already in the
// connection's record).
// Queries is the catalog: the questions auditors ask of the records.
var Queries = []Query{
	{
		Name:        "top-destinations-requests",
		Description: "Destinations by number of requests: HTTP requests (also inside bumped TLS) plus other connections; DNS lookups excluded.",
		Query: `fields coalesce(host, sni, dest_ip) as destination
| filter kind != "dns" and not (kind = "tls" and action = "bump")
| stats count(*) as requests, count_distinct(client_ip) as clients by destination
| sort requests desc
| limit 50`,
	},
	{
		Name:        "top-destinations-bytes",
		Description: "Destinations by bytes sent plus received (payload bytes; bumped connections counted once).",
		Query: `fields coalesce(host, sni, dest_ip) as destination, bytes_out + bytes_in as total
| filter not (kind = "http" and scheme = "https")
| stats sum(total) as total_bytes, sum(bytes_out) as bytes_sent, sum(bytes_in) as bytes_received by destination
| sort total_bytes desc
| limit 50`,
	},
	{
		Name:        "denied",
		Description: "Every denied flow, request or DNS query, newest first, with the rule that denied it.",
		Query: `fields @timestamp, kind, rule, endpoint, client_ip, coalesce(host, sni, query_name, dest_ip) as destination, dest_port, method, path, error
| filter action = "deny"
| sort @timestamp desc
| limit 1000`,
	},
	{
		Name:        "denied-summary",
		Description: "Denials grouped by rule and destination, most frequent first.",
		Query: `fields coalesce(host, sni, query_name, dest_ip) as destination
| filter action = "deny"
| stats count(*) as denials, count_distinct(client_ip) as clients, max(@timestamp) as last_seen by rule, destination
| sort denials desc
| limit 100`,
	},
	{
		Name:        "client-destinations",
		Description: "What each client reached (allowed and successful), per GWLB endpoint, since client addresses may overlap across endpoints.",
		Query: `fields coalesce(host, sni, dest_ip) as destination
| filter kind != "dns" and action in ["allow", "splice", "bump"] and result = "ok"
| stats count(*) as records, min(@timestamp) as first_seen, max(@timestamp) as last_seen by endpoint, client_ip, destination
| sort client_ip asc
| limit 10000`,
	},
	{
		Name:        "endpoint-destinations",
		Description: "What was reached through each GWLB endpoint (allowed and successful), with the number of distinct clients.",
		Query: `fields coalesce(host, sni, dest_ip) as destination
| filter kind != "dns" and action in ["allow", "splice", "bump"] and result = "ok"
| stats count(*) as records, count_distinct(client_ip) as clients, max(@timestamp) as last_seen by endpoint, destination
| sort endpoint asc
| limit 10000`,
	},
	{
		Name:        "tls-verify-failed",
		Description: "TLS connections (and requests in them) whose upstream certificate failed verification, newest first.",
		Query: `fields @timestamp, kind, action, rule, endpoint, client_ip, sni, host, dest_ip, dest_port, error
| filter upstream_verify = "failed"
| sort @timestamp desc
| limit 1000`,
	},
	{
		Name: "new-destinations",
		Description: "Destinations first seen in the last 24 hours and not in the rest of the range (default 30 days): " +
			"first and last sighting per destination over the whole range, newest first; `gwlbproxy query` keeps " +
			"the rows whose first sighting is within the last day.",
		Query: `fields coalesce(host, sni, dest_ip) as destination
| filter kind != "dns"
| stats min(@timestamp) as first_seen, max(@timestamp) as last_seen, count(*) as records, count_distinct(client_ip) as clients by destination
| sort first_seen desc
| limit 10000`,
		Since:     "30d",
		NewWithin: 24 * time.Hour,
	},
	{
		Name:        "errors",
		Description: "Flows and requests that ended in an error (refused, timeout, reset, error), newest first.",
		Query: `fields @timestamp, kind, action, endpoint, client_ip, coalesce(host, sni, query_name, dest_ip) as destination, dest_port, result, error
| filter ispresent(error) or result in ["error", "timeout", "refused", "reset"]
| sort @timestamp desc
| limit 1000`,
	},
	{
		Name:        "error-summary",
		Description: "Errors grouped by result and destination, most frequent first, with the latest error message.",
		Query: `fields coalesce(host, sni, query_name, dest_ip) as destination
| filter ispresent(error) or result in ["error", "timeout", "refused", "reset"]
| stats count(*) as errors, latest(error) as last_error, max(@timestamp) as last_seen by result, destination
| sort errors desc
| limit 100`,
	},
	{
		Name:        "top-dns-names",
		Description: "Names looked up through the appliance, most frequent first.",
		Query: `filter kind = "dns"
| stats count(*) as lookups, count_distinct(client_ip) as clients by query_name, query_type
| sort lookups desc
| limit 100`,
	},
}

// SavedQueryPrefix starts the name of every query saved in the console; it
// names the saved queries in the console.
const SavedQueryPrefix = "gwlbproxy/"

// FindQuery returns the catalog query called name.
func FindQuery(name string) (Query, bool) {
	for _, q := range Queries {
		if q.Name == name {
			return q, true
		}
	}
	return Query{}, false
}

// QueryNames lists the catalog's query names, comma-separated.
func QueryNames() string {
	names := make([]string, 0, len(Queries))
	for _, q := range Queries {
		names = append(names, q.Name)
	}
	return strings.Join(names, ", ")
}
