package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestClosingAnswerWithNextRequestUnread: a keep-alive client sends its
// next request while an answer the appliance ends by closing the
// connection is still coming (an HTTP/1.0 request's answer of unknown
// length, delimited by the close; an HTTP/1.1 one the origin says
// Connection: close to), and reads the answer only later. The next
// request is unread as goproxy closes; closed at once, the connection
// would be reset (Linux and gVisor answer unread data with a RST), and
// the reset throws away the answer's tail still in the send queue, while
// the record says ok with the whole bytes_in. The connection lingers:
// the client gets the whole answer and a clean end. Cleartext too: it
// closed at once, and the client got 128,000 of 1,048,576 bytes. Bumped
// with the plaintext tap too, whose wrapper hid the TLS connection: it
// did not linger, and the client got 114,688 bytes.
func TestClosingAnswerWithNextRequestUnread(t *testing.T) {
	for _, mode := range []string{"clear", "bumped", "bumped+tap"} {
		for _, ver := range []string{"1.0", "1.1"} {
			t.Run(fmt.Sprintf("%s/HTTP%s", mode, ver), func(t *testing.T) {
				nextRequestUnreadAtClose(t, mode, ver)
			})
		}
	}
}

// nextRequestUnreadAtClose is TestClosingAnswerWithNextRequestUnread's
// case for mode (clear, bumped, bumped+tap) and the request's version.
func nextRequestUnreadAtClose(t *testing.T, mode, ver string) {
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		if mode == "bumped+tap" {
			c.Plaintext = &plainSink{}
		}
	})
	bumped := mode != "clear"
	var leaf *tls.Certificate
	if bumped {
		leaf = r.upLeaf("www.example.test")
	}
	proxyEnd, serverEnd := testnet.TCPPair(t)
	t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	const piece, pieces = 256 << 10, 4
	go func() {
		c := h1OriginSide(serverEnd, leaf)
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		req.Body.Close()
		head := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
		if ver == "1.1" {
			head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
		}
		io.WriteString(c, head)
		for i := range pieces {
			fmt.Fprintf(c, "%x\r\n%s\r\n", piece, strings.Repeat(string(rune('a'+i)), piece))
			time.Sleep(100 * time.Millisecond)
		}
		io.WriteString(c, "0\r\n\r\n")
	}()
	var c net.Conn
	if bumped {
		pc, _ := r.connectTCP(proxyEnd, tlsDest)
		c = tls.Client(pc, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	} else {
		c, _ = r.connectTCP(proxyEnd, httpDest)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(c, "GET /a HTTP/"+ver+"\r\nHost: www.example.test\r\nConnection: keep-alive\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /b HTTP/"+ver+"\r\nHost: www.example.test\r\nConnection: keep-alive\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(800 * time.Millisecond) // not reading: the answer's tail queues, the appliance closes
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		_, err = br.ReadByte() // the connection's end after the answer
		if err == io.EOF {
			err = nil
		}
	}
	rec := awaitRecord(t, r, "/a", waitLimit)
	if rec == nil {
		t.Fatal("no record")
	}
	if len(body) != pieces*piece || err != nil {
		t.Errorf("the client got %d of %d body bytes, then %v; the record says %s %q, bytes_in %d",
			len(body), pieces*piece, err, rec.Result, rec.Error, rec.BytesIn)
	}
	if rec.Result != "ok" || rec.BytesIn != pieces*piece {
		t.Errorf("record: %s %q bytes_in %d, want ok and %d", rec.Result, rec.Error, rec.BytesIn, pieces*piece)
	}
}
