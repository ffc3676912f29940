package netstack

import "testing"

// FuzzTCPUnacked holds the flow's count of unacknowledged bytes to a
// model, for any first sequence number, any amount written (to 2^40) and
// any place of the client's acknowledgement: before the SYN-ACK's, within
// what was written, past the FIN, or past a count that lags the stack.
// The count was wrong past 2 GiB twice (review r5s27 F1; review r7s27
// asked for this target, whose seeds run with every go test).
func FuzzTCPUnacked(f *testing.F) {
	f.Add(uint32(0x1000), uint64(0), uint8(0), uint64(0))
	f.Add(uint32(0xffffffff), uint64(1<<31), uint8(1), uint64(1<<31-1))
	f.Add(uint32(7), uint64(1<<32), uint8(2), uint64(0))
	f.Add(uint32(7), uint64(5<<30+7), uint8(1), uint64(5<<30))
	f.Add(uint32(0x80000000), uint64(3_300_000_000), uint8(1), uint64(1_270_000))
	f.Fuzz(func(t *testing.T, iss uint32, written uint64, where uint8, a uint64) {
		const sendBuffer = 64 << 20 // far above any send buffer's cap
		written %= 1 << 40
		start := iss + 1
		var una uint32
		var want int
		switch where % 4 {
		case 0: // the SYN-ACK not yet acknowledged
			written %= sendBuffer
			una, want = iss, int(written)
		case 1: // acknowledged up to a point within what was written
			if written == 0 {
				written = 1
			}
			inFlight := a % min(written+1, sendBuffer)
			una, want = start+uint32(written-inFlight), int(inFlight)
		case 2: // the FIN acknowledged
			una, want = start+uint32(written)+1, 0
		case 3: // SND.UNA ahead of a count that lags
			una, want = start+uint32(written)+uint32(a%sendBuffer+1), 0
		}
		var fl Flow
		fl.iss.Store(issKnown | uint64(iss))
		fl.snd.Store(uint64(una)<<32 | uint64(una+1))
		if got, ok := fl.tcpUnacked(int64(written)); !ok || got != want {
			t.Fatalf("iss %#x written %d case %d (SND.UNA %#x): unacked %d, %v; want %d", iss, written, where%4, una, got, ok, want)
		}
		if fin := where%4 >= 2; fl.tcpFINAcked(int64(written)) != fin {
			t.Fatalf("iss %#x written %d case %d: FIN acknowledged %v, want %v", iss, written, where%4, !fin, fin)
		}
	})
}
