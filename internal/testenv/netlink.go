package testenv

import (
	"net"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RefuseNetlink installs a seccomp filter on every thread of the process
// that fails socket(AF_NETLINK, ...) with EACCES, as a unit whose
// RestrictAddressFamilies= leaves out AF_NETLINK does. It is for a test's
// helper process, which it changes for good: nothing undoes it.
func RefuseNetlink(t testing.TB) {
	t.Helper()
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // the system call's number
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_SOCKET, Jt: 0, Jf: 3},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 16}, // its first argument's low half (little-endian)
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.AF_NETLINK, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EACCES)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_NO_NEW_PRIVS: %v", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fp))); e != 0 {
		t.Fatalf("seccomp: %v", e)
	}
	if _, err := net.InterfaceAddrs(); err == nil {
		t.Fatal("net.InterfaceAddrs works under the filter: netlink is not refused")
	}
}
