//go:build unix

package cli

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// detach makes the daemon a session of its own: no terminal, no signals
// from the shell that started it.
func detach(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }

// processAlive: the process exists and has not exited (a zombie has).
func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !os.IsNotExist(err) || !procMounted()
	}
	s := string(b)
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ')' {
			return !(i+2 < len(s) && s[i+2] == 'Z')
		}
	}
	return true
}

// procMounted: /proc exists (Linux); elsewhere kill(pid, 0) is the answer.
func procMounted() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}
