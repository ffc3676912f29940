package intercept

import "time"

// SetResumptionClock replaces the clock session tickets are issued and
// checked by; call it before the first connection.
func SetResumptionClock(ic *Interceptor, now func() time.Time) { ic.res.now = now }
