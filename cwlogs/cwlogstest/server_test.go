package cwlogstest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
)

// client returns a real SDK client without SDK retries, so that every
// injected fault reaches the test.
func client(s *Server) *cloudwatchlogs.Client {
	return s.Client(func(o *cloudwatchlogs.Options) { o.Retryer = aws.NopRetryer{} })
}

func events(ts ...int64) []types.InputLogEvent {
	var out []types.InputLogEvent
	for i, t := range ts {
		out = append(out, types.InputLogEvent{Timestamp: aws.Int64(t), Message: aws.String("m" + string(rune('a'+i%26)))})
	}
	return out
}

func put(ctx context.Context, c *cloudwatchlogs.Client, ev []types.InputLogEvent) (*cloudwatchlogs.PutLogEventsOutput, error) {
	return c.PutLogEvents(ctx, &cloudwatchlogs.PutLogEventsInput{
		LogGroupName: aws.String("g"), LogStreamName: aws.String("s"), LogEvents: ev,
	})
}

func TestGroupsAndStreams(t *testing.T) {
	s := NewServer(t)
	c := client(s)
	ctx := t.Context()

	if _, err := c.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: aws.String("g"), LogStreamName: aws.String("s")}); !errors.As(err, new(*types.ResourceNotFoundException)) {
		t.Fatalf("stream in a missing group: got %v, want ResourceNotFoundException", err)
	}
	if _, err := c.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: aws.String("g")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: aws.String("g")}); !errors.As(err, new(*types.ResourceAlreadyExistsException)) {
		t.Fatalf("second CreateLogGroup: got %v, want ResourceAlreadyExistsException", err)
	}
	if _, err := c.PutRetentionPolicy(ctx, &cloudwatchlogs.PutRetentionPolicyInput{LogGroupName: aws.String("g"), RetentionInDays: aws.Int32(4)}); !errors.As(err, new(*types.InvalidParameterException)) {
		t.Fatalf("retention of 4 days: got %v, want InvalidParameterException", err)
	}
	if _, err := c.PutRetentionPolicy(ctx, &cloudwatchlogs.PutRetentionPolicyInput{LogGroupName: aws.String("g"), RetentionInDays: aws.Int32(30)}); err != nil {
		t.Fatal(err)
	}
	if _, ret := s.Group("g"); ret != 30 {
		t.Fatalf("retention = %d, want 30", ret)
	}
	if _, err := put(ctx, c, events(1)); !errors.As(err, new(*types.ResourceNotFoundException)) {
		t.Fatalf("put to a missing stream: got %v, want ResourceNotFoundException", err)
	}
	if _, err := c.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: aws.String("g"), LogStreamName: aws.String("s")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: aws.String("g"), LogStreamName: aws.String("s")}); !errors.As(err, new(*types.ResourceAlreadyExistsException)) {
		t.Fatalf("second CreateLogStream: got %v, want ResourceAlreadyExistsException", err)
	}
	out, err := c.DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: aws.String("g")})
	if err != nil || len(out.LogGroups) != 1 || aws.ToString(out.LogGroups[0].LogGroupName) != "g" || aws.ToInt32(out.LogGroups[0].RetentionInDays) != 30 {
		t.Fatalf("DescribeLogGroups = %+v, %v", out, err)
	}
}

func TestPutLogEventsLimits(t *testing.T) {
	s := NewServer(t)
	s.CreateStream("g", "s")
	c := client(s)
	ctx := t.Context()
	now := time.Now().UnixMilli()

	big := strings.Repeat("x", MaxEventBytes-EventOverhead+1)
	cases := []struct {
		name string
		ev   []types.InputLogEvent
	}{
		{"unordered", events(now, now-1)},
		{"span over 24h", events(now-25*3600*1000, now)},
		{"too many events", events(make([]int64, MaxBatchEvents+1)...)},
		{"event too large", []types.InputLogEvent{{Timestamp: aws.Int64(now), Message: aws.String(big)}}},
		{"batch too large", func() []types.InputLogEvent {
			var ev []types.InputLogEvent
			msg := strings.Repeat("y", 100000-EventOverhead)
			for range 11 { // 11 × 100,000 > 1,048,576
				ev = append(ev, types.InputLogEvent{Timestamp: aws.Int64(now), Message: aws.String(msg)})
			}
			return ev
		}()},
		{"empty message", []types.InputLogEvent{{Timestamp: aws.Int64(now), Message: aws.String("")}}},
	}
	for _, tc := range cases {
		if _, err := put(ctx, c, tc.ev); !errors.As(err, new(*types.InvalidParameterException)) {
			t.Errorf("%s: got %v, want InvalidParameterException", tc.name, err)
		}
	}
	if n := s.EventCount("g", "s"); n != 0 {
		t.Fatalf("%d events stored from invalid batches", n)
	}

	// Exactly at the limits: accepted.
	var ev []types.InputLogEvent
	msg := strings.Repeat("z", MaxBatchBytes/MaxBatchEvents-EventOverhead)
	for range MaxBatchEvents {
		ev = append(ev, types.InputLogEvent{Timestamp: aws.Int64(now), Message: aws.String(msg)})
	}
	if _, err := put(ctx, c, ev); err != nil {
		t.Fatalf("batch at the limits: %v", err)
	}
	if _, err := put(ctx, c, events(now-24*3600*1000, now)); err != nil {
		t.Fatalf("batch spanning exactly 24h: %v", err)
	}
	if n := s.EventCount("g", "s"); n != MaxBatchEvents+2 {
		t.Fatalf("stored %d events, want %d", n, MaxBatchEvents+2)
	}
}

func TestRejectedEvents(t *testing.T) {
	s := NewServer(t)
	s.CreateStream("g", "s")
	c := client(s)
	now := time.Now()
	old := now.Add(-15 * 24 * time.Hour).UnixMilli()
	future := now.Add(3 * time.Hour).UnixMilli()
	ok := now.Add(-time.Hour).UnixMilli()
	// The 24 h span rule: keep old and future apart from each other by
	// sending them in separate batches.
	out, err := put(t.Context(), c, events(old, old+1, now.Add(-13*24*time.Hour+time.Hour).UnixMilli()))
	if err == nil {
		t.Fatalf("batch spanning 2 days accepted")
	}
	out, err = put(t.Context(), c, events(old, old+1, old+2))
	if err != nil {
		t.Fatal(err)
	}
	if info := out.RejectedLogEventsInfo; info == nil || aws.ToInt32(info.TooOldLogEventEndIndex) != 3 || info.TooNewLogEventStartIndex != nil {
		t.Fatalf("too old: rejected info %+v", info)
	}
	out, err = put(t.Context(), c, events(ok, ok+1, future))
	if err != nil {
		t.Fatal(err)
	}
	if info := out.RejectedLogEventsInfo; info == nil || aws.ToInt32(info.TooNewLogEventStartIndex) != 2 || info.TooOldLogEventEndIndex != nil {
		t.Fatalf("too new: rejected info %+v", info)
	}
	got := s.Events("g", "s")
	if len(got) != 2 || got[0].Timestamp != ok || got[1].Timestamp != ok+1 {
		t.Fatalf("stored %+v, want the two accepted events", got)
	}
	// GetLogEvents reads them back through the SDK.
	ge, err := c.GetLogEvents(t.Context(), &cloudwatchlogs.GetLogEventsInput{LogGroupName: aws.String("g"), LogStreamName: aws.String("s"), StartFromHead: aws.Bool(true)})
	if err != nil || len(ge.Events) != 2 || aws.ToString(ge.Events[1].Message) != "mb" {
		t.Fatalf("GetLogEvents = %+v, %v", ge, err)
	}
}

func statusOf(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func TestFaults(t *testing.T) {
	s := NewServer(t)
	s.CreateStream("g", "s")
	c := client(s)
	ctx := t.Context()
	now := time.Now().UnixMilli()

	s.Throttle(1, "PutLogEvents")
	if _, err := put(ctx, c, events(now)); !errors.As(err, new(*types.ThrottlingException)) {
		t.Fatalf("throttled: got %v", err)
	}
	s.Fail(1, 500)
	if _, err := put(ctx, c, events(now)); statusOf(err) != 500 {
		t.Fatalf("fail 500: got %v", err)
	}
	s.Fail(1, 503)
	if _, err := put(ctx, c, events(now)); !errors.As(err, new(*types.ServiceUnavailableException)) || statusOf(err) != 503 {
		t.Fatalf("fail 503: got %v", err)
	}
	s.Outage(time.Hour, Outage503)
	if _, err := put(ctx, c, events(now)); statusOf(err) != 503 {
		t.Fatalf("503 outage: got %v", err)
	}
	s.EndOutage()
	s.Outage(time.Hour, OutageRefuse)
	if _, err := put(ctx, c, events(now)); err == nil || statusOf(err) != 0 {
		t.Fatalf("refusing outage: got %v, want a network error", err)
	}
	s.EndOutage()
	if _, err := put(ctx, c, events(now)); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if n := s.EventCount("g", "s"); n != 1 {
		t.Fatalf("stored %d events, want only the one sent after the faults", n)
	}
	if s.FaultsServed() != 3 {
		t.Fatalf("faults served = %d, want 3", s.FaultsServed())
	}

	// A slow answer the client does not wait for is not processed.
	s.SetLatency(300 * time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := put(short, c, events(now))
	cancel()
	if err == nil {
		t.Fatal("put with a 50 ms timeout against 300 ms latency succeeded")
	}
	time.Sleep(400 * time.Millisecond)
	if n := s.EventCount("g", "s"); n != 1 {
		t.Fatalf("abandoned slow request was stored (%d events)", n)
	}
	if _, err := put(ctx, c, events(now)); err != nil {
		t.Fatalf("slow put: %v", err)
	}
	if n := s.EventCount("g", "s"); n != 2 {
		t.Fatalf("stored %d events, want 2", n)
	}
}

func TestOutageEndsByItself(t *testing.T) {
	s := NewServer(t)
	s.CreateStream("g", "s")
	c := client(s)
	s.Outage(100*time.Millisecond, OutageRefuse)
	if !s.InOutage() {
		t.Fatal("no outage under way")
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.InOutage() {
		if time.Now().After(deadline) {
			t.Fatal("outage did not end")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := put(t.Context(), c, events(time.Now().UnixMilli())); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
}

func TestQueries(t *testing.T) {
	s := NewServer(t)
	s.CreateGroup("g", 0)
	c := client(s)
	ctx := t.Context()

	s.SetQueryResults("", 1, [][]ResultField{{{"dest", "example.com"}, {"n", "3"}}})
	if _, err := c.StartQuery(ctx, &cloudwatchlogs.StartQueryInput{LogGroupNames: []string{"missing"}, QueryString: aws.String("q"), StartTime: aws.Int64(1), EndTime: aws.Int64(2)}); !errors.As(err, new(*types.ResourceNotFoundException)) {
		t.Fatalf("query on a missing group: %v", err)
	}
	st, err := c.StartQuery(ctx, &cloudwatchlogs.StartQueryInput{LogGroupNames: []string{"g"}, QueryString: aws.String("fields @timestamp"), StartTime: aws.Int64(1), EndTime: aws.Int64(2)})
	if err != nil {
		t.Fatal(err)
	}
	r1, err := c.GetQueryResults(ctx, &cloudwatchlogs.GetQueryResultsInput{QueryId: st.QueryId})
	if err != nil || r1.Status != types.QueryStatusRunning {
		t.Fatalf("first poll: %+v, %v", r1, err)
	}
	r2, err := c.GetQueryResults(ctx, &cloudwatchlogs.GetQueryResultsInput{QueryId: st.QueryId})
	if err != nil || r2.Status != types.QueryStatusComplete || len(r2.Results) != 1 || aws.ToString(r2.Results[0][0].Value) != "example.com" {
		t.Fatalf("second poll: %+v, %v", r2, err)
	}
	if qs := s.Queries(); len(qs) != 1 || qs[0].QueryString != "fields @timestamp" || qs[0].LogGroupNames[0] != "g" {
		t.Fatalf("recorded queries %+v", qs)
	}

	pd, err := c.PutQueryDefinition(ctx, &cloudwatchlogs.PutQueryDefinitionInput{Name: aws.String("a/b"), QueryString: aws.String("q1"), LogGroupNames: []string{"g"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutQueryDefinition(ctx, &cloudwatchlogs.PutQueryDefinitionInput{QueryDefinitionId: pd.QueryDefinitionId, Name: aws.String("a/b"), QueryString: aws.String("q2")}); err != nil {
		t.Fatal(err)
	}
	dd, err := c.DescribeQueryDefinitions(ctx, &cloudwatchlogs.DescribeQueryDefinitionsInput{QueryDefinitionNamePrefix: aws.String("a/")})
	if err != nil || len(dd.QueryDefinitions) != 1 || aws.ToString(dd.QueryDefinitions[0].QueryString) != "q2" {
		t.Fatalf("DescribeQueryDefinitions = %+v, %v", dd, err)
	}
}
