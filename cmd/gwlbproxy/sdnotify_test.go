package main

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"
)

// TestSdNotifyAbstractSocket: a NOTIFY_SOCKET naming an abstract socket
// ("@name", as systemd hands out in some containers) gets READY=1. Without
// it a Type=notify unit would never count as started, time out and be
// restarted over and over.
func TestSdNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@gwlbproxy-test-sdnotify-%d", os.Getpid())
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Skipf("no abstract unix socket here: %v", err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("sdNotify to %s: %v", name, err)
	}
	if err := c.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("read %q, %v; want READY=1", buf[:n], err)
	}
}
