package cwlogs

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
)

// QueryDefinition is a saved CloudWatch Logs Insights query.
type QueryDefinition struct {
	Name      string
	Query     string
	LogGroups []string
}

// InstallQueries saves defs with PutQueryDefinition and returns their IDs in
// order. The service does not keep names unique, so a definition whose name
// already exists is updated in place rather than added again: installing
// twice leaves one copy of each.
func InstallQueries(ctx context.Context, client *cloudwatchlogs.Client, defs []QueryDefinition) ([]string, error) {
	if len(defs) == 0 {
		return nil, nil
	}
	prefix := defs[0].Name
	for _, d := range defs[1:] {
		prefix = commonPrefix(prefix, d.Name)
	}
	existing := map[string]string{} // name → ID
	var token *string
	for {
		in := &cloudwatchlogs.DescribeQueryDefinitionsInput{MaxResults: aws.Int32(1000), NextToken: token}
		if prefix != "" {
			in.QueryDefinitionNamePrefix = aws.String(prefix)
		}
		out, err := client.DescribeQueryDefinitions(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing saved queries: %w", err)
		}
		for _, d := range out.QueryDefinitions {
			if d.Name != nil && d.QueryDefinitionId != nil {
				existing[*d.Name] = *d.QueryDefinitionId
			}
		}
		if out.NextToken == nil || *out.NextToken == "" || len(out.QueryDefinitions) == 0 {
			break
		}
		token = out.NextToken
	}
	ids := make([]string, 0, len(defs))
	for _, d := range defs {
		in := &cloudwatchlogs.PutQueryDefinitionInput{
			Name:          aws.String(d.Name),
			QueryString:   aws.String(d.Query),
			LogGroupNames: d.LogGroups,
		}
		if id, ok := existing[d.Name]; ok {
			in.QueryDefinitionId = aws.String(id)
		}
		out, err := client.PutQueryDefinition(ctx, in)
		if err != nil {
			return ids, fmt.Errorf("saving query %q: %w", d.Name, err)
		}
		ids = append(ids, aws.ToString(out.QueryDefinitionId))
	}
	return ids, nil
}

func commonPrefix(a, b string) string {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return a[:i]
		}
	}
	return a[:n]
}

// QueryRequest is one Logs Insights query to run.
type QueryRequest struct {
	Groups     []string
	Query      string
	Start, End time.Time
	// Limit caps the rows returned (0: the query's own limit or the
	// service default).
	Limit int32
	// PollInterval is the wait between GetQueryResults calls; default 1 s.
	PollInterval time.Duration
}

// ResultField is one field of one result row.
type ResultField struct {
	Field string
	Value string
}

// QueryResult is the outcome of a query.
type QueryResult struct {
	ID             string
	Status         string // Complete, Failed, Cancelled, Timeout, ...
	Rows           [][]ResultField
	RecordsMatched float64
	RecordsScanned float64
	BytesScanned   float64
}

// RunQuery starts a Logs Insights query and polls its results until it
// completes, fails, is cancelled or times out on the service's side. ctx
// bounds the whole wait; when it ends first the query is stopped (it would
// otherwise go on running, and costing, on the service). A query ending in
// any status but Complete returns its result and an error.
func RunQuery(ctx context.Context, client *cloudwatchlogs.Client, req QueryRequest) (*QueryResult, error) {
	if len(req.Groups) == 0 {
		return nil, fmt.Errorf("running query: no log group")
	}
	if req.PollInterval <= 0 {
		req.PollInterval = time.Second
	}
	in := &cloudwatchlogs.StartQueryInput{
		LogGroupNames: req.Groups,
		QueryString:   aws.String(req.Query),
		StartTime:     aws.Int64(req.Start.Unix()),
		EndTime:       aws.Int64(req.End.Unix()),
	}
	if req.Limit > 0 {
		in.Limit = aws.Int32(req.Limit)
	}
	started, err := client.StartQuery(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("starting query: %w", err)
	}
	res := &QueryResult{ID: aws.ToString(started.QueryId)}
	for {
		if !sleep(ctx, req.PollInterval) {
			stopQuery(client, res.ID)
			return res, fmt.Errorf("waiting for query %s: %w", res.ID, ctx.Err())
		}
		out, err := client.GetQueryResults(ctx, &cloudwatchlogs.GetQueryResultsInput{QueryId: started.QueryId})
		if err != nil {
			if ctx.Err() != nil {
				stopQuery(client, res.ID)
			}
			return res, fmt.Errorf("getting results of query %s: %w", res.ID, err)
		}
		res.Status = string(out.Status)
		switch out.Status {
		case types.QueryStatusScheduled, types.QueryStatusRunning:
			continue
		}
		res.Rows = make([][]ResultField, 0, len(out.Results))
		for _, row := range out.Results {
			r := make([]ResultField, 0, len(row))
			for _, f := range row {
				r = append(r, ResultField{Field: aws.ToString(f.Field), Value: aws.ToString(f.Value)})
			}
			res.Rows = append(res.Rows, r)
		}
		if st := out.Statistics; st != nil {
			res.RecordsMatched, res.RecordsScanned, res.BytesScanned = st.RecordsMatched, st.RecordsScanned, st.BytesScanned
		}
		if out.Status != types.QueryStatusComplete {
			return res, fmt.Errorf("query %s ended with status %s", res.ID, strings.ToLower(res.Status))
		}
		return res, nil
	}
}

// stopQuery stops a query we no longer wait for, on a context of its own:
// the caller's is already done.
func stopQuery(client *cloudwatchlogs.Client, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = client.StopQuery(ctx, &cloudwatchlogs.StopQueryInput{QueryId: aws.String(id)}) // best effort
}
