//go:build unix

package daemon

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

func defaultHome() string {
	if r := os.Getenv("XDG_RUNTIME_DIR"); r != "" {
		return filepath.Join(r, "kpf")
	}
	return filepath.Join(os.TempDir(), "kpf-"+strconv.Itoa(os.Getuid()))
}

func ownedByUser(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || int(st.Uid) == os.Getuid()
}

// listenUserOnly creates the socket with no access for others from the
// start (not only after the chmod that follows).
func listenUserOnly(sock string) (net.Listener, error) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	return net.Listen("unix", sock)
}
