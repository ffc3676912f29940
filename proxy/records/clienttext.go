package records

import "unicode/utf8"

// A request record copies text its client chose, as long as its request
// head could hold it (64 KiB by default): the URL path, the User-Agent,
// and the method. So one client's ordinary allowed requests, pipelined
// with long paths, made records as fast as it sent bytes: the proxy
// bounds how much of that text a client gets recorded whole
// (proxy/textbudget.go), and cuts the rest with these.
//
// The host and the error are the appliance's words, the policy's, or
// names that DNS bounds, but they quote what a client sent where it could
// not be used: a Host that cannot be read stands whole in its deny
// record's host (up to the head's bound) and quoted in its error; an
// error quotes a malformed body's line (net/http's words), an extended
// CONNECT's :protocol, or a library's words quoting the client. Those
// never come near errorTextShare times the limit otherwise: past it,
// they pay, and are cut, as the others are.

// errorTextShare is how many times the limit the host and the error keep
// whole: 1,024 bytes of JSON at the budget's 256, four times a name and
// a port, and more than the appliance's own words in an error.
const errorTextShare = 4

// clientField is a field whose length a client chooses, and how many
// times the limit it keeps whole.
type clientField struct {
	f     *string
	share int
}

// clientText returns r's fields whose length a client chooses.
func (r *Record) clientText() [5]clientField {
	return [...]clientField{{&r.Path, 1}, {&r.UserAgent, 1}, {&r.Method, 1}, {&r.Host, errorTextShare}, {&r.Error, errorTextShare}}
}

// ClientTextOver returns how many bytes of JSON r's client-chosen fields
// hold beyond what each keeps whole: limit for path, user_agent and
// method, errorTextShare times it for host and error. That is at most
// what CutClientText(limit) would take away. 0 for a record whose fields
// all fit, as nearly every real request's do; it allocates nothing.
func (r *Record) ClientTextOver(limit int) int {
	over := 0
	for _, c := range r.clientText() {
		keep := c.share * limit
		if len(*c.f) <= keep/6 {
			continue // even at 6 bytes of JSON a byte it fits
		}
		if n := jsonLen(*c.f); n > keep {
			over += n - keep
		}
	}
	return over
}

// CutClientText cuts each of r's client-chosen fields longer than it
// keeps whole (ClientTextOver) down to fit, keeping both ends (cutEnds),
// and marks r Truncated when it cut any. It reports whether it did.
func (r *Record) CutClientText(limit int) bool {
	cut := false
	for _, c := range r.clientText() {
		if keep := c.share * limit; len(*c.f) > keep/6 && jsonLen(*c.f) > keep {
			*c.f = cutEnds(*c.f, keep)
			cut = true
		}
	}
	if cut {
		r.Truncated = true
	}
	return cut
}

// CutMark stands where a cut field's text was cut away: U+2026, which JSON
// leaves as it is.
const CutMark = cutMark

// CutText returns s whole if it is at most limit bytes of JSON, as records
// are written, and false; else s cut to fit them, keeping both ends
// (cutEnds), and true. It allocates nothing for text that fits.
func CutText(s string, limit int) (string, bool) {
	if len(s) <= limit/6 || jsonLen(s) <= limit {
		return s, false
	}
	return cutEnds(s, limit), true
}

// cutEnds returns s, longer than limit bytes of JSON, cut to fit them: its
// first half and its last, whole runes, with "…" between. A cut that kept
// only the start let a client whose budget was spent choose what its
// record keeps: padding pushed the tail of a path (a traversal, the
// payload of an exfiltration) out of it (review rev30a F4). It reads
// the head and the tail alone, not what it cuts away.
func cutEnds(s string, limit int) string {
	room := limit - len(cutMark)
	if room < 0 {
		return ""
	}
	h, n := 0, 0 // the head's end in s, and its bytes of JSON
	for half := room - room/2; h < len(s); {
		rl, size := jsonRuneLen(s[h:])
		if n+rl > half {
			break
		}
		n, h = n+rl, h+size
	}
	i, tail := len(s), 0 // the tail's start in s, and its bytes of JSON
	for i > h {
		// Read backwards, the runes are those read forwards: UTF-8
		// resynchronizes, and a byte that is no rune's is one alone.
		_, size := utf8.DecodeLastRuneInString(s[h:i])
		rl, _ := jsonRuneLen(s[i-size : i])
		if tail+rl > room-n {
			break
		}
		tail, i = tail+rl, i-size
	}
	return s[:h] + cutMark + s[i:]
}
