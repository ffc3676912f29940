package records

import (
	"strconv"
	"strings"
	"time"
)

// Why records were dropped, as a records_lost marker says it. Stored as
// pointers to these strings: a drop costs no allocation.
var (
	lostQueueFull  = "queue full or closed: the access log is too slow or stuck"
	lostUnencoding = "a record could not be encoded"
)

// noteLoss records that a record was lost for the files (dropped or
// failed), and why: the next records_lost marker says so, and since when.
func (w *Writer) noteLoss(why *string) {
	if why != nil {
		w.dropReason.Store(why)
	}
	if w.firstLoss.Load() == 0 {
		w.firstLoss.CompareAndSwap(0, time.Now().UnixNano())
	}
}

// lostMarker is what the goroutine knows of records_lost markers: the
// drops and failures the last one written counted, and the ones the
// marker in the batch being written counts.
type lostMarker struct {
	dropped, failed         uint64 // told of
	nextDropped, nextFailed uint64 // in the marker being written
}

// appendLost appends a records_lost marker to out when records were lost
// for the files (dropped, or failed) since the last marker the files took:
// one line, before the next records they can write, that says how many
// were lost, since when, and why. Field names are the CloudWatch shipper's
// too ("sink" tells the two apart). Called by the goroutine only.
func (w *Writer) appendLost(out []byte, m *lostMarker) []byte {
	d, f := w.dropped.Load(), w.failed.Load()
	if d == m.dropped && f == m.failed {
		return out
	}
	w.settleMu.Lock()
	abandoned := w.abandoned
	w.settleMu.Unlock()
	if abandoned { // Close counted the rest as dropped: the process is exiting
		return out
	}
	var why []string
	if d > m.dropped {
		if r := w.dropReason.Load(); r != nil {
			why = append(why, *r)
		}
	}
	if f > m.failed {
		if e := w.lastError.Load(); e != nil {
			why = append(why, "a write failed: "+*e)
		}
	}
	now := time.Now().UTC()
	since := now
	if s := w.firstLoss.Load(); s != 0 {
		since = time.Unix(0, s).UTC()
	}
	out = append(out, `{"time":"`...)
	out = now.AppendFormat(out, time.RFC3339Nano)
	out = append(out, `","kind":"records_lost","sink":"access_log","lost":`...)
	out = strconv.AppendUint(out, d-m.dropped+f-m.failed, 10)
	out = append(out, `,"lost_since":"`...)
	out = since.AppendFormat(out, time.RFC3339Nano)
	out = appendStringField(append(out, '"'), `,"error":`, strings.Join(why, "; "))
	m.nextDropped, m.nextFailed = d, f
	return append(out, "}\n"...)
}

// lostWritten is called when the files took the marker appendLost made
// whole: the losses it counted are told of, and the next marker's
// lost_since is the first loss after them.
func (w *Writer) lostWritten(m *lostMarker) {
	m.dropped, m.failed = m.nextDropped, m.nextFailed
	w.lossMarkers.Add(1)
	w.firstLoss.Store(0)
	// A loss between appendLost's count and the reset above would be left
	// without a time: give it now's, a moment late.
	if w.dropped.Load() != m.dropped || w.failed.Load() != m.failed {
		w.noteLoss(nil)
	}
}
