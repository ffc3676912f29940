package quic

import "testing"

// BenchmarkAssembler reads one real quic-go ClientHello with a fresh
// Assembler each time: key derivation, decryption, reassembly and parsing.
// "v1" is Go's default ClientHello (its X25519MLKEM768 key share makes it
// two Initial datagrams), "v1-large" one with 6 KB of ALPN values (seven).
func BenchmarkAssembler(b *testing.B) {
	for _, cfg := range []captureConfig{quicgoV1, quicgoConfigs[2]} {
		b.Run(cfg.String(), func(b *testing.B) {
			flight := firstFlight(b, capture(b, cfg))
			n := 0
			for _, d := range flight {
				n += len(d)
			}
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				var a Assembler
				for _, d := range flight {
					if _, _, err := a.Add(d); err != nil {
						b.Fatal(err)
					}
				}
				if !a.done {
					b.Fatal("no ClientHello")
				}
			}
			b.ReportMetric(float64(len(flight)), "datagrams/op")
		})
	}
}

// BenchmarkIsInitial is the per-datagram cost of classifying a flow.
func BenchmarkIsInitial(b *testing.B) {
	d := capture(b, quicgoV1)[0]
	for b.Loop() {
		if !IsInitial(d) {
			b.Fatal("not an Initial")
		}
	}
}
