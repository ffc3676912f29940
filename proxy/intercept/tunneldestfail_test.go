package intercept_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// destEnd is how a tunnel's TLS destination ends its side, after its
// bytes.
type destEnd int

const (
	destCloseNotify  destEnd = iota // close_notify and FIN: its clean end
	destRST                         // a reset
	destMidRecordFIN                // a FIN inside a TLS record (unexpected EOF)
	destBadRecord                   // a record that does not decrypt (bad record MAC)
	destBareFIN                     // a FIN between records, no close_notify: Go's TLS takes it for the end
)

func (e destEnd) String() string {
	return [...]string{"close_notify+FIN", "RST", "midRecordFIN", "badRecord", "bareFIN"}[e]
}

// endingTLSUpgradeUpstream answers a WebSocket upgrade over TLS with
// cert (nil: cleartext), sends n bytes once the client's first bytes came, then ends as
// end says. It keeps its connection open (a failure that is no close)
// until the test ends.
func endingTLSUpgradeUpstream(t *testing.T, cert *tls.Certificate, n int, end destEnd) net.Conn {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	raw := serverEnd
	var tc interface {
		net.Conn
		CloseWrite() error
	} = serverEnd
	if cert != nil {
		tc = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}})
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); tc.Close() })
	go func() {
		tc.SetDeadline(time.Now().Add(2 * waitLimit))
		br := bufio.NewReader(tc)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(tc, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if _, err := br.ReadByte(); err != nil {
			return
		}
		tc.Write(make([]byte, n))
		switch end {
		case destCloseNotify:
			tc.CloseWrite()
			raw.CloseWrite()
			io.Copy(io.Discard, br) // the client's upload, to its end
		case destRST:
			raw.SetLinger(0)
			raw.Close()
		case destMidRecordFIN:
			raw.Write([]byte{23, 3, 3, 0, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
			raw.CloseWrite()
		case destBadRecord:
			raw.Write(append([]byte{23, 3, 3, 0, 40}, make([]byte, 40)...))
		case destBareFIN:
			raw.CloseWrite()
			io.Copy(io.Discard, br)
		}
		<-done
	}()
	return proxyEnd
}

// TestTunnelDestinationFailureResetsClient: a WebSocket tunnel (bumped
// or not) whose destination's side failed (a reset, a FIN inside a TLS
// record, a record that does not decrypt) ends its client with a reset,
// once the client has what the destination sent, never with a clean end
// (close_notify, FIN), as a body the destination cuts short does
// (design.md): goproxy's close of the client connection used to end it so
// about a millisecond after the failure, the client taking the tunnel's
// way back for whole. The tunnel's record says the destination's
// failure, the connection's tls record ok. A destination that ends its
// side cleanly is relayed as a clean end, as before, and so is a FIN
// between TLS records with no close_notify, which Go's TLS takes for the
// end (records.md says so).
func TestTunnelDestinationFailureResetsClient(t *testing.T) {
	for _, tt := range []struct {
		end       destEnd
		cleartext bool
	}{{destCloseNotify, false}, {destRST, false}, {destMidRecordFIN, false}, {destBadRecord, false}, {destBareFIN, false},
		{destCloseNotify, true}, {destRST, true}} {
		end := tt.end
		name := end.String()
		if tt.cleartext {
			name = "cleartext/" + name
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			var cert *tls.Certificate
			if !tt.cleartext {
				cert = r.upLeaf("www.example.test")
			}
			upEnd := endingTLSUpgradeUpstream(t, cert, 1000, end)
			dest := tlsDest
			if tt.cleartext {
				dest = httpDest
			}
			c, sv := r.connectTCP(upEnd, dest)
			var tc interface {
				net.Conn
				CloseWrite() error
			} = c
			if !tt.cleartext {
				tc = tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
			}
			tc.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(tc, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			br := bufio.NewReader(tc)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			io.WriteString(tc, "x")
			n, err := io.Copy(io.Discard, br)
			if n != 1000 {
				t.Errorf("the client got %d bytes of the destination's 1000 (%v)", n, err)
			}
			if end == destCloseNotify || end == destBareFIN {
				if err != nil {
					t.Errorf("the destination's clean end reached the client as %v, want its clean end", err)
				}
				tc.CloseWrite()
				if !tt.cleartext {
					c.CloseWrite()
				}
			} else if err == nil || !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the destination's failure reached the client as %v, want a reset (no close_notify, no FIN)", err)
			}
			c.Close()
			sv.waitDoneOnce(t)
			recs := r.records()
			tun, tlsRecs := ofKind(recs, "http"), ofKind(recs, "tls")
			if tt.cleartext {
				tlsRecs = []records.Record{{Result: "ok"}} // no connection record of its own
			}
			if len(tun) != 1 || len(tlsRecs) != 1 {
				t.Fatalf("records %+v, want a tunnel's and a tls one", recs)
			}
			want, wantErr := map[destEnd]string{destCloseNotify: "ok", destBareFIN: "ok", destRST: "reset", destMidRecordFIN: "error", destBadRecord: "error"}[end],
				map[destEnd]string{destRST: "WebSocket tunnel from the destination, after 1000 bytes: ", destMidRecordFIN: "unexpected EOF", destBadRecord: "bad record MAC"}[end]
			if rec := tun[0]; rec.Result != want || !strings.Contains(rec.Error, wantErr) || rec.BytesIn != 1000 || rec.BytesOut != 1 {
				t.Errorf("tunnel record %s %q in=%d out=%d; want %s, error with %q, in=1000 out=1", rec.Result, rec.Error, rec.BytesIn, rec.BytesOut, want, wantErr)
			}
			// The connection's record is the client's side's: a destination's
			// failure is the tunnel's, as a body's is its request's.
			if rec := tlsRecs[0]; rec.Result != "ok" || rec.Error != "" {
				t.Errorf("tls record %s %q, want ok", rec.Result, rec.Error)
			}
		})
	}
}
