package appliance

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestValidateBoundsAndWording: --dial-timeout has an upper bound, so that
// twice it (how long a flow not yet established is kept) cannot overflow:
// past about 146 years it did, and the transitory timeout became the 30 s
// floor without a word. --max-flows-per-client -1 is refused as "must not
// be negative", since 0 is accepted (a tenth of --max-flows); it said
// "must be positive". --admin-addr localhost:0 is refused saying port 0
// is allowed only on a loopback IP address, as configuration.md now says.
func TestValidateBoundsAndWording(t *testing.T) {
	for _, tc := range []struct {
		set  func(*Options)
		want string // in the error; "" for none
	}{
		{func(o *Options) { o.DialTimeout = MaxDialTimeout }, ""},
		{func(o *Options) { o.DialTimeout = 10 * time.Minute }, ""},
		{func(o *Options) { o.DialTimeout = MaxDialTimeout + time.Nanosecond }, "--dial-timeout 10m0.000000001s: must be at most 10m0s"},
		{func(o *Options) { o.DialTimeout = 2562047 * time.Hour }, "--dial-timeout 2562047h0m0s: must be at most 10m0s"},
		{func(o *Options) { o.DialTimeout = math.MaxInt64 }, "--dial-timeout"},
		{func(o *Options) { o.MaxFlowsPerClient = 0 }, ""},
		{func(o *Options) { o.MaxFlowsPerClient = -1 }, "--max-flows-per-client -1: must not be negative (0: a tenth of --max-flows)"},
		{func(o *Options) { o.AdminAddr = "127.0.0.1:0" }, ""},
		{func(o *Options) { o.AdminAddr = "[::1]:0" }, ""},
		{func(o *Options) { o.AdminAddr = "localhost:0" }, "only on a loopback IP address"},
	} {
		o := DefaultOptions()
		tc.set(&o)
		err := o.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("dial %s, per client %d, admin %q: %v", o.DialTimeout, o.MaxFlowsPerClient, o.AdminAddr, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("dial %s, per client %d, admin %q: error %v, want one saying %q", o.DialTimeout, o.MaxFlowsPerClient, o.AdminAddr, err, tc.want)
		}
	}
}
