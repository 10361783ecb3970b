//go:build !linux

package sysio

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Read reads from fd into p.
func Read(fd int, p []byte) (int, error) {
	return retry(func() (int, error) { return syscall.Read(fd, p) })
}

// Write writes p to fd: what the socket takes now.
func Write(fd int, p []byte) (int, error) {
	return retry(func() (int, error) { return syscall.Write(fd, p) })
}

// Writev writes the buffers of v to fd in one call.
func Writev(fd int, v [][]byte) (int, error) {
	return retry(func() (int, error) { return unix.Writev(fd, v) })
}

// Peek reports whether fd has a byte to read or its peer closed: nil when
// it has, EAGAIN when it has not, or the socket's error.
func Peek(fd int) error {
	var one [1]byte
	_, err := retry(func() (int, error) {
		_, _, err := syscall.Recvfrom(fd, one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return 0, err
	})
	return err
}

// retry calls f again while a signal interrupts it.
func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
