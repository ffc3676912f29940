package intercept

import (
	"bytes"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2WriterRefusalAfterServerGoAway: the writer's refusal
// (checkWrittenResets) once the server's own GOAWAY is out, the client's
// streams 1, 3 and 5 read and handed to x/net, which processed stream 1
// only before its GOAWAY (last 1). After a GOAWAY for an error, x/net
// processes nothing more and closes the connection: the refusal was a
// second GOAWAY, and a deny record of a connection the tls record says the
// server's GOAWAY ended (review rev33f F1); now none is made. After a
// graceful one, the refusal's GOAWAY named stream 5 as its last, higher
// than the first's, which RFC 9113 §6.8 forbids (F2): now it names 1.
func TestH2WriterRefusalAfterServerGoAway(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeProtocol, http2.ErrCodeNo} {
		t.Run(code.String(), func(t *testing.T) {
			var in bytes.Buffer
			in.WriteString(http2.ClientPreface)
			fr := http2.NewFramer(&in, nil)
			_ = fr.WriteSettings()
			var hpb bytes.Buffer
			enc := hpack.NewEncoder(&hpb)
			for id := uint32(1); id <= 5; id += 2 {
				hpb.Reset()
				for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
					{Name: ":authority", Value: "www.example.test"}, {Name: ":path", Value: "/"}} {
					_ = enc.WriteField(f)
				}
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hpb.Bytes(), EndStream: true, EndHeaders: true})
			}
			conn := &keptWrites{chunkConn: &chunkConn{chunks: [][]byte{in.Bytes()}}}
			c := &hijackedConn{Conn: conn}
			c.limit.arm(64<<10, true)
			if n, err := c.Read(make([]byte, 4096)); err != nil || n == 0 {
				t.Fatalf("the read: %d %v", n, err)
			}
			if last := c.limit.idle.last.Load(); last != 5 {
				t.Fatalf("streams published up to %d, want 5", last)
			}
			// x/net's writer: its SETTINGS, its GOAWAY, then resets past
			// the bound.
			var out bytes.Buffer
			sfr := http2.NewFramer(&out, nil)
			_ = sfr.WriteSettings()
			_ = sfr.WriteGoAway(1, code, nil)
			u := &c.limit.unanswered
			c.hold.mu.Lock()
			if _, err := c.write(out.Bytes()); err != nil {
				t.Fatalf("the server's write: %v", err)
			}
			u.caused.Store(1000)
			c.checkWrittenResets()
			c.hold.mu.Unlock()
			if code != http2.ErrCodeNo {
				if c.frames.final != nil || c.limit.refused.Load() != nil || u.writerRefused.Load() != 0 {
					t.Errorf("refused after the server's GOAWAY for an error: %d bytes to go, refused %v", len(c.frames.final), c.limit.refused.Load() != nil)
				}
				return
			}
			if c.frames.final == nil {
				t.Fatal("no refusal after the graceful GOAWAY")
			}
			f, err := http2.NewFramer(io.Discard, bytes.NewReader(c.frames.final)).ReadFrame()
			if err != nil {
				t.Fatalf("the refusal: %v", err)
			}
			if g := f.(*http2.GoAwayFrame); g.LastStreamID != 1 || g.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("the refusal's GOAWAY: %v last %d, want ENHANCE_YOUR_CALM last 1 (the graceful one's)", g.ErrCode, g.LastStreamID)
			}
		})
	}
}

// TestH2ListRefusalCappedByLaterGoAway: the header list limit refuses an
// oversized list opening stream 3, and before its refusal goes out (write431
// waits for the writer's lock) the server writes its graceful GOAWAY, last
// stream 1 (its answer to the client's own GOAWAY; x/net never got stream
// 3). The refusal then named stream 3 as its last, higher than the
// server's GOAWAY (RFC 9113 §6.8), and answered stream 3 with a 431 past
// it (review rev33f F2). Now its GOAWAY names 1, no 431 goes, and the
// records say so: no 431 answered, the tls record the refusal's.
func TestH2ListRefusalCappedByLaterGoAway(t *testing.T) {
	first, second := bigListFlights(true)
	conn := &keptWrites{chunkConn: &chunkConn{chunks: [][]byte{first, second}}}
	c := &hijackedConn{Conn: conn}
	c.limit.arm(64<<10, true)
	buf := make([]byte, 128<<10)
	if n, err := c.Read(buf); err != nil || n == 0 {
		t.Fatalf("first read: %d %v", n, err)
	}
	n := &c.limit.unanswered.ends
	c.hold.mu.Lock() // x/net's writer, mid-write
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf) // refused: write431 waits for the lock
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for _, ok := n.serverEnd(); !ok; _, ok = n.serverEnd() {
		if time.Now().After(deadline) {
			c.hold.mu.Unlock()
			t.Fatal("the refusal was never noted")
		}
		time.Sleep(time.Millisecond)
	}
	var out bytes.Buffer
	sfr := http2.NewFramer(&out, nil)
	_ = sfr.WriteSettings()
	_ = sfr.WriteGoAway(1, http2.ErrCodeNo, nil)
	if _, err := c.write(out.Bytes()); err != nil {
		c.hold.mu.Unlock()
		t.Fatalf("the server's write: %v", err)
	}
	c.hold.mu.Unlock()
	if err := <-done; err != errHeadTooLarge {
		t.Fatalf("the refused read: %v", err)
	}
	conn.mu.Lock()
	got := bytes.Clone(conn.out.Bytes())
	conn.mu.Unlock()
	goAways, headers := framesIn(got)
	for _, id := range headers {
		t.Errorf("HEADERS on stream %d, past the server's GOAWAY", id)
	}
	if len(goAways) != 2 || goAways[0].LastStreamID != 1 || goAways[1].LastStreamID != 1 ||
		goAways[1].ErrCode != http2.ErrCodeEnhanceYourCalm {
		for _, g := range goAways {
			t.Logf("GOAWAY %v last %d", g.ErrCode, g.LastStreamID)
		}
		t.Errorf("%d GOAWAYs, want the server's, then the refusal's, both last 1", len(goAways))
	}
	if c.limit.answered431.Load() || n.listRefusalAlone() {
		t.Errorf("answered431 %v, the tls record left as after a 431 %v: no 431 went", c.limit.answered431.Load(), n.listRefusalAlone())
	}
}
