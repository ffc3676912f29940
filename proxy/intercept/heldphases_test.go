package intercept_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestHeldChargedInDestinationCheck: 100 streams of a bumped HTTP/2
// connection wait in the destination check of their Host (a lookup that
// takes its whole timeout: here a hook that waits for its context),
// before any goes to the transport. They hold as much as streams waiting
// on their origin do, and the session says so (AddHeld) within a factor
// of 1.5 each way; charged only at the transport, they were not charged
// at all.
func TestHeldChargedInDestinationCheck(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what is measured")
	}
	const streams = 100
	var waiting atomic.Int64
	check := func(ctx context.Context, _ string, host string, _ netip.Addr) error {
		if host == "www.example.test" { // the connection's own name: its SNI's check
			return nil
		}
		waiting.Add(1)
		defer waiting.Add(-1)
		<-ctx.Done()
		return ctx.Err()
	}
	r := newRig(t, fmt.Sprintf(namedPolicy, ""), func(c *intercept.Config) {
		c.DestinationCheck = check
		c.DestinationCheckTimeout = 4 * waitLimit
	})
	upEnd, originEnd := testnet.TCPPair(t)
	var atOrigin atomic.Int64
	silentH2Origin(r, originEnd, &atOrigin)
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	defer tlsc.Close()
	tlsc.SetDeadline(time.Now().Add(3 * waitLimit))
	go io.Copy(io.Discard, tlsc)
	var buf, hb bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	enc := hpack.NewEncoder(&hb)
	fields := heldShapes[1].fields()
	open := func(s int) { writeWaitGet(fr, enc, &hb, s, "api.example.test", fields) }
	waitChecks := func(n int64) {
		t.Helper()
		for end := time.Now().Add(waitLimit); waiting.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%d checks waiting, want %d", waiting.Load(), n)
			}
		}
	}
	open(0)
	measured, estimated := measureStreamGrowth(r, tlsc, &buf, &hb, streams, open, waitChecks)
	t.Logf("%d streams in their destination check: %d B measured a stream, %d B estimated", streams, measured, estimated)
	if estimated*3 < measured*2 || estimated*2 > measured*3 {
		t.Errorf("%d B estimated a stream waiting in its destination check, %d B measured: off by more than half", estimated, measured)
	}
	tlsc.Close()
	waitHeldZero(t, r)
}

// heldAll is what every session of the package's tests says it holds for
// its client (peekedConn.AddHeld), and heldLeast the least it ever was:
// TestHeldGivenBackOnEveryPath reads them.
var heldAll, heldLeast atomic.Int64

// TestHeldGivenBackOnEveryPath runs the package's tests of every kind of
// request one after another (HTTP/1, HTTP/2, h2c; denied, refused, early
// answers, the trust page; Expect; destination checks; WebSocket
// tunnels, refused 101s, tunnels a reload ended; streams the client
// reset, past the waiting bound, cut by the origin or a body's broken
// framing; redials, deadlines, aborts, pipelining) and checks that once
// each has ended, what its sessions charged their clients is all given
// back, and the charge never went below 0.
func TestHeldGivenBackOnEveryPath(t *testing.T) {
	tests := []struct {
		name string
		f    func(*testing.T)
	}{
		{"BumpHTTP1", TestBumpHTTP1}, {"BumpHTTP2", TestBumpHTTP2}, {"H2C", TestH2C}, {"CleartextHost", TestCleartextHost},
		{"PerRequestDecision", TestPerRequestDecision}, {"CleartextHalfClose", TestCleartextHalfClose},
		{"TrustHost", TestTrustHost}, {"TrustPageClientGone", TestTrustPageClientGone},
		{"DenyRecordBeforeLinger", TestDenyRecordBeforeLinger}, {"FirstRequestDeniedUpload", TestGoClientFirstRequestDeniedUpload},
		{"DestinationCheckBump", TestEvasionDestinationCheckBump},
		{"BumpRedial", TestBumpRedial}, {"BumpRedialUnverifiedH2", TestBumpRedialUnverifiedH2}, {"BumpRedialRefusedH2", TestBumpRedialRefusedH2},
		{"ExpectEarlyAnswer", TestExpectContinueEarlyAnswerSendsNoBody}, {"ExpectRelayed", TestExpectContinueRelayed},
		{"ExpectNotBeforeOrigin", TestExpectContinueNotBeforeOrigin}, {"ExpectOriginSilent", TestExpectContinueOriginSilent},
		{"ChunkExpectNoContinue", TestChunkExpectNoContinue},
		{"ChunkFaultAfterAnswer", TestChunkFaultAfterAnswer}, {"ChunkFaultBeforeAnswer", TestChunkFaultBeforeAnswer},
		{"ChunkFaultWhileStreaming", TestChunkFaultWhileStreaming},
		{"WebSocketHalfClose", TestWebSocketHalfClose}, {"WebSocketEndRecorded", TestWebSocketEndRecorded},
		{"WebSocketUpgradeWithBody", TestWebSocketUpgradeWithBody}, {"UpgradeOfferRelayed", TestUpgradeOfferRelayed},
		{"Unsolicited101", TestUnsolicited101Refused}, {"WS101NoConnUpgrade", TestWebSocket101WithoutConnectionUpgradeRefused},
		{"ReloadEndsWebSocketTunnel", TestReloadEndsWebSocketTunnel},
		{"H2WaitingAnswered", TestH2StreamsWaitingForUpstreamAnswered}, {"H2BeyondBound", TestH2StreamsBeyondWaitingBoundRefused},
		{"H2OriginHeldBounded", TestH2OriginStreamsHeldBounded}, {"H2RequestThenClose", TestH2RequestThenCloseRecordedBeforeDone},
		{"H2RefusedStreamThenClose", TestH2RefusedStreamThenCloseEnds}, {"CutResponseBumpedH2", TestCutResponseBumpedH2},
		{"CutResponseCurl", TestCutResponseCurl}, {"H2RequestDeadline", TestH2RequestDeadline},
		{"PipelinedPartialHead", TestPipelinedPartialHead}, {"HeldStreamsGivenUp", TestHeldStreamsGivenUpFreeTheirSlots},
	}
	// Sessions of the tests run before may still be giving their charges
	// back: a reset before they are done reads as a charge below 0.
	for end := time.Now().Add(waitLimit); heldAll.Load() != 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
	}
	heldAll.Store(0)
	heldLeast.Store(0)
	for _, tc := range tests {
		t.Run(tc.name, tc.f)
		// A session may end just after its test: its last records are
		// written, and its charges given back, as its streams wind down.
		for end := time.Now().Add(waitLimit); heldAll.Load() != 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		}
		if v := heldAll.Load(); v != 0 {
			t.Errorf("after %s the sessions still say they hold %d B for their clients", tc.name, v)
			heldAll.Store(0)
		}
	}
	if m := heldLeast.Load(); m < 0 {
		t.Errorf("the sessions' charge went below 0: %d B", m)
	}
}
