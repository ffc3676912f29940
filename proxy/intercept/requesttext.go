package intercept

import "github.com/gwlbproxy/gwlbproxy/proxy/records"

// write writes rec, a record of a connection or of one of its requests,
// after Config.RequestText has had its say. Every request's record comes
// here (roundTripper.write), and the connection's own (session.writeRecord).
// The records goproxy.go and h2guard.go write for a head that was never
// served have the later requests' fields emptied; only a cleartext
// connection's first, sniffed, head can stand in one, once a connection,
// and a connection costs its client a handshake.
func (ic *Interceptor) write(rec *records.Record) {
	if f := ic.cfg.RequestText; f != nil {
		f(rec)
	}
	ic.cfg.Records.Write(rec)
}
