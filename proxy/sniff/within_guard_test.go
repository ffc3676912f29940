package sniff

import (
	"net"
	"testing"
	"time"
)

// SniffWithin's wait bounds the first byte only: what follows has
// CompleteTimeout, as in Sniff, not the wait again. tcpname calls it with
// a wait of 30 s; were the rest given the wait too, a client that sends
// one byte and stalls would hold its connection, and one of the limited
// waiting slots, ten times as long. The test takes CompleteTimeout (3 s):
// the constant is what is being held.
func TestSniffWithinRestHasCompleteTimeout(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { _, _ = c.Write([]byte{0x16}) }()
	const wait = 4 * CompleteTimeout
	start := time.Now()
	res, err := SniffWithin(NewReader(s), s, wait)
	el := time.Since(start)
	if err != nil || res.Kind != KindOther || res.Peeked != 1 {
		t.Fatalf("SniffWithin = %+v, %v; want other with 1 byte peeked", res, err)
	}
	if el > CompleteTimeout+time.Second {
		t.Fatalf("returned after %v, want about CompleteTimeout (%v), not the %v wait", el, CompleteTimeout, wait)
	}
}

// A client that sends nothing is KindOther with nothing peeked once the
// wait has passed, and a request sent at once is read whole.
func TestSniffWithinFirstByteWait(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		const wait = 150 * time.Millisecond
		start := time.Now()
		res, err := SniffWithin(NewReader(s), s, wait)
		el := time.Since(start)
		if err != nil || res.Kind != KindOther || res.Peeked != 0 {
			t.Fatalf("SniffWithin = %+v, %v; want other, nothing peeked", res, err)
		}
		if el < wait || el > wait+2*time.Second {
			t.Fatalf("returned after %v, want about %v", el, wait)
		}
	})
	t.Run("request", func(t *testing.T) {
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		const in = "PROPPATCH /d HTTP/1.1\r\nHost: dav.example\r\n\r\n"
		go func() { _, _ = c.Write([]byte(in)) }()
		res, err := SniffWithin(NewReader(s), s, 30*time.Second)
		if err != nil || res.Kind != KindHTTP || res.Err != nil || res.HTTP.Host != "dav.example" {
			t.Fatalf("SniffWithin = %+v, %v; want http, Host dav.example", res, err)
		}
	})
}
