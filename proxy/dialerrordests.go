package proxy

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// The owed note named only the last unrecorded dial's destination, and
// the client chooses which dial is last: one out of tokens could send any
// number of flows of up to 512 bytes to host B, then two to host A, and no
// record or note named B (review rev33b F1). So the bucket keeps which
// hosts the bytes of its unrecorded dials went to, weighted by bytes, in a
// few counters (a Misra-Gries summary, weighted): a host already counted
// gets the bytes; a new one takes a free counter; with none free, the
// smallest count (or the new bytes, if fewer) is taken off every counter
// and off the new bytes, counters at zero are freed, and what is left of
// the new bytes takes one. Each such cut takes the same amount off
// owedDestCounters+1 byte counts, and only the bytes the counters do not
// hold were cut, so no host's count is short by more than a fifth of the
// bytes left out of the counters (cut below): any host that got more than
// a fifth of the bytes is named, whatever the order of the dials, and each
// one named got at least what its counter says. While no more than four
// hosts got bytes nothing is cut, and the counts are exact. A counter is a
// host's, not a port's: a client sending to many closed ports of one host
// would otherwise spread its bytes too thin for any counter to keep them;
// the counter keeps the range of its bytes' ports. Dials that sent nothing
// (a TCP dial, a UDP flow with no host socket) have no bytes to put
// anywhere.
//
// Memory: the summary is allocated once for a bucket, at its first dial
// left unrecorded, and reused after each note (no allocation per dial):
// 144 bytes, and the four hosts' addresses, strings shared with the
// records they came from (at most 48 bytes each: an IPv6 address). At most
// about 340 bytes a bucket, 22 MB for the 65,536 buckets; other kinds of
// buckets have only the pointer (8 bytes, where the last destination and
// the bytes took 24).
const owedDestCounters = 4

// owedDest is one counter: a host, the bytes counted to it and the range
// of their ports.
type owedDest struct {
	ip     string // the record's DestIP, shared with it; "" when free
	lo, hi uint16
	bytes  int64
}

// owedDests is what a client's failed dials not recorded one by one sent
// since its last one recorded, and where.
type owedDests struct {
	bytes int64 // all they sent
	// cut is how much each count was cut by, at most: the bytes left out
	// of the counters are (owedDestCounters+1) times it.
	cut  int64
	dest [owedDestCounters]owedDest
}

// add counts w bytes sent to port of host ip.
func (d *owedDests) add(ip string, port uint16, w int64) {
	if w <= 0 {
		return
	}
	d.bytes += w
	free := -1
	for i := range d.dest {
		c := &d.dest[i]
		if c.bytes > 0 && c.ip == ip {
			c.bytes += w
			c.lo, c.hi = min(c.lo, port), max(c.hi, port)
			return
		}
		if c.bytes == 0 && free < 0 {
			free = i
		}
	}
	if free < 0 {
		m := w
		for _, c := range d.dest {
			m = min(m, c.bytes)
		}
		for i := range d.dest {
			c := &d.dest[i]
			if c.bytes -= m; c.bytes == 0 {
				*c = owedDest{} // and the address let go
				if free < 0 {
					free = i
				}
			}
		}
		d.cut += m
		if w -= m; w == 0 {
			return
		}
	}
	d.dest[free] = owedDest{ip, port, port, w}
}

// reset starts the count afresh, keeping the memory.
func (d *owedDests) reset() { *d = owedDests{} }

// String is the note's account of the bytes: "B bytes sent: b1 to H1:p,
// b2 to H2 (ports p1-p2)", the largest first, each host with the port its
// count's bytes went to, or their range. When counts were cut, each is
// "at least", and ", and R more, at most C more to any one host" follows
// (R the bytes the counts leave out, C the cut: no host got more than its
// count and C); with none named, ", at most C to any one host".
func (d *owedDests) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d bytes sent", d.bytes)
	named := make([]owedDest, 0, owedDestCounters)
	var sum int64
	for _, c := range d.dest {
		if c.bytes > 0 {
			named = append(named, c)
			sum += c.bytes
		}
	}
	slices.SortStableFunc(named, func(a, b owedDest) int { return cmp.Compare(b.bytes, a.bytes) })
	sep := ": "
	for _, c := range named {
		sb.WriteString(sep)
		sep = ", "
		if d.cut > 0 {
			sb.WriteString("at least ")
		}
		if c.lo == c.hi {
			fmt.Fprintf(&sb, "%d to %s", c.bytes, net.JoinHostPort(c.ip, strconv.Itoa(int(c.lo))))
		} else {
			fmt.Fprintf(&sb, "%d to %s (ports %d-%d)", c.bytes, c.ip, c.lo, c.hi)
		}
	}
	switch {
	case d.cut == 0:
	case len(named) == 0:
		fmt.Fprintf(&sb, ", at most %d to any one host", d.cut)
	default:
		fmt.Fprintf(&sb, ", and %d more, at most %d more to any one host", d.bytes-sum, d.cut)
	}
	return sb.String()
}
