package main

import (
	"fmt"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/internal/appliance"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
)

// minIdleTimeout is the least --idle-timeout: a UDP or ICMP flow must live
// long enough for its answer to come back; below a second every answer
// from a destination further than a few milliseconds away races the flow's
// expiry, and the flow table churns.
const minIdleTimeout = time.Second

// checkFlagValues refuses the flag values that the packages below would
// otherwise replace with their defaults without a word (a zero or negative
// size or interval means "the default" to them, as set by code, but given
// on the command line it is a mistake), or that could never work; then
// the appliance's own ranges (Options.Validate, which New checks again),
// so that every bad value stops the process before anything starts.
func checkFlagValues(o *appliance.Options) error {
	if o.IdleTimeout < minIdleTimeout {
		return fmt.Errorf("--idle-timeout %s: must be at least %s", o.IdleTimeout, minIdleTimeout)
	}
	c := o.Capture
	if c.RotateBytes < capture.MinRotateBytes {
		return fmt.Errorf("--pcap-rotate-bytes %d: must be at least %d", c.RotateBytes, capture.MinRotateBytes)
	}
	if c.MaxBytes < c.RotateBytes {
		return fmt.Errorf("--pcap-max-bytes %d: must be at least --pcap-rotate-bytes (%d)", c.MaxBytes, c.RotateBytes)
	}
	if c.RotateAge < time.Second {
		return fmt.Errorf("--pcap-rotate-age %s: must be at least 1s", c.RotateAge)
	}
	if cw := o.CloudWatch; cw.FlushInterval <= 0 {
		return fmt.Errorf("--cloudwatch-flush %s: must be positive", cw.FlushInterval)
	}
	if cw := o.CloudWatch; cw.BufferBytes < cwlogs.MinBufferBytes {
		return fmt.Errorf("--cloudwatch-buffer %d: must be at least %d", cw.BufferBytes, cwlogs.MinBufferBytes)
	}
	return o.Validate()
}
