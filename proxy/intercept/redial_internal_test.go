package intercept

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
)

// TestVerdictThroughFramingConn: http.Transport holds its HTTP/1
// connections wrapped (framingConn); the verification of a further
// connection is found through the wrapper, as for a bare one. Without it
// a redial whose certificate failed was recorded as verified.
func TestVerdictThroughFramingConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	failed := errors.New("certificate signed by unknown authority")
	tc := tls.Client(&setConn{Conn: a, verifyErr: failed}, &tls.Config{})
	s := &session{}
	for _, c := range []net.Conn{tc, &framingConn{Conn: tc}} {
		if err := s.verdictOf(c); err != failed {
			t.Errorf("verdict of %T: %v, want the further connection's failure", c, err)
		}
	}
}
