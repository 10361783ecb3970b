//go:build !linux

package fastconn

import "syscall"

// rcvLowat: elsewhere the low-water mark does not hold back epoll/kqueue
// readiness the same way, so pacing sleeps instead.
func rcvLowat(syscall.RawConn, int) int { return 1 }

// quickAck: delayed ACKs are left to the system.
func quickAck(syscall.RawConn) {}
