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
	answerDelay time.Duration // SetAnswerDelay's
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
	latency, answerDelay := s.latency, s.answerDelay
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
	if answerDelay > 0 {
		t := time.NewTimer(answerDelay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client gave up: what it sent is processed all the same
		}
	}
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
