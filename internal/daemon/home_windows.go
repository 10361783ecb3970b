package daemon

import (
	"errors"
	"net"
	"os"
	"path/filepath"
)

// defaultHome is under %LocalAppData%, whose access list lets in only the
// user (and the system); the folder and the socket in it inherit it.
func defaultHome() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "kpf")
	}
	return filepath.Join(os.TempDir(), "kpf")
}

// ownedByUser: Windows guards the folder with its inherited access list.
func ownedByUser(os.FileInfo) bool { return true }

// listenUserOnly opens an AF_UNIX socket (Windows 10 1803 and later) in
// the user's own folder.
func listenUserOnly(sock string) (net.Listener, error) { return net.Listen("unix", sock) }

// SudoUser: Windows has no sudo.
func SudoUser() (uid int, ok bool) { return 0, false }

// ErrNoHome: no daemon home of the user was found.
var ErrNoHome = errors.New("no kpf daemon home found")

// HomeOf: another user's home is not reachable on Windows.
func HomeOf(uid int) (Home, error) { return "", ErrNoHome }

// GiveToOwner: the folder's inherited access list decides on Windows.
func (h Home) GiveToOwner(string) error { return nil }
