package capture

import (
	"os"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// TestMirrorVLANReuseTakesTheSilentOne: an endpoint that keeps sending
// keeps its VLAN ID; once all are taken, a new endpoint gets the one of the
// endpoint silent for an hour, as soon as it has been: not one first seen
// long ago but still sending (the IDS would mix two endpoints' flows on
// one VLAN), and not an hour later than that (the newcomer's packets would
// go unmirrored meanwhile).
func TestMirrorVLANReuseTakesTheSilentOne(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if _, err := r.Read(buf); err != nil {
				return
			}
		}
	}()
	m := &mirror{name: "test", f: w, frame: make([]byte, frameHeader+largeSlot), vlans: map[uint64]vlanEntry{}, maxVLANs: 2}
	defer m.close()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	at := func(d time.Duration) int64 { return t0 + int64(d) }
	if m.vlan(1, at(0)) != 1 || m.vlan(2, at(10*time.Minute)) != 2 {
		t.Fatal("first VLAN IDs")
	}
	m.vlan(1, at(65*time.Minute)) // endpoint 1 still sending
	if id := m.vlan(3, at(30*time.Minute+40*time.Minute)); id != 2 {
		// 70 min: endpoint 2 silent 60 min, endpoint 1 for 5
		t.Errorf("new endpoint at 70 min got VLAN %d, want 2 (endpoint 2's, silent an hour; endpoint 1 sent 5 min ago)", id)
	}
	if e, ok := m.vlans[1]; !ok || e.id != 1 {
		t.Errorf("endpoint 1, still sending, lost its VLAN: %v", m.vlans)
	}

	m2 := &mirror{name: "test", f: w, frame: make([]byte, frameHeader+largeSlot), vlans: map[uint64]vlanEntry{}, maxVLANs: 2}
	m2.vlan(1, at(0))
	m2.vlan(2, at(0))
	if id := m2.vlan(3, at(30*time.Minute)); id != 0 {
		t.Fatalf("at 30 min: VLAN %d, want none", id)
	}
	if id := m2.vlan(3, at(61*time.Minute)); id == 0 {
		t.Errorf("at 61 min, endpoints 1 and 2 silent 61 min: the new endpoint still gets no VLAN (its packets go unmirrored)")
	}
}

// TestMirrorPlaintextVLANsStayValid (privileged): with plaintext on, the
// mirror gives at most MaxPlaintextVLANs endpoints a VLAN ID, so that an
// endpoint's plaintext VLAN (ID + 2000) stays a valid 12-bit VLAN ID apart
// from every wire VLAN: with 4,094, endpoint 2,100's plaintext would go on
// 4,100 = 0x1004, which the 802.1Q tag reads as DEI set, VLAN 4, another
// endpoint's wire traffic.
func TestMirrorPlaintextVLANsStayValid(t *testing.T) {
	testenv.RequireRoot(t, "creates a network namespace and a TAP device")
	ns := newNetns(t)
	var m *mirror
	var err error
	inNetns(t, ns, func() { m, err = openMirror("mctest0", true) })
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	now := time.Now().UnixNano()
	for ep := uint64(1); ep <= MaxPlaintextVLANs; ep++ {
		if id := m.vlan(ep, now); id == 0 || id+PlaintextVLANOffset > 4094 {
			t.Fatalf("endpoint %d: VLAN %d, plaintext VLAN %d", ep, id, id+PlaintextVLANOffset)
		}
	}
	if id := m.vlan(MaxPlaintextVLANs+1, now); id != 0 {
		t.Errorf("endpoint %d gets VLAN %d: its plaintext VLAN %d is not a VLAN ID (0x%04x in the tag)", MaxPlaintextVLANs+1, id, id+PlaintextVLANOffset, id+PlaintextVLANOffset)
	}
}
