package intercept

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// canonicalHost returns authority as net/http will send it as Host (IDN
// labels in their xn-- form), or an error when its host and port cannot be
// told apart, or its host has an empty label (sniff.EmptyLabel). Requests
// are decided on what is sent, not on what the client wrote: a rule for
// xn--bcher-kva.example must match "bücher.example"; "evil.example:1:2",
// which an origin may cut at its first colon, must not pass as some other
// name; nor "evil.example..", which rules (ignoring one trailing dot) would
// not take for evil.example and an origin may.
func canonicalHost(authority string) (string, error) {
	h, err := httpguts.PunycodeHostPort(authority)
	if err != nil {
		return "", fmt.Errorf("Host %q: %w", authority, err)
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") { // an IPv6 literal without a port
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
	}
	if sniff.EmptyLabel(hostOnly(h)) {
		return "", fmt.Errorf("Host %q: empty label in the name", authority)
	}
	return h, nil
}

// hostOnly returns an authority's host: without a port, and an IPv6
// literal without its brackets.
func hostOnly(authority string) string {
	if h, _, err := net.SplitHostPort(authority); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]")
}
