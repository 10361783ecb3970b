package fastconn

import "syscall"

// rcvLowat sets the socket's receive low-water mark: until n bytes are
// queued (or the receive window runs low) the kernel does not report the
// socket readable. The mark is kept to a quarter of the receive buffer so
// that setting it never makes the kernel clamp the window. It returns the
// mark set, or 1 if none could be.
func rcvLowat(rc syscall.RawConn, n int) int {
	set := 1
	rc.Control(func(fd uintptr) {
		if n > 1 {
			buf, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
			if err != nil {
				return
			}
			n = min(n, buf/4)
			if n <= 1 {
				return
			}
		}
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n) == nil {
			set = n
		}
	})
	return set
}

// quickAck sends the socket's delayed ACK now, if one is pending, and
// leaves delayed-ACK mode until the kernel enters it again.
func quickAck(rc syscall.RawConn) {
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}
