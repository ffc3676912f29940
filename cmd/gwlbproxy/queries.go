package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
)

// namedQuery is a CloudWatch Logs Insights query over the access records
// (proxy.Record, one JSON object per event; Insights discovers its fields by
// their JSON names).
type namedQuery struct {
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
var queryCatalog = []namedQuery{
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
| filter kind != "dns" and action != "deny" and result = "ok"
| stats count(*) as records, min(@timestamp) as first_seen, max(@timestamp) as last_seen by endpoint, client_ip, destination
| sort client_ip asc
| limit 10000`,
	},
	{
		Name:        "endpoint-destinations",
		Description: "What was reached through each GWLB endpoint (allowed and successful), with the number of distinct clients.",
		Query: `fields coalesce(host, sni, dest_ip) as destination
| filter kind != "dns" and action != "deny" and result = "ok"
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

// savedQueryPrefix names the saved queries in the console.
const savedQueryPrefix = "gwlbproxy/"

func findCatalogQuery(name string) (namedQuery, bool) {
	for _, q := range queryCatalog {
		if q.Name == name {
			return q, true
		}
	}
	return namedQuery{}, false
}

func catalogQueryNames() string {
	names := make([]string, 0, len(queryCatalog))
	for _, q := range queryCatalog {
		names = append(names, q.Name)
	}
	return strings.Join(names, ", ")
}

// logsClientFunc builds a CloudWatch Logs client; region and endpoint are
// empty unless given on the command line.
type logsClientFunc = func(ctx context.Context, region, endpoint string) (*cloudwatchlogs.Client, error)

// runQueriesCommand handles `gwlbproxy queries`: with no arguments it prints
// the catalog; `install --group G` saves every query as a Logs Insights
// query definition named gwlbproxy/NAME for group G.
func runQueriesCommand(ctx context.Context, args []string, stdout io.Writer, newClient logsClientFunc) error {
	if len(args) == 0 {
		printQueryCatalog(stdout)
		return nil
	}
	switch args[0] {
	case "install":
		return installCatalogQueries(ctx, args[1:], stdout, newClient)
	case "help", "-h", "-help", "--help":
		fmt.Fprintln(stdout, "usage: gwlbproxy queries                       print the query catalog")
		fmt.Fprintln(stdout, "       gwlbproxy queries install --group G     save the queries in CloudWatch Logs Insights")
		fmt.Fprintln(stdout, "       gwlbproxy query NAME --group G [--since 1h]")
		return nil
	}
	return fmt.Errorf("queries: unknown subcommand %q (want install)", args[0])
}

func printQueryCatalog(w io.Writer) {
	for i, q := range queryCatalog {
		if i > 0 {
			fmt.Fprintln(w)
		}
		since := q.Since
		if since == "" {
			since = "1h"
		}
		fmt.Fprintf(w, "%s (default --since %s)\n  %s\n\n", q.Name, since, q.Description)
		for _, l := range strings.Split(q.Query, "\n") {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
}

func installCatalogQueries(ctx context.Context, args []string, stdout io.Writer, newClient logsClientFunc) error {
	fs := flag.NewFlagSet("gwlbproxy queries install", flag.ContinueOnError)
	fs.SetOutput(stdout)
	group := fs.String("group", "", "log group the saved queries target (required)")
	region := fs.String("region", "", "AWS region (default: from the environment or instance metadata)")
	endpoint := fs.String("endpoint", "", "CloudWatch Logs endpoint URL (default: the region's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *group == "" || fs.NArg() > 0 {
		return errors.New("queries install: want --group GROUP and no other arguments")
	}
	client, err := newClient(ctx, *region, *endpoint)
	if err != nil {
		return fmt.Errorf("queries install: %w", err)
	}
	defs := make([]cwlogs.QueryDefinition, 0, len(queryCatalog))
	for _, q := range queryCatalog {
		defs = append(defs, cwlogs.QueryDefinition{Name: savedQueryPrefix + q.Name, Query: q.Query, LogGroups: []string{*group}})
	}
	ids, err := cwlogs.InstallQueries(ctx, client, defs)
	if err != nil {
		return fmt.Errorf("queries install: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for i, id := range ids {
		fmt.Fprintf(tw, "%s\t%s\n", defs[i].Name, id)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "saved %d queries for log group %s\n", len(ids), *group)
	return nil
}

// runQueryCommand handles `gwlbproxy query NAME --group G [--since 1h]`: it
// runs the named catalog query and prints the results as a table.
func runQueryCommand(ctx context.Context, args []string, stdout io.Writer, newClient logsClientFunc) error {
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("gwlbproxy query", flag.ContinueOnError)
	fs.SetOutput(stdout)
	groups := fs.String("group", "", "log group(s) to query, comma-separated (required)")
	since := fs.String("since", "", "time range ending now, e.g. 30m, 6h, 7d (default: the query's, mostly 1h)")
	limit := fs.Int("limit", 0, "most rows to return (default: the query's own limit)")
	region := fs.String("region", "", "AWS region (default: from the environment or instance metadata)")
	endpoint := fs.String("endpoint", "", "CloudWatch Logs endpoint URL (default: the region's)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for the query")
	poll := fs.Duration("poll", time.Second, "interval between polls for results")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if name == "" && len(rest) > 0 {
		name, rest = rest[0], rest[1:]
	}
	if name == "" || len(rest) > 0 {
		return fmt.Errorf("query: want one query name (one of %s)", catalogQueryNames())
	}
	q, ok := findCatalogQuery(name)
	if !ok {
		return fmt.Errorf("query: unknown query %q (want one of %s)", name, catalogQueryNames())
	}
	if *groups == "" {
		return errors.New("query: --group is required")
	}
	if *since == "" {
		*since = q.Since
		if *since == "" {
			*since = "1h"
		}
	}
	rng, err := parseQuerySince(*since)
	if err != nil {
		return fmt.Errorf("query: --since: %w", err)
	}
	if *limit < 0 || *limit > 10000 {
		return errors.New("query: --limit must be between 1 and 10000")
	}
	client, err := newClient(ctx, *region, *endpoint)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	end := time.Now()
	req := cwlogs.QueryRequest{
		Groups:       strings.Split(*groups, ","),
		Query:        q.Query,
		Start:        end.Add(-rng),
		End:          end,
		Limit:        int32(*limit),
		PollInterval: *poll,
	}
	res, err := cwlogs.RunQuery(ctx, client, req)
	if err != nil {
		return fmt.Errorf("query %s: %w", name, err)
	}
	rows := res.Rows
	if q.NewWithin > 0 {
		rows = firstSeenSince(rows, end.Add(-q.NewWithin))
	}
	printQueryTable(stdout, rows)
	fmt.Fprintf(stdout, "\n%d rows (%.0f records matched, %.0f scanned) from %s to %s\n",
		len(rows), res.RecordsMatched, res.RecordsScanned,
		req.Start.UTC().Format(time.RFC3339), req.End.UTC().Format(time.RFC3339))
	return nil
}

// parseQuerySince parses a Go duration, or a whole number of days ("7d") or
// weeks ("2w").
func parseQuerySince(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err = queryDays(n, 1)
	} else if n, ok := strings.CutSuffix(s, "w"); ok {
		d, err = queryDays(n, 7)
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration", s)
	}
	return d, nil
}

func queryDays(n string, mult int) (time.Duration, error) {
	v, err := strconv.Atoi(n)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", n)
	}
	return time.Duration(v*mult) * 24 * time.Hour, nil
}

// firstSeenSince keeps the rows whose first_seen is at or after cutoff. A row
// whose first_seen cannot be read is kept: better shown than hidden.
func firstSeenSince(rows [][]cwlogs.ResultField, cutoff time.Time) [][]cwlogs.ResultField {
	var out [][]cwlogs.ResultField
	for _, row := range rows {
		keep := true
		for _, f := range row {
			if f.Field == "first_seen" {
				if t, ok := parseInsightsTime(f.Value); ok {
					keep = !t.Before(cutoff)
				}
			}
		}
		if keep {
			out = append(out, row)
		}
	}
	return out
}

// parseInsightsTime reads a timestamp as Logs Insights prints it
// ("2006-01-02 15:04:05.000", UTC), or RFC 3339, or epoch milliseconds.
func parseInsightsTime(v string) (time.Time, bool) {
	for _, layout := range []string{"2006-01-02 15:04:05.000", "2006-01-02 15:04:05", time.RFC3339Nano} {
		if t, err := time.ParseInLocation(layout, v, time.UTC); err == nil {
			return t, true
		}
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.UnixMilli(ms), true
	}
	return time.Time{}, false
}

// cellReplacer blanks tabs and newlines, which would break the alignment.
var cellReplacer = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")

// printQueryTable prints result rows as aligned columns, in the order the fields
// first appear; Insights' internal @ptr field is left out.
func printQueryTable(w io.Writer, rows [][]cwlogs.ResultField) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "(no results)")
		return
	}
	var cols []string
	index := map[string]int{}
	for _, row := range rows {
		for _, f := range row {
			if _, ok := index[f.Field]; !ok && f.Field != "@ptr" {
				index[f.Field] = len(cols)
				cols = append(cols, f.Field)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	cells := make([]string, len(cols))
	for _, row := range rows {
		for i := range cells {
			cells[i] = "-"
		}
		for _, f := range row {
			if i, ok := index[f.Field]; ok && f.Value != "" {
				cells[i] = cellReplacer.Replace(f.Value)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}
