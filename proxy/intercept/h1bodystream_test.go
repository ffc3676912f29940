package intercept_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// readHead reads a request head from br and returns its length in bytes,
// or -1 when the head did not come whole.
func readHead(br *bufio.Reader) int {
	n := 0
	for {
		line, err := br.ReadString('\n')
		n += len(line)
		if err != nil {
			return -1
		}
		if line == "\r\n" {
			return n
		}
	}
}

// TestPartialBodyReachesOrigin: a client that sends part of a
// Content-Length body and waits (an interactive upload) has that part at
// the destination, over the appliance's own HTTP/1 transport. Before, the
// transport wrote the body through a 4 KiB buffer flushed only when full
// or at the body's end, and the 1000 bytes sat in it for as long as the
// client waited.
func TestPartialBodyReachesOrigin(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, originEnd := testnet.TCPPair(t)
	got := make(chan error, 1)
	go func() {
		defer originEnd.Close()
		br := bufio.NewReader(originEnd)
		if readHead(br) < 0 {
			got <- fmt.Errorf("no request head")
			return
		}
		originEnd.SetReadDeadline(time.Now().Add(waitLimit))
		n, err := io.ReadFull(br, make([]byte, 1000))
		if err != nil {
			err = fmt.Errorf("origin received %d of the 1000 body bytes the client sent: %w", n, err)
		}
		got <- err
	}()
	client, proxySide := testnet.TCPPair(t)
	sv := r.serve(client, proxySide, upEnd, httpDest)
	client.SetDeadline(time.Now().Add(2 * waitLimit))
	fmt.Fprintf(client, "POST /up HTTP/1.1\r\nHost: ok.example.test\r\nContent-Length: 2000\r\n\r\n")
	client.Write(bytes.Repeat([]byte("u"), 1000))
	if err := <-got; err != nil {
		t.Error(err)
	}
	client.Close()
	sv.waitDoneOnce(t)
}

// TestBytesOutIsWhatWentUpstream: a destination that answers an upload
// early (413, and closes) while the client's body is still coming: the
// record's bytes_out is the body that was written to it, not what the
// appliance read from the client. The origin answers once 4 KiB of the
// body came, then reads on to count everything that reaches it. Before,
// bytes_out counted the reads, up to 4 KiB of which sat in the
// transport's write buffer and never left.
func TestBytesOutIsWhatWentUpstream(t *testing.T) {
	for _, first := range []int{5000, 10 << 10} {
		t.Run(fmt.Sprint(first), func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := testnet.TCPPair(t)
			received := make(chan int64, 1)
			go func() {
				defer originEnd.Close()
				br := bufio.NewReader(originEnd)
				if readHead(br) < 0 {
					received <- -1
					return
				}
				originEnd.SetReadDeadline(time.Now().Add(waitLimit))
				n, err := io.ReadFull(br, make([]byte, 4096))
				if err != nil {
					received <- int64(n)
					return
				}
				io.WriteString(originEnd, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				m, _ := io.Copy(io.Discard, br) // until the appliance closes
				received <- int64(n) + m
			}()
			client, proxySide := testnet.TCPPair(t)
			sv := r.serve(client, proxySide, upEnd, httpDest)
			client.SetDeadline(time.Now().Add(2 * waitLimit))
			fmt.Fprintf(client, "POST /up HTTP/1.1\r\nHost: ok.example.test\r\nContent-Length: %d\r\n\r\n", 1<<20)
			client.Write(bytes.Repeat([]byte("u"), first))
			resp, err := http.ReadResponse(bufio.NewReader(client), nil)
			if err != nil {
				t.Fatalf("response: %v", err)
			}
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("client got %d, want the origin's 413", resp.StatusCode)
			}
			client.Close()
			sv.waitDoneOnce(t)
			n := <-received
			var recs int
			for _, rec := range r.records() {
				if rec.Kind != "http" {
					continue
				}
				recs++
				if rec.BytesOut != n {
					t.Errorf("record bytes_out %d, but the origin received %d body bytes (client sent %d)", rec.BytesOut, n, first)
				}
			}
			if recs != 1 {
				t.Errorf("%d http records, want 1", recs)
			}
		})
	}
}

// TestCutChunkedBodyCounted: a chunked upload the client cuts inside a
// chunk, by its FIN or a reset: the record's bytes_out is what of the body
// reached the destination. net/http's chunked reader hands over the
// chunk's bytes read so far together with the error from one read; the
// copy writes them upstream and stops, and they were never counted: the
// record said bytes_out 0 while up to 32 KiB had left.
func TestCutChunkedBodyCounted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first int // a whole first chunk, at the origin before the cut
		size  int // the chunk being cut
		sent  int // what of it the client sends
		rst   bool
	}{
		{name: "fin", first: 3000, size: 3000, sent: 1000},
		{name: "rst", first: 3000, size: 3000, sent: 1000, rst: true},
		{name: "fin-30k", size: 40000, sent: 30000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := testnet.TCPPair(t)
			firstIn := make(chan struct{})
			received := make(chan int64, 1)
			go func() {
				defer originEnd.Close()
				req, err := http.ReadRequest(bufio.NewReader(originEnd))
				if err != nil {
					close(firstIn)
					received <- -1
					return
				}
				originEnd.SetReadDeadline(time.Now().Add(waitLimit))
				var n int64
				buf := make([]byte, 4096)
				signalled := false
				for {
					m, err := req.Body.Read(buf)
					n += int64(m)
					if !signalled && n >= int64(tc.first) {
						signalled = true
						close(firstIn)
					}
					if err != nil {
						break
					}
				}
				if !signalled {
					close(firstIn)
				}
				received <- n
			}()
			client, proxySide := testnet.TCPPair(t)
			sv := r.serve(client, proxySide, upEnd, httpDest)
			client.SetDeadline(time.Now().Add(2 * waitLimit))
			io.WriteString(client, "POST /up HTTP/1.1\r\nHost: ok.example.test\r\nTransfer-Encoding: chunked\r\n\r\n")
			if tc.first > 0 {
				fmt.Fprintf(client, "%x\r\n%s\r\n", tc.first, bytes.Repeat([]byte("f"), tc.first))
				select {
				case <-firstIn:
				case <-time.After(waitLimit):
					t.Fatal("the first chunk did not reach the origin")
				}
			}
			fmt.Fprintf(client, "%x\r\n%s", tc.size, bytes.Repeat([]byte("c"), tc.sent))
			if tc.rst {
				client.SetLinger(0)
			} else {
				client.CloseWrite()
				if resp, err := http.ReadResponse(bufio.NewReader(client), nil); err == nil {
					io.Copy(io.Discard, resp.Body)
				}
			}
			client.Close()
			sv.waitDoneOnce(t)
			var n int64
			select {
			case n = <-received:
			case <-time.After(waitLimit):
				t.Fatal("the origin did not see the body end")
			}
			if want := int64(tc.first + tc.sent); !tc.rst && n != want {
				t.Errorf("origin received %d body bytes, want all %d the client sent", n, want)
			}
			recs := ofKind(r.records(), "http")
			if len(recs) != 1 {
				t.Fatalf("%d http records, want 1: %+v", len(recs), recs)
			}
			if recs[0].BytesOut != n {
				t.Errorf("record bytes_out %d, but the origin received %d body bytes (result %s, error %q)",
					recs[0].BytesOut, n, recs[0].Result, recs[0].Error)
			}
		})
	}
}
