// Package cluster runs the sandbox: a one-node Kubernetes cluster made of
// upstream etcd, kube-apiserver and kube-controller-manager processes and the
// sandbox's node agent, with its PKI, kubeconfigs, RBAC and audit log, all
// under one state folder. It starts and stops exactly the processes it
// records, and offers the fault hooks that tests need.
package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Component names, also the names of their log files.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Node              = "node"
)

// Order is the start order; stop goes the other way.
var Order = []string{Etcd, APIServer, ControllerManager, Node}

// Users with a kubeconfig of their own.
const (
	UserAdmin  = "admin"  // system:masters
	UserDev    = "dev"    // port-forward and read in DevNamespace only
	UserViewer = "viewer" // read in DevNamespace, no port-forward
	UserNobody = "nobody" // authenticated, no rights at all
)

// DevNamespace is where dev and viewer have their rights.
const DevNamespace = "dev"

// NodeName is the one node's name.
const NodeName = "kpf-sandbox"

// State is what is kept in <dir>/state.json between commands.
type State struct {
	Ports struct {
		EtcdClient int `json:"etcdClient"`
		EtcdPeer   int `json:"etcdPeer"`
		APIServer  int `json:"apiServer"`
		Kubelet    int `json:"kubelet"`
	} `json:"ports"`
	// AddrPrefix is the second octet of the pods' loopback addresses.
	AddrPrefix byte                `json:"addrPrefix"`
	Bin        string              `json:"bin"`
	Procs      map[string]ProcInfo `json:"procs"`
	// Node holds the node agent's settings, so that a restart keeps them.
	Node NodeSettings `json:"node,omitzero"`
}

// NodeSettings are the node agent's flags (kpf-sandbox up or restart node
// --node-topology, --streaming-connection-idle-timeout); "" is the default.
type NodeSettings struct {
	Topology                       string `json:"topology,omitempty"`
	StreamingConnectionIdleTimeout string `json:"streamingConnectionIdleTimeout,omitempty"`
}

// args are the node agent's flags for these settings.
func (n NodeSettings) args() []string {
	var a []string
	if n.Topology != "" {
		a = append(a, "--node-topology="+n.Topology)
	}
	if n.StreamingConnectionIdleTimeout != "" {
		a = append(a, "--streaming-connection-idle-timeout="+n.StreamingConnectionIdleTimeout)
	}
	return a
}

// ProcInfo identifies a started process: a pid alone could be reused.
type ProcInfo struct {
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"` // /proc/PID/stat field 22
	Argv      []string `json:"argv"`
}

// Alive reports whether the recorded process still runs (and is the same one).
func (p ProcInfo) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := procStartTime(p.PID)
	return err == nil && st == p.StartTime && !zombie(p.PID)
}

// Dir is the sandbox's state folder.
type Dir string

// DefaultDir is $KPF_SANDBOX_DIR, or kpf-sandbox under the user's cache folder.
func DefaultDir() (Dir, error) {
	if d := os.Getenv("KPF_SANDBOX_DIR"); d != "" {
		return Dir(d), nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache folder (%w): set KPF_SANDBOX_DIR", err)
	}
	return Dir(filepath.Join(cache, "kpf-sandbox")), nil
}

func (d Dir) path(elem ...string) string {
	return filepath.Join(append([]string{string(d)}, elem...)...)
}

// Kubeconfig is the path of a user's kubeconfig.
func (d Dir) Kubeconfig(user string) string { return d.path("kubeconfig", user+".yaml") }

// LogFile is the log of a component.
func (d Dir) LogFile(component string) string { return d.path("logs", component+".log") }

// AuditLog is the API server's audit log.
func (d Dir) AuditLog() string { return d.path("audit.log") }

// NodeDir holds the node agent's files: container logs, process groups.
func (d Dir) NodeDir() string { return d.path("node") }

func (d Dir) pki(name string) string { return d.path("pki", name) }

// Load reads state.json; a missing file gives a zero State.
func (d Dir) Load() (*State, error) {
	s := &State{Procs: map[string]ProcInfo{}}
	b, err := os.ReadFile(d.path("state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w (run kpf-sandbox down --purge to start over)", d.path("state.json"), err)
	}
	if s.Procs == nil {
		s.Procs = map[string]ProcInfo{}
	}
	return s, nil
}

// Save writes state.json atomically, readable by the user only.
func (d Dir) Save(s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.path("state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.path("state.json"))
}

// freePort asks the kernel for a port that is free now on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name in field 2 may hold spaces; fields after ")" are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func signalProc(p ProcInfo, sig syscall.Signal) error {
	if !p.Alive() {
		return nil
	}
	return syscall.Kill(p.PID, sig)
}
