package quic

import "testing"

// A decided flow keeps its Assembler for the flow's lifetime, and every
// Initial a client sends on it under a new DCID derives keys before it is
// refused. The key cache must stay bounded however many DCIDs a client
// tries, or each datagram leaves an AES-GCM state and an AES block behind
// until the flow ends; and the connection's own keys must keep working
// after the churn.
func TestKeyCacheBoundedUnderNewConnIDs(t *testing.T) {
	var a Assembler
	own := initialDatagram(t, 0, cryptoFrameBytes(0, rfcClientHello(t)))
	if _, done, err := a.Add(own); !done || err != nil {
		t.Fatalf("hello: done %v, err %v", done, err)
	}
	const tries = 5 * maxCachedKeys
	for i := range tries {
		dcid := []byte{0xee, byte(i), 3, 4, 5, 6, 7, 8}
		d := packet{dcid: dcid, pn: 0, payload: pingFrame(), padTo: MinInitialDatagram}.seal(t)
		if a.Belongs(d) {
			t.Fatalf("Initial under new DCID %x belongs", dcid)
		}
		if n := len(a.keys.entries); n > maxCachedKeys {
			t.Fatalf("key cache holds %d entries after %d new DCIDs, want at most %d", n, i+1, maxCachedKeys)
		}
	}
	ping := initialDatagram(t, 1, pingFrame())
	if !a.Belongs(ping) {
		t.Fatalf("after %d new DCIDs, a PING of the own connection no longer belongs", tries)
	}
}

// The cache itself: it holds at most maxCachedKeys entries, replaces the
// oldest once full, and hands back the cached keys for a DCID it holds.
func TestKeyCacheReplacesOldest(t *testing.T) {
	var c keyCache
	dcid := func(i int) []byte { return []byte{0xdd, byte(i), 0, 0, 0, 0, 0, 0} }
	first, err := c.get(Version1, dcid(0))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := c.get(Version1, dcid(0)); again != first {
		t.Fatal("a cached DCID derived its keys again")
	}
	for i := 1; i <= maxCachedKeys; i++ { // one past full: dcid(0) goes
		if _, err := c.get(Version1, dcid(i)); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.entries) != maxCachedKeys {
		t.Fatalf("cache holds %d entries, want %d", len(c.entries), maxCachedKeys)
	}
	last, _ := c.get(Version1, dcid(maxCachedKeys))
	for _, k := range c.entries {
		if k == first {
			t.Error("the oldest entry survived a full cache's replacement")
		}
	}
	if again, _ := c.get(Version1, dcid(maxCachedKeys)); again != last {
		t.Error("the newest entry was not kept")
	}
}
