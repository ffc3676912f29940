package netstack

import (
	"testing"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
)

// A client's share is given back under the key it was taken under: were
// the key made again from the address, a prefix length changed between
// take and give would leave the entry, and its flow count, for good.
func TestClientShareGivenBackUnderItsKey(t *testing.T) {
	t.Cleanup(func() { clientkey.SetIPv6Bits(80) })
	if err := clientkey.SetIPv6Bits(80); err != nil {
		t.Fatal(err)
	}
	c := &clientShares{max: 10}
	addr := [16]byte{0x20, 0x01, 0x0d, 0xb8, 10: 0xab, 15: 1}
	cl, drop := c.take(1, addr, 10)
	if drop != DropNone {
		t.Fatal(drop)
	}
	if err := clientkey.SetIPv6Bits(128); err != nil {
		t.Fatal(err)
	}
	c.give(cl)
	for i := range c.shards {
		if n := len(c.shards[i].clients); n != 0 {
			t.Fatalf("shard %d keeps %d clients after the only flow was given back", i, n)
		}
	}
}
