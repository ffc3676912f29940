package intercept_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Tally is a raw h2c client that tallies what one stream got: the
// head, DATA bytes and frames, and how the stream ended (END_STREAM or
// RST_STREAM), for the tests that count what a client had of a stream.
type h2Tally struct {
	fr     *http2.Framer
	c      net.Conn
	mu     sync.Mutex
	data   int
	frames int
	gotHd  bool
	status string
	fields []hpack.HeaderField
	rst    bool
	rstErr http2.ErrCode
	ended  bool
	err    error
	trail  []hpack.HeaderField
	change chan struct{}
}

func newH2Tally(t *testing.T, c net.Conn, window uint32) *h2Tally {
	h := &h2Tally{c: c, change: make(chan struct{}, 1)}
	h.fr = http2.NewFramer(c, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	io.WriteString(c, http2.ClientPreface)
	h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window})
	if window > 65535 {
		h.fr.WriteWindowUpdate(0, 1<<30)
	}
	return h
}

func (h *h2Tally) get(id uint32, scheme, path string, extra ...hpack.HeaderField) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: scheme},
		{Name: ":authority", Value: "www.example.test"}, {Name: ":path", Value: path}}, extra...) {
		enc.WriteField(f)
	}
	h.mu.Lock()
	h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	h.mu.Unlock()
}

// write runs f with the framer's writes to itself.
func (h *h2Tally) write(f func(fr *http2.Framer)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h.fr)
}

func (h *h2Tally) loop() {
	go func() {
		for {
			f, err := h.fr.ReadFrame()
			h.mu.Lock()
			if err != nil {
				h.err = err
				h.mu.Unlock()
				h.poke()
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if !h.gotHd {
					h.gotHd = true
					h.status = f.PseudoValue("status")
					h.fields = f.RegularFields()
				} else {
					h.trail = f.RegularFields()
				}
				if f.StreamEnded() {
					h.ended = true
				}
			case *http2.DataFrame:
				if len(f.Data()) > 0 {
					h.frames++
					h.data += len(f.Data())
				}
				if f.StreamEnded() {
					h.ended = true
				}
			case *http2.RSTStreamFrame:
				h.rst, h.rstErr = true, f.ErrCode
			case *http2.SettingsFrame:
				if !f.IsAck() {
					h.fr.WriteSettingsAck()
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					h.fr.WritePing(true, f.Data)
				}
			}
			h.mu.Unlock()
			h.poke()
		}
	}()
}

func (h *h2Tally) poke() {
	select {
	case h.change <- struct{}{}:
	default:
	}
}

// waitUntil waits up to d for cond (under the lock).
func (h *h2Tally) waitUntil(d time.Duration, cond func(h *h2Tally) bool) bool {
	end := time.After(d)
	for {
		h.mu.Lock()
		ok := cond(h)
		h.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-h.change:
		case <-time.After(10 * time.Millisecond):
		case <-end:
			return false
		}
	}
}

func (h *h2Tally) snapshot() (data, frames int, status string, rst, ended bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.data, h.frames, h.status, h.rst, h.ended
}

// scriptOrigin reads one request head on c, then writes each step's
// bytes when told (steps channel).
func scriptOrigin(t *testing.T, c net.Conn) chan []byte {
	steps := make(chan []byte, 16)
	go func() {
		defer c.Close()
		c.SetDeadline(time.Now().Add(4 * waitLimit))
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		req.Body.Close()
		for b := range steps {
			if b == nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		defer func() { recover() }()
		close(steps)
	})
	return steps
}
