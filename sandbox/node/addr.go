package node

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// addrPool hands each pod its pod IP (198.18.x.y) and, on a node with a
// pod network, a network namespace that holds it; without one, a unique
// loopback address (127.P.x.y) that its processes bind and port-forward
// dials, its pod IP then a label only.
type addrPool struct {
	prefix byte
	net    *podNet // nil: no pod network
	mu     sync.Mutex
	used   map[int]bool
	last   int // the last address handed out: the next search starts after it
}

func newAddrPool(prefix byte, net *podNet) *addrPool {
	return &addrPool{prefix: prefix, net: net, used: map[int]bool{}}
}

// podAddr is a pod's network identity.
type podAddr struct {
	n        int
	Local    netip.Addr // what port-forward dials: 127.0.0.1 in the pod's namespace, or 127.P.x.y
	Reported netip.Addr // 198.18.x.y: what its status says
	NS       string     // the pod's network namespace; "" without a pod network
}

// Bind is what the pod's processes are told to bind (KPF_POD_ADDR): all
// of its addresses in a namespace of its own, else its loopback address.
func (a podAddr) Bind() netip.Addr {
	if a.NS != "" {
		return netip.IPv4Unspecified()
	}
	return a.Local
}

// Probe is where the node's probes connect, as a kubelet's do: the pod IP
// on a pod network.
func (a podAddr) Probe() netip.Addr {
	if a.NS != "" {
		return a.Reported
	}
	return a.Local
}

func (p *addrPool) get() (podAddr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// As host-local IPAM does, the next free address after the last one
	// given: an address just freed is not handed out again at once.
	failed := 0
	for i := 1; i < 1<<16; i++ {
		n := (p.last + i) % (1<<16 - 1)
		if n < 2 || (n&255) == 0 || (n&255) == 255 || p.used[n] {
			continue
		}
		hi, lo := byte(n>>8), byte(n)
		a := podAddr{
			n:        n,
			Local:    netip.AddrFrom4([4]byte{127, p.prefix, hi, lo}),
			Reported: netip.AddrFrom4([4]byte{198, 18, hi, lo}),
		}
		if p.net != nil {
			ns, err := p.net.add(n, a.Reported)
			if err != nil {
				// Try the next address, as an IPAM plugin whose
				// address is taken would; give up after a few.
				p.net.log.Error("pod network", "err", err)
				if failed++; failed == 8 {
					return podAddr{}, err
				}
				continue
			}
			a.NS, a.Local = ns, netip.MustParseAddr("127.0.0.1")
		}
		p.used[n] = true
		p.last = n
		return a, nil
	}
	return podAddr{}, errors.New("the node has no free pod addresses")
}

func (p *addrPool) put(a podAddr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.used, a.n)
	if a.NS != "" {
		p.net.del(a.n)
	}
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
