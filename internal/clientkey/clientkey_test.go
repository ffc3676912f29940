package clientkey

import (
	"net/netip"
	"strings"
	"testing"
)

// TestOf: an IPv6 client is its prefix of the bits set, a partial byte
// included; an IPv4 one, plain or mapped, its address; and Holder says whose
// share a refusal is.
func TestOf(t *testing.T) {
	t.Cleanup(func() { SetIPv6Bits(DefaultIPv6Bits) })
	a := netip.MustParseAddr("2001:db8:0:1f01:abcd:ef12:3456:789a%eth0")
	for _, c := range []struct {
		bits   int
		want   string
		holder string
	}{
		{80, "2001:db8:0:1f01:abcd::", "the client's /80"},
		{52, "2001:db8:0:1000::", "the client's /52"},
		{128, "2001:db8:0:1f01:abcd:ef12:3456:789a", "the client"},
	} {
		if err := SetIPv6Bits(c.bits); err != nil {
			t.Fatal(err)
		}
		if got := Of(a); got.String() != c.want {
			t.Errorf("/%d: Of(%s) = %s, want %s", c.bits, a, got, c.want)
		}
		if got := Holder(a); got != c.holder {
			t.Errorf("/%d: Holder = %q, want %q", c.bits, got, c.holder)
		}
		for _, v4 := range []string{"10.1.2.3", "::ffff:10.1.2.3"} {
			v := netip.MustParseAddr(v4)
			if got := Of(v); got != netip.MustParseAddr("10.1.2.3") {
				t.Errorf("/%d: Of(%s) = %s", c.bits, v4, got)
			}
			if got := Holder(v); got != "the client" {
				t.Errorf("/%d: Holder(%s) = %q", c.bits, v4, got)
			}
		}
	}
	if Of(netip.Addr{}).IsValid() {
		t.Error("the zero Addr got a key")
	}
	for _, bad := range []int{0, 47, 129} {
		if err := SetIPv6Bits(bad); err == nil || !strings.Contains(err.Error(), "--ipv6-client-prefix") {
			t.Errorf("SetIPv6Bits(%d): %v", bad, err)
		}
	}
	if IPv6Bits() != 128 {
		t.Errorf("a refused setting changed the prefix to /%d", IPv6Bits())
	}
}

// TestOf16Allocs: the flow table keys every new flow.
func TestOf16Allocs(t *testing.T) {
	a := netip.MustParseAddr("2001:db8::1").As16()
	if n := testing.AllocsPerRun(100, func() { a = Of16(a) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
