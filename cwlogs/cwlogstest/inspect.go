// What tests set up and read directly, without a request: groups, streams,
// the events and batches received, the queries run.

package cwlogstest

import (
	"slices"
)

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
