package node

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// addrPool hands each pod a unique loopback address to bind and dial, and
// the matching address it reports as its podIP.
type addrPool struct {
	prefix byte
	mu     sync.Mutex
	used   map[int]bool
}

func newAddrPool(prefix byte) *addrPool { return &addrPool{prefix: prefix, used: map[int]bool{}} }

// podAddr is a pod's network identity.
type podAddr struct {
	n        int
	Local    netip.Addr // 127.P.x.y: what its processes bind and port-forward dials
	Reported netip.Addr // 198.18.x.y: what its status says
}

func (p *addrPool) get() (podAddr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := 2; n < 1<<16-1; n++ {
		if (n&255) == 0 || (n&255) == 255 || p.used[n] {
			continue
		}
		p.used[n] = true
		hi, lo := byte(n>>8), byte(n)
		return podAddr{
			n:        n,
			Local:    netip.AddrFrom4([4]byte{127, p.prefix, hi, lo}),
			Reported: netip.AddrFrom4([4]byte{198, 18, hi, lo}),
		}, true
	}
	return podAddr{}, false
}

func (p *addrPool) put(a podAddr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.used, a.n)
}

// pidFile records the process group of every running container, so that an
// agent that was killed without cleaning up has its containers stopped by
// the next agent or by kpf-sandbox down.
type pidFile struct {
	path string
	mu   sync.Mutex
	set  map[int]bool
}

func (f *pidFile) add(pgid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.set == nil {
		f.set = map[int]bool{}
	}
	f.set[pgid] = true
	f.write()
}

func (f *pidFile) remove(pgid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.set, pgid)
	f.write()
}

func (f *pidFile) write() {
	var b strings.Builder
	for pgid := range f.set {
		b.WriteString(strconv.Itoa(pgid))
		b.WriteByte('\n')
	}
	tmp := f.path + ".tmp"
	if os.WriteFile(tmp, []byte(b.String()), 0o600) == nil {
		os.Rename(tmp, f.path)
	}
}

// KillRecorded kills the process groups listed in a pid file; used by
// kpf-sandbox down after the agent itself is gone.
func KillRecorded(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	for _, line := range strings.Fields(string(b)) {
		if pgid, err := strconv.Atoi(line); err == nil && pgid > 1 && isContainer(pgid) {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}
	os.Remove(path)
}

func (f *pidFile) killAll() { KillRecorded(f.path) }

// containerMarker is in every container's environment, so that a recorded
// process group is only killed while its leader is still one of ours and not
// an unrelated process that reused the number.
const containerMarker = "KPF_SANDBOX_CONTAINER=1"

func isContainer(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if kv == containerMarker {
			return true
		}
	}
	return false
}
