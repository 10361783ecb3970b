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
	"sync"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/audit"
	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/httplog"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/relaypod"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
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
	// Waiting, if set, hears why Open waits for a running pod, when it
	// begins to (target.Resolver's Waiting).
	Waiting       func(why string)
	ReconnectWait time.Duration
	MaxRetries    int
	NoReconnect   bool
	Balance       bool
	IdleTimeout   time.Duration
	DataPath      tunnel.DataPath
	PingInterval  time.Duration // kpf's data path pings tunnels this often (0: the default)
	// UDPRelay is where the relay of /udp ports runs (pod, ephemeral);
	// RelayImage runs it; UDPIdleTimeout ends a peer's flow.
	UDPRelay       string
	RelayImage     string
	UDPIdleTimeout time.Duration
}

// Deps are the session's connections to the world.
type Deps struct {
	// Cluster is the connection to the API server: clients, shared pod
	// watches, liveness probe and tunnels. Open takes a hold of its own,
	// given back when the session ends; the caller keeps and releases its
	// own.
	Cluster *cluster.Conn
	Objects target.Getter
	// Audit, if set, gets a record of every connection, and of the
	// forward starting, stopping and switching pods, as Who.
	Audit *audit.Log
	Who   audit.Who
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
	// StageDestination: the relay pod of a host/ or ip/ target.
	StageDestination Stage = "destination"
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
	unbound   []*forward.UnboundError // addresses of localhost a port listens without
	udp       *udpSide                // nil without /udp ports
	follower  *follow.Follower
	spec      Spec
	deps      Deps
	stats     *stats
	ctx       context.Context // the session's lifetime
	cancel    context.CancelFunc
	done      <-chan struct{} // closed when the session has ended
	audit     audit.Forward   // the forward, as its audit records name it
	rates     rates
	probes    probes         // health checks' connections
	dest      *destRelay     // a host/ or ip/ target's relay pod
	relayConn net.Conn       // the keep-alive stream to it, until Serve takes it
	streams   sync.WaitGroup // connections of the session's own (s.stream)
}

// Open resolves the target, opens the first tunnel and listens. The
// session lives until ctx ends or Serve returns.
func Open(ctx context.Context, spec Spec, deps Deps) (*Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	deps.Cluster = deps.Cluster.Acquire()
	context.AfterFunc(ctx, deps.Cluster.Release)
	var t *target.Target
	var dest *destRelay
	// host/ and ip/ are no objects: never asked of the API (ip is also
	// the IPAddress resource's short name), but carried by a relay pod
	// that becomes the target's pod.
	d, isDest, err := target.ParseDestination(spec.Target)
	switch {
	case err != nil:
		cancel()
		return nil, &StageError{Stage: StageResolve, Err: err}
	case isDest:
		if t, dest, err = startDestination(ctx, spec, deps, d); err != nil {
			cancel()
			return nil, err
		}
	default:
		r := &target.Resolver{Objects: deps.Objects, Pods: deps.Cluster.Client().CoreV1(), PodRunningTimeout: spec.PodRunningTimeout, Waiting: spec.Waiting}
		if t, err = r.Resolve(ctx, spec.Namespace, spec.Target, spec.Ports); err != nil {
			cancel()
			return nil, &StageError{Stage: StageResolve, Err: err}
		}
	}
	s := &Session{dest: dest}
	opened := false
	if dest != nil {
		dest.s = s
		defer func() {
			if !opened { // the relay pods go with a failed Open
				dest.close(deps.Cluster.Client(), deps.Log)
			}
		}()
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
		c, err := deps.Cluster.Dial(ctx, t.Namespace, pod, tr, spec.DataPath, tunnel.PingEvery(spec.PingInterval), tunnel.WithLog(deps.Log))
		st.dialled(time.Since(start), c, err)
		if err == nil && tr == tunnel.Auto {
			deps.Log.Debug("tunnel open", "pod", c.Pod, "transport", c.Transport)
		}
		return c, err
	}
	fo := follow.Options{
		Namespace:     t.Namespace,
		Ref:           t.Ref,
		Client:        deps.Cluster.Client(),
		Dial:          dial,
		Balance:       spec.Balance,
		ReconnectWait: spec.ReconnectWait,
		MaxRetries:    spec.MaxRetries,
		NoReconnect:   spec.NoReconnect,
		Initial:       t.Pod,
		Log:           deps.Log,
		Watches:       deps.Cluster.Watches(),
		Liveness:      deps.Cluster.Liveness(),
	}
	id := audit.Forward{Who: deps.Who, Namespace: t.Namespace, Name: spec.Name, Target: t.Ref}
	if deps.Audit != nil {
		fo.OnSwitch = func(from, to, reason string) {
			deps.Audit.Event(audit.Event{Forward: id, Event: "switch", From: from, Pod: to, Reason: reason})
		}
	}
	if dest != nil {
		fo.Selector, fo.Accept = relaypod.Selector(dest.spec.Forward), dest.ours
	} else if _, isPod := t.Object.(*corev1.Pod); isPod {
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
	// Set once, before any goroutine of the session's reads them.
	s.Target, s.follower, s.spec, s.deps = t, f, spec, deps
	if dest != nil {
		// The relay answers (in this kpf's version) before kpf says it
		// forwards.
		if s.relayConn, err = dest.check(ctx, relayAnswerTimeout); err != nil {
			cancel()
			s.streams.Wait()
			return nil, &StageError{Stage: StageDestination, Target: t, Err: err}
		}
	}
	tcp, udp := splitPorts(t.Ports)
	var ls []*forward.Listener
	var unbound []*forward.UnboundError
	if len(tcp) > 0 {
		ls, unbound, err = forward.Listen(spec.Addresses, tcp, deps.Out, deps.ErrOut)
		if err != nil && spec.AutoAddress && errors.Is(err, syscall.EADDRNOTAVAIL) {
			ls, unbound, err = listenInstead(spec, tcp, deps)
		}
		if err != nil {
			cancel()
			s.streams.Wait()
			return nil, &StageError{Stage: StageListen, Target: t, Err: err}
		}
	}
	s.Listeners, s.unbound, s.ctx, s.cancel, s.done, s.audit, s.stats = ls, unbound, ctx, cancel, ctx.Done(), id, st
	in, out := s.bytes()
	s.rates.rate(time.Now(), in, out)
	if len(udp) > 0 {
		if s.udp, err = openUDP(ctx, s, udp, dial); err != nil {
			for _, l := range ls {
				l.Close()
			}
			cancel()
			s.streams.Wait()
			return nil, &StageError{Stage: StageRelay, Target: t, Err: err}
		}
	}
	if deps.Audit != nil {
		deps.Audit.Event(audit.Event{Forward: id, Event: "start", Pod: t.Pod.Name, Listen: s.Addrs()})
	}
	opened = true
	return s, nil
}

// Serve forwards connections until ctx ends (nil), the follower gives up,
// or the idle timeout runs out.
func (s *Session) Serve(ctx context.Context) error {
	defer s.endProbes() // after cancel: the closing tunnels end them
	defer s.streams.Wait()
	defer s.cancel()
	defer s.deps.HTTPLog.Close()
	opts := forward.Options{IdleTimeout: s.spec.IdleTimeout, Counters: s.stats.counters, Ended: s.ended}
	if l := s.deps.HTTPLog; l != nil {
		opts.Tap = func(peer string, pod func() string) forward.ConnTap { return l.Conn(peer, pod) }
	}
	if s.udp != nil {
		go s.udp.serve(ctx)
		defer s.udp.close()
	}
	var backend forward.Backend = s.follower
	if s.dest != nil {
		backend = relayPorts{Follower: s.follower, r: s.dest}
		kctx, stop := context.WithCancel(s.ctx)
		kept := make(chan struct{})
		go func() {
			defer close(kept)
			s.dest.keep(kctx, s.relayConn)
		}()
		defer s.dest.close(s.deps.Cluster.Client(), s.deps.Log)
		defer func() { stop(); <-kept }()
	}
	err := forward.Serve(ctx, s.Listeners, backend, s.deps.Out, s.deps.Log, opts)
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

// rates are a session's byte rates, measured when someone asks (status
// polls every forward several times a second), not by a timer of every
// forward: a daemon of 200 idle forwards must not wake 200 times a
// second for them.
type rates struct {
	mu      sync.Mutex
	at      time.Time // of the last sample
	in, out int64     // the totals then
	rateIn  int64
	rateOut int64
}

// rate takes the totals in and out at now, and returns the bytes per
// second since the last sample that is at least a second old (over a
// longer time when no one asked for a while).
func (r *rates) rate(now time.Time, in, out int64) (rateIn, rateOut int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at.IsZero() {
		r.at, r.in, r.out = now, in, out
		return 0, 0
	}
	if d := now.Sub(r.at); d >= time.Second {
		secs := d.Seconds()
		r.rateIn, r.rateOut = int64(float64(in-r.in)/secs), int64(float64(out-r.out)/secs)
		r.at, r.in, r.out = now, in, out
	}
	return r.rateIn, r.rateOut
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
	RateIn     int64 // bytes per second to the client, over the last second or more
	RateOut    int64 // and to the pod
	Reconnects int64
	Switches   int64
	LastError  string
	UDP        UDPStatus // the /udp ports, summed
	// NotListening: the addresses of localhost a port listens without,
	// and why (another process holds [::1]:8080, say).
	NotListening []string
}

// Status reports the session's state and counters.
func (s *Session) Status() Status {
	pod, state := s.follower.State()
	st := Status{
		Pod:        pod,
		State:      state,
		Reconnects: s.follower.Reconnects(),
		Switches:   s.follower.Switches(),
	}
	for _, c := range s.stats.ports {
		st.Open += c.Open.Load()
		st.Total += c.Total.Load()
		st.Failed += c.Failed.Load()
	}
	st.BytesIn, st.BytesOut = s.bytes()
	select {
	case <-s.done:
	default:
		st.RateIn, st.RateOut = s.rates.rate(time.Now(), st.BytesIn, st.BytesOut)
	}
	if s.udp != nil {
		st.UDP = s.udp.status()
		st.BytesIn += st.UDP.BytesIn
		st.BytesOut += st.UDP.BytesOut
	}
	s.stats.mu.Lock()
	st.LastError = s.stats.lastErr
	s.stats.mu.Unlock()
	for _, u := range s.unbound {
		st.NotListening = append(st.NotListening, u.Error())
	}
	return st
}

// Changed is closed at the next change of the session's state or pod
// (see follow.Follower.Changed): watch it instead of polling Status.
func (s *Session) Changed() <-chan struct{} { return s.follower.Changed() }

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

// ErrUnhealthy is what every failed health check is (errors.Is).
var ErrUnhealthy = errors.New("unhealthy")

// CheckError is a failed health check. Its text is the reason alone:
// whoever shows it says "unhealthy" already (the status's health, the
// events, --wait's summary), which read "unhealthy: unhealthy: ..." when
// the reason was prefixed with it too.
type CheckError struct{ Err error }

func (e *CheckError) Error() string { return e.Err.Error() }
func (e *CheckError) Unwrap() error { return e.Err }

// Is makes every CheckError ErrUnhealthy.
func (e *CheckError) Is(target error) bool { return target == ErrUnhealthy }

// unhealthy is a failed check, its reason formatted as by fmt.Errorf.
func unhealthy(format string, a ...any) error {
	return &CheckError{Err: fmt.Errorf(format, a...)}
}

// CheckTCP checks the forward's first port on the pod it uses now, as a
// kubelet's tcpSocket probe checks a port: healthy when the pod's server
// accepted the connection.
//
// Port-forward tells of failure only: the kubelet dials the port inside the
// pod and reports a failed dial (refused, reset, timed out) on the
// connection's error stream; a dial that succeeded says nothing. So the
// check sends nothing and closes its side at once, and the connection's
// end is the verdict: an error from the kubelet fails the check; an end
// without one passes it (the runtime dialled, then closed the connection
// when kpf's side was done: containerd and CRI-O do within a second; where
// the runtime waits for the pod, the server closes it on end of input).
// Bytes from the pod pass it too (the server accepted and spoke first).
// Neither within timeout fails it. The connection goes to the current pod
// only, never replayed on another (what a client's connection gets), so
// that a refusal is that pod's, and heard at once.
func (s *Session) CheckTCP(ctx context.Context, timeout time.Duration) error {
	port, err := s.checkPort()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	local := &probeConn{answered: make(chan struct{})}
	p, err := s.startProbe(ctx, local, port, deadline)
	if err != nil {
		return err
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return unhealthy("%w", p.err)
		}
		return nil
	case <-local.answered:
		return nil
	case <-ctx.Done():
		return unhealthy("%w", ctx.Err())
	case <-t.C:
	}
	return unhealthy("no verdict on port %d within %s: the kubelet reported no error, and the pod neither answered nor closed the connection", port, timeout)
}

// CheckHTTP GETs path on the forward's first port of the pod it uses now
// (no replay on another pod, as CheckTCP) and wants a status in [lo, hi].
func (s *Session) CheckHTTP(ctx context.Context, path string, lo, hi int, timeout time.Duration) error {
	port, err := s.checkPort()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	local, remote := net.Pipe()
	defer local.Close()
	p, err := s.startProbe(ctx, remote, port, deadline)
	if err != nil {
		remote.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { local.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	local.SetDeadline(deadline)
	var proto string
	var code int
	_, err = fmt.Fprintf(local, "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kpf-health\r\nConnection: close\r\n\r\n", path)
	if err == nil {
		_, err = fmt.Fscanf(local, "%s %d", &proto, &code)
	}
	if err != nil {
		// The kubelet's verdict, if the connection ended, says why better:
		// it follows the end of the data soon.
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-p.done:
			if p.err != nil {
				return unhealthy("GET %s: %w", path, p.err)
			}
		case <-ctx.Done():
		case <-t.C:
		}
		return unhealthy("GET %s: no HTTP answer: %w", path, err)
	}
	if code < lo || code > hi {
		return unhealthy("GET %s: status %d, want %d-%d", path, code, lo, hi)
	}
	return nil
}

// podPort is the target pod's port for the forward's remote port: the
// relay's listener for it with a host/ or ip/ target.
func (s *Session) podPort(remote uint16) uint16 {
	if s.dest != nil {
		return s.dest.port(remote)
	}
	return remote
}

func (s *Session) checkPort() (uint16, error) {
	if len(s.Listeners) == 0 {
		return 0, unhealthy("a health check goes to the first TCP port, and this forward has /udp ports only")
	}
	return s.Listeners[0].Port.Remote, nil
}

// probe is a health check's connection. It lasts until the pod's side
// ends it or the check's deadline passes (its streams are reset then); a
// session has one at a time, and Serve joins the last one.
type probe struct {
	done chan struct{}
	err  error // the kubelet's verdict, once done
}

// probes are a session's health check connections.
type probes struct {
	mu    sync.Mutex
	last  *probe
	ended bool // Serve returned: no more
	wg    sync.WaitGroup
}

// errCheckBusy: the last check's connection is still open.
var errCheckBusy = errors.New("the last check's connection is still open: the pod neither answered nor closed it")

// startProbe carries local to port of the current pod, once the last
// check's connection is over (waiting for it until deadline).
func (s *Session) startProbe(ctx context.Context, local net.Conn, port uint16, deadline time.Time) (*probe, error) {
	s.probes.mu.Lock()
	last := s.probes.last
	s.probes.mu.Unlock()
	if last != nil {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-last.done:
		case <-ctx.Done():
			return nil, unhealthy("%w", ctx.Err())
		case <-t.C:
			return nil, unhealthy("port %d: %w", port, errCheckBusy)
		}
	}
	s.probes.mu.Lock()
	defer s.probes.mu.Unlock()
	if s.probes.ended {
		return nil, unhealthy("the forward has stopped")
	}
	p := &probe{done: make(chan struct{})}
	s.probes.last = p
	pctx, cancel := context.WithDeadline(s.ctx, deadline)
	s.probes.wg.Add(1)
	go func() {
		defer s.probes.wg.Done()
		defer cancel()
		_, p.err = s.follower.Check(pctx, local, s.podPort(port))
		if p.err != nil && s.dest != nil {
			// The relay's port and pod say little: the destination is
			// what was checked.
			p.err = fmt.Errorf("%s port %d, through the relay pod: %w", s.Target.Ref, port, p.err)
		}
		local.Close()
		close(p.done)
	}()
	return p, nil
}

// endProbes waits for the last check's connection; the session's tunnels
// are closing, which ends it.
func (s *Session) endProbes() {
	s.probes.mu.Lock()
	s.probes.ended = true
	s.probes.mu.Unlock()
	s.probes.wg.Wait()
}

// probeConn is a tcp check's side of its connection: it has nothing to
// send (so the pod hears end of input at once) and notes whether the pod
// sent anything.
type probeConn struct {
	answered chan struct{} // closed at the pod's first byte
	once     sync.Once
}

func (c *probeConn) Read([]byte) (int, error) { return 0, io.EOF }
func (c *probeConn) Write(p []byte) (int, error) {
	if len(p) > 0 {
		c.once.Do(func() { close(c.answered) })
	}
	return len(p), nil
}
func (c *probeConn) Close() error                     { return nil }
func (c *probeConn) LocalAddr() net.Addr              { return probeAddr{} }
func (c *probeConn) RemoteAddr() net.Addr             { return probeAddr{} }
func (c *probeConn) SetDeadline(time.Time) error      { return nil }
func (c *probeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *probeConn) SetWriteDeadline(time.Time) error { return nil }

type probeAddr struct{}

func (probeAddr) Network() string { return "health-check" }
func (probeAddr) String() string  { return "health-check" }

// listenInstead listens on 127.0.0.1 with free ports when the forward's
// own loopback address is not the system's (macOS has only 127.0.0.1 until
// an alias is added), and says how to add it.
func listenInstead(spec Spec, ports []portspec.Resolved, deps Deps) ([]*forward.Listener, []*forward.UnboundError, error) {
	own := spec.Addresses[0].IP
	fmt.Fprintf(deps.ErrOut, "kpf: %s: %s is not an address of this machine, so it listens on 127.0.0.1 with a free port instead; to give the forward its own address and real port, run once (until the next reboot): sudo ifconfig lo0 alias %s up\n", spec.Name, own, own)
	free := make([]portspec.Resolved, len(ports))
	for i, p := range ports {
		free[i] = portspec.Resolved{Remote: p.Remote}
	}
	lo, err := portspec.ParseAddresses([]string{"127.0.0.1"})
	if err != nil {
		return nil, nil, err
	}
	return forward.Listen(lo, free, deps.Out, deps.ErrOut)
}
