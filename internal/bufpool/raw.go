package bufpool

import (
	"io"
	"os"
	"syscall"

	"github.com/kpf-dev/kpf/internal/sysio"
)

// ReadRaw reads from a socket into a pooled buffer of headroom+size bytes,
// the data landing after headroom. It waits for data without holding a
// buffer (an idle connection costs none), running beforeWait, if set, each
// time it is about to wait. The buffer is returned (to Put) whatever the
// outcome; it is nil only if rc failed before any read.
func ReadRaw(rc syscall.RawConn, headroom, size int, beforeWait func()) (*[]byte, int, error) {
	var pb *[]byte
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		pb = Get(headroom + size)
		n, rerr = sysio.Read(int(fd), (*pb)[headroom:])
		if rerr == syscall.EAGAIN {
			Put(pb)
			pb = nil
			if beforeWait != nil {
				beforeWait()
			}
			return false // wait until readable, then try again
		}
		return true
	})
	switch {
	case err != nil:
		return pb, 0, err
	case rerr != nil:
		return pb, 0, os.NewSyscallError("read", rerr)
	case n <= 0:
		return pb, 0, io.EOF
	}
	return pb, n, nil
}
