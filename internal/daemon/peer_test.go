//go:build unix

package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A peer of another user is refused even when it can reach the socket.
// Needs root (to run the peer as nobody).
func TestOtherUsersAreRefused(t *testing.T) {
	if os.Getenv("KPF_DAEMON_PEER") != "" {
		peerMain()
		return
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another user")
	}
	dir, err := os.MkdirTemp("", "kpfpeer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o777) // the mode lets anyone in: only the peer check is left
	s := &Server{Home: Home(dir), Log: discard, files: map[string]*fileRun{}}
	srv := &http.Server{Handler: s.Handler(), ConnContext: withConn}
	go srv.Serve(ln)
	defer srv.Close()
	// The test binary sits in a folder only we may enter: the peer runs a
	// copy of it.
	exe := filepath.Join(dir, "peer.test")
	if err := copyFile(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	run := func(uid uint32) string {
		cmd := exec.Command(exe, "-test.run=^TestOtherUsersAreRefused$")
		cmd.Env = append(os.Environ(), "KPF_DAEMON_PEER="+sock)
		if uid != 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		}
		out, err := cmd.CombinedOutput()
		return fmt.Sprintf("%s (%v)", out, err)
	}
	if out := run(65534); !strings.Contains(out, `peer: 403 {"code":"forbidden","message":"forbidden: the kpf daemon serves its own user only"}`) {
		t.Fatalf("as nobody: %s", out)
	}
	if out := run(0); !strings.Contains(out, "peer: 200") {
		t.Fatalf("as ourselves: %s", out)
	}
}

// peerMain is the other user's side of TestOtherUsersAreRefused.
func peerMain() {
	c := NewClient("")
	c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", os.Getenv("KPF_DAEMON_PEER"))
	}}
	resp, err := c.http.Get("http://kpf/v1/status")
	if err != nil {
		fmt.Println("peer:", err)
		os.Exit(0)
	}
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("peer: %d %s\n", resp.StatusCode, strings.TrimSpace(string(b)))
	os.Exit(0)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}
