package proxy

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// procNetDir is where readProcAddrs reads the host's addresses: the
// process's own network namespace. A variable so that a test can make the
// read fail.
var procNetDir = "/proc/self/net"

// readProcAddrs reads the host's addresses without netlink, for where
// NETLINK_ROUTE sockets are refused (a unit whose RestrictAddressFamilies=
// leaves out AF_NETLINK, a seccomp profile): net.InterfaceAddrs is netlink
// too, so it fails there as well. The IPv4 addresses are the local /32
// entries of the FIB (fib_trie), the IPv6 ones are if_inet6's lines. A
// host without IPv6 has no if_inet6, which is no error.
func readProcAddrs() (map[netip.Addr]struct{}, error) {
	m := make(map[netip.Addr]struct{})
	if err := readFIBLocal(filepath.Join(procNetDir, "fib_trie"), m); err != nil {
		return nil, err
	}
	if err := readIfInet6(filepath.Join(procNetDir, "if_inet6"), m); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return m, nil
}

// readFIBLocal adds to m the addresses fib_trie lists as local hosts: a
// leaf line "|-- 192.0.2.2" followed by its alias "/32 host LOCAL".
func readFIBLocal(path string, m map[netip.Addr]struct{}) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the host's IPv4 addresses: %w", err)
	}
	defer f.Close()
	var leaf netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if s, ok := strings.CutPrefix(line, "|-- "); ok {
			leaf, _ = netip.ParseAddr(s) // invalid: nothing added under it
		} else if strings.HasPrefix(line, "/32 host LOCAL") && leaf.IsValid() {
			m[leaf] = struct{}{}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the host's IPv4 addresses from %s: %w", path, err)
	}
	return nil
}

// readIfInet6 adds to m the addresses of if_inet6, whose lines start with
// the address as 32 hex digits.
func readIfInet6(path string, m map[netip.Addr]struct{}) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the host's IPv6 addresses: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		field, _, _ := strings.Cut(sc.Text(), " ")
		var b [16]byte
		if len(field) != 2*len(b) {
			continue
		}
		if _, err := hex.Decode(b[:], []byte(field)); err == nil {
			m[netip.AddrFrom16(b)] = struct{}{}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the host's IPv6 addresses from %s: %w", path, err)
	}
	return nil
}
