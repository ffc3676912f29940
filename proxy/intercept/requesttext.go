package intercept

import "github.com/gwlbproxy/gwlbproxy/proxy/records"

// write writes rec, a record of a connection or of one of its requests,
// after Config.RequestText has had its say. Every record the interceptor
// writes comes here: each request's (roundTripper.write), the
// connection's own (session.writeRecord), and those goproxy.go and
// h2guard.go write for a head that was never served. Those have the later
// requests' fields emptied, but a cleartext connection's first, sniffed,
// head stands in its record (one it could not read, or left unfinished):
// written straight to Records, that one kept its path whole, up to the
// 16 KiB the sniffer reads, once a connection, whatever its client's
// budget (review rev30a F3).
func (ic *Interceptor) write(rec *records.Record) {
	if f := ic.cfg.RequestText; f != nil {
		f(rec)
	}
	ic.cfg.Records.Write(rec)
}
