//go:build unix

package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
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

// SudoUser is the user who ran kpf through sudo (SUDO_UID), when kpf runs
// as root that way; ok is false otherwise (root's own kpf included).
func SudoUser() (uid int, ok bool) {
	if os.Geteuid() != 0 {
		return 0, false
	}
	uid, err := strconv.Atoi(os.Getenv("SUDO_UID"))
	if err != nil || uid == 0 {
		return 0, false
	}
	return uid, true
}

// ErrNoHome: no daemon home of the user was found.
var ErrNoHome = errors.New("no kpf daemon home found")

// HomeOf finds the daemon home of the user uid, from another user (root,
// under sudo, whose environment is not theirs): the first of the places
// their kpf would have chosen that is a folder of theirs (not a link).
func HomeOf(uid int) (Home, error) {
	places := []string{
		filepath.Join("/run/user", strconv.Itoa(uid), "kpf"), // $XDG_RUNTIME_DIR/kpf, as systemd sets it
		filepath.Join(os.TempDir(), "kpf-"+strconv.Itoa(uid)),
		filepath.Join("/tmp", "kpf-"+strconv.Itoa(uid)),
	}
	if runtime.GOOS == "darwin" {
		// macOS's per-user $TMPDIR, which sudo does not pass on.
		m, _ := filepath.Glob("/var/folders/*/*/T/kpf-" + strconv.Itoa(uid))
		places = append(m, places...)
	}
	for _, p := range places {
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid {
			return Home(p), nil
		}
	}
	return "", fmt.Errorf("%w for uid %d (looked in %s): if that user's kpf runs with KPF_HOME set, pass it on: sudo KPF_HOME=FOLDER kpf COMMAND",
		ErrNoHome, uid, strings.Join(places, ", "))
}

// GiveToOwner makes path (a file root wrote in the home) belong to the
// home's owner, so that their own kpf can read and change it.
func (h Home) GiveToOwner(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(string(h))
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return os.Chown(path, int(st.Uid), int(st.Gid))
}
