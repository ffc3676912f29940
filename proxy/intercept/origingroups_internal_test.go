package intercept

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"
)

// TestOriginGroupsBounded: the memory never holds more origins than its
// bound, lapsed entries go first, and a hybrid or an unknown group chosen
// forgets the origin.
func TestOriginGroupsBounded(t *testing.T) {
	now := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	g := newOriginGroups(3)
	g.classical.now = func() time.Time { return now }
	g.learn("old", tls.X25519)
	now = now.Add(classicalOriginMemory)
	for i := range 10 {
		g.learn(fmt.Sprint("k", i), tls.CurveP256)
		if n := g.classical.len(); n > 3 {
			t.Fatalf("after %d origins: %d remembered, bound 3", i+1, n)
		}
	}
	if g.classical.has("old") {
		t.Error("a lapsed origin outlived the eviction")
	}
	if g.offer("k9") == nil {
		t.Error("the origin learnt last is not remembered")
	}
	for _, id := range []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, 0x7777} {
		g.learn("k9", tls.X25519)
		g.learn("k9", id)
		if g.offer("k9") != nil {
			t.Errorf("an origin that chose %v is still offered classical groups only", id)
		}
	}
	g.learn("k9", 0) // TLS 1.2 with RSA key exchange: no group at all
	if g.offer("k9") == nil {
		t.Error("an origin that chose no group at all is offered the hybrids")
	}
}
