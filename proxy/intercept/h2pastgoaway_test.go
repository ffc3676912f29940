package intercept_test

import (
	"bytes"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// sendIgnoredStreams sends n HEADERS opening new streams, each bodiless
// GET of 13 bytes after the first (HPACK-indexed fields), in writes of
// about 32 KiB: after the server's GOAWAY, x/net ignores them all.
func sendIgnoredStreams(pc *probeClient, n int) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	for i := range n {
		pc.hb.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: pc.auth}, {Name: ":path", Value: "/ok/ignored"}} {
			pc.enc.WriteField(f)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: pc.next, BlockFragment: pc.hb.Bytes(), EndStream: true, EndHeaders: true})
		pc.next += 2
		if buf.Len() > 32<<10 || i == n-1 {
			if _, err := pc.c.Write(buf.Bytes()); err != nil {
				pc.t.Errorf("writing streams past the GOAWAY: %v", err)
				return
			}
			buf.Reset()
		}
	}
}

// oneWrite writes what fill frames, in one write.
func oneWrite(pc *probeClient, fill func(fr *http2.Framer)) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	fill(fr)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if _, err := pc.c.Write(buf.Bytes()); err != nil {
		pc.t.Errorf("writing frames: %v", err)
	}
}
