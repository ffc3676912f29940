// Package capture copies the inner packets the appliance receives from and
// sends to the GWLB to where an IDS or an auditor can read them: rotated
// pcapng files (one interface per GWLB endpoint, the flow cookie in each
// packet's comment) and a mirror TAP device (one 802.1Q VLAN per GWLB
// endpoint).
//
// A Capture is a netstack.Tap. On the packet path it only copies each packet
// into a preallocated slot of a bounded queue, one queue per output: it never
// blocks and never allocates. When an output falls behind, its queue fills
// and further packets are dropped for it and counted; a goroutine per output
// empties its queue.
package capture

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Config configures a Capture. An empty PcapDir and MirrorTAP turn both
// outputs off: New then returns nil.
type Config struct {
	// PcapDir is the directory pcapng files are written to ("": none).
	PcapDir string
	// RotateBytes starts a new file once the current one would grow past
	// it (default DefaultRotateBytes).
	RotateBytes int64
	// RotateAge starts a new file once the current one is this old
	// (default DefaultRotateAge).
	RotateAge time.Duration
	// MaxBytes caps the files in PcapDir together: the oldest are deleted
	// before a new file could take the total past it (default
	// DefaultMaxBytes). It must be at least RotateBytes.
	MaxBytes int64
	// Filters select the packets written to the pcap files: a packet is
	// written when any filter matches (none: every packet).
	Filters []Filter
	// MirrorTAP is the TAP device packets are mirrored to ("": none).
	MirrorTAP string
	// Plaintext synthesizes the decrypted side of every bumped connection
	// as a TCP stream of its own into both outputs (see OpenPlaintext),
	// marked apart from the wire traffic.
	Plaintext bool
	// QueuePackets is the number of packets each output's queue holds
	// (default DefaultQueuePackets); a sixteenth of the slots take jumbo
	// packets, the rest packets of up to smallSlot bytes.
	QueuePackets int
}

// Defaults of Config.
const (
	DefaultRotateBytes  = 64 << 20
	DefaultRotateAge    = 5 * time.Minute
	DefaultMaxBytes     = 1 << 30
	DefaultQueuePackets = 4096
	// MinRotateBytes is the smallest RotateBytes: a file must hold at
	// least one packet of the largest size.
	MinRotateBytes = 64 << 10
)

func (c *Config) setDefaults() {
	if c.RotateBytes <= 0 {
		c.RotateBytes = DefaultRotateBytes
	}
	if c.RotateAge <= 0 {
		c.RotateAge = DefaultRotateAge
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.QueuePackets <= 0 {
		c.QueuePackets = DefaultQueuePackets
	}
}

// Validate checks the pcap sizes; flag names are the appliance's.
func (c Config) Validate() error {
	c.setDefaults()
	if c.RotateBytes < MinRotateBytes {
		return fmt.Errorf("--pcap-rotate-bytes %d: must be at least %d", c.RotateBytes, MinRotateBytes)
	}
	if c.MaxBytes < c.RotateBytes {
		return fmt.Errorf("--pcap-max-bytes %d: must be at least --pcap-rotate-bytes (%d)", c.MaxBytes, c.RotateBytes)
	}
	if c.RotateAge < time.Second {
		return fmt.Errorf("--pcap-rotate-age %s: must be at least 1s", c.RotateAge)
	}
	if len(c.MirrorTAP) >= 16 {
		return fmt.Errorf("--mirror-tap %q: a device name has at most 15 characters", c.MirrorTAP)
	}
	return nil
}

// Capture copies packets to the configured outputs. It implements
// netstack.Tap.
type Capture struct {
	filters   []Filter
	plaintext bool // OpenPlaintext synthesizes streams
	plain     plainCounters
	ports     plainPorts    // the synthesized streams' 5-tuples
	pcap      *pcapWriter   // nil: no pcap files
	mirror    *mirror       // nil: no mirror
	pcapQ     *queue        // the pcap writer's
	mirrorQ   *queue        // the mirror's
	closed    atomic.Bool   // Close has begun: Packet drops
	done      chan struct{} // closed by Close: the outputs drain and stop
	stopped   chan struct{} // closed when every output goroutine has ended
}

var _ netstack.Tap = (*Capture)(nil)

// New opens the outputs of cfg and starts their goroutines. With no output
// configured it returns nil, nil.
func New(cfg Config) (*Capture, error) {
	if cfg.PcapDir == "" && cfg.MirrorTAP == "" {
		return nil, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	c := &Capture{filters: cfg.Filters, plaintext: cfg.Plaintext, done: make(chan struct{}), stopped: make(chan struct{})}
	var runs []func()
	if cfg.PcapDir != "" {
		w, err := newPcapWriter(cfg)
		if err != nil {
			return nil, err
		}
		c.pcap, c.pcapQ = w, newQueue(cfg.QueuePackets)
		runs = append(runs, func() { w.run(c.pcapQ, c.done) })
	}
	if cfg.MirrorTAP != "" {
		m, err := openMirror(cfg.MirrorTAP, cfg.Plaintext)
		if err != nil {
			if c.pcap != nil {
				c.pcap.close()
			}
			return nil, err
		}
		c.mirror, c.mirrorQ = m, newQueue(cfg.QueuePackets)
		runs = append(runs, func() { m.run(c.mirrorQ, c.done) })
	}
	left := atomic.Int32{}
	left.Store(int32(len(runs)))
	for _, run := range runs {
		go func() {
			run()
			if left.Add(-1) == 0 {
				close(c.stopped)
			}
		}()
	}
	return c, nil
}

// Packet implements netstack.Tap: it queues a copy of pkt for each output
// (the pcap files only when a filter matches), or counts a drop for an
// output whose queue is full. It never blocks and never allocates.
func (c *Capture) Packet(endpoint uint64, cookie uint32, out bool, now int64, p netstack.Packet, pkt []byte) {
	if c.closed.Load() {
		return
	}
	if c.mirrorQ != nil {
		c.mirrorQ.put(endpoint, cookie, out, false, now, pkt)
	}
	if c.pcapQ != nil && (len(c.filters) == 0 || matchAny(c.filters, endpoint, out, &p)) {
		c.pcapQ.put(endpoint, cookie, out, false, now, pkt)
	}
}

// Close stops taking packets, writes out what is queued, and closes the
// files and the mirror device. Packets handed in afterwards are ignored.
// It waits for as long as the writes take: see CloseContext for a bound.
func (c *Capture) Close() error { return c.CloseContext(context.Background()) }

// CloseContext is Close within ctx. When ctx ends before the outputs have
// written out their queues (a stalled disk can hold a write for minutes,
// and up to QueuePackets packets are queued per output), it gives up: the
// packets still queued are counted as dropped and not written, and an
// error says how many. An output stuck in a write keeps its file open
// until that write returns; the process is about to exit, and the
// appliance's records must not wait behind packet capture.
func (c *Capture) CloseContext(ctx context.Context) error {
	if c == nil || c.closed.Swap(true) {
		return nil
	}
	close(c.done)
	select {
	case <-c.stopped:
	case <-ctx.Done():
		var unwritten uint64
		for _, q := range []*queue{c.pcapQ, c.mirrorQ} {
			if q != nil {
				unwritten += q.abandon()
			}
		}
		return fmt.Errorf("capture: gave up writing out the queued packets (%d dropped): %w", unwritten, context.Cause(ctx))
	}
	var errs []error
	if c.pcap != nil {
		errs = append(errs, c.pcap.close())
	}
	if c.mirror != nil {
		errs = append(errs, c.mirror.close())
	}
	return errors.Join(errs...)
}

// Stats is what /stats shows of the capture.
type Stats struct {
	Pcap      *PcapStats      `json:"pcap,omitempty"`
	Mirror    *MirrorStats    `json:"mirror,omitempty"`
	Plaintext *PlaintextStats `json:"plaintext,omitempty"` // when Config.Plaintext
}

// SinkStats are the counters every output has.
type SinkStats struct {
	Packets uint64 `json:"packets"` // written
	Bytes   uint64 `json:"bytes"`   // of the packets written
	Dropped uint64 `json:"dropped"` // not written: the queue was full
	Errors  uint64 `json:"errors"`  // not written: the output failed
}

// PcapStats are the pcap writer's counters. A packet counts as written
// once its bytes reached the file, and in Errors when writing it failed
// (a failed write loses every packet of the write buffer).
type PcapStats struct {
	SinkStats
	Files        int    `json:"files"`         // in the directory, the one being written included
	DiskBytes    int64  `json:"disk_bytes"`    // the files' total
	Rotations    uint64 `json:"rotations"`     // files finished
	FilesDeleted uint64 `json:"files_deleted"` // oldest files deleted for --pcap-max-bytes
	LastError    string `json:"last_error,omitempty"`
}

// MirrorStats are the mirror's counters.
type MirrorStats struct {
	SinkStats
	Device string `json:"device"`
	// VLANs maps each GWLB endpoint seen (vpce-…) to its VLAN ID.
	VLANs map[string]uint16 `json:"vlans"`
	// PlaintextVLANOffset, with plaintext on, is added to an endpoint's
	// VLAN ID for its synthesized plaintext streams.
	PlaintextVLANOffset int `json:"plaintext_vlan_offset,omitempty"`
	// NoVLAN counts packets not mirrored because every VLAN ID was taken
	// by an endpoint seen within the hour (MaxVLANs); not errors.
	NoVLAN    uint64 `json:"no_vlan"`
	LastError string `json:"last_error,omitempty"`
}

// Stats returns a snapshot of the counters.
func (c *Capture) Stats() Stats {
	var s Stats
	if c.pcap != nil {
		s.Pcap = c.pcap.stats(c.pcapQ)
	}
	if c.mirror != nil {
		s.Mirror = c.mirror.stats(c.mirrorQ)
	}
	if c.plaintext {
		s.Plaintext = &PlaintextStats{Streams: c.plain.streams.Load(), Packets: c.plain.packets.Load(),
			Bytes: c.plain.bytes.Load(), Dropped: c.plain.dropped.Load(), Collisions: c.plain.collisions.Load()}
	}
	return s
}

// EndpointName formats a GWLB endpoint ID as AWS does.
func EndpointName(endpoint uint64) string {
	return netstack.FlowInfo{Endpoint: endpoint}.EndpointName()
}
