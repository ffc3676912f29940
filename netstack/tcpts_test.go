package netstack

import (
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestTCPHasTSMatchesGvisor: tcpHasTS reads a timestamp option in exactly
// the TCP headers where gVisor's own parsers do (header.ParseSynOptions
// for a SYN, header.ParseTCPOptions for any other segment), over option
// bytes drawn mostly from the kinds they check, malformed lengths and all.
func TestTCPHasTSMatchesGvisor(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 23))
	kinds := []byte{0, 1, 2, 3, 4, 5, 8, 8, 8, 30, 254}
	tcp := make([]byte, 60)
	for range 200000 {
		words := 5 + rng.IntN(11)
		tcp[12] = byte(words) << 4
		opts := tcp[20 : words*4]
		for i := range opts {
			switch rng.IntN(3) {
			case 0:
				opts[i] = kinds[rng.IntN(len(kinds))]
			case 1:
				opts[i] = byte(rng.IntN(14))
			default:
				opts[i] = byte(rng.Uint32())
			}
		}
		for _, syn := range []bool{true, false} {
			want := header.ParseTCPOptions(opts).TS
			if syn {
				want = header.ParseSynOptions(opts, false).TS
			}
			if got := tcpHasTS(tcp[:words*4], syn); got != want {
				t.Fatalf("options %x, SYN %v: tcpHasTS %v, gVisor %v", opts, syn, got, want)
			}
		}
	}
}
