//go:build linux

package policy

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// TestDomainSetMatchLongNameBounded: matching a name of 64 KiB of
// one-letter labels (an HTTP Host can be that long) reads only its tail,
// as long as the set's longest wildcard and a dot: the rest of the name
// lies in pages mapped PROT_NONE, so any byte match reads (or hashes) there
// faults, and SetPanicOnFault turns the fault into a panic the test
// reports with its offset. Before match was bounded, a set of 8 or more
// wildcards hashed the remaining suffix at every dot (quadratic: 200 ms of
// CPU for one request under 10 such rules), and one of 8 or more exact
// names hashed the whole name.
func TestDomainSetMatchLongNameBounded(t *testing.T) {
	var exact, wild []string
	for i := range 16 { // 16 of each: the map paths
		exact = append(exact, fmt.Sprintf("h%d.example", i))
		wild = append(wild, fmt.Sprintf("s%d.example", i))
	}
	sets := map[string]*domainSet{
		"maps":  newDomainSet(exact, wild),
		"lists": newDomainSet(exact[:2], wild[:2]),
	}
	for _, tc := range []struct {
		tail string
		want bool
	}{
		{".s1.example", true},
		{".a.s1.example", true},
		{".s1.example.org", false},
		{".h1.example", false}, // a subdomain of an exact name only
		{"as1.example", false},
	} {
		for setName, s := range sets {
			func() {
				d := guardedName(t, 64<<10, tc.tail)
				defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
				defer func() {
					if r := recover(); r != nil {
						if f, ok := r.(interface{ Addr() uintptr }); ok {
							off := int(f.Addr() - uintptr(unsafe.Pointer(unsafe.SliceData(d))))
							t.Errorf("%s, name ending %q: match read byte %d of %d (only the last %d may be read)",
								setName, tc.tail, off, len(d), s.maxWild+1)
							return
						}
						panic(r)
					}
				}()
				if got := s.match(d); got != tc.want {
					t.Errorf("%s, name ending %q: match = %v, want %v", setName, tc.tail, got, tc.want)
				}
			}()
		}
	}
}

// guardedName returns a name of n bytes, one-letter labels ending in tail,
// in freshly mapped memory of which only the last page can be read: the
// pages before it are PROT_NONE. The mapping is removed when t ends.
func guardedName(t *testing.T, n int, tail string) []byte {
	t.Helper()
	page := os.Getpagesize()
	size := (n + page - 1) / page * page
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { syscall.Munmap(mem) })
	d := mem[size-n:]
	head := n - len(tail)
	copy(d, strings.Repeat("a.", head/2+1)[:head])
	copy(d[head:], tail)
	if d[head-1] == '.' && tail[0] == '.' {
		d[head-1] = 'a' // no empty label where the two meet
	}
	if err := syscall.Mprotect(mem[:size-page], syscall.PROT_NONE); err != nil {
		t.Fatalf("mprotect: %v", err)
	}
	return d
}
