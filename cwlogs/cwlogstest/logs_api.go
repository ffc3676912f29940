// The log group, stream and event operations (CreateLogGroup,
// PutLogEvents, GetLogEvents, ...).

package cwlogstest

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

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
