package proxy

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
)

// owedTestDial is a failed dial left unrecorded: w bytes to port of host
// 10.0.x.y (x.y the host's number).
type owedTestDial struct {
	host int
	port uint16
	w    int64
}

func (x owedTestDial) ip() string {
	return netip.AddrFrom4([4]byte{10, 0, byte(x.host >> 8), byte(x.host)}).String()
}

// TestOwedDestsNamesWhoGotAFifth (review rev33b F1): whatever the order
// and mix of a client's unrecorded dials, the owed note names every host
// that got more than a fifth of their bytes, with ports covering those its
// count's bytes went to; each count said is at most what its host got,
// and short by no more than the note says any one host may have got more
// (which bounds those not named too); the counts and the rest add up to
// the bytes; with four hosts or fewer, the counts are exact and there is
// no rest.
func TestOwedDestsNamesWhoGotAFifth(t *testing.T) {
	// to gives n dials of w bytes each to host h, ports from p up (one
	// port if step is 0).
	to := func(h, n int, p, step int, w int64) (ds []owedTestDial) {
		for i := range n {
			ds = append(ds, owedTestDial{h, uint16(p + i*step), w})
		}
		return ds
	}
	// others gives n dials of w bytes, each to a host of its own from h on.
	others := func(n, h int, w int64) (ds []owedTestDial) {
		for i := range n {
			ds = append(ds, owedTestDial{h + i, 9, w})
		}
		return ds
	}
	cat := func(dss ...[]owedTestDial) (ds []owedTestDial) {
		for _, d := range dss {
			ds = append(ds, d...)
		}
		return ds
	}
	rng := rand.New(rand.NewPCG(33, 3))
	shuffled := func(ds []owedTestDial) []owedTestDial {
		rng.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
		return ds
	}
	for _, tc := range []struct {
		name  string
		dials []owedTestDial
	}{
		{"the reviewer's: 40 to B, then 2 to A", cat(to(0, 40, 9, 0, 512), to(1, 2, 9, 0, 512))},
		{"B first, then 200 others", cat(to(0, 60, 9, 0, 512), others(200, 1, 512))},
		{"200 others, then B", cat(others(200, 1, 512), to(0, 60, 9, 0, 512))},
		{"B on 600 ports, among 1200 others", shuffled(cat(to(0, 600, 7000, 1, 512), others(1200, 1, 512)))},
		{"B between every four others, a fifth exactly", func() (ds []owedTestDial) {
			for i := range 60 {
				ds = append(ds, owedTestDial{0, 9, 512})
				ds = append(ds, others(4, 1+4*i, 512)...)
			}
			return ds
		}()},
		{"shuffled, B a fifth and a byte", shuffled(cat(to(0, 1, 9, 0, 1), to(0, 100, 9, 0, 512), others(400, 1, 512)))},
		{"shuffled, two heavies and noise", shuffled(cat(to(0, 150, 9, 0, 500), others(300, 1000, 100), to(1, 150, 100, 1, 400)))},
		{"four hosts, exact", shuffled(cat(to(0, 30, 9, 0, 512), to(1, 3, 9, 1, 7), to(2, 3, 9, 0, 300), to(3, 1, 9, 0, 1)))},
		{"nothing sent (SYNs)", others(50, 0, 0)},
		{"random sizes and hosts", func() (ds []owedTestDial) {
			for range 2000 {
				ds = append(ds, owedTestDial{rng.IntN(12) * rng.IntN(3), uint16(rng.IntN(4)), int64(rng.IntN(513))})
			}
			return ds
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d owedDests
			got := map[string]int64{}
			var total int64
			for _, x := range tc.dials {
				d.add(x.ip(), x.port, x.w)
				got[x.ip()] += x.w
				total += x.w
			}
			note := (&dialOwed{n: len(tc.dials), dests: d}).note()
			t.Log(note)
			o, ok := parseOwed(t, note)
			if !ok {
				t.Fatalf("note %q unreadable", note)
			}
			if o.bytes != total || o.n != int64(len(tc.dials)) {
				t.Errorf("note says %d dials, %d bytes; want %d, %d", o.n, o.bytes, len(tc.dials), total)
			}
			for ip, w := range got {
				said := o.dests[ip]
				if w*5 > total && said == 0 {
					t.Errorf("%s got %d of %d bytes and is not named", ip, w, total)
				}
				if said > w || w-said > o.upTo {
					t.Errorf("%s got %d bytes, the note says %d, at most %d more", ip, w, said, o.upTo)
				}
			}
			for ip, p := range o.ports {
				for _, x := range tc.dials {
					if x.ip() == ip && x.w > 0 && !o.atLeast && (x.port < p[0] || x.port > p[1]) {
						t.Errorf("%s's ports said %d-%d, a dial counted went to %d", ip, p[0], p[1], x.port)
					}
				}
			}
			if (o.rest+owedDestCounters)/(owedDestCounters+1) > o.upTo {
				t.Errorf("note %q: %d bytes left out of the counts, at most %d more to each host: each cut takes as much off %d counts", note, o.rest, o.upTo, owedDestCounters+1)
			}
			if len(got) <= owedDestCounters && (o.rest != 0 || o.atLeast) {
				t.Errorf("%d hosts: note %q, want exact counts", len(got), note)
			}
		})
	}
}

// TestOwedDestsNoAllocation: counting a dial's bytes allocates nothing
// once a bucket has its summary, even as counters are cut and retaken.
func TestOwedDestsNoAllocation(t *testing.T) {
	ips := make([]string, 16)
	for i := range ips {
		ips[i] = "198.51.100." + strconv.Itoa(i)
	}
	var d owedDests
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		d.add(ips[i%len(ips)], uint16(i%3), int64(1+i%512))
		i++
		if i%100 == 0 {
			d.reset()
		}
	}); n != 0 {
		t.Errorf("%v allocations a dial counted, want 0", n)
	}
}
