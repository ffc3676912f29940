package cwlogs

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

func TestQueueFIFO(t *testing.T) {
	var q queue
	next, out := 0, 0
	// Interleave pushes and pops across many blocks, draining fully twice.
	for round := range 3 {
		for range 3*blockLen + 7 + round {
			q.push(entry{ts: int64(next)})
			next++
		}
		for range blockLen + 3 {
			if e := q.pop(); e.ts != int64(out) {
				t.Fatalf("popped %d, want %d", e.ts, out)
			}
			out++
		}
		for q.len() > 0 {
			if q.front().ts != int64(out) {
				t.Fatalf("front %d, want %d", q.front().ts, out)
			}
			q.pop()
			out++
		}
	}
	if out != next || len(q.blocks) > 1 {
		t.Fatalf("popped %d of %d; %d blocks left", out, next, len(q.blocks))
	}
}

func TestPrepare(t *testing.T) {
	cases := []struct {
		in, want string
		trunc    bool
	}{
		{"hello\n", "hello", false},
		{"hello\r\n", "hello", false},
		{"multi\nline\n", "multi\nline", false},
		{"\n", "", false},
		{"", "", false},
		{"bad \xff\xfe utf8", "bad \uFFFD utf8", false},
	}
	for _, c := range cases {
		got, trunc := prepare([]byte(c.in))
		if got != c.want || trunc != c.trunc {
			t.Errorf("prepare(%q) = %q, %v; want %q, %v", c.in, got, trunc, c.want, c.trunc)
		}
	}
	// The result never aliases the caller's buffer.
	buf := []byte("mutable")
	got, _ := prepare(buf)
	buf[0] = 'X'
	if got != "mutable" {
		t.Errorf("prepare aliased its input: %q", got)
	}
}

func TestTruncateBoundaries(t *testing.T) {
	for _, n := range []int{MaxMessageBytes + 1, MaxMessageBytes + 2, MaxMessageBytes + 100, 3 * MaxMessageBytes} {
		for _, unit := range []string{"a", "é", "€", "😀"} {
			// Exactly n bytes: whole units, then ASCII filler, so that
			// MaxMessageBytes+1 really is the first byte over.
			s := strings.Repeat(unit, n/len(unit))
			s += strings.Repeat("a", n-len(s))
			msg, trunc := prepare([]byte(s))
			if !trunc || len(msg) > MaxMessageBytes || !utf8.ValidString(msg) {
				t.Fatalf("%d×%q: truncated=%v len=%d valid=%v", n, unit, trunc, len(msg), utf8.ValidString(msg))
			}
			cut := strings.LastIndex(msg, "…[truncated ")
			if cut < 0 || msg[cut:] != marker(len(s)-cut) || msg[:cut] != s[:cut] {
				t.Fatalf("%d×%q: bad marker or prefix: %q", n, unit, msg[max(0, cut-4):])
			}
			if len(msg) < MaxMessageBytes-len(unit) {
				t.Fatalf("%d×%q: only %d bytes kept", n, unit, len(msg))
			}
		}
	}
	// At the limit: kept whole.
	if msg, trunc := prepare([]byte(strings.Repeat("a", MaxMessageBytes))); trunc || len(msg) != MaxMessageBytes {
		t.Fatalf("line of exactly MaxMessageBytes: truncated=%v len=%d", trunc, len(msg))
	}
	// An invalid byte becomes U+FFFD (three bytes): the limit applies to
	// the replaced line, which the service would otherwise refuse.
	atLimit := strings.Repeat("a", MaxMessageBytes-3) + "\xff"
	if msg, trunc := prepare([]byte(atLimit)); trunc || len(msg) != MaxMessageBytes || !utf8.ValidString(msg) {
		t.Fatalf("invalid UTF-8 replaced to exactly MaxMessageBytes: truncated=%v len=%d", trunc, len(msg))
	}
	oneOver := strings.Repeat("a", MaxMessageBytes-2) + "\xff"
	if msg, trunc := prepare([]byte(oneOver)); !trunc || len(msg) > MaxMessageBytes || !utf8.ValidString(msg) {
		t.Fatalf("invalid UTF-8 replaced to MaxMessageBytes+1: truncated=%v len=%d", trunc, len(msg))
	}
}

func TestBatchLimitsAdd(t *testing.T) {
	lim := newBatchLimits()
	e := entry{ts: 0, msg: "x"}
	for range MaxBatchEvents {
		if !lim.add(&e) {
			t.Fatal("refused an event below the count limit")
		}
	}
	if lim.add(&e) || !lim.full {
		t.Fatal("accepted event 10,001")
	}
	lim = newBatchLimits()
	a, b, c := entry{ts: 1000}, entry{ts: 1000 + MaxBatchSpanMillis - 1}, entry{ts: 1000 + MaxBatchSpanMillis}
	if !lim.add(&a) || !lim.add(&b) || lim.add(&c) {
		t.Fatal("span limit not applied at 24 h")
	}
	lim = newBatchLimits()
	later := entry{ts: 5 * MaxBatchSpanMillis}
	earlier := entry{ts: 4 * MaxBatchSpanMillis}
	if !lim.add(&later) || lim.add(&earlier) {
		t.Fatal("span limit not applied to an earlier event")
	}
	// The byte limit at its edge, stated as the service's number rather
	// than MaxBatchBytes so that a wrong constant is caught too: a batch
	// of exactly 1,048,576 bytes (messages plus 26 each) is taken, one of
	// 1,048,577 is not (the service refuses it, failing every record).
	const serviceMaxBatchBytes = 1048576
	quarter := strings.Repeat("x", serviceMaxBatchBytes/4-EventOverhead)
	threeQuarters := func() batchLimits {
		lim := newBatchLimits()
		for i := range 3 {
			e := entry{msg: quarter}
			if !lim.add(&e) {
				t.Fatalf("refused event %d of a batch under the byte limit", i)
			}
		}
		return lim
	}
	lim = threeQuarters()
	over := entry{msg: quarter + "y"}
	if lim.add(&over) || !lim.full {
		t.Fatalf("took a batch of %d bytes, over the service's %d", lim.bytes, serviceMaxBatchBytes)
	}
	lim = threeQuarters()
	exact := entry{msg: quarter}
	if !lim.add(&exact) || lim.bytes != serviceMaxBatchBytes {
		t.Fatalf("refused a batch of exactly %d bytes (have %d)", serviceMaxBatchBytes, lim.bytes)
	}
}

func TestSortBatchStable(t *testing.T) {
	b := []entry{{ts: 3, msg: "a"}, {ts: 1, msg: "b"}, {ts: 3, msg: "c"}, {ts: 1, msg: "d"}, {ts: 2, msg: "e"}}
	sortBatch(b)
	var got string
	for _, e := range b {
		got += e.msg
	}
	if got != "bdeac" {
		t.Fatalf("sorted order %q, want bdeac", got)
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 10*time.Millisecond, time.Second
	for attempt := range 40 {
		want := hi
		if attempt < 7 {
			want = lo << attempt
		}
		for range 50 {
			d := backoff(attempt, lo, hi)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

func TestAcceptedRange(t *testing.T) {
	i := func(v int32) *int32 { return &v }
	cases := []struct {
		info   *types.RejectedLogEventsInfo
		lo, hi int
	}{
		{nil, 0, 10},
		{&types.RejectedLogEventsInfo{TooOldLogEventEndIndex: i(3)}, 3, 10},
		{&types.RejectedLogEventsInfo{ExpiredLogEventEndIndex: i(4), TooOldLogEventEndIndex: i(2)}, 4, 10},
		{&types.RejectedLogEventsInfo{TooNewLogEventStartIndex: i(7)}, 0, 7},
		{&types.RejectedLogEventsInfo{TooOldLogEventEndIndex: i(10), TooNewLogEventStartIndex: i(5)}, 10, 10},
		{&types.RejectedLogEventsInfo{TooOldLogEventEndIndex: i(99)}, 10, 10},
	}
	for _, c := range cases {
		if lo, hi := acceptedRange(c.info, 10); lo != c.lo || hi != c.hi {
			t.Errorf("acceptedRange(%+v) = %d, %d; want %d, %d", c.info, lo, hi, c.lo, c.hi)
		}
	}
}

// TestClassifyRealErrors classifies the errors the real SDK client returns
// for each kind of answer.
func TestClassifyRealErrors(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateStream("g", "s")
	client := srv.Client(noSDKRetries)
	call := func() error {
		_, err := client.PutLogEvents(t.Context(), &cloudwatchlogs.PutLogEventsInput{
			LogGroupName: aws.String("g"), LogStreamName: aws.String("s"),
			LogEvents: []types.InputLogEvent{{Timestamp: aws.Int64(time.Now().UnixMilli()), Message: aws.String("m")}},
		})
		return err
	}
	cases := []struct {
		name   string
		inject func()
		want   errClass
	}{
		{"throttling", func() { srv.Throttle(1) }, classRetry},
		{"500", func() { srv.Fail(1, 500) }, classRetry},
		{"503", func() { srv.Fail(1, 503) }, classRetry},
		{"unknown 504", func() { srv.FailWithCode(1, 504, "GatewayTimeout") }, classRetry},
		// Too Many Requests with a code the SDK's throttle list lacks (a
		// proxy or a VPC endpoint answering): retried by its status.
		{"unknown 429", func() { srv.FailWithCode(1, 429, "TooManyRequests") }, classRetry},
		{"access denied", func() { srv.FailWithCode(1, 400, "AccessDeniedException") }, classRetry},
		{"invalid", func() { srv.FailWithCode(1, 400, "InvalidParameterException") }, classPermanent},
		{"conflict", func() { srv.FailWithCode(1, 400, "OperationAbortedException") }, classRetry},
		{"not found", func() { srv.FailWithCode(1, 400, "ResourceNotFoundException") }, classMissing},
		{"already accepted", func() { srv.FailWithCode(1, 400, "DataAlreadyAcceptedException") }, classAccepted},
		{"sequence token", func() { srv.FailWithCode(1, 400, "InvalidSequenceTokenException") }, classRetry},
		{"503 outage, text body", func() { srv.Outage(time.Hour, cwlogstest.Outage503) }, classRetry},
		{"refused", func() { srv.Outage(time.Hour, cwlogstest.OutageRefuse) }, classRetry},
	}
	for _, c := range cases {
		c.inject()
		err := call()
		srv.EndOutage()
		if err == nil {
			t.Fatalf("%s: no error", c.name)
		}
		if got := classify(err); got != c.want {
			t.Errorf("%s: classify(%v) = %v, want %v", c.name, err, got, c.want)
		}
	}
	if got := classify(context.DeadlineExceeded); got != classRetry {
		t.Errorf("timeout: %v", got)
	}
	if got := classify(errors.New("dial tcp: connection refused")); got != classRetry {
		t.Errorf("plain error: %v", got)
	}
}

func TestConfigValidation(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	for _, c := range []Config{
		{Stream: "s"},
		{Group: "g", Stream: "s", RetentionDays: 4},
		{Group: "g", Stream: "s", BufferBytes: MinBufferBytes - 1},
	} {
		if s, err := NewWithClient(t.Context(), srv.Client(), c); err == nil {
			s.Close(t.Context())
			t.Errorf("config %+v accepted", c)
		}
	}
}

// TestNameValidation: names the service would refuse stop New with an error
// naming them, instead of failing every batch once running; names it
// accepts, up to the longest, start.
func TestNameValidation(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	for _, c := range []struct{ group, stream, want string }{
		{"my access logs", "s", "log group"},
		{"access:logs", "s", "log group"},
		{"logs*", "s", "log group"},
		{"jürgen", "s", "log group"},
		{strings.Repeat("g", 513), "s", "log group"},
		{"g", "a:b", "log stream"},
		{"g", "a*", "log stream"},
		{"g", strings.Repeat("é", 513), "log stream"},
	} {
		s, err := NewWithClient(t.Context(), srv.Client(), Config{Group: c.group, Stream: c.stream})
		if err == nil {
			s.Close(t.Context())
			t.Errorf("group %.20q, stream %.20q: accepted", c.group, c.stream)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("group %.20q, stream %.20q: error %q does not name the %s", c.group, c.stream, err, c.want)
		}
	}
	for _, c := range []struct{ group, stream string }{
		{"/gwlbproxy/access_logs-1.#a", "i-0123456789abcdef0"},
		{strings.Repeat("g", 512), strings.Repeat("é", 512)}, // 512 characters, 1,024 bytes
		{"g", "ip-10-0-1-23.eu-west-1.compute.internal [blue] / écrit"},
	} {
		cfg := testConfig()
		cfg.Group, cfg.Stream = c.group, c.stream
		s := startShipper(t, srv, cfg)
		s.Write(line(0, 0, 20))
		closeShipper(t, s, 5*time.Second)
		checkExactlyOnce(t, srv.Events(c.group, c.stream), 1)
	}
}

// isolateAWSEnv makes the default credential chain see only fake static
// credentials: no shared files, no SSO, no metadata service.
func isolateAWSEnv(t *testing.T) {
	dir := t.TempDir()
	for _, kv := range [][2]string{
		{"AWS_ACCESS_KEY_ID", "AKIDCWLOGSTEST"},
		{"AWS_SECRET_ACCESS_KEY", "cwlogstest-not-a-secret"},
		{"AWS_SESSION_TOKEN", ""},
		{"AWS_PROFILE", ""},
		{"AWS_REGION", ""},
		{"AWS_DEFAULT_REGION", ""},
		{"AWS_ENDPOINT_URL", ""},
		{"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", ""},
		{"AWS_CONFIG_FILE", dir + "/config"},
		{"AWS_SHARED_CREDENTIALS_FILE", dir + "/credentials"},
		{"AWS_EC2_METADATA_DISABLED", "true"},
	} {
		t.Setenv(kv[0], kv[1])
	}
}

// TestNewWithDefaultChain goes through New: the default credential chain
// (environment), region and endpoint overrides, and the default stream name
// (the host name, since metadata is disabled).
func TestNewWithDefaultChain(t *testing.T) {
	isolateAWSEnv(t)
	srv := cwlogstest.NewServer(t)
	s, err := New(t.Context(), Config{Group: "g", Region: "eu-west-1", Endpoint: srv.URL, FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("via New"))
	closeShipper(t, s, 5*time.Second)
	host, _ := os.Hostname()
	stream := sanitizeStream(host)
	if s.Stats().Stream != stream {
		t.Fatalf("stream %q, want the host name %q", s.Stats().Stream, stream)
	}
	if ev := srv.Events("g", stream); len(ev) != 1 || ev[0].Message != "via New" {
		t.Fatalf("events %+v", ev)
	}
}

func TestNewWithoutRegion(t *testing.T) {
	isolateAWSEnv(t)
	srv := cwlogstest.NewServer(t)
	if s, err := New(t.Context(), Config{Group: "g", Stream: "s", Endpoint: srv.URL}); err == nil {
		s.Close(t.Context())
		t.Fatal("New succeeded with no region anywhere")
	} else if !strings.Contains(err.Error(), "region") {
		t.Fatalf("error does not name the missing region: %v", err)
	}
}

// TestDefaultStreamFromIMDS reads the instance ID (and the region) from a
// fake IMDSv2 on 127.0.0.1.
func TestDefaultStreamFromIMDS(t *testing.T) {
	isolateAWSEnv(t)
	imds := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			w.Write([]byte("token"))
		case r.URL.Path == "/latest/meta-data/instance-id" && r.Header.Get("X-Aws-Ec2-Metadata-Token") == "token":
			w.Write([]byte("i-0123456789abcdef0"))
		case r.URL.Path == "/latest/dynamic/instance-identity/document" && r.Header.Get("X-Aws-Ec2-Metadata-Token") == "token":
			w.Write([]byte(`{"instanceId":"i-0123456789abcdef0","region":"eu-west-3","accountId":"123456789012"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	imds.Listener = ln
	imds.Start()
	defer imds.Close()

	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.URL)
	if got := DefaultStream(t.Context()); got != "i-0123456789abcdef0" {
		t.Fatalf("DefaultStream = %q, want the instance ID", got)
	}
	client, err := NewClient(t.Context(), "", "")
	if err != nil || client.Options().Region != "eu-west-3" {
		t.Fatalf("NewClient without a region: %v; want the instance's region", err)
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	host, _ := os.Hostname()
	if got := DefaultStream(t.Context()); got != sanitizeStream(host) {
		t.Fatalf("DefaultStream with metadata disabled = %q, want %q", got, sanitizeStream(host))
	}
	if got := sanitizeStream("a:b*c"); got != "a_b_c" {
		t.Fatalf("sanitizeStream = %q", got)
	}
}

func TestStatsJSONNames(t *testing.T) {
	b, err := json.Marshal(Stats{LastError: "x", LastErrorTime: time.Unix(1, 0)})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"received", "queued_records", "queued_bytes", "buffer_bytes", "shipped", "shipped_bytes",
		"batches", "retried", "rejected", "failed", "dropped", "loss_events", "truncated", "last_error", "last_error_time"} {
		if _, ok := m[k]; !ok {
			t.Errorf("key %q missing from %s", k, b)
		}
	}
	for k := range m {
		if strings.ToLower(k) != k {
			t.Errorf("key %q is not snake_case", k)
		}
	}
	b, _ = json.Marshal(Stats{})
	if strings.Contains(string(b), "last_error") {
		t.Errorf("empty last error encoded: %s", b)
	}
}
