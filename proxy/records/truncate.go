package records

import (
	"slices"
	"unicode/utf8"
)

// DefaultMaxLineBytes is the longest record line a Writer writes, in bytes
// of JSON without the newline: CloudWatch Logs' largest event, 256 KiB, less
// the 26 bytes the service counts for each event (cwlogs.MaxMessageBytes).
// The shipper cuts a longer line where the limit falls, mid-JSON, and Logs
// Insights cannot parse what is left; a record shortened field by field
// stays a record.
const DefaultMaxLineBytes = 256<<10 - 26

// MinMaxLineBytes is the smallest line limit a Writer takes: room for the
// fields that are never cut (addresses, counters, times and the like).
const MinMaxLineBytes = 1 << 10

// cutMark ends a field that was cut: U+2026, three bytes that JSON leaves
// as they are.
const cutMark = "…"

// SetMaxLineBytes sets the longest line the Writer writes (JSON without
// the newline): a longer record is shortened field by field and marked
// truncated. n <= 0 restores DefaultMaxLineBytes; n below MinMaxLineBytes
// counts as MinMaxLineBytes. It may be called at any time.
func (w *Writer) SetMaxLineBytes(n int) {
	if n <= 0 {
		n = DefaultMaxLineBytes
	}
	w.maxLine.Store(int64(max(n, MinMaxLineBytes)))
}

// cuttable returns r's fields that can be long: what clients, destinations
// and the configuration put there (a URL path, a User-Agent, an error
// naming a certificate's names, an SNI, a query name, a rule's name). The
// rest are the appliance's own short values, never cut.
func (r *Record) cuttable() [10]*string {
	return [...]*string{
		&r.Path, &r.UserAgent, &r.Error, &r.Host, &r.SNI,
		&r.QueryName, &r.ALPN, &r.Method, &r.QueryType, &r.Rule,
	}
}

// shorten re-encodes r into l, a copy of r marked Truncated whose longest
// fields are cut until the line (newline excluded) fits in limit bytes.
// r itself is not changed. It gives up, writing what it has, only if the
// line cannot fit with every cuttable field empty.
func shorten(l *recordLine, r *Record, limit int) error {
	c := *r
	c.Truncated = true
	over := l.buf.Len() - 1 - limit
	if !r.Truncated {
		over += len(`,"truncated":true`)
	}
	for range 4 { // one pass normally does; the rest are a safety margin
		cutFields(&c, over)
		if err := l.encode(&c); err != nil {
			return err
		}
		if over = l.buf.Len() - 1 - limit; over <= 0 {
			return nil
		}
	}
	for _, f := range c.cuttable() {
		*f = ""
	}
	return l.encode(&c)
}

// cutFields shortens r's cuttable fields so that their JSON is at least
// over bytes shorter, cutting only the longest: every field longer than
// some level is cut down to it, the level being as high as it can be (a
// 300 KiB path is cut, a 100-byte user agent beside it is not).
func cutFields(r *Record, over int) {
	fields := r.cuttable()
	var lens [len(fields)]int
	for i, f := range fields {
		lens[i] = jsonLen(*f)
	}
	sorted := lens
	slices.SortFunc(sorted[:], func(a, b int) int { return b - a })
	// Cutting the k longest fields to a level L saves sum(top k) - k*L;
	// take the first k for which L stays at or above the next field.
	level, sum := 0, 0
	for k := 1; k <= len(sorted); k++ {
		sum += sorted[k-1]
		level = (sum - over) / k
		if k == len(sorted) || level >= sorted[k] {
			break
		}
	}
	level = max(level, 0)
	for i, f := range fields {
		if lens[i] > level {
			*f = cutTo(*f, level)
		}
	}
}

// cutTo returns the longest start of s, whole runes, that with cutMark
// encodes to at most limit bytes of JSON; "" if cutMark alone is longer.
func cutTo(s string, limit int) string {
	room := limit - len(cutMark)
	if room < 0 {
		return ""
	}
	n := 0
	for i := 0; i < len(s); {
		rl, size := jsonRuneLen(s[i:])
		if n+rl > room {
			return s[:i] + cutMark
		}
		n += rl
		i += size
	}
	return s
}

// jsonLen returns the length of s as encoding/json writes it inside its
// quotes, HTML escaping included (the Encoder's default). An ASCII byte
// is looked up (jsonASCII), not decoded as a rune: the text budget
// measures every request's path and User-Agent with it
// (ClientTextOver), 2.5 ns a byte that way, 80-100 µs for a 30 KB path
// (BenchmarkClientTextOver).
func jsonLen(s string) int {
	n := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			n += int(jsonASCII[b])
			i++
			continue
		}
		rl, size := jsonRuneLen(s[i:])
		n += rl
		i += size
	}
	return n
}

// jsonASCII is jsonRuneLen's length of each ASCII byte.
var jsonASCII = func() (t [utf8.RuneSelf]uint8) {
	for b := range t {
		n, _ := jsonRuneLen(string(rune(b)))
		t[b] = uint8(n)
	}
	return t
}()

// jsonRuneLen returns how many bytes encoding/json writes for the rune at
// the start of s, and how many bytes of s it takes.
func jsonRuneLen(s string) (enc, size int) {
	if b := s[0]; b < utf8.RuneSelf {
		switch {
		case b == '"' || b == '\\' || b == '\b' || b == '\f' || b == '\n' || b == '\r' || b == '\t':
			return 2, 1
		case b < 0x20 || b == '<' || b == '>' || b == '&':
			return 6, 1 // \u00XX
		}
		return 1, 1
	}
	r, size := utf8.DecodeRuneInString(s)
	switch {
	case r == utf8.RuneError && size == 1:
		return 6, 1 // \ufffd
	case r == '\u2028' || r == '\u2029':
		return 6, size
	}
	return size, size
}
