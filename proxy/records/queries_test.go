package records

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// recordFields returns the JSON names of Record's fields.
func recordFields(t *testing.T) map[string]bool {
	t.Helper()
	fields := map[string]bool{}
	typ := reflect.TypeFor[Record]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fields[name] = true
		}
	}
	if len(fields) < 10 {
		t.Fatalf("Record has only %d JSON fields", len(fields))
	}
	return fields
}

// insightsKeywords are the Logs Insights words that are not field names.
var insightsKeywords = map[string]bool{
	"fields": true, "filter": true, "stats": true, "sort": true, "limit": true, "display": true,
	"dedup": true, "parse": true, "by": true, "as": true, "asc": true, "desc": true,
	"and": true, "or": true, "not": true, "in": true, "like": true,
}

// referencedFields returns the log fields a query reads: identifiers that
// are not keywords, functions (followed by "("), Insights' own @fields, or
// names the query defines with "as".
func referencedFields(q string) []string {
	var refs []string
	aliases := map[string]bool{}
	prev := ""
	for i := 0; i < len(q); {
		c := rune(q[i])
		switch {
		case c == '"' || c == '\'':
			j := i + 1
			for j < len(q) && rune(q[j]) != c {
				if q[j] == '\\' {
					j++
				}
				j++
			}
			i, prev = j+1, "string"
		case c == '#': // comment to the end of the line
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case unicode.IsDigit(c):
			for i < len(q) && (unicode.IsLetter(rune(q[i])) || unicode.IsDigit(rune(q[i])) || q[i] == '.') {
				i++
			}
			prev = "number"
		case unicode.IsLetter(c) || c == '_' || c == '@':
			j := i
			for j < len(q) && (unicode.IsLetter(rune(q[j])) || unicode.IsDigit(rune(q[j])) || q[j] == '_' || q[j] == '@' || q[j] == '.') {
				j++
			}
			word := q[i:j]
			k := j
			for k < len(q) && q[k] == ' ' {
				k++
			}
			isFunc := k < len(q) && q[k] == '('
			switch {
			case prev == "as":
				aliases[word] = true
			case insightsKeywords[word], isFunc, strings.HasPrefix(word, "@"):
			default:
				refs = append(refs, word)
			}
			i, prev = j, word
		case unicode.IsSpace(c):
			i++
		default:
			i, prev = i+1, string(c)
		}
	}
	var out []string
	for _, r := range refs {
		if !aliases[r] && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// TestQueriesUseRecordFields: every field a catalog query reads is a JSON
// name of Record, so renaming a record field breaks this test rather
// than the auditors' queries.
func TestQueriesUseRecordFields(t *testing.T) {
	fields := recordFields(t)
	used := map[string]bool{}
	for _, q := range Queries {
		refs := referencedFields(q.Query)
		if len(refs) == 0 {
			t.Errorf("%s: no field found in the query", q.Name)
		}
		for _, f := range refs {
			used[f] = true
			if !fields[f] {
				t.Errorf("%s: field %q is not a JSON field of Record", q.Name, f)
			}
		}
	}
	// The fields the auditor's questions hinge on are all queried.
	for _, f := range []string{"action", "endpoint", "client_ip", "dest_ip", "host", "sni", "bytes_in", "bytes_out", "upstream_verify", "error", "result"} {
		if !used[f] {
			t.Errorf("no query reads %q", f)
		}
	}
}

func TestReferencedFields(t *testing.T) {
	q := `fields @timestamp, coalesce(host, bogus_field) as destination, "a string with words" as s
| filter kind = 'dns' and ispresent(error) # a comment naming nothing_here
| stats count(*) as n, sum(bytes_in) by destination, bin(1h)
| sort n desc`
	got := referencedFields(q)
	want := []string{"host", "bogus_field", "kind", "error", "bytes_in"}
	if !slices.Equal(got, want) {
		t.Fatalf("referencedFields = %q, want %q", got, want)
	}
}

func TestCatalogIsWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, q := range Queries {
		if q.Name == "" || q.Description == "" || q.Query == "" || seen[q.Name] {
			t.Errorf("query %+v: missing name, description or text, or duplicate name", q)
		}
		seen[q.Name] = true
		if strings.ContainsAny(q.Name, " /") {
			t.Errorf("%s: name must be one command-line word", q.Name)
		}
		if !strings.Contains(q.Query, "| limit ") {
			t.Errorf("%s: no limit: results would be capped silently at the service's default", q.Name)
		}
	}
	for _, want := range []string{"top-destinations-requests", "top-destinations-bytes", "denied", "client-destinations",
		"endpoint-destinations", "tls-verify-failed", "new-destinations", "errors"} {
		if !seen[want] {
			t.Errorf("catalog lacks %s", want)
		}
	}
}
