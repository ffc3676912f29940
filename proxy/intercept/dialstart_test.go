package intercept

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestDialWaitsForDialUnderWay: a request with two connections counted
// and a dial under way asks for another dial (net/http does, when it
// hands the request a pooled connection an origin's GOAWAY is closing
// while its own dial is under way). The second dial waits for the first:
// refused once the first's connection is made and counts, let through
// when the first failed. Before, both were let through, and an origin
// refusing every request was dialled 4 times for one
// (TestOriginGoAwayEveryRequest: "4 connections, 4 request HEADERS", 2 to
// 3 runs in 300 under load).
func TestDialWaitsForDialUnderWay(t *testing.T) {
	for _, made := range []bool{true, false} {
		var cause error
		reqCtx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		hd := &headDeadline{reqDone: reqCtx.Done(), cancel: func(err error) { cause = err; cancel(err) }}
		ctx := &headDeadlineCtx{Context: reqCtx, d: hd}
		hd.dials.Store(maxConnsPerRequest - 1)
		first, err := newConnFor(ctx)
		if err != nil || first != hd {
			t.Fatalf("the third dial: %v, want it let through", err)
		}
		second := make(chan error, 1)
		go func() {
			d, err := newConnFor(ctx)
			d.dialEnded()
			second <- err
		}()
		select {
		case err := <-second:
			t.Fatalf("a fourth dial while the third is under way: %v, want it to wait", err)
		case <-time.After(50 * time.Millisecond):
		}
		if made {
			hd.dials.Add(1) // dialledFor
		}
		first.dialEnded()
		select {
		case err := <-second:
			switch {
			case made && (!errors.Is(err, errRefusedTooOften) || !errors.Is(cause, errRefusedTooOften)):
				t.Errorf("the fourth dial, the third's connection made: %v (request ended by %v), want refused", err, cause)
			case !made && err != nil:
				t.Errorf("the fourth dial, the third failed: %v, want it let through", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the fourth dial still waits once the third ended")
		}
		if hd.dialing != 0 {
			t.Errorf("%d dials under way after both ended", hd.dialing)
		}
	}
}

// TestDialWaitEndsWithRequest: a dial waiting for another of its request
// ends when the request does, though the dial's own context (net/http's,
// without the request's cancellation) goes on.
func TestDialWaitEndsWithRequest(t *testing.T) {
	reqCtx, cancel := context.WithCancelCause(context.Background())
	hd := &headDeadline{reqDone: reqCtx.Done(), cancel: cancel}
	hd.dials.Store(maxConnsPerRequest - 1)
	ctx := context.WithoutCancel(&headDeadlineCtx{Context: reqCtx, d: hd})
	first, err := newConnFor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.dialEnded()
	second := make(chan error, 1)
	go func() {
		_, err := newConnFor(ctx)
		second <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel(errors.New("client gone"))
	select {
	case err := <-second:
		if err == nil {
			t.Error("a dial waiting when its request ended was let through")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a dial still waits after its request ended")
	}
}
