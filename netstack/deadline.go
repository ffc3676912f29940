package netstack

import (
	"sync"
	"time"
)

// deadline is one of a net.Conn's deadlines: a channel closed once it
// passes. A waiting call selects on the channel it got when it began; the
// channel is replaced only after it was closed, so moving the deadline
// reaches calls already waiting, as net.Conn requires.
type deadline struct {
	mu    sync.Mutex
	ch    chan struct{} // made when first needed
	timer *time.Timer
}

// done returns the channel closed when the deadline passes.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

// set moves the deadline to t; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	if d.timer != nil && !d.timer.Stop() {
		d.ch = make(chan struct{}) // the timer closed the old one, or is about to
	}
	d.timer = nil
	select {
	case <-d.ch: // passed earlier by a time already gone
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.ch)
		return
	}
	ch := d.ch
	d.timer = time.AfterFunc(wait, func() { close(ch) })
}
