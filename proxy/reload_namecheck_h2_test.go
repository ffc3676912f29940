package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"golang.org/x/net/http2"
)

// h2NameCheckRig is an HTTP/2 bumped connection (sent a GOAWAY after a
// 403 that refused the connection's name: get connects again then)
// to allowed.example, whose SNI's check passed on an observed answer, and
// a request for path with Host 127.0.0.1 (a dest_cidrs rule allows it);
// reload loads pol, forgetting the observed answers if forget.
func h2NameCheckRig(t *testing.T, before string) (r *clsRig, dc *destcheck.Checker, dst netip.AddrPort, get func(path string) int, reload func(pol string, forget bool), end func() records.Record) {
	ca := clsMust(certs.Generate("untrusted h2 destination CA"))(t)
	leaf := clsMust(clsMust(certs.NewMinter(ca, certs.MinterOptions{}))(t).LeafFor([]string{"allowed.example"}, nil))(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"h2", "http/1.1"}}}
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })
	dst = ln.Addr().(*net.TCPAddr).AddrPort()
	dc = destcheck.New(destcheck.Config{})
	t.Cleanup(dc.Close)
	r = newClsRig(t, before, clsOptions{bump: true, check: dc.Check, config: wireChecker(dc)})
	dc.Observe(nameCheckEndpoint, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Certificate())
	var (
		first net.Conn
		cc    *http2.ClientConn
	)
	connect := func() {
		c := r.dial(t, dst)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: roots, NextProtos: []string{"h2"}})
		var err error
		if cc, err = (&http2.Transport{}).NewClientConn(tc); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = c
		}
	}
	connect()
	get = func(path string) int {
		if !cc.CanTakeNewRequest() {
			connect() // a GOAWAY came: a client connects again
		}
		req, _ := http.NewRequest("GET", "https://127.0.0.1"+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	reload = func(pol string, forget bool) {
		if forget {
			reloadForgetting(t, r, dc, pol)
			return
		}
		r.reloadPolicy(t, pol)
	}
	end = func() records.Record { // the first connection's
		cc.Close()
		first.Close()
		return r.record(t, first, "tls")
	}
	return r, dc, dst, get, reload, end
}

// nameCheckEndpoint is the rig's client's endpoint.
var nameCheckEndpoint = fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))

// TestReloadNameCheckThenAllowedRecord: an HTTP/2 bumped connection whose
// SNI's check passed on an observed answer. A reload to an enforcing
// policy forgets it: the name's check made again fails, a request for
// another Host is refused, and the connection is sent a GOAWAY; it ends
// under that policy, and its tls record says the denial (that policy, not
// only the bump's next to result ok, as an audit's record reads: review
// r6s27 F2), with dest_check mismatch and the check's error. A second
// reload turns the check off: the client's next connection is served.
func TestReloadNameCheckThenAllowedRecord(t *testing.T) {
	const literal = "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	r, _, _, get, reload, end := h2NameCheckRig(t, bumpAnyDNSPolicy+literal)
	codes := []int{get("/before")}
	reload(bumpTrustedDNSPolicy+literal, true)
	codes = append(codes, get("/after1"))
	tlsRec := end() // the first connection, ended under the denying policy
	reload(strings.Replace(bumpTrustedDNSPolicy, "  rules:", "  destination_check: off\n  rules:", 1)+literal, true)
	codes = append(codes, get("/after2"))
	if fmt.Sprint(codes) != "[200 403 200]" {
		t.Fatalf("codes %v, want [200 403 200]", codes)
	}
	denier := httpRecordOf(t, r, "/after1").Policy
	if denier == "" || denier != tlsRec.Policy || tlsRec.Result != "denied" || tlsRec.DestCheck != "mismatch" ||
		!strings.Contains(tlsRec.Error, "no address of allowed.example could be looked up") {
		t.Errorf("the tls record: policy %q result %q dest_check %q error %q; want the denying policy %q, denied, mismatch and the check's error",
			tlsRec.Policy, tlsRec.Result, tlsRec.DestCheck, tlsRec.Error, denier)
	}
}

// TestReloadNameCheckFailureEndsTheConnection: the connection's name whose
// check made again after a reload failed (here for want of a resolver, as
// a transient failure would) is refused, and an HTTP/2 connection is sent
// a GOAWAY after the refusal, as an HTTP/1 one is closed: the client's
// next connection is decided afresh, and once the name holds for the
// address again, its requests are served. A failed check is not made again
// on the connection (as a tunnel's or a spliced connection's is not), and
// the connection used to stay open answering 403 to every request, pinned
// by one lookup error, which another client can bring about by spending
// the endpoint's lookup quota during the reload (review r8s27 F1).
func TestReloadNameCheckFailureEndsTheConnection(t *testing.T) {
	const literal = "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	const other = "\n    - name: other\n      domains: [\"other.example\"]\n      action: allow\n"
	_, dc, dst, get, reload, end := h2NameCheckRig(t, bumpAnyDNSPolicy+literal)
	codes := []int{get("/before")}
	reload(bumpTrustedDNSPolicy+literal, true)
	codes = append(codes, get("/after1"))
	// The name holds for the address again, under the policy in force.
	dc.Observe(nameCheckEndpoint, aResponse(dnsQuery(8, "allowed.example", 1), dst.Addr()))
	reload(bumpTrustedDNSPolicy+literal+other, false) // another enforcing policy, the answer kept
	codes = append(codes, get("/after2"))
	end()
	if fmt.Sprint(codes) != "[200 403 200]" {
		t.Errorf("codes %v, want [200 403 200]: the refusal ends the connection, and the next one is checked afresh", codes)
	}
}
