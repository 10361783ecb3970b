package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// podNet is the node's pod network, as a CNI plugin makes one: a bridge
// with 198.18.0.1/16 and, for each pod, a network namespace of its own
// with loopback and an eth0 holding the pod's IP on the bridge. Pods
// reach each other at their pod IPs, the node reaches them (probes, as a
// kubelet does), a process that binds 127.0.0.1 is reached by
// port-forward only (which dials localhost inside the namespace, as a
// container runtime does), and 0.0.0.0 means the pod's own addresses.
//
// It needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's ip; without
// them, or with KPF_SANDBOX_POD_NETWORK=loopback, pods share the node's
// network and each binds a 127.P.x.y address of its own instead.
type podNet struct {
	log *slog.Logger
}

const (
	podBridge   = "kpfsb0"
	netnsPrefix = "kpfsb-"
	gatewayCIDR = "198.18.0.1/16"
)

// newPodNet sets the pod network up, or says why it cannot.
func newPodNet(log *slog.Logger) (*podNet, error) {
	if os.Getenv("KPF_SANDBOX_POD_NETWORK") == "loopback" {
		return nil, errors.New("KPF_SANDBOX_POD_NETWORK=loopback")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("no ip command (iproute2)")
	}
	removeStaleNetns()
	if ip("link", "show", podBridge) != nil {
		if err := ip("link", "add", podBridge, "type", "bridge"); err != nil {
			return nil, err
		}
	}
	ip("addr", "add", gatewayCIDR, "dev", podBridge) // already there after a crash
	if err := ip("link", "set", podBridge, "up"); err != nil {
		return nil, err
	}
	// Bridged traffic must not go through the host's iptables (if the
	// module is loaded), which may drop it.
	os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("0"), 0o644)
	return &podNet{log: log}, nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RemoveStaleNetns deletes the pod namespaces of an agent that died (kpf-sandbox
// down after a crash); the bridge stays for the next agent.
func RemoveStaleNetns() { removeStaleNetns() }

// removeStaleNetns deletes the namespaces of pods of an agent that died.
func removeStaleNetns() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), netnsPrefix) {
			ip("netns", "del", e.Name())
		}
	}
}

// add makes pod n's namespace with addr on eth0; it returns the
// namespace's path.
func (pn *podNet) add(n int, addr netip.Addr) (string, error) {
	name := netnsPrefix + strconv.Itoa(n)
	host := "kpfv" + strconv.Itoa(n)
	ip("netns", "del", name)
	// The host end of a namespace deleted a moment ago (by an agent that
	// died, or by removeStaleNetns) lingers until the kernel has torn that
	// namespace down: delete it now, which takes its peer with it.
	if ip("link", "show", host) == nil {
		ip("link", "del", host)
	}
	steps := [][]string{
		{"netns", "add", name},
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name},
		{"link", "set", host, "master", podBridge, "up"},
		{"-n", name, "addr", "add", addr.String() + "/16", "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "route", "add", "default", "via", "198.18.0.1"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			ip("netns", "del", name)
			return "", err
		}
	}
	return filepath.Join("/run/netns", name), nil
}

// del removes pod n's namespace (its veth goes with it).
func (pn *podNet) del(n int) { ip("netns", "del", netnsPrefix+strconv.Itoa(n)) }

// inNetns runs fn on a thread inside the network namespace at path:
// sockets it opens, and processes it starts, are the namespace's.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter the pod's network: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays in the pod's namespace: let it end with this
		// goroutine rather than serve another.
		return errors.Join(ferr, fmt.Errorf("leave the pod's network: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
