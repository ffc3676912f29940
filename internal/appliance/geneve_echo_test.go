package appliance

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// TestVNIEchoed: a flow's replies carry its GENEVE header's VNI back
// unchanged (design.md: the reply carries the flow's header byte for
// byte). The simulator sends a non-zero VNI and refuses a reply under
// another; a GWLB would drop such replies, so every flow under a VNI
// would break, and with VNI 0 alone no test could tell.
func TestVNIEchoed(t *testing.T) {
	r := newRig(t, nil, func(c *gwlbsim.Config) { c.VNI = 0x5a5a5a })
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	defer c.Close()
	must(c.Write([]byte("x")))(t)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	must(io.ReadFull(c, make([]byte, 1)))(t)
	if st := r.sim.Stats(); st.HeaderMismatch != 0 || st.Received == 0 {
		t.Fatalf("simulator stats %+v: replies did not carry the flow's VNI", st)
	}
}
