package destcheck

import (
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzObserve: no message makes Observe (the parse of a DNS response and
// the walk of its CNAME chain) panic, loop or keep more than it may.
func FuzzObserve(f *testing.F) {
	f.Add(msg(f, "www.example.com.",
		rr{name: "www.example.com.", ttl: 300, cname: "cdn.example.net."},
		rr{name: "cdn.example.net.", ttl: 60, addr: "192.0.2.1"},
		rr{name: "cdn.example.net.", ttl: 60, addr: "2001:db8::1"}))
	f.Add(msg(f, "a.test.", rr{name: "a.test.", ttl: 1, cname: "b.test."}, rr{name: "b.test.", ttl: 1, cname: "a.test."}))
	f.Add(msgWith(f, dnsmessage.Header{Response: true, RCode: dnsmessage.RCodeNameError}, "gone.test."))
	f.Add([]byte{0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 12})
	c := newChecker(Config{MaxEntries: 64}, newFakeClock().Now)
	f.Cleanup(c.Close)
	f.Fuzz(func(t *testing.T, b []byte) {
		c.Observe(epA, b)
		r := new(response)
		if r.parse(b) != nil {
			return
		}
		r.bind()
		if r.nchain < 1 || r.nchain > maxChain || r.nbound > r.naddrs*r.nchain {
			t.Fatalf("chain of %d names, %d bindings of %d addresses", r.nchain, r.nbound, r.naddrs)
		}
		for i := range r.nbound {
			if b := r.bound[i]; b.name >= r.nchain || !b.addr.IsValid() || b.addr.Is4In6() {
				t.Fatalf("binding %+v", b)
			}
		}
		if st := c.Stats(); st.ObservedNames > 64 {
			t.Fatalf("%d names kept, bound 64", st.ObservedNames)
		}
	})
}
