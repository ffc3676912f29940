package testenv

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// InPrivateTmpfs runs f on an OS thread of its own, in a new mount
// namespace of that thread's in which a tmpfs is mounted on dir with
// options (as mount -o takes them), and returns the mount's error or f's.
// Nothing of the mount shows outside the thread, and nothing of it
// outlives the files opened there, which stay usable through their
// descriptors: the thread is never unlocked, so it exits, namespace and
// all, once f returns. A process f starts (forked from that thread)
// shares the namespace. It needs root.
func InPrivateTmpfs(dir, options string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, in its own mount namespace, exits
		// with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("making mounts private: %w", err)
			}
			if err := unix.Mount("tmpfs", dir, "tmpfs", 0, options); err != nil {
				return fmt.Errorf("mounting a tmpfs: %w", err)
			}
			return f()
		}()
	}()
	return <-errc
}
