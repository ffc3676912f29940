// The Logs Insights operations: query definitions and queries.

package cwlogstest

import (
	"fmt"
	"slices"
	"strings"
)

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
