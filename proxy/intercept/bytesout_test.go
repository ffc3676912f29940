package intercept_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestUploadWithoutResponseRecorded: a request body that reached the
// destination is counted in bytes_out even when no response comes back.
// The client uploads 1 MiB; the origin reads all of it and then closes
// without answering, or keeps silent while an HTTP/2 client resets the
// stream. Cleartext HTTP has no connection record: the request's is the
// only one to say what left. Before, only a response's end counted the
// body, and these records said bytes_out 0.
func TestUploadWithoutResponseRecorded(t *testing.T) {
	const size = 1 << 20
	for _, tc := range []struct {
		name       string
		h2         bool
		wantResult string
	}{{"origin closes", false, "error"}, {"client resets stream", true, "reset"}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := net.Pipe()
			got := make(chan int64, 1)
			go func() {
				defer originEnd.Close()
				req, err := http.ReadRequest(bufio.NewReader(originEnd))
				if err != nil {
					got <- -1
					return
				}
				n, _ := io.Copy(io.Discard, req.Body)
				got <- n
				if tc.h2 {
					// Silent until the appliance gives up on it.
					io.Copy(io.Discard, originEnd)
				}
			}()
			client, proxySide := testnet.TCPPair(t)
			sv := r.serve(client, proxySide, upEnd, httpDest)
			client.SetDeadline(time.Now().Add(waitLimit))
			body := bytes.Repeat([]byte("u"), size)
			if !tc.h2 {
				fmt.Fprintf(client, "POST /up HTTP/1.1\r\nHost: ok.example.test\r\nContent-Length: %d\r\n\r\n", size)
				client.Write(body)
				resp, err := http.ReadResponse(bufio.NewReader(client), nil)
				if err != nil || resp.StatusCode != http.StatusBadGateway {
					t.Fatalf("response %v, %v: want a 502", resp, err)
				}
				resp.Body.Close()
			} else {
				cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(client)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://ok.example.test/up", bytes.NewReader(body))
				req.ContentLength = size
				done := make(chan error, 1)
				go func() { _, err := cc.RoundTrip(req); done <- err }()
				select {
				case n := <-got:
					got <- n
				case <-time.After(waitLimit):
					t.Fatal("the body did not reach the origin")
				}
				cancel() // RST_STREAM before any response head
				if err := <-done; err == nil {
					t.Fatal("the round trip succeeded")
				}
				time.Sleep(50 * time.Millisecond) // the stream's handler ends
				cc.Close()
			}
			if n := <-got; n != size {
				t.Fatalf("the origin received %d body bytes, want %d", n, size)
			}
			client.Close()
			sv.waitDoneOnce(t)
			rec := oneHTTPRecord(t, r)
			t.Logf("record: result %s, bytes_out %d, error %q", rec.Result, rec.BytesOut, rec.Error)
			if rec.Result != tc.wantResult || rec.BytesOut != size {
				t.Errorf("record result %q bytes_out %d (error %q): want %s, %d", rec.Result, rec.BytesOut, rec.Error, tc.wantResult, size)
			}
			if tc.wantResult == "reset" && !strings.Contains(rec.Error, "client went away") {
				t.Errorf("record error %q: want the client went away", rec.Error)
			}
		})
	}
}

// TestClientBodyCutNotBlamedOnDestination: a client that declares a
// 100-byte body, sends 10 and closes its side has cut its own request:
// the round trip fails reading the client's body, and the record says the
// body was cut short (the 400 the client is answered, as for an HTTP/2
// stream that ends short of its content-length), not that the destination
// could not be reached (a 502 and result error, as before). Over HTTP/1
// the request's context does not end with the client's FIN, so only the
// body's failed read tells.
func TestClientBodyCutNotBlamedOnDestination(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, originEnd := net.Pipe()
	go func() {
		defer originEnd.Close()
		if req, err := http.ReadRequest(bufio.NewReader(originEnd)); err == nil {
			io.Copy(io.Discard, req.Body)
		}
	}()
	client, proxySide := testnet.TCPPair(t)
	sv := r.serve(client, proxySide, upEnd, httpDest)
	client.SetDeadline(time.Now().Add(waitLimit))
	fmt.Fprintf(client, "POST /up HTTP/1.1\r\nHost: ok.example.test\r\nContent-Length: 100\r\n\r\n%s", strings.Repeat("u", 10))
	client.CloseWrite()
	io.Copy(io.Discard, client) // whatever the appliance answers, until it closes
	client.Close()
	sv.waitDoneOnce(t)
	rec := oneHTTPRecord(t, r)
	t.Logf("record: status %d, result %s, error %q", rec.Status, rec.Result, rec.Error)
	if rec.Result != "error" || rec.Status != http.StatusBadRequest || rec.Error != "malformed request body: unexpected EOF" {
		t.Errorf("record status %d, result %q, error %q: want 400, error, the body cut short", rec.Status, rec.Result, rec.Error)
	}
}
