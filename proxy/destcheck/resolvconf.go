package destcheck

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// ResolvConf is where the system's resolvers are listed.
const ResolvConf = "/etc/resolv.conf"

// SystemResolver returns the first nameserver listed in the resolv.conf
// file at path (port 53), as the C library would ask first.
func SystemResolver(path string) (netip.AddrPort, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading the system's resolvers: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue // resolv(5): an unreadable entry is skipped
		}
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("%s lists no nameserver", path)
}
