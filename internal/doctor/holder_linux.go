package doctor

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// holder finds the process listening on TCP port: its socket's inode in
// /proc/net/tcp{,6}, then the process with that socket open. Only the
// user's own processes can be seen unless kpf runs as root.
func holder(port uint16) (int, string) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" { // LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if n, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && uint16(n) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return 0, ""
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		fds, _ := os.ReadDir(filepath.Join(p, "fd"))
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(p, "fd", fd.Name())); err == nil && inodes[l] {
				pid, _ := strconv.Atoi(filepath.Base(p))
				return pid, program(p)
			}
		}
	}
	return 0, ""
}

// program is a process's command line, shortened.
func program(proc string) string {
	b, err := os.ReadFile(filepath.Join(proc, "cmdline"))
	if err != nil || len(b) == 0 {
		b, _ = os.ReadFile(filepath.Join(proc, "comm"))
	}
	s := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

func holderHint(port uint16) string { return "ss -ltnp 'sport = :" + itoa(port) + "' shows which" }
