package testnet

import (
	"net"
	"slices"
)

// RewriteFirstRecord wraps the connection a crypto/tls client writes to, as
// a hostile client would: the first TLS record it writes (the ClientHello)
// gets version as its record-layer version, and before, if set, is sent
// ahead of it (records a server tolerates before a ClientHello, such as a
// warning alert). Tests of classification use it to dodge a classifier
// that looks for 0x16 0x03 0x0X.
func RewriteFirstRecord(c net.Conn, version uint16, before []byte) net.Conn {
	return &rewriteConn{Conn: c, version: version, before: before}
}

type rewriteConn struct {
	net.Conn
	version uint16
	before  []byte
	done    bool
}

func (c *rewriteConn) Write(b []byte) (int, error) {
	if c.done || len(b) < 5 {
		return c.Conn.Write(b)
	}
	c.done = true
	out := slices.Concat(c.before, b)
	out[len(c.before)+1], out[len(c.before)+2] = byte(c.version>>8), byte(c.version)
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
