//go:build linux && !kpf_portable

package sysio

import (
	"syscall"
	"unsafe"
)

// Raw is true: the data path makes these system calls itself.
const Raw = true

// maxIovecs is the most buffers one Writev passes (the kernel takes 1024).
const maxIovecs = 64

var zero byte

func base(p []byte) unsafe.Pointer {
	if len(p) == 0 {
		return unsafe.Pointer(&zero)
	}
	return unsafe.Pointer(&p[0])
}

// Read reads from fd into p.
func Read(fd int, p []byte) (int, error) {
	return retry(syscall.SYS_READ, fd, base(p), len(p))
}

// Write writes p to fd: what the socket takes now.
func Write(fd int, p []byte) (int, error) {
	return retry(syscall.SYS_WRITE, fd, base(p), len(p))
}

// retry makes the system call trap(fd, ptr, n), again if a signal
// interrupted it.
func retry(trap uintptr, fd int, ptr unsafe.Pointer, n int) (int, error) {
	for {
		r, _, e := syscall.RawSyscall(trap, uintptr(fd), uintptr(ptr), uintptr(n))
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}

// Writev writes the buffers of v to fd in one call, at most maxIovecs of
// them: what the socket takes now.
func Writev(fd int, v [][]byte) (int, error) {
	var iov [maxIovecs]syscall.Iovec
	n := 0
	for _, b := range v {
		if n == len(iov) {
			break
		}
		if len(b) == 0 {
			continue
		}
		iov[n].Base = &b[0]
		iov[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, nil
	}
	return retry(syscall.SYS_WRITEV, fd, unsafe.Pointer(&iov[0]), n)
}

// Peek reports whether fd has a byte to read or its peer closed: nil when
// it has, EAGAIN when it has not, or the socket's error.
func Peek(fd int) error {
	var one [1]byte
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&one[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return nil
		case syscall.EINTR:
			continue
		}
		return e
	}
}
