package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestCatalogDefaultRanges: every query's default range is one that
// `gwlbproxy query --since` accepts.
func TestCatalogDefaultRanges(t *testing.T) {
	for _, q := range records.Queries {
		if q.Since != "" {
			if _, err := parseQuerySince(q.Since); err != nil {
				t.Errorf("%s: default range: %v", q.Name, err)
			}
		}
	}
}

func TestPrintCatalog(t *testing.T) {
	var out bytes.Buffer
	if err := runQueriesCommand(t.Context(), nil, &out, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range records.Queries {
		if !strings.Contains(out.String(), q.Name+" (default --since") || !strings.Contains(out.String(), strings.Split(q.Query, "\n")[0]) {
			t.Errorf("catalog output lacks %s", q.Name)
		}
	}
	if err := runQueriesCommand(t.Context(), []string{"bogus"}, &out, nil); err == nil {
		t.Error("unknown subcommand accepted")
	}
}

// localClient returns a newClient function for the local endpoint that
// records the region and endpoint it was asked for.
func localClient(srv *cwlogstest.Server, asked *[]string) logsClientFunc {
	return func(_ context.Context, region, endpoint string) (*cloudwatchlogs.Client, error) {
		*asked = append(*asked, region+" "+endpoint)
		return srv.Client(), nil
	}
}

func TestInstallQueries(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateGroup("/gwlbproxy/access", 0)
	var asked []string
	args := []string{"install", "--group", "/gwlbproxy/access", "--region", "eu-west-1", "--endpoint", srv.URL}
	for range 2 { // installing twice must not duplicate definitions
		var out bytes.Buffer
		if err := runQueriesCommand(t.Context(), args, &out, localClient(srv, &asked)); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("saved %d queries for log group /gwlbproxy/access", len(records.Queries)); !strings.Contains(out.String(), want) {
			t.Errorf("output %q", out.String())
		}
	}
	if asked[0] != "eu-west-1 "+srv.URL {
		t.Errorf("client asked for %q", asked[0])
	}
	defs := srv.QueryDefinitions()
	if len(defs) != len(records.Queries) {
		t.Fatalf("%d saved queries, want %d", len(defs), len(records.Queries))
	}
	for i, q := range records.Queries {
		d := defs[i]
		if d.Name != "gwlbproxy/"+q.Name || d.QueryString != q.Query || !slices.Equal(d.LogGroupNames, []string{"/gwlbproxy/access"}) {
			t.Errorf("saved %+v for %s", d, q.Name)
		}
	}
	var out bytes.Buffer
	if err := runQueriesCommand(t.Context(), []string{"install"}, &out, localClient(srv, &asked)); err == nil {
		t.Error("install without --group accepted")
	}
}

func TestRunQuery(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateGroup("g", 0)
	srv.SetQueryResults("", 2, [][]cwlogstest.ResultField{
		{{Field: "destination", Value: "api.github.com"}, {Field: "requests", Value: "1520"}, {Field: "clients", Value: "7"}},
		{{Field: "destination", Value: "s3.eu-west-1.amazonaws.com"}, {Field: "requests", Value: "3"}, {Field: "clients", Value: "1"}},
		{{Field: "destination", Value: "x\ty"}, {Field: "@ptr", Value: "CmAKJ..."}},
	})
	var asked []string
	var out bytes.Buffer
	err := runQueryCommand(t.Context(), []string{"top-destinations-requests", "--group", "g", "--since", "2h", "--poll", "5ms"}, &out, localClient(srv, &asked))
	if err != nil {
		t.Fatal(err)
	}
	qs := srv.Queries()
	want, _ := records.FindQuery("top-destinations-requests")
	if len(qs) != 1 || qs[0].QueryString != want.Query || !slices.Equal(qs[0].LogGroupNames, []string{"g"}) {
		t.Fatalf("started %+v", qs)
	}
	if span := qs[0].EndTime - qs[0].StartTime; span < 7199 || span > 7201 {
		t.Errorf("time range %d s, want 2 h", span)
	}
	if now := time.Now().Unix(); qs[0].EndTime < now-60 || qs[0].EndTime > now+1 {
		t.Errorf("range ends at %d, now is %d", qs[0].EndTime, now)
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 6 || !strings.HasPrefix(lines[0], "destination") || !strings.Contains(lines[5], "3 rows") {
		t.Fatalf("output:\n%s", out.String())
	}
	// Aligned: each column starts at the same offset on every line.
	col := strings.Index(lines[0], "requests")
	for _, l := range lines[1:3] {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("column not aligned at %d:\n%s", col, out.String())
		}
	}
	if !strings.Contains(lines[3], "x y") || strings.Contains(out.String(), "@ptr") || !strings.Contains(lines[3], "-") {
		t.Errorf("tab, @ptr or missing cell mishandled:\n%s", out.String())
	}

	// Flags before the name work too.
	out.Reset()
	if err := runQueryCommand(t.Context(), []string{"--group", "g", "--poll", "5ms", "denied"}, &out, localClient(srv, &asked)); err != nil {
		t.Fatal(err)
	}
	if qs := srv.Queries(); qs[1].EndTime-qs[1].StartTime != 3600 {
		t.Errorf("default range %d s, want 1 h", qs[1].EndTime-qs[1].StartTime)
	}
}

func TestRunQueryNewDestinations(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateGroup("g", 0)
	ts := func(d time.Duration) string { return time.Now().Add(-d).UTC().Format("2006-01-02 15:04:05.000") }
	srv.SetQueryResults("", 0, [][]cwlogstest.ResultField{
		{{Field: "destination", Value: "new.example"}, {Field: "first_seen", Value: ts(time.Hour)}},
		{{Field: "destination", Value: "newish.example"}, {Field: "first_seen", Value: ts(23 * time.Hour)}},
		{{Field: "destination", Value: "old.example"}, {Field: "first_seen", Value: ts(25 * time.Hour)}},
		{{Field: "destination", Value: "ancient.example"}, {Field: "first_seen", Value: ts(20 * 24 * time.Hour)}},
	})
	var asked []string
	var out bytes.Buffer
	if err := runQueryCommand(t.Context(), []string{"new-destinations", "--group", "g", "--poll", "5ms"}, &out, localClient(srv, &asked)); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.Contains(s, "new.example") || !strings.Contains(s, "newish.example") || strings.Contains(s, "old.example") || !strings.Contains(s, "2 rows") {
		t.Errorf("output:\n%s", s)
	}
	if q := srv.Queries()[0]; q.EndTime-q.StartTime != 30*24*3600 {
		t.Errorf("range %d s, want 30 days", q.EndTime-q.StartTime)
	}
}

func TestRunQueryErrors(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateGroup("g", 0)
	var asked []string
	run := func(args ...string) error {
		var out bytes.Buffer
		return runQueryCommand(t.Context(), args, &out, localClient(srv, &asked))
	}
	srv.SetQueryResults("Failed", 1, nil)
	if err := run("errors", "--group", "g", "--poll", "5ms"); err == nil || !strings.Contains(err.Error(), "failed") {
		t.Errorf("failed query: %v", err)
	}
	srv.SetQueryResults("", 1000000, nil) // never completes
	if err := run("errors", "--group", "g", "--poll", "5ms", "--timeout", "100ms"); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("query outliving --timeout: %v", err)
	}
	if qs := srv.Queries(); qs[len(qs)-1].Status != "Cancelled" {
		t.Errorf("abandoned query not stopped: %+v", qs[len(qs)-1])
	}
	for _, args := range [][]string{
		{"nosuchquery", "--group", "g"},
		{"errors"},
		{"errors", "--group", "g", "--since", "-1h"},
		{"errors", "--group", "g", "extra"},
		{"errors", "--group", "missing", "--poll", "5ms"},
	} {
		if err := run(args...); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestParseQuerySince(t *testing.T) {
	for in, want := range map[string]time.Duration{"90m": 90 * time.Minute, "6h": 6 * time.Hour, "7d": 7 * 24 * time.Hour, "2w": 14 * 24 * time.Hour} {
		if got, err := parseQuerySince(in); err != nil || got != want {
			t.Errorf("parseQuerySince(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0s", "-1h", "xd", "1y"} {
		if _, err := parseQuerySince(in); err == nil {
			t.Errorf("parseQuerySince(%q) accepted", in)
		}
	}
}

// TestQuerySinceBounded: a count of days or weeks is bounded before it is
// multiplied. Unbounded, it overflowed a Duration, and some counts wrapped
// to a short positive range (213504d to 25 minutes) that the query then
// covered without a word. The bound is the longest CloudWatch Logs keeps
// records, 3653 days; a Go duration is held to it too.
func TestQuerySinceBounded(t *testing.T) {
	const longest = 3653 * 24 * time.Hour
	for in, want := range map[string]time.Duration{"3653d": longest, "521w": 521 * 7 * 24 * time.Hour, "87672h": longest} {
		if got, err := parseQuerySince(in); err != nil || got != want {
			t.Errorf("parseQuerySince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"3654d", "522w", "87673h", "106752d", "213504d", "30501w", "9223372036854775807d", "-9223372036854775808w"} {
		if got, err := parseQuerySince(in); err == nil {
			t.Errorf("parseQuerySince(%q) accepted as %v", in, got)
		} else if !strings.Contains(err.Error(), "3653 days") && !strings.Contains(err.Error(), "positive") {
			t.Errorf("parseQuerySince(%q): %v, want the bound named", in, err)
		}
	}
}

// TestQueryPollPositive: --poll 0 or below was quietly taken as 1s.
func TestQueryPollPositive(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateGroup("g", 0)
	var asked []string
	for _, poll := range []string{"0", "-1s"} {
		err := runQueryCommand(t.Context(), []string{"errors", "--group", "g", "--poll", poll}, &bytes.Buffer{}, localClient(srv, &asked))
		if err == nil || !strings.Contains(err.Error(), "--poll") {
			t.Errorf("--poll %s: %v, want it refused", poll, err)
		}
	}
	if len(srv.Queries()) != 0 {
		t.Errorf("a query ran with a --poll refused: %+v", srv.Queries())
	}
}

// TestQueryTimeoutPositive: --timeout 0 or below was taken as a deadline
// already past, and the query failed with the SDK's "context deadline
// exceeded", naming no option. It is refused as --poll is, before any
// client is made.
func TestQueryTimeoutPositive(t *testing.T) {
	noClient := func(context.Context, string, string) (*cloudwatchlogs.Client, error) {
		t.Error("a client was made with a --timeout refused")
		return nil, fmt.Errorf("no client")
	}
	for _, timeout := range []string{"0", "-5s"} {
		err := runQueryCommand(t.Context(), []string{"errors", "--group", "g", "--timeout", timeout}, &bytes.Buffer{}, noClient)
		if err == nil || !strings.Contains(err.Error(), "--timeout") {
			t.Errorf("--timeout %s: %v, want it refused naming --timeout", timeout, err)
		}
	}
}

// TestQueryLimitGivenZeroRefused: --limit 0 given on the command line is
// out of its documented range (1 to 10,000) and refused before any AWS
// client is made, not taken for the query's own limit, which is what
// leaving the option out means.
func TestQueryLimitGivenZeroRefused(t *testing.T) {
	noClient := func(context.Context, string, string) (*cloudwatchlogs.Client, error) {
		t.Error("a client was made with a --limit refused")
		return nil, fmt.Errorf("no client")
	}
	for _, limit := range []string{"0", "-1", "10001"} {
		err := runQueryCommand(t.Context(), []string{"errors", "--group", "g", "--limit", limit}, &bytes.Buffer{}, noClient)
		if err == nil || !strings.Contains(err.Error(), "--limit") {
			t.Errorf("--limit %s: %v, want it refused naming --limit", limit, err)
		}
	}
}

// TestQueryTableEscapesControls: values in query results are what clients
// sent (a Host header, a DNS query name); the table writes their control
// characters as escapes, so that a client cannot move the auditor's
// cursor, erase rows, or set the terminal's title or clipboard.
func TestQueryTableEscapesControls(t *testing.T) {
	var b bytes.Buffer
	printQueryTable(&b, [][]cwlogs.ResultField{{
		{Field: "host", Value: "evil.test\x1b[1A\x1b[2K\x1b]52;c;aGk=\a"},
		{Field: "query_name", Value: "a\u009b2K.com\tb\nc"},
	}})
	out := b.String()
	for _, r := range out {
		if r != '\n' && !unicode.IsPrint(r) {
			t.Fatalf("the table holds %U:\n%q", r, out)
		}
	}
	if !strings.Contains(out, `evil.test\x1b[1A\x1b[2K\x1b]52;c;aGk=\a`) || !strings.Contains(out, `a\u009b2K.com b c`) {
		t.Fatalf("the escapes do not show what was sent:\n%s", out)
	}
}
