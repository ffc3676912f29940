package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// sdNotify sends state (READY=1, STOPPING=1) to the service manager, as
// sd_notify(3) does: one datagram to the Unix socket NOTIFY_SOCKET names
// (a leading @ means the abstract namespace). Without NOTIFY_SOCKET (not
// started by systemd, or not Type=notify) it does nothing. The unit is
// Type=notify, so that systemd counts the appliance started, and runs
// `systemctl reload` (ExecReload), only once READY=1 has come.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	return nil
}
