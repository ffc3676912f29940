package quic

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

// These tests run a real quic-go client against a plain UDP socket on the
// loopback interface (no QUIC server: nothing answers), capture the
// datagrams it sends, and read them back.

const (
	captureTime    = 2 * time.Second // how long to collect the client's sends
	maxCaptured    = 64
	testServerName = "allowed.example"
)

type captureConfig struct {
	version quicgo.Version
	large   bool // many long ALPN values, for a ClientHello of several packets
	classic bool // X25519 only: no post-quantum key share, a one-packet ClientHello
}

func (c captureConfig) String() string {
	v := "v1"
	if c.version == quicgo.Version2 {
		v = "v2"
	}
	switch {
	case c.large:
		return v + "-large"
	case c.classic:
		return v + "-classic"
	}
	return v
}

// alpn returns the ALPN list the client offers.
func (c captureConfig) alpn() []string {
	if !c.large {
		return []string{"h3"}
	}
	// 24 values of 250 bytes: a ClientHello of more than 6 KB.
	protos := []string{"h3"}
	for i := range 24 {
		protos = append(protos, fmt.Sprintf("%02d", i)+strings.Repeat("x", 248))
	}
	return protos
}

type captureResult struct {
	once   sync.Once
	dgrams [][]byte
	err    error
}

var captures sync.Map // captureConfig -> *captureResult

var startCaptures sync.Once

// capture returns the datagrams a quic-go client sends for cfg. All
// configurations are captured at once, concurrently, the first time any is
// needed, and kept for the test binary's lifetime.
func capture(tb testing.TB, cfg captureConfig) [][]byte {
	tb.Helper()
	startCaptures.Do(func() {
		var wg sync.WaitGroup
		for _, c := range quicgoConfigs {
			res := new(captureResult)
			captures.Store(c, res)
			wg.Go(func() { res.once.Do(func() { res.dgrams, res.err = runCapture(c) }) })
		}
		wg.Wait()
	})
	r, _ := captures.LoadOrStore(cfg, new(captureResult))
	res := r.(*captureResult)
	res.once.Do(func() { res.dgrams, res.err = runCapture(cfg) })
	if res.err != nil {
		tb.Fatalf("capturing %v: %v", cfg, res.err)
	}
	if len(res.dgrams) == 0 {
		tb.Fatalf("capturing %v: the client sent nothing", cfg)
	}
	return res.dgrams
}

func runCapture(cfg captureConfig) ([][]byte, error) {
	loopback := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	sink, err := net.ListenUDP("udp", loopback)
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	client, err := net.ListenUDP("udp", loopback)
	if err != nil {
		return nil, err
	}
	defer client.Close()

	ctx, cancel := context.WithCancel(context.Background())
	dialed := make(chan error, 1)
	go func() {
		tlsConf := &tls.Config{
			ServerName:         testServerName,
			NextProtos:         cfg.alpn(),
			InsecureSkipVerify: true, // nothing will answer anyway
		}
		if cfg.classic {
			tlsConf.CurvePreferences = []tls.CurveID{tls.X25519}
		}
		conn, err := quicgo.Dial(ctx, client, sink.LocalAddr(), tlsConf, &quicgo.Config{Versions: []quicgo.Version{cfg.version}})
		if err == nil {
			conn.CloseWithError(0, "")
		}
		dialed <- err
	}()
	defer func() {
		cancel()
		<-dialed
	}()

	var dgrams [][]byte
	buf := make([]byte, 1<<16)
	if err := sink.SetReadDeadline(time.Now().Add(captureTime)); err != nil {
		return nil, err
	}
	for len(dgrams) < maxCaptured {
		n, _, err := sink.ReadFromUDP(buf)
		if err != nil {
			break // the deadline
		}
		dgrams = append(dgrams, bytes.Clone(buf[:n]))
	}
	return dgrams, nil
}

// firstFlight returns the shortest prefix of dgrams that completes the
// ClientHello when fed in order.
func firstFlight(tb testing.TB, dgrams [][]byte) [][]byte {
	tb.Helper()
	var a Assembler
	i, _ := feed(tb, &a, dgrams)
	if i < 0 {
		tb.Fatalf("no complete ClientHello in %d datagrams", len(dgrams))
	}
	return dgrams[:i+1]
}

var (
	quicgoV1      = captureConfig{version: quicgo.Version1}
	quicgoV1Class = captureConfig{version: quicgo.Version1, classic: true}

	quicgoConfigs = []captureConfig{
		quicgoV1,
		{version: quicgo.Version2},
		{version: quicgo.Version1, large: true},
		{version: quicgo.Version2, large: true},
		quicgoV1Class,
	}
)

func TestQUICGo(t *testing.T) {
	for _, cfg := range quicgoConfigs {
		t.Run(cfg.String(), func(t *testing.T) {
			t.Parallel()
			dgrams := capture(t, cfg)
			wantALPN := cfg.alpn()
			check := func(t *testing.T, hello helloView) {
				t.Helper()
				if hello.ServerName != testServerName {
					t.Errorf("ServerName %q, want %q", hello.ServerName, testServerName)
				}
				if !slices.Equal(hello.ALPN, wantALPN) {
					t.Errorf("ALPN %q, want %q", hello.ALPN, wantALPN)
				}
			}

			for i, d := range dgrams {
				if v, ok := Version(d); !ok || v != uint32(cfg.version) {
					t.Fatalf("datagram %d: Version = %#x, %v", i, v, ok)
				}
			}
			if !IsInitial(dgrams[0]) {
				t.Fatal("IsInitial(first datagram) = false")
			}
			flight := firstFlight(t, dgrams)
			t.Logf("%d datagrams captured; the ClientHello takes the first %d", len(dgrams), len(flight))
			if cfg.large && len(flight) < 3 {
				t.Errorf("large ClientHello fits in %d datagrams; want it to span several", len(flight))
			}
			if !cfg.large && !cfg.classic && len(flight) < 2 {
				// Go's default X25519MLKEM768 key share alone is 1216 bytes.
				t.Errorf("default ClientHello fits in %d datagram; want two", len(flight))
			}

			t.Run("in order", func(t *testing.T) {
				var a Assembler
				i, hello := feed(t, &a, dgrams)
				if i != len(flight)-1 {
					t.Fatalf("done at datagram %d, want %d", i, len(flight)-1)
				}
				check(t, helloView{hello.ServerName, hello.ALPN})
				// Done is sticky and ignores what follows.
				hello2, done, err := a.Add([]byte("not even QUIC"))
				if !done || err != nil || hello2.ServerName != testServerName {
					t.Errorf("Add after done = %q, %v, %v", hello2.ServerName, done, err)
				}
			})

			t.Run("reverse", func(t *testing.T) {
				rev := slices.Clone(flight)
				slices.Reverse(rev)
				var a Assembler
				i, hello := feed(t, &a, rev)
				if i != len(flight)-1 {
					t.Fatalf("done at datagram %d, want %d", i, len(flight)-1)
				}
				check(t, helloView{hello.ServerName, hello.ALPN})
			})

			t.Run("retransmissions first", func(t *testing.T) {
				// The client's probes repeat parts of the stream, cut into
				// frames differently: overlapping data that must agree.
				retrans := dgrams[len(flight):]
				seq := append(slices.Clone(retrans[:min(len(retrans), MaxDatagrams-len(flight))]), flight...)
				var a Assembler
				i, hello := feed(t, &a, seq)
				if i < 0 {
					t.Fatal("no ClientHello")
				}
				check(t, helloView{hello.ServerName, hello.ALPN})
			})

			t.Run("shuffled with duplicates", func(t *testing.T) {
				rng := rand.New(rand.NewPCG(1, uint64(len(dgrams))))
				for range 20 {
					seq := slices.Clone(flight)
					for len(seq) < MaxDatagrams && len(seq) < 2*len(flight) {
						seq = append(seq, dgrams[rng.IntN(len(dgrams))])
					}
					rng.Shuffle(len(seq), func(i, j int) { seq[i], seq[j] = seq[j], seq[i] })
					var a Assembler
					i, hello := feed(t, &a, seq)
					if i < 0 {
						t.Fatal("no ClientHello")
					}
					check(t, helloView{hello.ServerName, hello.ALPN})
				}
			})

			t.Run("buffers reused", func(t *testing.T) {
				// The caller reuses its read buffer: Add must have copied
				// what it keeps.
				var a Assembler
				buf := make([]byte, 1<<16)
				for i, d := range flight {
					n := copy(buf, d)
					_, done, err := a.Add(buf[:n])
					if err != nil {
						t.Fatal(err)
					}
					if done != (i == len(flight)-1) {
						t.Fatalf("datagram %d: done %v", i, done)
					}
					for j := range buf {
						buf[j] = 0xa5
					}
				}
			})
		})
	}
}

type helloView struct {
	ServerName string
	ALPN       []string
}
