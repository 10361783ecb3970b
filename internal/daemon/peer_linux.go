package daemon

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// checkPeer refuses a peer whose uid is not ours (SO_PEERCRED).
func checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cerr != nil {
		return fmt.Errorf("%w (peer credentials: %v)", ErrOtherUser, cerr)
	}
	if int(cred.Uid) != os.Getuid() {
		return ErrOtherUser
	}
	return nil
}
