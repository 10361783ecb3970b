package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/streaming/pkg/httpstream"
)

// ports checks each port: it maps to a container port, a container
// declares it, and a test connection through a tunnel is not refused.
//
// conn is the tunnel the forward would use (dialErr why there is none).
func (d *Doctor) ports(ctx context.Context, fw config.Forward, t *target.Target, conn *tunnel.Conn, dialErr error) []Check {
	var out []Check
	for _, p := range fw.Ports {
		c := Check{Step: "port"}
		one := *t
		if err := one.SetPod(t.Pod, []portspec.Port{p}); err != nil {
			c.Status, c.Summary = Fail, fmt.Sprintf("%s: %v", p, err)
			c.Fix = "use one of the ports " + t.Ref + " has: " + portsOf(t)
			out = append(out, c)
			continue
		}
		r := one.Ports[0]
		c.Summary = fmt.Sprintf("%s → port %d of pod %s", p, r.Remote, t.Pod.Name)
		if svc, ok := t.Object.(*corev1.Service); ok {
			if sp := servicePort(svc, p.Remote); sp != nil {
				c.Details = append(c.Details, fmt.Sprintf("service port %d%s → targetPort %s", sp.Port, named(sp.Name), sp.TargetPort.String()))
			}
		}
		declared := declaredBy(t.Pod, r.Remote)
		c.Status = OK
		undeclared := ""
		if declared == "" {
			c.Status = Warn
			undeclared = fmt.Sprintf("no container declares port %d (declared: %s); kpf forwards to it anyway", r.Remote, portsOf(&target.Target{Pod: t.Pod}))
		} else {
			c.Details = append(c.Details, "declared by container "+declared)
		}
		switch {
		case t.Pod.Status.Phase != corev1.PodRunning:
			c.Details = append(c.Details, "no test connection: the pod is not running")
		case dialErr != nil:
			c.Details = append(c.Details, "no test connection: no tunnel ("+dialErr.Error()+")")
		default:
			err := d.connect(ctx, conn, r.Remote)
			var re *tunnel.RemoteError
			switch {
			case errors.As(err, &re) && strings.Contains(re.Message, "refused"):
				c.Status = Fail
				c.Summary = fmt.Sprintf("%s: nothing listens on port %d in pod %s", p, r.Remote, t.Pod.Name)
				if others := portsOf(&target.Target{Pod: t.Pod}); others != "none" {
					c.Summary += "; its containers declare " + others
				}
				c.Fix = "start the server, or forward to the port it listens on; a server that listens only on the pod's IP is refused too, since port-forward connects to localhost inside the pod: make it listen on 0.0.0.0 (or localhost as well)"
			case err != nil:
				c.Status = Fail
				c.Summary = fmt.Sprintf("%s: the test connection failed: %v", p, err)
			default:
				c.Details = append(c.Details, "a test connection through the tunnel was accepted")
			}
		}
		if undeclared != "" && c.Status != Fail {
			c.Details = append(c.Details, undeclared) // a failure's summary names the declared ports
		}
		out = append(out, c)
	}
	return out
}

// connect opens one connection to port through conn and closes it: nil if
// the pod accepted it (or did not refuse it within ConnectWait).
func (d *Doctor) connect(ctx context.Context, conn *tunnel.Conn, port uint16) error {
	local, remote := net.Pipe()
	defer local.Close()
	res := make(chan error, 1)
	go func() {
		_, err := conn.Forward(remote, port, nil)
		remote.Close()
		res <- err
	}()
	select {
	case err := <-res:
		return err
	case <-time.After(d.ConnectWait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func servicePort(svc *corev1.Service, remote string) *corev1.ServicePort {
	for i, sp := range svc.Spec.Ports {
		if sp.Name == remote || strconv.Itoa(int(sp.Port)) == remote {
			return &svc.Spec.Ports[i]
		}
	}
	return nil
}

func named(name string) string {
	if name == "" {
		return ""
	}
	return " (" + name + ")"
}

// declaredBy names the container that declares TCP port n.
func declaredBy(p *corev1.Pod, n uint16) string {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.ContainerPort == int32(n) && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return c.Name
			}
		}
	}
	return ""
}

// portsOf lists the ports a target declares: a service's ports, or its
// pod's container ports.
func portsOf(t *target.Target) string {
	var out []string
	if svc, ok := t.Object.(*corev1.Service); ok {
		for _, sp := range svc.Spec.Ports {
			out = append(out, fmt.Sprintf("%d%s/%s", sp.Port, named(sp.Name), sp.Protocol))
		}
	} else if t.Pod != nil {
		for _, c := range t.Pod.Spec.Containers {
			for _, cp := range c.Ports {
				proto := cp.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				out = append(out, fmt.Sprintf("%d%s/%s in %s", cp.ContainerPort, named(cp.Name), proto, c.Name))
			}
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// tunnels are a test tunnel per transport to the forward's pod, dialled
// once: the port tests use the one the forward would, the transports step
// reports both.
type tunnels struct {
	ws, spdy       *tunnel.Conn
	wsErr, spdyErr error // explained; upgrade refusals as they are
	dialled        bool  // the pod runs, so both were tried
}

// dialBoth opens a tunnel with each transport, each within a step's time.
func (d *Doctor) dialBoth(ctx context.Context, s spec.Settings, t *target.Target) tunnels {
	var tn tunnels
	if t.Pod.Status.Phase != corev1.PodRunning {
		return tn
	}
	try := func(tr tunnel.Transport) (*tunnel.Conn, error) {
		ctx, cancel := d.step(ctx)
		defer cancel()
		conn, err := tunnel.Dial(ctx, tunnel.APIServer{Config: d.Config}, t.Namespace, t.Pod.Name, tr, s.DataPath)
		if err != nil && !tunnel.IsUpgradeFailure(err) {
			return nil, errors.New(d.explain(ctx, err))
		}
		return conn, err
	}
	tn.ws, tn.wsErr = try(tunnel.WebSocket)
	tn.spdy, tn.spdyErr = try(tunnel.SPDY)
	tn.dialled = true
	return tn
}

// pick is the tunnel transport tr would use: auto takes WebSocket, and
// SPDY when the WebSocket upgrade is refused, as tunnel.Dial does.
func (tn tunnels) pick(tr tunnel.Transport) (*tunnel.Conn, error) {
	switch {
	case !tn.dialled:
		return nil, errors.New("the pod is not running")
	case tr == tunnel.SPDY:
		return tn.spdy, tn.spdyErr
	case tr == tunnel.Auto && tn.wsErr != nil && (tunnel.IsUpgradeFailure(tn.wsErr) || httpstream.IsHTTPSProxyError(tn.wsErr)):
		return tn.spdy, tn.spdyErr
	}
	return tn.ws, tn.wsErr
}

func (tn tunnels) close() {
	for _, c := range []*tunnel.Conn{tn.ws, tn.spdy} {
		if c != nil {
			c.Close()
		}
	}
}

// transports says which transports open a tunnel and which one auto
// takes: WebSocket, or SPDY when the WebSocket upgrade is refused.
func (d *Doctor) transports(s spec.Settings, tn tunnels) Check {
	c := Check{Step: "transports"}
	if !tn.dialled {
		c.Status, c.Summary = Skip, "skipped: the pod is not running"
		return c
	}
	wsErr, spdyErr := tn.wsErr, tn.spdyErr
	say := func(name string, err error) string {
		if err != nil {
			return name + " ✗ (" + err.Error() + ")"
		}
		return name + " ✓"
	}
	auto := "WebSocket"
	switch {
	case wsErr == nil:
	case spdyErr == nil && (tunnel.IsUpgradeFailure(wsErr)):
		auto = "SPDY"
	default:
		auto = ""
	}
	c.Summary = say("WebSocket", wsErr) + ", " + say("SPDY", spdyErr)
	uses := map[tunnel.Transport]error{tunnel.WebSocket: wsErr, tunnel.SPDY: spdyErr}
	switch {
	case s.Transport == tunnel.Auto && auto == "":
		c.Status, c.Fix = Fail, "no transport opens a tunnel: see the errors, and the rbac step"
	case s.Transport == tunnel.Auto:
		c.Status, c.Summary = OK, c.Summary+"; auto uses "+auto
		if wsErr != nil || spdyErr != nil {
			c.Status = Warn
		}
	case uses[s.Transport] != nil:
		c.Status, c.Fix = Fail, fmt.Sprintf("--transport %s cannot open a tunnel: try the other one, or auto", s.Transport)
	default:
		c.Status = OK
		c.Summary += fmt.Sprintf("; --transport %s", s.Transport)
	}
	return c
}
