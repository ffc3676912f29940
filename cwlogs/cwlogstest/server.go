// Package cwlogstest runs a local endpoint that speaks the CloudWatch Logs
// JSON protocol (awsJson1.1: POST / with X-Amz-Target
// "Logs_20140328.<Operation>"), so that tests can point the real
// aws-sdk-go-v2 client at it. It keeps log groups, streams and events in
// memory, enforces the PutLogEvents limits the way the service does, answers
// Logs Insights calls with results the test sets, and injects faults:
// throttling, 5xx answers, outages (connection refused or 503) and slow
// responses. It listens on 127.0.0.1 only.
package cwlogstest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
)

// Service limits the endpoint enforces, as documented for PutLogEvents.
const (
	MaxBatchEvents = 10000
	MaxBatchBytes  = 1048576
	EventOverhead  = 26
	MaxEventBytes  = 256 * 1024
	MaxBatchSpan   = 24 * time.Hour
	MaxAge         = 14 * 24 * time.Hour
	MaxFuture      = 2 * time.Hour
)

// OutageMode selects how the endpoint behaves during an outage.
type OutageMode int

const (
	// OutageRefuse closes the listener (new connections are refused) and
	// drops connections that send a request, without answering.
	OutageRefuse OutageMode = iota
	// Outage503 answers every request with HTTP 503 and a plain-text body,
	// as a load balancer in front of a failed service would.
	Outage503
)

// Event is a stored log event.
type Event struct {
	Timestamp     int64  // milliseconds since the epoch, as sent
	Message       string // as sent
	IngestionTime int64
}

// Batch describes one accepted PutLogEvents call.
type Batch struct {
	Group, Stream string
	Events        int   // events in the request
	Bytes         int   // message bytes plus EventOverhead per event
	MinTS, MaxTS  int64 // first and last timestamp
	Rejected      int   // events returned in rejectedLogEventsInfo
}

// Query is a StartQuery call the endpoint received.
type Query struct {
	ID                 string
	QueryString        string
	LogGroupNames      []string
	StartTime, EndTime int64 // seconds since the epoch
	Limit              int32
	Status             string
}

// QueryDefinition is a saved query (PutQueryDefinition).
type QueryDefinition struct {
	ID            string
	Name          string
	QueryString   string
	LogGroupNames []string
}

// ResultField is one field of one row of query results.
type ResultField struct {
	Field string `json:"field"`
	Value string `json:"value"`
}

type group struct {
	retention int32
	created   int64
	streams   map[string]*stream
}

type stream struct {
	events  []Event
	count   int
	created int64
}

type fault struct {
	status    int
	code, msg string
	remaining int
	ops       []string // empty: any operation
}

type runningQuery struct {
	Query
	polls int
}

// Server is the local CloudWatch Logs endpoint.
type Server struct {
	// URL is the endpoint's base URL, e.g. http://127.0.0.1:41234.
	URL string

	addr string
	srv  *http.Server

	connMu sync.Mutex
	conns  map[net.Conn]http.ConnState

	mu          sync.Mutex
	ln          net.Listener
	closed      bool
	now         func() time.Time
	store       bool
	groups      map[string]*group
	calls       map[string]int
	served      int // faults served
	faults      []*fault
	latency     time.Duration
	outageUntil time.Time
	outageMode  OutageMode
	outageTimer *time.Timer
	batches     []Batch
	queries     []*runningQuery
	defs        []*QueryDefinition
	qStatus     string
	qPolls      int
	qRows       [][]ResultField
	seq         int
}

// NewServer starts an endpoint on 127.0.0.1 and stops it when tb ends.
func NewServer(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start()
	if err != nil {
		tb.Fatalf("cwlogstest: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Start starts an endpoint on 127.0.0.1; Close stops it.
func Start() (*Server, error) {
	s := &Server{
		now:     time.Now,
		store:   true,
		groups:  map[string]*group{},
		calls:   map[string]int{},
		conns:   map[net.Conn]http.ConnState{},
		qStatus: "Complete",
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         s.connState,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	s.addr = ln.Addr().String()
	s.URL = "http://" + s.addr
	s.ln = ln
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops the endpoint.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	if s.outageTimer != nil {
		s.outageTimer.Stop()
	}
	s.mu.Unlock()
	s.srv.Close()
}

// Client returns a real CloudWatch Logs client pointed at the endpoint, with
// static fake credentials and region us-east-1. It reads no environment,
// shared configuration or instance metadata.
func (s *Server) Client(optFns ...func(*cloudwatchlogs.Options)) *cloudwatchlogs.Client {
	return cloudwatchlogs.New(cloudwatchlogs.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.URL),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDCWLOGSTEST", SecretAccessKey: "cwlogstest-not-a-secret", Source: "cwlogstest"}, nil
		}),
	}, optFns...)
}

func (s *Server) connState(c net.Conn, st http.ConnState) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if st == http.StateClosed || st == http.StateHijacked {
		delete(s.conns, c)
		return
	}
	s.conns[c] = st
}

// SetNow replaces the clock used to judge events too old or too new.
func (s *Server) SetNow(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// SetStoreEvents chooses whether accepted events are kept (the default) or
// only counted, for benchmarks.
func (s *Server) SetStoreEvents(store bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store = store
}

// Throttle answers the next n calls (of the named operations, or of any
// operation when none is named) with ThrottlingException (HTTP 400).
func (s *Server) Throttle(n int, ops ...string) {
	s.addFault(&fault{status: 400, code: "ThrottlingException", msg: "Rate exceeded", remaining: n, ops: ops})
}

// Fail answers the next n calls (of the named operations, or of any) with
// the HTTP status: 500 carries InternalFailure, 503 ServiceUnavailableException,
// any other status a generic error code.
func (s *Server) Fail(n, status int, ops ...string) {
	code := "InternalFailure"
	switch {
	case status == 503:
		code = "ServiceUnavailableException"
	case status < 500:
		code = "InvalidParameterException"
	}
	s.addFault(&fault{status: status, code: code, msg: "injected failure", remaining: n, ops: ops})
}

// FailWithCode answers the next n calls (of the named operations, or of any)
// with the given HTTP status and error code.
func (s *Server) FailWithCode(n, status int, code string, ops ...string) {
	s.addFault(&fault{status: status, code: code, msg: "injected " + code, remaining: n, ops: ops})
}

func (s *Server) addFault(f *fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
}

// FaultsServed returns how many injected errors (not outages) were answered.
func (s *Server) FaultsServed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// SetLatency delays every answer by d (0 to stop). A request whose client
// gives up during the delay is not processed.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// Outage starts an outage lasting d; see OutageMode.
func (s *Server) Outage(d time.Duration, mode OutageMode) {
	s.mu.Lock()
	s.outageUntil = time.Now().Add(d)
	s.outageMode = mode
	var idle []net.Conn
	if mode == OutageRefuse && s.ln != nil {
		s.ln.Close()
		s.ln = nil
		s.connMu.Lock()
		for c, st := range s.conns {
			if st == http.StateIdle || st == http.StateNew {
				idle = append(idle, c)
			}
		}
		s.connMu.Unlock()
	}
	if s.outageTimer != nil {
		s.outageTimer.Stop()
	}
	s.outageTimer = time.AfterFunc(d, s.EndOutage)
	s.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// EndOutage ends an outage now; the endpoint listens again on the same
// address.
func (s *Server) EndOutage() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outageUntil = time.Time{}
	if s.outageTimer != nil {
		s.outageTimer.Stop()
		s.outageTimer = nil
	}
	if s.ln != nil || s.closed {
		return
	}
	// The port was ours a moment ago; retry briefly in case the kernel
	// still holds it.
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			s.ln = ln
			go s.srv.Serve(ln)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	panic(fmt.Sprintf("cwlogstest: cannot listen again on %s: %v", s.addr, err))
}

// InOutage reports whether an outage is under way.
func (s *Server) InOutage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.outageUntil.IsZero()
}

// Calls returns how many requests for op arrived (answered or not).
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// CreateGroup creates a log group directly (no request).
func (s *Server) CreateGroup(name string, retentionDays int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups[name] == nil {
		s.groups[name] = &group{retention: retentionDays, created: s.now().UnixMilli(), streams: map[string]*stream{}}
	}
}

// CreateStream creates a log stream directly, and its group if missing.
func (s *Server) CreateStream(groupName, streamName string) {
	s.CreateGroup(groupName, 0)
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	if g.streams[streamName] == nil {
		g.streams[streamName] = &stream{created: s.now().UnixMilli()}
	}
}

// DeleteGroup deletes a log group and its streams.
func (s *Server) DeleteGroup(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.groups, name)
}

// Group reports whether the group exists and its retention in days (0:
// never expire).
func (s *Server) Group(name string) (exists bool, retentionDays int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[name]
	if g == nil {
		return false, 0
	}
	return true, g.retention
}

// StreamExists reports whether the stream exists.
func (s *Server) StreamExists(groupName, streamName string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	return g != nil && g.streams[streamName] != nil
}

// Events returns a copy of the events stored in a stream, in order.
func (s *Server) Events(groupName, streamName string) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.groups[groupName]; g != nil {
		if st := g.streams[streamName]; st != nil {
			return slices.Clone(st.events)
		}
	}
	return nil
}

// EventCount returns how many events a stream accepted (also when events
// are not stored).
func (s *Server) EventCount(groupName, streamName string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.groups[groupName]; g != nil {
		if st := g.streams[streamName]; st != nil {
			return st.count
		}
	}
	return 0
}

// Batches returns the accepted PutLogEvents calls.
func (s *Server) Batches() []Batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batches)
}

// SetQueryResults sets what queries answer: GetQueryResults reports
// "Running" for the first polls calls on each query, then status (Complete
// when empty) with rows.
func (s *Server) SetQueryResults(status string, polls int, rows [][]ResultField) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == "" {
		status = "Complete"
	}
	s.qStatus, s.qPolls, s.qRows = status, polls, rows
}

// Queries returns the queries started so far.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Query, 0, len(s.queries))
	for _, q := range s.queries {
		out = append(out, q.Query)
	}
	return out
}

// QueryDefinitions returns the saved queries.
func (s *Server) QueryDefinitions() []QueryDefinition {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]QueryDefinition, 0, len(s.defs))
	for _, d := range s.defs {
		out = append(out, *d)
	}
	return out
}

// apiError is an error answer in the awsJson1.1 shape.
type apiError struct {
	status    int
	code, msg string
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func invalid(format string, args ...any) *apiError {
	return &apiError{400, "InvalidParameterException", fmt.Sprintf(format, args...)}
}

func notFound(msg string) *apiError { return &apiError{400, "ResourceNotFoundException", msg} }

func (s *Server) requestID() string {
	s.seq++
	return fmt.Sprintf("cwlogstest-%08d", s.seq)
}

func writeError(w http.ResponseWriter, id string, e *apiError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", e.code)
	w.Header().Set("X-Amzn-RequestId", id)
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]string{"__type": e.code, "message": e.msg})
}

const targetPrefix = "Logs_20140328."

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)

	s.mu.Lock()
	id := s.requestID()
	s.calls[op]++
	outage, mode := !s.outageUntil.IsZero(), s.outageMode
	latency := s.latency
	var f *fault
	if !outage {
		for _, cand := range s.faults {
			if cand.remaining > 0 && (len(cand.ops) == 0 || slices.Contains(cand.ops, op)) {
				cand.remaining--
				s.served++
				f = cand
				break
			}
		}
	}
	s.mu.Unlock()

	if outage {
		if mode == Outage503 {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "Service Unavailable\n")
			return
		}
		// A dead host: the connection goes away without an answer, and
		// the request is not processed.
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	// Read the body before any delay: only then does net/http watch the
	// connection and cancel r.Context() when the client goes away.
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		writeError(w, id, &apiError{400, "SerializationException", err.Error()})
		return
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client gave up: nothing was processed
		}
	}
	if f != nil {
		writeError(w, id, &apiError{f.status, f.code, f.msg})
		return
	}

	if r.Method != http.MethodPost || r.URL.Path != "/" {
		writeError(w, id, &apiError{404, "UnknownOperationException", "expected POST /"})
		return
	}
	if !ok {
		writeError(w, id, &apiError{400, "UnknownOperationException", "missing or unknown X-Amz-Target"})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		writeError(w, id, &apiError{400, "SerializationException", "unexpected Content-Type " + strconv.Quote(ct)})
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		writeError(w, id, &apiError{400, "MissingAuthenticationTokenException", "request is not signed"})
		return
	}
	out, aerr := s.dispatch(op, body)
	if aerr != nil {
		writeError(w, id, aerr)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", id)
	json.NewEncoder(w).Encode(out)
}

func decode(body []byte, v any) *apiError {
	if err := json.Unmarshal(body, v); err != nil {
		return &apiError{400, "SerializationException", err.Error()}
	}
	return nil
}

func (s *Server) dispatch(op string, body []byte) (any, *apiError) {
	switch op {
	case "CreateLogGroup":
		return s.createLogGroup(body)
	case "CreateLogStream":
		return s.createLogStream(body)
	case "PutRetentionPolicy":
		return s.putRetentionPolicy(body)
	case "DescribeLogGroups":
		return s.describeLogGroups(body)
	case "PutLogEvents":
		return s.putLogEvents(body)
	case "GetLogEvents":
		return s.getLogEvents(body)
	case "PutQueryDefinition":
		return s.putQueryDefinition(body)
	case "DescribeQueryDefinitions":
		return s.describeQueryDefinitions(body)
	case "StartQuery":
		return s.startQuery(body)
	case "GetQueryResults":
		return s.getQueryResults(body)
	case "StopQuery":
		return s.stopQuery(body)
	}
	return nil, &apiError{400, "UnknownOperationException", "operation " + op + " is not implemented by cwlogstest"}
}

var (
	groupNameRE  = regexp.MustCompile(`^[.\-_/#A-Za-z0-9]{1,512}$`)
	streamNameRE = regexp.MustCompile(`^[^:*]{1,512}$`)
)

var retentionDays = []int32{1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}

func (s *Server) createLogGroup(body []byte) (any, *apiError) {
	var in struct {
		LogGroupName string `json:"logGroupName"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if !groupNameRE.MatchString(in.LogGroupName) {
		return nil, invalid("invalid log group name %q", in.LogGroupName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups[in.LogGroupName] != nil {
		return nil, &apiError{400, "ResourceAlreadyExistsException", "The specified log group already exists"}
	}
	s.groups[in.LogGroupName] = &group{created: s.now().UnixMilli(), streams: map[string]*stream{}}
	return struct{}{}, nil
}

func (s *Server) createLogStream(body []byte) (any, *apiError) {
	var in struct {
		LogGroupName  string `json:"logGroupName"`
		LogStreamName string `json:"logStreamName"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if !streamNameRE.MatchString(in.LogStreamName) {
		return nil, invalid("invalid log stream name %q", in.LogStreamName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[in.LogGroupName]
	if g == nil {
		return nil, notFound("The specified log group does not exist.")
	}
	if g.streams[in.LogStreamName] != nil {
		return nil, &apiError{400, "ResourceAlreadyExistsException", "The specified log stream already exists"}
	}
	g.streams[in.LogStreamName] = &stream{created: s.now().UnixMilli()}
	return struct{}{}, nil
}

func (s *Server) putRetentionPolicy(body []byte) (any, *apiError) {
	var in struct {
		LogGroupName    string `json:"logGroupName"`
		RetentionInDays int32  `json:"retentionInDays"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if !slices.Contains(retentionDays, in.RetentionInDays) {
		return nil, invalid("invalid retentionInDays %d", in.RetentionInDays)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[in.LogGroupName]
	if g == nil {
		return nil, notFound("The specified log group does not exist.")
	}
	g.retention = in.RetentionInDays
	return struct{}{}, nil
}

func (s *Server) describeLogGroups(body []byte) (any, *apiError) {
	var in struct {
		LogGroupNamePrefix string `json:"logGroupNamePrefix"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	type outGroup struct {
		LogGroupName    string `json:"logGroupName"`
		CreationTime    int64  `json:"creationTime"`
		RetentionInDays int32  `json:"retentionInDays,omitempty"`
		Arn             string `json:"arn"`
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name := range s.groups {
		if strings.HasPrefix(name, in.LogGroupNamePrefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	out := struct {
		LogGroups []outGroup `json:"logGroups"`
	}{LogGroups: []outGroup{}}
	for _, name := range names {
		g := s.groups[name]
		out.LogGroups = append(out.LogGroups, outGroup{name, g.created, g.retention,
			"arn:aws:logs:us-east-1:123456789012:log-group:" + name + ":*"})
	}
	return out, nil
}

type rejectedInfo struct {
	TooNewLogEventStartIndex *int `json:"tooNewLogEventStartIndex,omitempty"`
	TooOldLogEventEndIndex   *int `json:"tooOldLogEventEndIndex,omitempty"`
	ExpiredLogEventEndIndex  *int `json:"expiredLogEventEndIndex,omitempty"`
}

func (s *Server) putLogEvents(body []byte) (any, *apiError) {
	var in struct {
		LogGroupName  string `json:"logGroupName"`
		LogStreamName string `json:"logStreamName"`
		LogEvents     []struct {
			Timestamp *int64  `json:"timestamp"`
			Message   *string `json:"message"`
		} `json:"logEvents"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.LogGroupName == "" || in.LogStreamName == "" {
		return nil, invalid("logGroupName and logStreamName are required")
	}
	n := len(in.LogEvents)
	if n == 0 || n > MaxBatchEvents {
		return nil, invalid("1 validation error detected: Value at 'logEvents' failed to satisfy constraint: Member must have length between 1 and %d (got %d)", MaxBatchEvents, n)
	}
	size := 0
	var prev int64
	for i, e := range in.LogEvents {
		if e.Timestamp == nil || e.Message == nil || *e.Message == "" {
			return nil, invalid("log event %d: timestamp and a non-empty message are required", i)
		}
		es := len(*e.Message) + EventOverhead
		if es > MaxEventBytes {
			return nil, invalid("Log event too large: %d bytes exceeds limit of %d", es, MaxEventBytes)
		}
		size += es
		if i > 0 && *e.Timestamp < prev {
			return nil, invalid("Log events in a single PutLogEvents request must be in chronological order.")
		}
		prev = *e.Timestamp
	}
	if size > MaxBatchBytes {
		return nil, invalid("Upload too large: %d bytes exceeds limit of %d", size, MaxBatchBytes)
	}
	first, last := *in.LogEvents[0].Timestamp, *in.LogEvents[n-1].Timestamp
	if last-first > MaxBatchSpan.Milliseconds() {
		return nil, invalid("The batch of log events in a single PutLogEvents request cannot span more than 24 hours.")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[in.LogGroupName]
	if g == nil {
		return nil, notFound("The specified log group does not exist.")
	}
	st := g.streams[in.LogStreamName]
	if st == nil {
		return nil, notFound("The specified log stream does not exist.")
	}
	now := s.now()
	nowMS := now.UnixMilli()
	oldLimit := now.Add(-MaxAge).UnixMilli()
	newLimit := now.Add(MaxFuture).UnixMilli()
	expLimit := int64(-1 << 63)
	if g.retention > 0 {
		expLimit = now.Add(-time.Duration(g.retention) * 24 * time.Hour).UnixMilli()
	}
	tooOld, expired, tooNew := 0, 0, n
	for i, e := range in.LogEvents {
		ts := *e.Timestamp
		if ts < oldLimit {
			tooOld = i + 1
		}
		if ts < expLimit {
			expired = i + 1
		}
		if ts > newLimit && tooNew == n {
			tooNew = i
		}
	}
	lo := max(tooOld, expired)
	hi := max(tooNew, lo)
	for _, e := range in.LogEvents[lo:hi] {
		st.count++
		if s.store {
			st.events = append(st.events, Event{Timestamp: *e.Timestamp, Message: *e.Message, IngestionTime: nowMS})
		}
	}
	s.batches = append(s.batches, Batch{Group: in.LogGroupName, Stream: in.LogStreamName, Events: n, Bytes: size,
		MinTS: first, MaxTS: last, Rejected: n - (hi - lo)})

	out := struct {
		NextSequenceToken     string        `json:"nextSequenceToken"`
		RejectedLogEventsInfo *rejectedInfo `json:"rejectedLogEventsInfo,omitempty"`
	}{NextSequenceToken: strconv.Itoa(st.count)}
	if lo > 0 || hi < n {
		info := &rejectedInfo{}
		if tooOld > 0 {
			info.TooOldLogEventEndIndex = &tooOld
		}
		if expired > 0 {
			info.ExpiredLogEventEndIndex = &expired
		}
		if tooNew < n {
			info.TooNewLogEventStartIndex = &tooNew
		}
		out.RejectedLogEventsInfo = info
	}
	return out, nil
}

func (s *Server) getLogEvents(body []byte) (any, *apiError) {
	var in struct {
		LogGroupName  string `json:"logGroupName"`
		LogStreamName string `json:"logStreamName"`
		Limit         int    `json:"limit"`
		NextToken     string `json:"nextToken"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[in.LogGroupName]
	if g == nil {
		return nil, notFound("The specified log group does not exist.")
	}
	st := g.streams[in.LogStreamName]
	if st == nil {
		return nil, notFound("The specified log stream does not exist.")
	}
	// Tokens are "f/<index>"; reading always goes forward from the head.
	start := 0
	if in.NextToken != "" {
		v, err := strconv.Atoi(strings.TrimPrefix(in.NextToken, "f/"))
		if err != nil || v < 0 || v > len(st.events) {
			return nil, invalid("invalid nextToken")
		}
		start = v
	}
	limit := in.Limit
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	end := min(start+limit, len(st.events))
	type outEvent struct {
		Timestamp     int64  `json:"timestamp"`
		Message       string `json:"message"`
		IngestionTime int64  `json:"ingestionTime"`
	}
	out := struct {
		Events            []outEvent `json:"events"`
		NextForwardToken  string     `json:"nextForwardToken"`
		NextBackwardToken string     `json:"nextBackwardToken"`
	}{Events: []outEvent{}, NextForwardToken: "f/" + strconv.Itoa(end), NextBackwardToken: "f/" + strconv.Itoa(start)}
	for _, e := range st.events[start:end] {
		out.Events = append(out.Events, outEvent{e.Timestamp, e.Message, e.IngestionTime})
	}
	return out, nil
}

func (s *Server) putQueryDefinition(body []byte) (any, *apiError) {
	var in struct {
		Name              string   `json:"name"`
		QueryString       string   `json:"queryString"`
		QueryDefinitionID string   `json:"queryDefinitionId"`
		LogGroupNames     []string `json:"logGroupNames"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.Name == "" || in.QueryString == "" {
		return nil, invalid("name and queryString are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var d *QueryDefinition
	if in.QueryDefinitionID != "" {
		for _, c := range s.defs {
			if c.ID == in.QueryDefinitionID {
				d = c
			}
		}
		if d == nil {
			return nil, notFound("The specified query definition does not exist.")
		}
	} else {
		s.seq++
		d = &QueryDefinition{ID: fmt.Sprintf("qdef-%08d", s.seq)}
		s.defs = append(s.defs, d)
	}
	d.Name, d.QueryString, d.LogGroupNames = in.Name, in.QueryString, slices.Clone(in.LogGroupNames)
	return map[string]string{"queryDefinitionId": d.ID}, nil
}

func (s *Server) describeQueryDefinitions(body []byte) (any, *apiError) {
	var in struct {
		QueryDefinitionNamePrefix string `json:"queryDefinitionNamePrefix"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	type outDef struct {
		QueryDefinitionID string   `json:"queryDefinitionId"`
		Name              string   `json:"name"`
		QueryString       string   `json:"queryString"`
		LogGroupNames     []string `json:"logGroupNames,omitempty"`
		LastModified      int64    `json:"lastModified"`
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := struct {
		QueryDefinitions []outDef `json:"queryDefinitions"`
	}{QueryDefinitions: []outDef{}}
	for _, d := range s.defs {
		if strings.HasPrefix(d.Name, in.QueryDefinitionNamePrefix) {
			out.QueryDefinitions = append(out.QueryDefinitions, outDef{d.ID, d.Name, d.QueryString, d.LogGroupNames, s.now().UnixMilli()})
		}
	}
	return out, nil
}

func (s *Server) startQuery(body []byte) (any, *apiError) {
	var in struct {
		QueryString         string   `json:"queryString"`
		LogGroupName        string   `json:"logGroupName"`
		LogGroupNames       []string `json:"logGroupNames"`
		LogGroupIdentifiers []string `json:"logGroupIdentifiers"`
		StartTime           *int64   `json:"startTime"`
		EndTime             *int64   `json:"endTime"`
		Limit               int32    `json:"limit"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	groups := slices.Clone(in.LogGroupNames)
	if in.LogGroupName != "" {
		groups = append(groups, in.LogGroupName)
	}
	groups = append(groups, in.LogGroupIdentifiers...)
	switch {
	case in.QueryString == "":
		return nil, invalid("queryString is required")
	case len(groups) == 0:
		return nil, invalid("a log group is required")
	case in.StartTime == nil || in.EndTime == nil:
		return nil, invalid("startTime and endTime are required")
	case *in.EndTime < *in.StartTime:
		return nil, invalid("endTime is before startTime")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range groups {
		if s.groups[g] == nil {
			return nil, notFound("Log group '" + g + "' does not exist")
		}
	}
	s.seq++
	q := &runningQuery{Query: Query{
		ID: fmt.Sprintf("query-%08d", s.seq), QueryString: in.QueryString, LogGroupNames: groups,
		StartTime: *in.StartTime, EndTime: *in.EndTime, Limit: in.Limit, Status: "Running",
	}, polls: s.qPolls}
	s.queries = append(s.queries, q)
	return map[string]string{"queryId": q.ID}, nil
}

func (s *Server) findQuery(body []byte) (*runningQuery, *apiError) {
	var in struct {
		QueryID string `json:"queryId"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	for _, q := range s.queries {
		if q.ID == in.QueryID {
			return q, nil
		}
	}
	return nil, notFound("Query does not exist")
}

func (s *Server) getQueryResults(body []byte) (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, e := s.findQuery(body)
	if e != nil {
		return nil, e
	}
	if q.Status == "Running" {
		if q.polls > 0 {
			q.polls--
		} else {
			q.Status = s.qStatus
		}
	}
	rows := [][]ResultField{}
	if q.Status == "Complete" {
		rows = s.qRows
		if q.Limit > 0 && len(rows) > int(q.Limit) {
			rows = rows[:q.Limit]
		}
	}
	scanned := 0
	for _, g := range s.groups {
		for _, st := range g.streams {
			scanned += st.count
		}
	}
	return struct {
		Status     string            `json:"status"`
		Results    [][]ResultField   `json:"results"`
		Statistics map[string]uint64 `json:"statistics"`
	}{q.Status, rows, map[string]uint64{"recordsMatched": uint64(len(rows)), "recordsScanned": uint64(scanned), "bytesScanned": 0}}, nil
}

func (s *Server) stopQuery(body []byte) (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, e := s.findQuery(body)
	if e != nil {
		return nil, e
	}
	if q.Status != "Running" {
		return nil, &apiError{400, "InvalidParameterException", "query is not running"}
	}
	q.Status = "Cancelled"
	return map[string]bool{"success": true}, nil
}
