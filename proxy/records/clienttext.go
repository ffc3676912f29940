package records

import "unicode/utf8"

// A request record copies text its client chose, as long as its request
// head could hold it (64 KiB by default): the URL path, the User-Agent,
// and the method. The other fields an http record holds are the
// appliance's, the policy's, or names that DNS bounds (host, sni). So one
// client's ordinary allowed requests, pipelined with long paths, made
// records as fast as it sent bytes: the proxy bounds how much of that
// text a client gets recorded whole (proxy/textbudget.go), and cuts the
// rest with these.

// clientText returns r's fields whose length a client chooses.
func (r *Record) clientText() [3]*string {
	return [...]*string{&r.Path, &r.UserAgent, &r.Method}
}

// ClientTextOver returns how many bytes of JSON r's client-chosen fields
// (path, user_agent, method) hold beyond limit each: at most what
// CutClientText(limit) would take away. 0 for a record whose fields all
// fit, as nearly every real request's do; it allocates nothing.
func (r *Record) ClientTextOver(limit int) int {
	over := 0
	for _, f := range r.clientText() {
		if len(*f) <= limit/6 {
			continue // even at 6 bytes of JSON a byte it fits
		}
		if n := jsonLen(*f); n > limit {
			over += n - limit
		}
	}
	return over
}

// CutClientText cuts each of r's client-chosen fields (path, user_agent,
// method) longer than limit bytes of JSON down to fit it, keeping both
// ends (cutEnds), and marks r Truncated when it cut any. It reports
// whether it did.
func (r *Record) CutClientText(limit int) bool {
	cut := false
	for _, f := range r.clientText() {
		if len(*f) > limit/6 && jsonLen(*f) > limit {
			*f = cutEnds(*f, limit)
			cut = true
		}
	}
	if cut {
		r.Truncated = true
	}
	return cut
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
