package cwlogs

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

// A front is an intermediary on the way to a fake CloudWatch Logs: its
// handler sees each call, and forwards it or answers it itself.
type front struct {
	srv *cwlogstest.Server
	tr  *http.Transport
}

// newFront starts a front for srv whose calls handle answers, and returns
// a client of srv's that goes through it.
func newFront(t *testing.T, srv *cwlogstest.Server, handle func(f *front, w http.ResponseWriter, r *http.Request, body []byte)) *cloudwatchlogs.Client {
	t.Helper()
	f := &front{srv: srv, tr: &http.Transport{}}
	t.Cleanup(f.tr.CloseIdleConnections)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		handle(f, w, r, body)
	}))
	t.Cleanup(hs.Close)
	return srv.Client(func(o *cloudwatchlogs.Options) { o.BaseEndpoint = aws.String(hs.URL) })
}

// forward sends the call on to the service, and returns its answer, read,
// its headers copied to w; a call that fails breaks the client's too.
func (f *front) forward(w http.ResponseWriter, r *http.Request, body []byte) (status int, answer []byte) {
	req, _ := http.NewRequest(r.Method, f.srv.URL+r.URL.Path, bytes.NewReader(body))
	req.Header = r.Header.Clone()
	resp, err := f.tr.RoundTrip(req)
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	answer, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	return resp.StatusCode, answer
}

// relay forwards the call and passes the service's answer back as it is.
func (f *front) relay(w http.ResponseWriter, r *http.Request, body []byte) {
	status, answer := f.forward(w, r, body)
	w.WriteHeader(status)
	w.Write(answer)
}

// cutAnswer writes the head of answer and half its body, then breaks the
// connection.
func cutAnswer(w http.ResponseWriter, answer []byte) {
	w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
	w.WriteHeader(http.StatusOK)
	w.Write(answer[:len(answer)/2])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

// isPut reports whether r is a PutLogEvents call.
func isPut(r *http.Request) bool {
	return strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".PutLogEvents")
}
