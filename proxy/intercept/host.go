package intercept

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// canonicalHost returns authority as net/http will send it as Host (IDN
// labels in their xn-- form), or an error when its host and port cannot be
// told apart, its host has an empty label (sniff.EmptyLabel), a character
// no host name has, brackets around anything but an IPv6 address, or more
// bytes than a DNS name holds (nameLength). Requests
// are decided on what is sent, not on what the client wrote: a rule for
// xn--bcher-kva.example must match "bücher.example"; "evil.example:1:2",
// which an origin may cut at its first colon, must not pass as some other
// name; nor "evil.example..", which rules (ignoring one trailing dot) would
// not take for evil.example and an origin may.
func canonicalHost(authority string) (string, error) {
	if len(authority) > maxAuthorityLen {
		// Refused before IDNA, whose Punycode encoding is quadratic in a
		// label's length: 60 KB of distinct CJK characters cost seconds.
		return "", fmt.Errorf("Host of %d bytes: longer than any name and port", len(authority))
	}
	if err := idnaLength(authority); err != nil {
		return "", err
	}
	h, err := httpguts.PunycodeHostPort(authority)
	if err != nil {
		return "", fmt.Errorf("Host %q: %w", authority, err)
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") { // an IPv6 literal without a port
		// Only an IPv6 address may stand in brackets: HTTP/2's :authority
		// takes "[evil.example%.allowed.example]", which would be decided
		// as the name inside, while net/http sends the Host cut at the %.
		if a, err := netip.ParseAddr(h[1 : len(h)-1]); err != nil || !a.Is6() {
			return "", fmt.Errorf("Host %q: brackets hold no IPv6 address", authority)
		} else if a.Zone() != "" {
			return "", errZone(authority)
		}
		return h, nil
	}
	if strings.Contains(h, ":") {
		_, port, err := net.SplitHostPort(h)
		if err != nil {
			return "", fmt.Errorf("Host %q: %w", authority, err)
		}
		if _, err := strconv.ParseUint(port, 10, 16); port != "" && err != nil {
			return "", fmt.Errorf("Host %q: port %q is not a number", authority, port)
		}
		if strings.HasPrefix(h, "[") {
			if a, err := netip.ParseAddr(hostOnly(h)); err != nil || !a.Is6() {
				return "", fmt.Errorf("Host %q: brackets hold no IPv6 address", authority)
			} else if a.Zone() != "" {
				return "", errZone(authority)
			}
		}
	}
	host := hostOnly(h)
	if sniff.EmptyLabel(host) {
		return "", fmt.Errorf("Host %q: empty label in the name", authority)
	}
	if err := nameLength(host); err != nil {
		return "", fmt.Errorf("Host of %d bytes: %w", len(authority), err)
	}
	if a, err := parseAddrOf(host); err != nil && !nameChars(host) {
		return "", fmt.Errorf("Host %q: a character no host name has", authority)
	} else if err == nil && a.Zone() != "" {
		return "", errZone(authority)
	}
	return h, nil
}

// errNoAddr: a host that netip.ParseAddr would refuse, not given to it.
var errNoAddr = errors.New("not an IP address")

// parseAddrOf is netip.ParseAddr for a host that may be an address: one
// with a colon (IPv6), or of digits and dots alone (IPv4), which is all
// ParseAddr takes. Any other is refused with errNoAddr, without ParseAddr,
// whose error for a name (the usual Host) was an allocation per request.
func parseAddrOf(host string) (netip.Addr, error) {
	if strings.IndexByte(host, ':') < 0 && strings.Trim(host, ".0123456789") != "" {
		return netip.Addr{}, errNoAddr
	}
	return netip.ParseAddr(host)
}

// idnaLength refuses a non-ASCII authority whose name has more characters
// than a DNS name, or a label more than a label, before IDNA reads it:
// Punycode's cost grows with the square of a label's length, so one label
// of 340 CJK characters (within maxAuthorityLen's bytes) cost 2 ms a
// request. Each character becomes at least one byte of the xn-- form, so
// no name that fits is refused. Labels end at any separator IDNA maps to
// a dot.
func idnaLength(authority string) error {
	ascii := true
	for i := 0; i < len(authority); i++ {
		if authority[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return nil
	}
	name := authority
	if i := strings.LastIndexByte(name, ':'); i >= 0 {
		name = name[:i]
	}
	total, label := 0, 0
	for _, r := range name {
		total++
		switch r {
		case '.', '\u3002', '\uff0e', '\uff61':
			label = 0
			continue
		}
		if label++; label > maxLabelLen {
			return fmt.Errorf("Host of %d bytes: a label of over %d characters", len(authority), maxLabelLen)
		}
	}
	if total > maxNameLen+1 { // one trailing dot
		return fmt.Errorf("Host of %d bytes: a name of %d characters, over %d", len(authority), total, maxNameLen)
	}
	return nil
}

// The longest DNS name, without the root's trailing dot, and label (RFC
// 1035 §2.3.4), as the SNI is held to them (sniff's validHostName) and the
// bump's leaf minter takes them. A longer Host is refused as the SNI is:
// it names nothing, an origin may read it otherwise than rules do, and
// policy matching would pay for every byte of it (a 64 KiB head holds a
// Host of 30,000 one-letter labels).
const (
	maxNameLen  = 253
	maxLabelLen = 63
	// maxAuthorityLen bounds an authority before IDNA turns it into the
	// name sent: 4 bytes of UTF-8 per character of a name of maxNameLen
	// at most, and a port. (Characters IDNA maps to nothing could make a
	// longer one; no client sends a Host of them.)
	maxAuthorityLen = 4*maxNameLen + len("[]:65535")
)

// nameLength reports a host longer than maxNameLen bytes (without one
// trailing dot) or with a label longer than maxLabelLen. Its error does
// not quote the host: the record holds it, and it may be 60 KB.
func nameLength(host string) error {
	if n := len(strings.TrimSuffix(host, ".")); n > maxNameLen {
		return fmt.Errorf("a name of %d bytes, over %d", n, maxNameLen)
	}
	label := 0
	for i := 0; i < len(host); i++ {
		if label++; host[i] == '.' {
			label = 0
		} else if label > maxLabelLen {
			return fmt.Errorf("a label of over %d bytes", maxLabelLen)
		}
	}
	return nil
}

// errZone refuses an IPv6 literal with a zone ("[::ffff:192.0.2.1%25x.allowed.example]"):
// a zone names an interface of the sender's, never a destination, and
// net/http sends the Host without it; decided as written, the literal
// matched a wildcard rule by its zone's suffix, while the destination check
// read it as the address it holds.
func errZone(authority string) error {
	return fmt.Errorf("Host %q: an IPv6 address with a zone", authority)
}

// nameChars reports whether s holds only what a DNS host name (in its
// ASCII form) may: letters, digits, '-', '_' and '.'. A Host such as
// "www.example@evil.example" or "evil.example,www.example" is otherwise
// decided as a name of its own (which a wildcard matches by its suffix),
// while net/http sends the first as an empty Host and an origin may take
// the second, or what follows the '@', for another.
func nameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// hostOnly returns an authority's host: without a port, and an IPv6
// literal without its brackets. Only a pair of brackets is taken off: a
// lone one stays, so that canonicalHost refuses it as a character no host
// name has; trimmed, "x.allowed.example]" was decided as x.allowed.example
// while net/http sent the Host with its bracket.
func hostOnly(authority string) string {
	// Without a colon SplitHostPort can only fail, and its error was an
	// allocation per request (a Host without a port is the usual one).
	if strings.IndexByte(authority, ':') >= 0 {
		if h, _, err := net.SplitHostPort(authority); err == nil {
			return h
		}
	}
	if len(authority) >= 2 && authority[0] == '[' && authority[len(authority)-1] == ']' {
		return authority[1 : len(authority)-1]
	}
	return authority
}

// requestPath is the path a record gives for req: none for a CONNECT,
// whose target is an authority, else recordPath's.
func requestPath(req *http.Request) string {
	if req.Method == http.MethodConnect {
		return ""
	}
	return recordPath(req.URL)
}

// recordPath is the path a record gives for a request to u: the one that
// goes to the destination, its percent-escapes kept (decoded, a client
// could make its record show another path), and "/" for an absolute-form
// target with none, as the request line says it.
func recordPath(u *url.URL) string {
	if p := u.EscapedPath(); p != "" || u.Host == "" {
		return p
	}
	return "/"
}
