package intercept

import (
	"io"
	"net/http"
)

// noBodyAnswer makes a 204 or a 304 a head alone, whatever its origin
// said: no body (RFC 9112 6.3), and no length of one (RFC 9110 8.6; a
// 304's Content-Length field stays for an HTTP/2 client: it is allowed).
//
// net/http's Response.Write ended a body said chunked with a last chunk,
// which a keep-alive client takes for the start of its next answer, and
// said "Content-Length: 0" to a POST, PUT or PATCH when the length was 0.
// A length of -1 writes neither; Uncompressed keeps Write from taking that
// for a body the close must delimit (Connection: close).
//
// And nothing of a body is read: x/net's HTTP/2 client hands a 204's or
// 304's DATA frames to the body whatever the status, and Write would copy
// them, unframed, where an HTTP/1 client reads its next answer (the origin
// would write the answer to a request the policy denied). Closing the body
// resets such a stream.
func noBodyAnswer(resp *http.Response) {
	if resp == nil || (resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified) {
		return
	}
	resp.TransferEncoding, resp.ContentLength, resp.Uncompressed = nil, -1, true
	if resp.StatusCode == http.StatusNoContent {
		// Response.Write leaves the field out for an HTTP/1 client, but
		// goproxy copies the header to the HTTP/2 server as it is: a
		// 204 must have none (a 304 may, the length its 200 would have
		// had).
		resp.Header.Del("Content-Length")
	}
	if rb := recordingOf(resp); rb != nil {
		rb.ReadCloser = noBodyRead{rb.ReadCloser}
	} else if resp.Body != nil {
		resp.Body = noBodyRead{resp.Body}
	}
}

// noBodyRead is the body of an answer that has none: it reads nothing, and
// closes what it stands for.
type noBodyRead struct{ io.ReadCloser }

func (noBodyRead) Read([]byte) (int, error) { return 0, io.EOF }
