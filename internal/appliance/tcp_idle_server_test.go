package appliance

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tcpIdleServerEnv, set to ADDR or ADDR,PORTS (an IPv4 address and how
// many ports to listen on, default one), turns this test binary into the
// destination of the idle flows: see runTCPIdleServer.
const tcpIdleServerEnv = "GWLBPROXY_TCP_IDLE_SERVER"

func init() {
	if v := os.Getenv(tcpIdleServerEnv); v != "" {
		addr, ports := v, 1
		if a, p, ok := strings.Cut(v, ","); ok {
			var err error
			if addr, ports = a, 0; p != "" {
				ports, err = strconv.Atoi(p)
			}
			if err != nil || ports < 1 {
				fmt.Fprintf(os.Stderr, "%s=%q: want ADDR or ADDR,PORTS\n", tcpIdleServerEnv, v)
				os.Exit(2)
			}
		}
		os.Exit(runTCPIdleServer(addr, ports))
	}
}

// maxTCPIdleFlowsPerPort is how many idle flows go to one of the server's
// ports at most. The appliance dials every flow's destination from one
// source address, and the kernel gives each connection an ephemeral port
// unique per destination (address and port): ip_local_port_range,
// 32768-60999 by default, holds some 28,000 connections to one server port,
// so more flows than that need more server ports. tcpIdleFlowsPerPort
// keeps a margin below the range.
const maxTCPIdleFlowsPerPort = 20_000

// tcpIdleFlowsPerPort is how many idle flows one server port takes:
// maxTCPIdleFlowsPerPort, or 70% of a narrower ephemeral port range.
func tcpIdleFlowsPerPort() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return maxTCPIdleFlowsPerPort
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return maxTCPIdleFlowsPerPort
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return maxTCPIdleFlowsPerPort
	}
	return max(min(maxTCPIdleFlowsPerPort, (hi-lo+1)*7/10), 1)
}

// runTCPIdleServer listens on ports ephemeral ports of addr, prints them
// on a line and its open-file limit (as "PORT... nofile N"), answers each
// connection's tcpIdleRequest with tcpIdleReply and then holds it, without
// a goroutine, until stdin closes; then it closes every connection (a FIN
// each) and exits. It runs in a process of its own so that its sockets
// count neither against the appliance's memory nor its open files.
func runTCPIdleServer(addr string, ports int) int {
	var (
		mu   sync.Mutex
		held []net.Conn
		lns  []net.Listener
		line []string
	)
	hold := func(c net.Conn) {
		buf := make([]byte, len(tcpIdleRequest))
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, tcpIdleRequest) {
			c.Close()
			return
		}
		if _, err := c.Write(tcpIdleReply); err != nil {
			c.Close()
			return
		}
		_ = c.SetDeadline(time.Time{})
		mu.Lock()
		held = append(held, c)
		mu.Unlock()
	}
	for range ports {
		ln, err := net.Listen("tcp4", net.JoinHostPort(addr, "0"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "listening:", err)
			return 1
		}
		lns = append(lns, ln)
		line = append(line, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						// Out of open files, say: the flows that wait
						// for it fail the test, and this says why.
						fmt.Fprintln(os.Stderr, "the idle flows' server: accepting:", err)
					}
					return
				}
				go hold(c)
			}
		}()
	}
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	fmt.Println(strings.Join(line, " "), "nofile", lim.Cur)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, ln := range lns {
		ln.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range held {
		c.Close()
	}
	return 0
}

// startTCPIdleServer runs runTCPIdleServer in a copy of this test binary,
// listening on ports ports of addr, and returns their addresses and a
// function that closes its connections and waits for it to exit (also run
// when the test ends). The server inherits this process's open-file limit
// (see raiseTCPIdleNoFile); it must allow nofile files, or the test fails.
func startTCPIdleServer(t testing.TB, addr netip.Addr, ports int, nofile uint64) ([]netip.AddrPort, func()) {
	t.Helper()
	self := must(os.Executable())(t)
	cmd := exec.Command(self, "-test.run", "^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d", tcpIdleServerEnv, addr, ports))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin := must(cmd.StdinPipe())(t)
	stdout := must(cmd.StdoutPipe())(t)
	must(0, cmd.Start())(t)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			stdin.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("the idle flows' server: %v", err)
				}
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Errorf("the idle flows' server did not exit within 30s of its stdin closing")
			}
		})
	}
	t.Cleanup(stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != ports+2 || f[ports] != "nofile" {
		stop()
		t.Fatalf("the idle flows' server did not start: %q %v", line, err)
	}
	var addrs []netip.AddrPort
	for _, p := range f[:ports] {
		port, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			stop()
			t.Fatalf("the idle flows' server did not start: %q %v", line, err)
		}
		addrs = append(addrs, netip.AddrPortFrom(addr, uint16(port)))
	}
	if lim, err := strconv.ParseUint(f[ports+1], 10, 64); err != nil || lim < nofile {
		stop()
		t.Fatalf("the idle flows' server may open %s files, want %d (%v)", f[ports+1], nofile, err)
	}
	return addrs, stop
}
