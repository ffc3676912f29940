package proxy

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"

	"golang.org/x/net/dns/dnsmessage"
)

// optRR is an OPT record (RFC 6891) with extended rcode ext, EDNS version
// ver, and no options.
func optRR(ext, ver byte) []byte {
	return []byte{0, 0, dnsTypeOPT, 0x04, 0xd0, ext, ver, 0, 0, 0, 0} // root, OPT, 1232, TTL, rdlen 0
}

// withAdditional is msg (a response with no additional records) with
// records rrs appended in its additional section.
func withAdditional(msg []byte, rrs ...[]byte) []byte {
	b := bytes.Clone(msg)
	b[10], b[11] = 0, byte(len(rrs))
	for _, rr := range rrs {
		b = append(b, rr...)
	}
	return b
}

// aRR is an A record of 127.0.0.1 whose name is a pointer to offset 12
// (the question's name).
var aRR = []byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1}

// TestDNSAnswerRCodeExtended: an answer's rcode joins the header's 4 bits
// to its OPT record's 8 (RFC 6891 §6.1.3), wherever the OPT record is in
// the additional section, after answers and authorities; an answer without
// one, or cut short or malformed before it, has the header's.
func TestDNSAnswerRCodeExtended(t *testing.T) {
	q := dnsQuery(26, "e.example.test", 1)
	resp := func(rcode byte) []byte {
		r := bytes.Clone(q)
		r[2], r[3] = 0x81, 0x80|rcode
		return r
	}
	withAnswers := func(r []byte, an, ns int) []byte {
		r = bytes.Clone(r)
		r[7], r[9] = byte(an), byte(ns)
		for range an + ns {
			r = append(r, aRR...)
		}
		return r
	}
	headerOnly := []byte{0, 21, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0}
	cut := withAdditional(resp(0), optRR(1, 0))
	for _, c := range []struct {
		what string
		msg  []byte
		want uint16
	}{
		{"no OPT", resp(3), 3},
		{"BADVERS: header 0, OPT 1", withAdditional(resp(0), optRR(1, 0)), 16},
		{"BADCOOKIE: header 7, OPT 1", withAdditional(resp(7), optRR(1, 0)), 23},
		{"OPT of extended rcode 0", withAdditional(resp(3), optRR(0, 0)), 3},
		{"the largest", withAdditional(resp(15), optRR(255, 0)), 4095},
		{"OPT of another EDNS version", withAdditional(resp(0), optRR(1, 1)), 16},
		{"after answers and authorities", withAdditional(withAnswers(resp(0), 2, 1), optRR(1, 0)), 16},
		{"after another additional record", withAdditional(resp(0), aRR, optRR(1, 0)), 16},
		{"the first OPT counts", withAdditional(resp(0), optRR(1, 0), optRR(2, 0)), 16},
		{"header only, with an OPT", withAdditional(headerOnly, optRR(1, 0)), 17},
		{"OPT cut short", cut[:len(cut)-5], 0},
		{"additional count, no records", withAdditional(resp(2), []byte{}), 2},
		{"an answer's data past the end", withAdditional(withAnswers(resp(2), 1, 0)[:len(q)+10], append([]byte{0xff, 0xff}, optRR(1, 0)...)), 2},
		{"an obsolete label type before the OPT", withAdditional(resp(2), []byte{0x41, 'a', 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0}, optRR(1, 0)), 2},
	} {
		if got := dnsAnswerRCode(c.msg); got != c.want {
			t.Errorf("%s: rcode %d (%s), want %d (%s)", c.what, got, dnsRCodeName(got), c.want, dnsRCodeName(c.want))
		}
	}
}

// TestDNSExtendedRCodeRecorded plays the reviewer's two servers: one that
// answers BADVERS (as any EDNS server answers a query of EDNS version 1)
// and one that answers BADCOOKIE. Read from the header alone, the first
// was recorded NOERROR, a failed lookup reading as a success, and the
// second RCODE7, YXDOMAIN's number.
func TestDNSExtendedRCodeRecorded(t *testing.T) {
	for _, c := range []struct {
		hdr  byte
		want string
	}{{0, "BADVERS"}, {7, "BADCOOKIE"}} {
		q := dnsQuery(26, "e.example.test", 1)
		res := runDNSFlow(t, func(b []byte) []byte {
			r := bytes.Clone(b)
			r[2], r[3] = 0x81, c.hdr
			return withAdditional(r, optRR(1, 0))
		}, 3*time.Second, 1, q)
		if len(res.dns) != 1 || res.dns[0].RCode != c.want || res.dns[0].Result != "ok" {
			t.Errorf("dns records %+v; want one, ok, rcode %s", res.dns, c.want)
		}
	}
}

// FuzzDNSAnswerRCode: no message panics the walk; the rcode's low 4 bits
// are the header's, and a message with no additional records has the
// header's alone; and where golang.org/x/net/dns/dnsmessage reads the
// message as far as an EDNS version 0 OPT record, or to its end without
// one, the walk agrees with it.
func FuzzDNSAnswerRCode(f *testing.F) {
	q := dnsQuery(26, "e.example.test", 1)
	f.Add(withAdditional(q, optRR(1, 0)))
	f.Add(withAdditional(q, aRR, optRR(1, 0)))
	f.Add(withAdditional([]byte{0, 21, 0x81, 0x07, 0, 0, 0, 0, 0, 0, 0, 0}, optRR(1, 0)))
	f.Add(withAdditional(append(bytes.Clone(q[:7]), append([]byte{1}, q[8:]...)...), optRR(3, 0)))
	f.Add(pointerChain(5))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < dnsHeaderLen {
			return
		}
		got := dnsAnswerRCode(b)
		hdr := uint16(b[3] & 0x0f)
		if got&0x0f != hdr || got > 0xfff {
			t.Fatalf("rcode %#x; the header's is %#x", got, hdr)
		}
		if b[10] == 0 && b[11] == 0 && got != hdr {
			t.Fatalf("rcode %#x with no additional records; want the header's %#x", got, hdr)
		}
		want, ok := dnsmessageRCode(b)
		if ok && got != want {
			t.Fatalf("rcode %#x; dnsmessage reads %#x", got, want)
		}
	})
}

// dnsmessageRCode is b's rcode as dnsmessage reads it, and whether it read
// b as far as its first OPT record of EDNS version 0 (whose extended rcode
// dnsmessage alone honours), or to its end without meeting an OPT record.
func dnsmessageRCode(b []byte) (uint16, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil {
		return 0, false
	}
	if _, err := p.AllQuestions(); err != nil {
		return 0, false
	}
	if p.SkipAllAnswers() != nil || p.SkipAllAuthorities() != nil {
		return 0, false
	}
	for {
		rh, err := p.AdditionalHeader()
		if err == dnsmessage.ErrSectionDone {
			return uint16(h.RCode), true
		}
		if err != nil {
			return 0, false
		}
		if rh.Type == dnsmessage.TypeOPT {
			if rh.TTL&0x00ff0000 != 0 {
				return 0, false // another version: dnsmessage keeps the header's
			}
			return uint16(rh.ExtendedRCode(h.RCode)), true
		}
		if p.SkipAdditional() != nil {
			return 0, false
		}
	}
}

// FuzzDNSLogAnswer: no datagram from a server panics the answer path (a
// response with a question, one with none, anything else) on a flow with
// queries waiting, two of them under the datagram's own ID, one under the
// next, to which the datagram is given again (so that an answer with no
// question finds one query under its ID, and is noted on it); and
// whatever it answered, each answer takes at most one query, one with no
// question none, the flow's count of pending queries and the client's
// budget agree, and come back to nothing at its close.
func FuzzDNSLogAnswer(f *testing.F) {
	q := dnsQuery(21, "a.example.test", 1)
	f.Add(bareAnswer(1)(q))
	f.Add(dnsResponse(q))
	f.Add(dnsResponse(dnsQuery(21, "A.EXAMPLE.test", 1)))
	f.Add(withAdditional(dnsResponse(q), optRR(1, 0)))
	f.Add([]byte{0, 22, 0x83, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 41, 4, 0xd0, 1, 0, 0, 0, 0, 0})
	f.Add([]byte("not DNS"))
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	p := New(Config{AllowLoopback: true, Records: records.NewWriter(nil, io.Discard)})
	f.Cleanup(p.Close)
	f.Fuzz(func(t *testing.T, b []byte) {
		var id uint16
		if len(b) >= 2 {
			id = uint16(b[0])<<8 | uint16(b[1])
		}
		d := newDNSLog(p, rec, nil)
		closed := false
		defer func() {
			if !closed { // a failure: the next input starts with the client's budget whole
				d.close(dnsTimedOut)
			}
		}()
		d.query(dnsQuery(id, "a.example.test", 1))
		d.query(dnsQuery(id, "A.example.test", 28))
		d.query(dnsQuery(id+1, "b.example.test", 1))
		pending := func() int {
			d.mu.Lock()
			defer d.mu.Unlock()
			if n, budget := len(d.pending), d.budget.n.Load(); int64(n) != budget {
				t.Fatalf("%d queries pending, the budget counts %d; want them equal", n, budget)
			}
			return len(d.pending)
		}
		d.answer(b)
		if n := pending(); n < 2 {
			t.Fatalf("%d queries pending after one answer, want at least 2 (one answer takes one)", n)
		}
		if len(b) >= 2 {
			next := bytes.Clone(b)
			next[0], next[1] = byte((id+1)>>8), byte(id+1)
			before := pending()
			d.answer(next)
			if n := pending(); n < before-1 || bareResponse(next) && n != before {
				t.Fatalf("%d queries pending after an answer, %d before; want one taken at most, none by an answer with no question", n, before)
			}
		}
		b2 := d.budget
		d.close(dnsTimedOut)
		closed = true
		if n := b2.n.Load(); n != 0 {
			t.Fatalf("the budget counts %d after the close, want 0", n)
		}
	})
}
