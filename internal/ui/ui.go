// Package ui is `kpf ui`: a full-screen terminal UI (Bubble Tea) to pick
// what to forward from the cluster and to watch, stop, restart and
// diagnose the daemon's forwards. It acts only through the daemon's
// versioned API (Daemon: the calls of daemon.Client) and lists the
// cluster through Cluster (which the CLI supplies, as the kpf ui
// process's kubeconfig identity), so it offers nothing a CLI command does
// not: the help screen names the command of each action.
//
// The model (Model: Update and View) holds all of the logic and is tested
// without a terminal; Run puts it on one and feeds it the event stream.
package ui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"

	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
)

// Origin labels the forwards kpf ui starts, in kpf status.
const Origin = "started by ui"

// Daemon is what the UI asks of the daemon (daemon.Client).
type Daemon interface {
	Status(ctx context.Context, file string) (*api.Status, error)
	Start(ctx context.Context, req api.StartRequest) (*api.Forward, error)
	Stop(ctx context.Context, name, file string) (*api.Forward, error)
	RestartForward(ctx context.Context, name, file string) ([]api.Picked, error)
	Doctor(ctx context.Context, name, file string) (*api.DoctorResult, error)
	Logs(ctx context.Context, file, name string, lines int) ([]string, error)
	HTTPLog(ctx context.Context, name, file string, lines int) ([]string, error)
	Events(ctx context.Context, counters bool, fn func(api.Event) error) error
}

// Context is a kubeconfig context.
type Context struct {
	Name, Cluster, User, Namespace string
	Current                        bool
}

// Port is a port a target declares.
type Port struct {
	Port     int32
	Name     string
	Protocol string // TCP or UDP
	To       string // a service port's targetPort, when it differs
}

// Target is something to forward to.
type Target struct {
	Kind  string // svc, deployment, statefulset, pod
	Name  string
	Ports []Port
	Ready string
}

// Ref is TYPE/NAME, as kpf forward takes it.
func (t Target) Ref() string { return t.Kind + "/" + t.Name }

// ErrForbidden is wrapped by Cluster.Namespaces' error when the identity
// may not list namespaces (common on shared clusters): the UI then opens
// the context's own namespace instead.
var ErrForbidden = errors.New("forbidden")

// Cluster lists the cluster as the kpf ui process's identity (context ""
// is the current one), and forwards a namespace whole (kpf up --all -d:
// it returns the file the daemon runs for it).
type Cluster interface {
	Contexts() ([]Context, error)
	Namespaces(ctx context.Context, context string) ([]string, error)
	Targets(ctx context.Context, context, namespace string) ([]Target, error)
	ForwardNamespace(ctx context.Context, context, namespace string) (file string, err error)
}

// Options make a Model.
type Options struct {
	Daemon   Daemon
	Cluster  Cluster
	Identity identity.Identity
	Settings spec.Settings
	// Context and Namespace are where the UI opens ("" the current
	// context; a Namespace opens its targets at once).
	Context, Namespace string
	// Session is sent with the forwards tied to this UI
	// (api.StartRequest.Session): the daemon stops them when the stream
	// that holds the session ends, however kpf ui ends.
	Session string
	// Socket names the daemon in the status line.
	Socket string
	// NoColor renders without colour (NO_COLOR).
	NoColor bool
	// FreePort suggests a free local port for a remote one (FreeLocalPort
	// if nil).
	FreePort func(protocol string, remote int) int
	// PortFree says why a local port cannot be listened on (PortInUse
	// if nil): the port prompt stays open with the reason.
	PortFree func(protocol string, port int) error
	// WriteFile writes the set; unless overwrite, an existing file is
	// an error wrapping ErrExists (WriteSet if nil).
	WriteFile func(path string, b []byte, overwrite bool) error
}

// PortInUse is an error if port cannot be listened on where a UI forward
// listens (localhost: 127.0.0.1, and ::1 where there is IPv6), nil if it
// is free now.
func PortInUse(protocol string, port int) error {
	for _, host := range []string{"127.0.0.1", "::1"} {
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		var c io.Closer
		var err error
		if protocol == "UDP" {
			c, err = net.ListenPacket("udp", addr)
		} else {
			c, err = net.Listen("tcp", addr)
		}
		if err == nil {
			c.Close()
			continue
		}
		if host == "::1" && !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EACCES) {
			continue // no IPv6 loopback here: kpf forward skips it too
		}
		return err
	}
	return nil
}

// FreeLocalPort is the remote port itself when it is 1024 or above and
// free on 127.0.0.1, else a port the system says is free.
func FreeLocalPort(protocol string, remote int) int {
	try := func(port int) int {
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if protocol == "UDP" {
			c, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return 0
			}
			defer c.Close()
			return c.LocalAddr().(*net.UDPAddr).Port
		}
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			return 0
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	if remote >= 1024 {
		if p := try(remote); p != 0 {
			return p
		}
	}
	return try(0)
}

// rate is bytes per second as people read it.
func rate(n int64) string {
	return bytes(n) + "/s"
}

func bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%c", float64(n)/float64(div), "KMGTPE"[exp])
}

// sparkline draws the values as block characters, scaled to their
// maximum; zeros are the lowest block.
func sparkline(vals []int64, width int) string {
	blocks := []rune("▁▂▃▄▅▆▇█")
	if len(vals) > width {
		vals = vals[len(vals)-width:]
	}
	var max int64
	for _, v := range vals {
		max = maxOf(max, v)
	}
	out := make([]rune, 0, width)
	for range width - len(vals) {
		out = append(out, ' ')
	}
	for _, v := range vals {
		i := 0
		if max > 0 && v > 0 {
			i = 1 + int(v*int64(len(blocks)-2)/max)
		}
		out = append(out, blocks[i])
	}
	return string(out)
}

func maxOf(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
