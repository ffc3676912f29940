package records

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
// method) longer than limit bytes of JSON down to fit it, whole runes
// ending in "…", and marks r Truncated when it cut any. It reports whether
// it did.
func (r *Record) CutClientText(limit int) bool {
	cut := false
	for _, f := range r.clientText() {
		if len(*f) > limit/6 && jsonLen(*f) > limit {
			*f = cutTo(*f, limit)
			cut = true
		}
	}
	if cut {
		r.Truncated = true
	}
	return cut
}
