package destcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

const epA, epB = "vpce-0000000000000000a", "vpce-0000000000000000b"

// check runs Check with a short timeout.
func check(c *Checker, endpoint, name, dest string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Check(ctx, endpoint, name, addr(dest))
}

// wantLookupError: without a resolver, a name no observed answer vouches
// for cannot be checked.
func wantLookupError(t *testing.T, err error, name string) {
	t.Helper()
	var le *LookupError
	if !errors.As(err, &le) || le.Name != name || !strings.HasPrefix(err.Error(), "no address of "+name+" could be looked up: ") {
		t.Errorf("%s: got %v, want a LookupError for it", name, err)
	}
}

func wantMismatchErr(t *testing.T, err error, want string) {
	t.Helper()
	var me *MismatchError
	if !errors.As(err, &me) || err.Error() != want {
		t.Errorf("got %v, want the mismatch %q", err, want)
	}
}

func TestObserveCNAMEChain(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	c.Observe(epA, msg(t, "WWW.Example.com.",
		rr{name: "www.example.com.", ttl: 300, cname: "cdn.example.NET."},
		rr{name: "cdn.example.net.", ttl: 300, cname: "edge.cdn.test."},
		rr{name: "edge.cdn.test.", ttl: 60, addr: "192.0.2.1"},
		rr{name: "EDGE.cdn.test.", ttl: 60, addr: "2001:db8::1"},
		// Off the chain: a response vouches only for what it was asked.
		rr{name: "bank.example.", ttl: 60, addr: "198.51.100.66"},
	))
	for _, name := range []string{"www.example.com", "WWW.EXAMPLE.COM.", "cdn.example.net", "edge.cdn.test"} {
		for _, dest := range []string{"192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"} {
			if err := check(c, epA, name, dest); err != nil {
				t.Errorf("%s → %s: %v", name, dest, err)
			}
		}
	}
	wantLookupError(t, check(c, epA, "bank.example", "198.51.100.66"), "bank.example")
	// Without a resolver to ask, what was observed still names the addresses.
	wantMismatchErr(t, check(c, epA, "www.example.com", "192.0.2.2"), "192.0.2.2 is not an address of www.example.com (resolves to 192.0.2.1, 2001:db8::1)")
	if st := c.Stats(); st.ObservedNames != 3 || st.Observed != 1 || st.ObservedHits != 12 {
		t.Errorf("stats %+v: want 3 names observed from 1 response, 12 hits", st)
	}
}

// A chain that loops, or runs longer than maxChain, ends there; what it led
// to so far counts.
func TestObserveChainLoopAndLength(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	c.Observe(epA, msg(t, "a.test.",
		rr{name: "a.test.", ttl: 60, cname: "b.test."},
		rr{name: "b.test.", ttl: 60, cname: "a.test."},
		rr{name: "b.test.", ttl: 60, addr: "192.0.2.1"},
	))
	for _, name := range []string{"a.test", "b.test"} {
		if err := check(c, epA, name, "192.0.2.1"); err != nil {
			t.Errorf("looped chain: %s: %v", name, err)
		}
	}
	var long []rr
	for i := range 12 {
		long = append(long, rr{name: fmt.Sprintf("n%d.test.", i), ttl: 60, cname: fmt.Sprintf("n%d.test.", i+1)})
	}
	long = append(long, rr{name: "n12.test.", ttl: 60, addr: "192.0.2.9"}, rr{name: "n5.test.", ttl: 60, addr: "192.0.2.5"})
	c.Observe(epA, msg(t, "n0.test.", long...))
	if err := check(c, epA, "n0.test", "192.0.2.5"); err != nil {
		t.Errorf("within the chain's bound: %v", err)
	}
	wantMismatchErr(t, check(c, epA, "n0.test", "192.0.2.9"), "192.0.2.9 is not an address of n0.test (resolves to 192.0.2.5)")
}

func TestObserveTTLAndGrace(t *testing.T) {
	clk := newFakeClock()
	c := newTestChecker(t, Config{Grace: 30 * time.Second, MinTTL: 5 * time.Second, MaxTTL: time.Hour}, clk)
	c.Observe(epA, msg(t, "short.test.", rr{name: "short.test.", ttl: 60, addr: "192.0.2.1"}))
	c.Observe(epA, msg(t, "zero.test.", rr{name: "zero.test.", ttl: 0, addr: "192.0.2.2"}))
	c.Observe(epA, msg(t, "long.test.", rr{name: "long.test.", ttl: 1 << 31, addr: "192.0.2.3"}))
	// The chain's smallest TTL counts: the CNAME's 10 s, not the A's 600.
	c.Observe(epA, msg(t, "alias.test.",
		rr{name: "alias.test.", ttl: 10, cname: "target.test."},
		rr{name: "target.test.", ttl: 600, addr: "192.0.2.4"}))

	clk.Advance(60*time.Second + 29*time.Second) // past the TTL, within the grace
	if err := check(c, epA, "short.test", "192.0.2.1"); err != nil {
		t.Errorf("within the grace: %v", err)
	}
	if err := check(c, epA, "target.test", "192.0.2.4"); err != nil {
		t.Errorf("the alias's target keeps its own TTL: %v", err)
	}
	wantLookupError(t, check(c, epA, "alias.test", "192.0.2.4"), "alias.test") // 10 s + 30 s
	wantLookupError(t, check(c, epA, "zero.test", "192.0.2.2"), "zero.test")   // 5 s + 30 s
	clk.Advance(2 * time.Second)
	wantLookupError(t, check(c, epA, "short.test", "192.0.2.1"), "short.test")
	clk.Advance(time.Hour + 29*time.Second - 91*time.Second) // 1 h and 29 s in
	if err := check(c, epA, "long.test", "192.0.2.3"); err != nil {
		t.Errorf("a TTL clamped to an hour, within its grace: %v", err)
	}
	clk.Advance(time.Minute)
	wantLookupError(t, check(c, epA, "long.test", "192.0.2.3"), "long.test")

	// An answer observed again extends the address's life.
	c.Observe(epA, msg(t, "short.test.", rr{name: "short.test.", ttl: 60, addr: "192.0.2.1"}))
	clk.Advance(80 * time.Second)
	if err := check(c, epA, "short.test", "192.0.2.1"); err != nil {
		t.Errorf("renewed: %v", err)
	}
}

// Answers relayed to one endpoint's clients count for that endpoint only.
func TestObserveIsPerEndpoint(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	c.Observe(epA, msg(t, "bank.test.", rr{name: "bank.test.", ttl: 60, addr: "198.51.100.66"}))
	if err := check(c, epA, "bank.test", "198.51.100.66"); err != nil {
		t.Errorf("endpoint A: %v", err)
	}
	wantLookupError(t, check(c, epB, "bank.test", "198.51.100.66"), "bank.test")
}

// Only a well-formed NOERROR response to a standard query counts.
func TestObserveIgnores(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	a := rr{name: "x.test.", ttl: 60, addr: "192.0.2.1"}
	for name, m := range map[string][]byte{
		"a query":       msgWith(t, dnsmessage.Header{ID: 1}, "x.test.", a),
		"NXDOMAIN":      msgWith(t, dnsmessage.Header{ID: 1, Response: true, RCode: dnsmessage.RCodeNameError}, "x.test.", a),
		"SERVFAIL":      msgWith(t, dnsmessage.Header{ID: 1, Response: true, RCode: dnsmessage.RCodeServerFailure}, "x.test.", a),
		"opcode 2":      msgWith(t, dnsmessage.Header{ID: 1, Response: true, OpCode: 2}, "x.test.", a),
		"no answers":    msg(t, "x.test."),
		"cut short":     cut(msg(t, "x.test.", a), 2),
		"too short":     {0, 1, 0x81, 0},
		"empty":         nil,
		"off the chain": msg(t, "y.test.", a),
	} {
		c.Observe(epA, m)
		if st := c.Stats(); st.ObservedNames != 0 {
			t.Fatalf("%s: %d names observed, want none", name, st.ObservedNames)
		}
	}
	// A record of class CHAOS is not an address.
	m := dnsmessage.Message{Header: dnsmessage.Header{Response: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("x.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
		Answers: []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("x.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassCHAOS, TTL: 60},
			Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}}}}}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c.Observe(epA, b)
	if st := c.Stats(); st.ObservedNames != 0 {
		t.Errorf("a CHAOS record was observed: %+v", st)
	}
	// The question's class must be IN too.
	m.Questions[0].Class = dnsmessage.ClassCHAOS
	m.Answers[0].Header.Class = dnsmessage.ClassINET
	b, _ = m.Pack()
	c.Observe(epA, b)
	if st := c.Stats(); st.ObservedNames != 0 {
		t.Errorf("an answer to a CHAOS question was observed: %+v", st)
	}
}

// Observe must not keep the message: the proxy reuses its buffer.
func TestObserveDoesNotKeepMessage(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	b := msg(t, "keep.test.", rr{name: "keep.test.", ttl: 60, addr: "192.0.2.1"})
	c.Observe(epA, b)
	for i := range b {
		b[i] = 0xff
	}
	if err := check(c, epA, "keep.test", "192.0.2.1"); err != nil {
		t.Errorf("after the buffer was overwritten: %v", err)
	}
}

func TestIPLiteralName(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	if err := check(c, epA, "192.0.2.1", "192.0.2.1"); err != nil {
		t.Errorf("an address as the name, to itself: %v", err)
	}
	err := check(c, epA, "192.0.2.1", "192.0.2.2")
	var me *MismatchError
	if !errors.As(err, &me) || err.Error() != "192.0.2.2 is not an address of 192.0.2.1 (resolves to 192.0.2.1)" {
		t.Errorf("an address as the name, to another: %v", err)
	}
	if err := check(c, epA, "2001:db8::1", "2001:db8::1"); err != nil {
		t.Errorf("IPv6: %v", err)
	}
	// A zone names no destination: "::ffff:D%anything" used to pass for D
	// (Unmap drops the zone), and so for a NAT64 one.
	for _, tc := range [][2]string{
		{"::ffff:192.0.2.1%x.allowed.example", "192.0.2.1"},
		{"::ffff:192.0.2.1%25x", "64:ff9b::192.0.2.1"},
		{"2001:db8::1%eth0", "2001:db8::1"},
	} {
		if err := check(c, epA, tc[0], tc[1]); !errors.As(err, &me) {
			t.Errorf("%q to %s: %v, want a mismatch", tc[0], tc[1], err)
		}
	}
}

func TestMismatchErrorText(t *testing.T) {
	e := &MismatchError{Name: "bank.test", Dest: addr("198.51.100.9")}
	for i := range 10 {
		e.Addrs = append(e.Addrs, addr(fmt.Sprintf("192.0.2.%d", i+1)))
	}
	want := "198.51.100.9 is not an address of bank.test (resolves to 192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4, 192.0.2.5, 192.0.2.6, 192.0.2.7, 192.0.2.8 and 2 more)"
	if e.Error() != want {
		t.Errorf("got  %s\nwant %s", e, want)
	}
	e = &MismatchError{Name: "gone.test", Dest: addr("192.0.2.1"), NoAddress: "NXDOMAIN"}
	if want := "192.0.2.1 is not an address of gone.test (resolves to no address: NXDOMAIN)"; e.Error() != want {
		t.Errorf("got  %s\nwant %s", e, want)
	}
}

// cut returns b without its last n bytes.
func cut(b []byte, n int) []byte { return b[:len(b)-n] }

// TestForgetObserved: after a policy reload the appliance drops what the
// clients' own DNS answers vouched for (a resolver the old policy let them
// ask may be one they run themselves), and keeps its own lookups.
func TestForgetObserved(t *testing.T) {
	srv := startServer(t)
	srv.Set("bank.test", 60, addr("192.0.2.1"))
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	if err := check(c, epA, "bank.test", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	c.Observe(epA, msg(t, "allowed.example.", rr{name: "allowed.example.", ttl: 3600, addr: "198.51.100.66"}))
	c.Observe(epB, msg(t, "other.example.", rr{name: "other.example.", ttl: 3600, addr: "198.51.100.67"}))
	if err := check(c, epA, "allowed.example", "198.51.100.66"); err != nil {
		t.Fatalf("before: %v", err)
	}
	c.ForgetObserved()
	if st := c.Stats(); st.ObservedNames != 0 || st.ResolvedNames != 1 {
		t.Fatalf("after ForgetObserved: %d observed names, %d looked up; want 0 and 1 (kept)", st.ObservedNames, st.ResolvedNames)
	}
	// The forged answer vouches for nothing now: the name is looked up,
	// and the resolver does not know it.
	if err := check(c, epA, "allowed.example", "198.51.100.66"); err == nil {
		t.Fatal("a forgotten observed answer still vouched for allowed.example")
	}
	if err := check(c, epA, "bank.test", "192.0.2.1"); err != nil || srv.Queries("bank.test") != 2 {
		t.Fatalf("own lookup: %v, %d queries for bank.test; want it kept (2 queries, A and AAAA, once)", err, srv.Queries("bank.test"))
	}
	// The store still works: new answers are observed, lists intact.
	c.Observe(epB, msg(t, "other.example.", rr{name: "other.example.", ttl: 3600, addr: "198.51.100.67"}))
	if err := check(c, epB, "other.example", "198.51.100.67"); err != nil {
		t.Fatalf("observed after ForgetObserved: %v", err)
	}
	checkLists(t, c.observed)
}

// TestObserveAtAfterForget: the proxy reads Generation, checks that the
// policy which let a DNS flow out is still in force, and hands the answer
// to ObserveAt. A reload can land between the check and the store: it
// stores the new policy and calls ForgetObserved. The answer, one the old
// policy let a client's own server send, must then be dropped, not kept to
// vouch under the new policy for its TTL. The steps run in that order here,
// through the API, so the interleaving is the one of the race, every time.
func TestObserveAtAfterForget(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	forged := msg(t, "allowed.example.", rr{name: "allowed.example.", ttl: 3600, addr: "198.51.100.66"})
	gen := c.Generation() // the proxy, before its policy check
	c.ForgetObserved()    // the reload, after the check passed
	if c.Generation() == gen {
		t.Fatal("ForgetObserved left the generation as it was")
	}
	c.ObserveAt(gen, epA, netip.Addr{}, forged) // the proxy, storing the answer
	if n := c.Stats().ObservedNames; n != 0 {
		t.Fatalf("%d observed names: an answer checked before a reload was stored after it", n)
	}
	wantLookupError(t, check(c, epA, "allowed.example", "198.51.100.66"), "allowed.example")
	// An answer checked after the reload, at the new generation, counts.
	c.ObserveAt(c.Generation(), epA, netip.Addr{}, forged)
	if err := check(c, epA, "allowed.example", "198.51.100.66"); err != nil {
		t.Fatalf("an answer of the current generation: %v", err)
	}
	checkLists(t, c.observed)
}
