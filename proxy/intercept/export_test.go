package intercept

import "time"

// SetResumptionClock replaces the clock session tickets are issued and
// checked by; call it before the first connection.
func SetResumptionClock(ic *Interceptor, now func() time.Time) { ic.res.now = now }

// SetOriginGroupsClock replaces the clock that lapses what is remembered of
// origins that chose a classical key exchange.
func SetOriginGroupsClock(ic *Interceptor, now func() time.Time) { ic.groups.classical.now = now }

// ClassicalOriginMemory is how long an origin is offered classical groups
// only after it chose one.
const ClassicalOriginMemory = classicalOriginMemory

// SetVerifyClock replaces the clock upstream certificates are verified,
// and their verifications remembered, by.
func SetVerifyClock(ic *Interceptor, now func() time.Time) {
	ic.verified.now, ic.failed.now, ic.proven.now = now, now, now
}

// Verifications returns how many upstream chains were verified, not taken
// from the memory of earlier verifications.
func Verifications(ic *Interceptor) uint64 { return ic.verifications.Load() }

// SetResponseHeadTimeout sets how long the rest of a response head may
// take after its first byte, and returns a function restoring it.
func SetResponseHeadTimeout(d time.Duration) (restore func()) {
	old := responseHeadTimeout
	responseHeadTimeout = d
	return func() { responseHeadTimeout = old }
}

// MaxResponseHead bounds a response head.
const MaxResponseHead = maxResponseHead

// SetRequestHeadTimeout sets how long the rest of a client's request head
// may take after its first byte, and returns a function restoring it.
func SetRequestHeadTimeout(d time.Duration) (restore func()) {
	old := requestHeadTimeout
	requestHeadTimeout = d
	return func() { requestHeadTimeout = old }
}

// SetUpstreamIdleTimeout sets how long an upstream connection waits for a
// request, and returns a function restoring it.
func SetUpstreamIdleTimeout(d time.Duration) (restore func()) {
	old := h1IdleTimeout
	h1IdleTimeout = d
	return func() { h1IdleTimeout = old }
}

// SetClientIdleTimeout sets how long an intercepted client connection may
// wait with no request, and returns a function restoring it.
func SetClientIdleTimeout(d time.Duration) (restore func()) {
	old := clientIdleTimeout.Load()
	clientIdleTimeout.Store(d)
	return func() { clientIdleTimeout.Store(old) }
}

// SetUpstreamWaitTimeout sets how long a request may wait for an upstream
// connection while none comes free, and returns a function restoring it.
func SetUpstreamWaitTimeout(d time.Duration) (restore func()) {
	old := upstreamWaitTimeout.Load()
	upstreamWaitTimeout.Store(d)
	return func() { upstreamWaitTimeout.Store(old) }
}

// H1LineCharge and H1LineSlack: what each line of an HTTP/1 request head
// costs against the head limit beside its bytes, and the lines' room.
const (
	H1LineCharge = h1LineCharge
	H1LineSlack  = h1LineSlack
)

// SetExpectContinueTimeout sets how long a held body waits for the
// origin's 100, and returns a function restoring it.
func SetExpectContinueTimeout(d time.Duration) (restore func()) {
	old := expectContinueTimeout.Load()
	expectContinueTimeout.Store(d)
	return func() { expectContinueTimeout.Store(old) }
}

// MaxStreamsInFlight bounds a session's requests in flight at once.
const MaxStreamsInFlight = maxStreamsInFlight

// SetUpstreamH2PingTimeouts sets when an upstream HTTP/2 connection with
// nothing read is sent a PING, and how long its ack may take, and returns
// a function restoring them.
func SetUpstreamH2PingTimeouts(after, timeout time.Duration) (restore func()) {
	oldAfter, oldTimeout := upstreamH2PingAfter.Load(), upstreamH2PingTimeout.Load()
	upstreamH2PingAfter.Store(after)
	upstreamH2PingTimeout.Store(timeout)
	return func() { upstreamH2PingAfter.Store(oldAfter); upstreamH2PingTimeout.Store(oldTimeout) }
}

// OnBodyRead has f run as each read of a response body begins, and
// returns a function that stops it.
func OnBodyRead(f func()) (restore func()) {
	testHookBodyRead.Store(&f)
	return func() { testHookBodyRead.Store(nil) }
}

// OnH2BodyClose has f run as the Close of a response body relayed to an
// HTTP/2 client's stream begins, with a function that reports whether the
// stream's request context is done (the client reset the stream, or its
// connection ended); it returns a function that stops it.
func OnH2BodyClose(f func(streamDone func() bool)) (restore func()) {
	h := func(b *recordingBody) {
		if e := b.note; e != nil {
			f(func() bool {
				e.of.mu.Lock()
				ctx := e.ctx
				e.of.mu.Unlock()
				return ctx != nil && ctx.Err() != nil
			})
		}
	}
	testHookBodyClose.Store(&h)
	return func() { testHookBodyClose.Store(nil) }
}

// OnTakeUpBound has f run as a dial's wait for the session's first
// HTTP/2 connection ends at its bound (h2first.go), and returns a
// function that stops it.
func OnTakeUpBound(f func()) (restore func()) {
	testHookTakeUpBound.Store(&f)
	return func() { testHookTakeUpBound.Store(nil) }
}

// SetFirstTakeUpWait sets the bound of a dial's wait for the session's
// first HTTP/2 connection (h2first.go), and returns a function restoring
// it.
func SetFirstTakeUpWait(d time.Duration) (restore func()) {
	old := firstTakeUpWait.Load()
	firstTakeUpWait.Store(d)
	return func() { firstTakeUpWait.Store(old) }
}

// SetUploadHoldDelay sets how long an upload's small writes may be held,
// and returns a function restoring it.
func SetUploadHoldDelay(d time.Duration) (restore func()) {
	old := uploadDelay
	uploadDelay = d
	return func() { uploadDelay = old }
}
