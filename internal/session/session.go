// Package session is one forward from end to end: resolve the target, follow
// its pods, open the first tunnel, listen, and serve connections, with the
// counters that status shows. kpf forward runs one session; kpf up runs one
// per forward of the file.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/audit"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/httplog"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
)

// Spec says what to forward and how.
type Spec struct {
	Name      string // in a kpf.yaml, for the audit log
	Namespace string
	Target    string // TYPE/NAME
	Ports     []portspec.Port
	Addresses []portspec.Address
	// AutoAddress: Addresses is the forward's own loopback address
	// (address: auto); where the system lacks it, 127.0.0.1 with free
	// ports stands in.
	AutoAddress       bool
	Transport         tunnel.Transport
	PodRunningTimeout time.Duration
	ReconnectWait     time.Duration
	MaxRetries        int
	NoReconnect       bool
	Balance           bool
	IdleTimeout       time.Duration
	DataPath          tunnel.DataPath
	PingInterval      time.Duration // kpf's data path pings tunnels this often (0: the default)
	// UDPRelay is where the relay of /udp ports runs (pod, ephemeral);
	// RelayImage runs it; UDPIdleTimeout ends a peer's flow.
	UDPRelay       string
	RelayImage     string
	UDPIdleTimeout time.Duration
}

// Deps are the session's connections to the world.
type Deps struct {
	Config  *rest.Config
	Client  kube.Interface
	Objects target.Getter
	// Audit, if set, gets a record of every connection, and of the
	// forward starting, stopping and switching pods, as Who.
	Audit *audit.Log
	Who   audit.Who
	// Watches, if set, are the cluster's shared pod watches (one per
	// namespace for all its forwards).
	Watches *follow.Watches
	// HTTPLog, if set, gets a line per HTTP request of the connections;
	// Serve closes it when it returns.
	HTTPLog *httplog.Log
	Out     io.Writer // "Forwarding from", "Handling connection for"
	ErrOut  io.Writer // bind warnings
	Log     *slog.Logger
}

// Stage says where Open failed, so the caller can explain the error.
type Stage string

const (
	StageResolve Stage = "resolve"
	StageDial    Stage = "dial"
	StageListen  Stage = "listen"
	StageRelay   Stage = "relay" // the UDP relay of /udp ports
)

// StageError is an error of one stage of Open.
type StageError struct {
	Stage  Stage
	Target *target.Target // set from StageDial on
	Err    error
}

func (e *StageError) Error() string { return e.Err.Error() }
func (e *StageError) Unwrap() error { return e.Err }

// Session is an open forward.
type Session struct {
	Target    *target.Target
	Listeners []*forward.Listener
	udp       *udpSide // nil without /udp ports
	follower  *follow.Follower
	spec      Spec
	deps      Deps
	stats     *stats
	cancel    context.CancelFunc
	audit     audit.Forward // the forward, as its audit records name it

	// Bytes per second to the client and to the pod over the last second.
	rateIn, rateOut atomic.Int64
}

// Open resolves the target, opens the first tunnel and listens. The
// session lives until ctx ends or Serve returns.
func Open(ctx context.Context, spec Spec, deps Deps) (*Session, error) {
	r := &target.Resolver{Objects: deps.Objects, Pods: deps.Client.CoreV1(), PodRunningTimeout: spec.PodRunningTimeout}
	t, err := r.Resolve(ctx, spec.Namespace, spec.Target, spec.Ports)
	if err != nil {
		return nil, &StageError{Stage: StageResolve, Err: err}
	}
	deps.Log.Debug("target resolved", "target", t.Ref, "pod", t.Pod.Name, "namespace", t.Namespace)
	// The first tunnel settles the transport (auto may fall back to
	// SPDY); every later one is dialled the same way.
	st := newStats(spec.Transport)
	for _, p := range t.Ports {
		st.ports[p.Remote] = &forward.Counters{}
	}
	dial := func(ctx context.Context, pod string) (*tunnel.Conn, error) {
		tr := st.inUse()
		start := time.Now()
		c, err := tunnel.Dial(ctx, deps.Config, t.Namespace, pod, tr, spec.DataPath, tunnel.PingEvery(spec.PingInterval), tunnel.WithLog(deps.Log))
		st.dialled(time.Since(start), c, err)
		if err == nil && tr == tunnel.Auto {
			deps.Log.Debug("tunnel open", "pod", c.Pod, "transport", c.Transport)
		}
		return c, err
	}
	ctx, cancel := context.WithCancel(ctx)
	fo := follow.Options{
		Namespace:     t.Namespace,
		Ref:           t.Ref,
		Client:        deps.Client,
		Dial:          dial,
		Balance:       spec.Balance,
		ReconnectWait: spec.ReconnectWait,
		MaxRetries:    spec.MaxRetries,
		NoReconnect:   spec.NoReconnect,
		Initial:       t.Pod,
		Log:           deps.Log,
		Watches:       deps.Watches,
	}
	id := audit.Forward{Who: deps.Who, Namespace: t.Namespace, Name: spec.Name, Target: t.Ref}
	if deps.Audit != nil {
		fo.OnSwitch = func(from, to, reason string) {
			deps.Audit.Event(audit.Event{Forward: id, Event: "switch", From: from, Pod: to, Reason: reason})
		}
	}
	if _, isPod := t.Object.(*corev1.Pod); isPod {
		fo.PodName = t.Pod.Name
	} else if fo.Selector, err = target.Selector(t.Object); err != nil {
		cancel()
		return nil, &StageError{Stage: StageResolve, Err: err}
	}
	f, err := follow.New(ctx, fo)
	if err != nil {
		cancel()
		return nil, &StageError{Stage: StageDial, Target: t, Err: err}
	}
	if err := f.Prime(ctx); err != nil {
		cancel()
		return nil, &StageError{Stage: StageDial, Target: t, Err: err}
	}
	tcp, udp := splitPorts(t.Ports)
	var ls []*forward.Listener
	if len(tcp) > 0 {
		ls, err = forward.Listen(spec.Addresses, tcp, deps.Out, deps.ErrOut)
		if err != nil && spec.AutoAddress && errors.Is(err, syscall.EADDRNOTAVAIL) {
			ls, err = listenInstead(spec, tcp, deps)
		}
		if err != nil {
			cancel()
			return nil, &StageError{Stage: StageListen, Target: t, Err: err}
		}
	}
	s := &Session{Target: t, Listeners: ls, follower: f, spec: spec, deps: deps, cancel: cancel, audit: id, stats: st}
	if len(udp) > 0 {
		if s.udp, err = openUDP(ctx, s, udp, dial); err != nil {
			for _, l := range ls {
				l.Close()
			}
			cancel()
			return nil, &StageError{Stage: StageRelay, Target: t, Err: err}
		}
	}
	if deps.Audit != nil {
		deps.Audit.Event(audit.Event{Forward: id, Event: "start", Pod: t.Pod.Name, Listen: s.Addrs()})
	}
	go follow.WatchAPIServer(ctx, deps.Client.CoreV1().RESTClient(), f, 5*time.Second, 15*time.Second)
	return s, nil
}

// Serve forwards connections until ctx ends (nil), the follower gives up,
// or the idle timeout runs out.
func (s *Session) Serve(ctx context.Context) error {
	defer s.cancel()
	go s.measureRates(ctx)
	defer s.deps.HTTPLog.Close()
	opts := forward.Options{IdleTimeout: s.spec.IdleTimeout, Counters: s.stats.counters, Ended: s.ended}
	if l := s.deps.HTTPLog; l != nil {
		opts.Tap = func(peer string, pod func() string) forward.ConnTap { return l.Conn(peer, pod) }
	}
	if s.udp != nil {
		go s.udp.serve(ctx)
		defer s.udp.close()
	}
	err := forward.Serve(ctx, s.Listeners, s.follower, s.deps.Out, s.deps.Log, opts)
	if s.deps.Audit != nil {
		e := audit.Event{Forward: s.audit, Event: "stop"}
		e.Pod, _ = s.follower.State()
		if err != nil {
			e.Error = err.Error()
		}
		s.deps.Audit.Event(e)
	}
	return err
}

// measureRates updates the byte rates every second until ctx ends.
func (s *Session) measureRates(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastIn, lastOut := s.bytes()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			s.rateIn.Store(0)
			s.rateOut.Store(0)
			return
		case now := <-t.C:
			in, out := s.bytes()
			secs := now.Sub(last).Seconds()
			s.rateIn.Store(int64(float64(in-lastIn) / secs))
			s.rateOut.Store(int64(float64(out-lastOut) / secs))
			lastIn, lastOut, last = in, out, now
		}
	}
}

// ended counts a connection's end and writes its audit record.
func (s *Session) ended(e forward.Ended) {
	s.stats.ended(e)
	if s.deps.Audit == nil {
		return
	}
	c := audit.Connection{
		Forward: s.audit, Pod: e.Stats.Pod, RemotePort: e.Remote, Local: e.Local, Peer: e.Peer,
		Start: e.Start.UTC().Format(time.RFC3339Nano), Seconds: time.Since(e.Start).Seconds(),
		BytesIn: e.Stats.In, BytesOut: e.Stats.Out, Result: "ok",
	}
	if e.Err != nil {
		c.Result, c.Error = "error", e.Err.Error()
	}
	s.deps.Audit.Connection(c)
}

// Close stops the session's follower; Serve's listeners close when its
// context ends.
func (s *Session) Close() { s.cancel() }

// Status is a snapshot for kpf status and the live table.
type Status struct {
	Pod        string
	State      string // ready, waiting for pod, reconnecting, failed
	Open       int64
	Total      int64
	Failed     int64
	BytesIn    int64
	BytesOut   int64
	RateIn     int64 // bytes per second to the client, over the last second
	RateOut    int64 // and to the pod
	Reconnects int64
	Switches   int64
	LastError  string
	UDP        UDPStatus // the /udp ports, summed
}

// Status reports the session's state and counters.
func (s *Session) Status() Status {
	pod, state := s.follower.State()
	st := Status{
		Pod:        pod,
		State:      state,
		RateIn:     s.rateIn.Load(),
		RateOut:    s.rateOut.Load(),
		Reconnects: s.follower.Reconnects(),
		Switches:   s.follower.Switches(),
	}
	for _, c := range s.stats.ports {
		st.Open += c.Open.Load()
		st.Total += c.Total.Load()
		st.Failed += c.Failed.Load()
	}
	st.BytesIn, st.BytesOut = s.bytes()
	if s.udp != nil {
		st.UDP = s.udp.status()
		st.BytesIn += st.UDP.BytesIn
		st.BytesOut += st.UDP.BytesOut
	}
	s.stats.mu.Lock()
	st.LastError = s.stats.lastErr
	s.stats.mu.Unlock()
	return st
}

// bytes are the totals to the clients and to the pod, over every port.
func (s *Session) bytes() (in, out int64) {
	for _, c := range s.stats.ports {
		in += c.Bytes.In.Load()
		out += c.Bytes.Out.Load()
	}
	return in, out
}

// Addrs are the local addresses the session listens on (UDP ones with
// /udp).
func (s *Session) Addrs() []string {
	var out []string
	for _, l := range s.Listeners {
		out = append(out, l.Addr().String())
	}
	if s.udp != nil {
		for _, c := range s.udp.clients {
			out = append(out, c.Local.LocalAddr().String()+"/udp")
		}
	}
	return out
}

// ErrUnhealthy is wrapped by failed health checks.
var ErrUnhealthy = errors.New("unhealthy")

// CheckTCP opens a connection to the first port through the tunnel: it
// fails if the pod refuses it within timeout.
func (s *Session) CheckTCP(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	local, remote := net.Pipe()
	defer local.Close()
	res := make(chan error, 1)
	if len(s.Listeners) == 0 {
		return fmt.Errorf("%w: a health check goes to the first TCP port, and this forward has /udp ports only", ErrUnhealthy)
	}
	port := s.Listeners[0].Port.Remote
	go func() {
		_, err := s.follower.Forward(ctx, remote, port, nil)
		res <- err
	}()
	// The kubelet reports a refused port at once; a connection that is
	// still open after a moment was accepted.
	select {
	case err := <-res:
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnhealthy, err)
		}
		return nil // accepted and closed by the pod
	case <-time.After(min(timeout, 500*time.Millisecond)):
		return nil
	}
}

// CheckHTTP GETs path through the tunnel and wants a status in [lo, hi].
func (s *Session) CheckHTTP(ctx context.Context, path string, lo, hi int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	local, remote := net.Pipe()
	defer local.Close()
	if len(s.Listeners) == 0 {
		return fmt.Errorf("%w: a health check goes to the first TCP port, and this forward has /udp ports only", ErrUnhealthy)
	}
	port := s.Listeners[0].Port.Remote
	go s.follower.Forward(ctx, remote, port, nil)
	local.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(local, "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kpf-health\r\nConnection: close\r\n\r\n", path); err != nil {
		return fmt.Errorf("%w: %v", ErrUnhealthy, err)
	}
	var proto string
	var code int
	if _, err := fmt.Fscanf(local, "%s %d", &proto, &code); err != nil {
		return fmt.Errorf("%w: GET %s: no HTTP answer: %v", ErrUnhealthy, path, err)
	}
	if code < lo || code > hi {
		return fmt.Errorf("%w: GET %s: status %d, want %d-%d", ErrUnhealthy, path, code, lo, hi)
	}
	return nil
}

// listenInstead listens on 127.0.0.1 with free ports when the forward's
// own loopback address is not the system's (macOS has only 127.0.0.1 until
// an alias is added), and says how to add it.
func listenInstead(spec Spec, ports []portspec.Resolved, deps Deps) ([]*forward.Listener, error) {
	own := spec.Addresses[0].IP
	fmt.Fprintf(deps.ErrOut, "kpf: %s: %s is not an address of this machine, so it listens on 127.0.0.1 with a free port instead; to give the forward its own address and real port, run once (until the next reboot): sudo ifconfig lo0 alias %s up\n", spec.Name, own, own)
	free := make([]portspec.Resolved, len(ports))
	for i, p := range ports {
		free[i] = portspec.Resolved{Remote: p.Remote}
	}
	lo, err := portspec.ParseAddresses([]string{"127.0.0.1"})
	if err != nil {
		return nil, err
	}
	return forward.Listen(lo, free, deps.Out, deps.ErrOut)
}
