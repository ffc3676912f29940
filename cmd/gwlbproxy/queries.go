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
	"unicode"

	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/internal/cliflag"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

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
	for i, q := range records.Queries {
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
	if err := cliflag.Parse(fs, args); err != nil {
		return err
	}
	if *group == "" || fs.NArg() > 0 {
		return errors.New("queries install: want --group GROUP and no other arguments")
	}
	client, err := newClient(ctx, *region, *endpoint)
	if err != nil {
		return fmt.Errorf("queries install: %w", err)
	}
	defs := make([]cwlogs.QueryDefinition, 0, len(records.Queries))
	for _, q := range records.Queries {
		defs = append(defs, cwlogs.QueryDefinition{Name: records.SavedQueryPrefix + q.Name, Query: q.Query, LogGroups: []string{*group}})
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
	if err := cliflag.Parse(fs, args); err != nil {
		return err
	}
	rest := fs.Args()
	if name == "" && len(rest) > 0 {
		name, rest = rest[0], rest[1:]
	}
	if name == "" || len(rest) > 0 {
		return fmt.Errorf("query: want one query name (one of %s)", records.QueryNames())
	}
	q, ok := records.FindQuery(name)
	if !ok {
		return fmt.Errorf("query: unknown query %q (want one of %s)", name, records.QueryNames())
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
	// 0 is the flag's default, the query's own limit; given, it is out
	// of range like any other.
	limitGiven := false
	fs.Visit(func(f *flag.Flag) { limitGiven = limitGiven || f.Name == "limit" })
	if *limit < 0 || *limit > 10000 || limitGiven && *limit == 0 {
		return fmt.Errorf("query: --limit %d: must be between 1 and 10000", *limit)
	}
	// cwlogs would take it as its default, 1s, without a word.
	if *poll <= 0 {
		return fmt.Errorf("query: --poll %s: must be positive", *poll)
	}
	// A deadline already past: the SDK's "context deadline exceeded",
	// naming no option (and 0 read as "no limit" by many tools).
	if *timeout <= 0 {
		return fmt.Errorf("query: --timeout %s: must be positive", *timeout)
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

// maxQuerySinceDays is the longest range --since takes: the longest
// CloudWatch Logs keeps records (retention 3653 days), so no query needs
// more, and a count of days under it cannot overflow a Duration.
const maxQuerySinceDays = 3653

// parseQuerySince parses a Go duration, or a whole number of days ("7d") or
// weeks ("2w"), of at most maxQuerySinceDays.
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
	if d > maxQuerySinceDays*24*time.Hour {
		return 0, fmt.Errorf("%q is longer than %d days, the longest CloudWatch Logs keeps records", s, maxQuerySinceDays)
	}
	return d, nil
}

// queryDays reads a count of n days times mult, bounded before it is
// multiplied: a count past what a Duration holds would wrap, some to a
// short positive range the query would cover without a word.
func queryDays(n string, mult int) (time.Duration, error) {
	v, err := strconv.Atoi(n)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", n)
	}
	if v <= 0 {
		return 0, fmt.Errorf("%q is not a positive count", n)
	}
	if v > maxQuerySinceDays/mult {
		return 0, fmt.Errorf("%q times %d days is longer than %d days, the longest CloudWatch Logs keeps records", n, mult, maxQuerySinceDays)
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

// cell makes a value safe to print in a table cell. Values are what
// clients sent (a Host header, a DNS query name), and a terminal acts on
// the control characters among them: escapes that move the cursor and
// erase rows, set the title or write the clipboard. So every character
// that is not printable is written as a Go escape (\x1b, \u009b), but
// tabs and line ends, which only break the alignment, as blanks.
func cell(v string) string {
	var b strings.Builder
	for _, r := range v {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			b.WriteByte(' ')
			continue
		case unicode.IsPrint(r):
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRuneToASCII(r) // '\x1b', with its quotes
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

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
				cells[i] = cell(f.Value)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}
