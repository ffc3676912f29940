package records

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// writeOne writes r through a Writer with the given line limit (0: the
// default) to a file and a Shipper, and returns the file's line and the
// shipped one.
func writeOne(t *testing.T, limit int, r *Record) (line, shipped []byte) {
	t.Helper()
	var file bytes.Buffer
	ship := &shipSink{}
	w := NewWriter(ship, &file)
	if limit != 0 {
		w.SetMaxLineBytes(limit)
	}
	w.Write(r)
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	ship.mu.Lock()
	defer ship.mu.Unlock()
	if len(ship.lines) != 1 {
		t.Fatalf("%d lines shipped, want 1", len(ship.lines))
	}
	return file.Bytes(), []byte(ship.lines[0])
}

// checkLine checks that line is one record, valid JSON within limit bytes
// (newline excluded), and returns it.
func checkLine(t *testing.T, line []byte, limit int) Record {
	t.Helper()
	if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("not one line: %.200q", line)
	}
	if n := len(line) - 1; n > limit {
		t.Fatalf("line of %d bytes, over the %d-byte limit", n, limit)
	}
	if !utf8.Valid(line) {
		t.Fatal("line is not valid UTF-8")
	}
	var rec Record
	if err := json.Unmarshal(line, &rec); err != nil {
		t.Fatalf("line %.200q: %v", line, err)
	}
	return rec
}

// cutFrom checks that got is want, or a start of it (whole runes) marked
// as cut.
func cutFrom(t *testing.T, field, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	if got != "" && (!strings.HasSuffix(got, cutMark) || !strings.HasPrefix(want, strings.TrimSuffix(got, cutMark))) {
		t.Errorf("%s %.80q… is not a start of %.80q…", field, got, want)
	}
}

// TestWriterTruncatesURL: a request for a 300 KiB path, as a client can
// send over HTTP/2 or in an HTTP/1 head under a raised limit, becomes a
// line CloudWatch takes whole: valid JSON within 262,118 bytes, the path
// cut, everything else as it was, and truncated set. The shipper and the
// files get the same line; the caller's record is left alone.
func TestWriterTruncatesURL(t *testing.T) {
	r := benchRecord()
	r.Path = "/" + strings.Repeat("a", 300<<10)
	orig := r
	line, shipped := writeOne(t, 0, &r)
	if !bytes.Equal(line, shipped) {
		t.Error("the shipper and the file got different lines")
	}
	rec := checkLine(t, line, DefaultMaxLineBytes)
	if !rec.Truncated {
		t.Error("truncated is not set")
	}
	if len(line)-1 < DefaultMaxLineBytes-64 {
		t.Errorf("line of %d bytes: cut far more than needed", len(line)-1)
	}
	cutFrom(t, "path", rec.Path, orig.Path)
	if rec.Path == orig.Path {
		t.Error("the path was not cut")
	}
	want := orig
	want.Path, want.Truncated = rec.Path, true
	want.Time = want.Time.UTC().Round(0)
	rec.Time = rec.Time.Round(0)
	if rec != want {
		t.Errorf("fields other than the path changed:\n got %+v\nwant %+v", rec, want)
	}
	if r.Path != orig.Path || r.Truncated {
		t.Error("the caller's record was changed")
	}
}

// TestWriterTruncatesLongestFields: with several long fields, the longest
// are cut to a common length and short ones are left alone, whatever JSON
// makes of their bytes (escaped HTML and control characters take six
// bytes; TestWriterTruncatesUnderAnyLimit adds invalid UTF-8).
func TestWriterTruncatesLongestFields(t *testing.T) {
	r := benchRecord()
	r.Path = "/" + strings.Repeat("p", 200<<10)
	r.UserAgent = strings.Repeat("<&>\x01", 50<<10) // 200 KiB, six bytes of JSON each
	r.Error = strings.Repeat("é\u2028\"\\\n", 20<<10)
	r.Host = "short.example"
	orig := r
	rec := checkLine(t, must(writeOne(t, 0, &r)), DefaultMaxLineBytes)
	if !rec.Truncated {
		t.Error("truncated is not set")
	}
	if rec.Host != orig.Host || rec.SNI != orig.SNI || rec.DestIP != orig.DestIP || rec.Status != orig.Status {
		t.Errorf("short fields changed: %+v", rec)
	}
	cutFrom(t, "path", rec.Path, orig.Path)
	cutFrom(t, "user_agent", rec.UserAgent, orig.UserAgent)
	cutFrom(t, "error", rec.Error, orig.Error)
	// Water-filling: the cut fields end up about as long as one another.
	lp, lu, le := jsonLen(rec.Path), jsonLen(rec.UserAgent), jsonLen(rec.Error)
	if max(lp, lu, le)-min(lp, lu, le) > 16 {
		t.Errorf("cut to uneven JSON lengths: path %d, user agent %d, error %d", lp, lu, le)
	}
}

// TestWriterTruncatesUnderAnyLimit: whatever the fields and the limit,
// the line is a valid record within it.
func TestWriterTruncatesUnderAnyLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"a", "<", "\x00", "é", "\xff", "\u2028", "😀", `"`, "\\", "\n"}
	long := func() string {
		var b strings.Builder
		for range rng.IntN(8000) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	for i := range 40 {
		r := benchRecord()
		for _, f := range r.cuttable() {
			if rng.IntN(2) == 0 {
				*f = long()
			}
		}
		limit := MinMaxLineBytes + rng.IntN(40000)
		rec := checkLine(t, must(writeOne(t, limit, &r)), limit)
		if rec.ClientIP != r.ClientIP || rec.BytesIn != r.BytesIn || rec.Kind != r.Kind {
			t.Fatalf("case %d: fields that are never cut changed: %+v", i, rec)
		}
	}
}

// TestWriterNormalRecordUntouched: a record within the limit is written
// as encoding/json writes it, without truncated.
func TestWriterNormalRecordUntouched(t *testing.T) {
	r := benchRecord()
	r.Time = r.Time.UTC()
	want, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	line := must(writeOne(t, 0, &r))
	if !bytes.Equal(bytes.TrimSuffix(line, []byte("\n")), want) {
		t.Errorf("line %s\nwant %s", line, want)
	}
	// At the limit's edge, with a path long enough that the line is over
	// MinMaxLineBytes (SetMaxLineBytes raises a lower limit to it, and the
	// edge would not be tried): exactly at the limit the line is
	// untouched, one byte over it is shortened to fit and marked.
	r.Path = "/" + strings.Repeat("p", 2*MinMaxLineBytes)
	if want, err = json.Marshal(&r); err != nil {
		t.Fatal(err)
	}
	exact := must(writeOne(t, len(want), &r))
	if !bytes.Equal(bytes.TrimSuffix(exact, []byte("\n")), want) {
		t.Errorf("a line exactly at the limit was changed: %.200s", exact)
	}
	limit := len(want) - 1
	line, shipped := writeOne(t, limit, &r)
	if !bytes.Equal(line, shipped) {
		t.Error("the shipper and the file got different lines")
	}
	if rec := checkLine(t, line, limit); !rec.Truncated {
		t.Error("a line one byte over the limit was not marked truncated")
	}
}

// TestSetMaxLineBytes: the limit's default and bounds.
func TestSetMaxLineBytes(t *testing.T) {
	w := NewWriter(nil)
	if got := w.maxLine.Load(); got != DefaultMaxLineBytes {
		t.Errorf("default %d, want %d", got, DefaultMaxLineBytes)
	}
	for _, c := range []struct{ set, want int }{{5000, 5000}, {10, MinMaxLineBytes}, {0, DefaultMaxLineBytes}, {-1, DefaultMaxLineBytes}} {
		w.SetMaxLineBytes(c.set)
		if got := w.maxLine.Load(); got != int64(c.want) {
			t.Errorf("SetMaxLineBytes(%d): %d, want %d", c.set, got, c.want)
		}
	}
	w.Close(context.Background())
}

func must(line, _ []byte) []byte { return line }
