package session

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/relay"
	"github.com/kpf-dev/kpf/internal/relaypod"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
)

// relayReadyTimeout bounds the wait for the relay pod (scheduling, image
// pull, start).
const relayReadyTimeout = 2 * time.Minute

// relayAnswerTimeout bounds the wait, once the relay runs, for it to
// listen and answer a stream.
const relayAnswerTimeout = 30 * time.Second

// relayLostWait is how long a relay pod may be gone before another one
// takes its place.
const relayLostWait = 2 * time.Second

// udpSide is a session's /udp ports: a relay pod next to the target, a
// follower of that pod for the streams, and a relay client per port and
// local address, sending to the target pod's IP.
//
// A relay pod sends only to the destinations it was made for (its
// arguments, which cannot change): the target pod's IP at the /udp ports.
// When the forward follows another pod, a new relay pod is made for it,
// the clients move to it, and the old one is deleted. A destination set
// that kpf could widen later through the stream would let anyone who may
// port-forward to the relay pod send UDP anywhere from it.
//
// With --udp-relay ephemeral, the relay is instead a container added to
// the target pod (and to each pod the forward follows to), reached
// through the forward's own follower, sending to the pod's localhost
// ports; one that exited (an ephemeral container cannot be restarted) is
// replaced by a new one.
//
// The clients start in openUDP, and a port's "Forwarding from" line is
// printed only once the relay answered a stream of its client: it means
// datagrams reach the relay.
type udpSide struct {
	s       *Session
	dial    func(ctx context.Context, pod string) (*tunnel.Conn, error)
	clients []*relay.Client
	remotes []uint16 // each client's port in the target pod

	ephemeral *relaypod.Ephemeral // ephemeral mode
	// dest: a host/ or ip/ target, whose pod is the relay (the session's
	// destRelay makes and replaces it): streams go through the forward's
	// own follower, and there is no relay to manage here.
	dest bool

	ctx    context.Context // the clients' and the streams' lifetime
	cancel context.CancelFunc
	served chan struct{} // closed when serve returns

	mu sync.Mutex
	// Pod mode: the relay pod now in use, replaced when it goes away or
	// the forward follows another pod (see serve).
	relay *podRelay
	// Ephemeral mode: each pod's latest relay container.
	relays map[string]ephemeralRelay

	wg sync.WaitGroup // the clients and their streams
}

// ephemeralRelay is a relay container in a target pod, and the port it
// listens on there (its own: another kpf's relay may be in the pod too).
type ephemeralRelay struct {
	name string
	port int
}

// podRelay is a relay pod made for one target pod, and its follower.
type podRelay struct {
	pod      *corev1.Pod
	follower *follow.Follower
	stop     context.CancelFunc // ends the follower
	targetIP string             // the pod it sends to
}

// UDPStatus counts a session's datagrams.
type UDPStatus struct {
	Peers                     int
	DatagramsIn, DatagramsOut int64 // to the peers, to the pod
	BytesIn, BytesOut         int64
	Relay                     string // the relay pod
}

// splitPorts parts TCP ports from /udp ones.
func splitPorts(ports []portspec.Resolved) (tcp, udp []portspec.Resolved) {
	for _, p := range ports {
		if p.UDP {
			udp = append(udp, p)
		} else {
			tcp = append(tcp, p)
		}
	}
	return tcp, udp
}

// openUDP binds the /udp ports, starts the relay, and returns once the
// relay answered each port's client.
func openUDP(ctx context.Context, s *Session, ports []portspec.Resolved, dial func(ctx context.Context, pod string) (*tunnel.Conn, error)) (*udpSide, error) {
	conns, err := forward.ListenUDP(s.spec.Addresses, ports, s.deps.ErrOut)
	if err != nil {
		return nil, err
	}
	u := &udpSide{s: s, dial: dial, served: make(chan struct{})}
	for _, c := range conns {
		u.remotes = append(u.remotes, c.Remote)
	}
	u.ctx, u.cancel = context.WithCancel(ctx)
	t := s.Target
	var host string
	var relayDial func(context.Context) (net.Conn, error)
	if d := t.Destination; d != nil {
		host, u.dest = d.Host, true
		relayDial = func(ctx context.Context) (net.Conn, error) { return u.stream(ctx, s.follower, relaypod.Port), nil }
	} else if s.spec.UDPRelay == "ephemeral" {
		host = "127.0.0.1"
		u.relays = map[string]ephemeralRelay{}
		u.ephemeral = &relaypod.Ephemeral{Image: s.spec.RelayImage, Owner: relaypod.Me(), Allow: u.allow(host)}
		err = u.addRelay(ctx, t.Pod)
		relayDial = u.dialEphemeral
	} else {
		host = t.Pod.Status.PodIP
		var r *podRelay
		if r, err = u.startRelay(ctx, host); err == nil {
			u.relay = r
			relayDial = u.dialVia(r.follower)
		}
	}
	if err != nil {
		u.cancel()
		for _, c := range conns {
			c.Conn.Close()
		}
		return nil, err
	}
	ended := make(chan error, len(conns))
	// A port on 127.0.0.1 and ::1 has a client for each: their streams
	// go the same way and break together, and one line says so.
	gate := &relay.Gate{}
	for i, c := range conns {
		rc := &relay.Client{
			Local:       c.Conn,
			Target:      u.destinations(host)[i],
			IdleTimeout: s.spec.UDPIdleTimeout,
			Log:         s.deps.Log.With("udp", c.Conn.LocalAddr().String()),
			Dial:        relayDial,
			Gate:        gate,
		}
		u.clients = append(u.clients, rc)
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			err := rc.Serve(u.ctx)
			if err != nil && u.ctx.Err() == nil {
				u.s.deps.Log.Error("udp forwarding stopped", "local", rc.Local.LocalAddr().String(), "err", err)
			}
			ended <- err
		}()
	}
	if err := u.waitAnswered(ctx, ended); err != nil {
		close(u.served) // serve will not run
		u.close()
		return nil, err
	}
	for i, c := range conns {
		fmt.Fprintf(s.deps.Out, "Forwarding from %s -> %d/udp\n", c.Conn.LocalAddr(), u.remotes[i])
	}
	return u, nil
}

// destinations are the /udp ports at host, as the relay is allowed to
// send to them and the clients name them.
func (u *udpSide) destinations(host string) []string {
	out := make([]string, len(u.remotes))
	for i, port := range u.remotes {
		out[i] = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return out
}

// allow is what a relay for host may send to: its destinations, each
// once (a port bound on 127.0.0.1 and ::1 has two clients).
func (u *udpSide) allow(host string) []string {
	d := u.destinations(host)
	slices.Sort(d)
	return slices.Compact(d)
}

// waitAnswered waits until the relay answered a stream of every client
// (a relay that has just started may not listen yet: the clients dial
// again until it does).
func (u *udpSide) waitAnswered(ctx context.Context, ended <-chan error) error {
	timeout := time.NewTimer(relayAnswerTimeout)
	defer timeout.Stop()
	for _, c := range u.clients {
		select {
		case <-c.Ready():
		case err := <-ended:
			return fmt.Errorf("the UDP relay %s: %w", u.relayName(), err)
		case <-timeout.C:
			return fmt.Errorf("the UDP relay %s runs but did not answer within %s (its log: %s)", u.relayName(), relayAnswerTimeout, u.relayLogs())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// relayName names the relay for messages: a pod, or pod/container.
func (u *udpSide) relayName() string {
	if u.dest {
		pod, _ := u.s.follower.State()
		return pod
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ephemeral == nil {
		return u.relay.pod.Name
	}
	pod := u.s.Target.Pod.Name
	return pod + "/" + u.relays[pod].name
}

// relayLogs is the kubectl command that shows the relay's log.
func (u *udpSide) relayLogs() string {
	ns := u.s.Target.Namespace
	if u.dest {
		return fmt.Sprintf("kubectl logs -n %s %s", ns, u.relayName())
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ephemeral == nil {
		return fmt.Sprintf("kubectl logs -n %s %s", ns, u.relay.pod.Name)
	}
	pod := u.s.Target.Pod.Name
	return fmt.Sprintf("kubectl logs -n %s %s -c %s", ns, pod, u.relays[pod].name)
}

// addRelay adds an ephemeral relay to pod, and says so: it stays in the
// pod's spec.
func (u *udpSide) addRelay(ctx context.Context, pod *corev1.Pod) error {
	name, port, err := u.ephemeral.Add(ctx, u.s.deps.Cluster.Client(), pod, relayReadyTimeout)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.relays[pod.Name] = ephemeralRelay{name: name, port: port}
	u.mu.Unlock()
	fmt.Fprintf(u.s.deps.ErrOut, "kpf: the UDP relay runs as ephemeral container %s in pod %s; it stops when kpf does, but ephemeral containers stay in a pod's spec until the pod is replaced\n", name, pod.Name)
	return nil
}

// dialEphemeral opens a stream to the relay in the forward's current pod,
// at its port.
func (u *udpSide) dialEphemeral(ctx context.Context) (net.Conn, error) {
	pod, _ := u.s.follower.State()
	u.mu.Lock()
	r, ok := u.relays[pod]
	u.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no UDP relay in pod %q yet", pod)
	}
	return u.stream(ctx, u.s.follower, uint16(r.port)), nil
}

// dialVia opens streams to the relay pod f follows.
func (u *udpSide) dialVia(f *follow.Follower) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		return u.stream(ctx, f, relaypod.Port), nil
	}
}

// stream is a connection carried through f's tunnels to port.
func (u *udpSide) stream(ctx context.Context, f *follow.Follower, port uint16) net.Conn {
	local, remote := net.Pipe()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer remote.Close()
		// Check, not Forward: a relay that does not listen yet (its
		// pod just started: it has no readiness probe) refuses at
		// once, and the client dials again within its backoff, where
		// Forward would wait out a rollout's grace for other pods.
		if _, err := f.Check(ctx, remote, port); err != nil && ctx.Err() == nil {
			u.s.deps.Log.Debug("relay stream", "err", err)
		}
	}()
	return local
}

// startRelay starts a relay pod that sends to targetIP's /udp ports only,
// waits until it runs, and follows it (for its tunnels).
func (u *udpSide) startRelay(ctx context.Context, targetIP string) (*podRelay, error) {
	s, t := u.s, u.s.Target
	rp, err := relaypod.Start(ctx, s.deps.Cluster.Client(), relaypod.Spec{Namespace: t.Namespace, Image: s.spec.RelayImage, Target: t.Ref, Allow: u.allow(targetIP), Owner: relaypod.Me()}, relayReadyTimeout)
	if err != nil {
		return nil, err
	}
	s.deps.Log.Debug("relay pod running", "pod", rp.Name, "to", targetIP)
	fctx, stop := context.WithCancel(u.ctx)
	f, err := follow.New(fctx, follow.Options{
		Namespace: t.Namespace, Ref: "pod/" + rp.Name, PodName: rp.Name, Client: s.deps.Cluster.Client(), Initial: rp,
		Dial: u.dial, ReconnectWait: s.spec.ReconnectWait, Log: s.deps.Log.With("relay", rp.Name), Liveness: s.deps.Cluster.Liveness(),
		// The pod kpf made, not another that takes its name once it is
		// gone: that one would get the datagrams.
		Accept: func(p *corev1.Pod) bool { return p.UID == rp.UID },
		// A watch of its own, listed now: the namespace's shared one may
		// not have seen the relay pod turn ready yet.
	})
	if err != nil {
		stop()
		relaypod.Delete(context.WithoutCancel(ctx), s.deps.Cluster.Client(), rp)
		return nil, err
	}
	return &podRelay{pod: rp, follower: f, stop: stop, targetIP: targetIP}, nil
}

// useRelay moves the clients to r, and deletes the relay pod before it.
func (u *udpSide) useRelay(ctx context.Context, r *podRelay) {
	u.mu.Lock()
	old := u.relay
	u.relay = r
	u.mu.Unlock()
	dests := u.destinations(r.targetIP)
	for i, c := range u.clients {
		c.Move(dests[i], u.dialVia(r.follower))
	}
	old.stop()
	if err := relaypod.Delete(context.WithoutCancel(ctx), u.s.deps.Cluster.Client(), old.pod); err != nil {
		u.s.deps.Log.Error("delete the relay pod", "pod", old.pod.Name, "err", err)
	}
}

// relayLost: the relay pod is gone (deleted, evicted, or ended after
// hearing nothing from kpf, as after a laptop's sleep): its follower has
// no pod.
func (u *udpSide) relayLost() bool {
	u.mu.Lock()
	f := u.relay.follower
	u.mu.Unlock()
	pod, _ := f.State()
	return pod == ""
}

// relayEnded: the relay pod has ended for good (its relay exited, as
// after kpf slept past its idle exit, or its deadline ran out): nothing
// to wait for before another takes its place.
func (u *udpSide) relayEnded() bool {
	u.mu.Lock()
	r := u.relay
	u.mu.Unlock()
	p := r.follower.Pod(r.pod.Name)
	return p != nil && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed)
}

// serve keeps the relay until ctx ends or close is called: it replaces a
// relay that is gone or exited, and moves the clients to the target's new
// pod (with a relay made for it) when the forward follows another.
func (u *udpSide) serve(ctx context.Context) {
	defer close(u.served)
	if u.dest {
		return // the streams follow the forward's relay pod
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(u.ctx, cancel)()
	last := u.s.Target.Pod.Name
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lost time.Time     // since when the relay pod has been gone
	var replaced time.Time // when a relay pod was last replaced
	lostWait := relayLostWait
	var retryAt time.Time  // after a failed move to the current pod
	backoff := time.Second // before the next try of a failed move
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if u.ephemeral == nil {
			switch {
			case !u.relayLost():
				lost = time.Time{}
			case lost.IsZero():
				lost = time.Now()
			case time.Since(lost) > lostWait || u.relayEnded():
				// Another relay pod, for the same target pod.
				u.mu.Lock()
				gone, ip := u.relay.pod.Name, u.relay.targetIP
				u.mu.Unlock()
				// Relays that end soon after they start (an image that
				// does not run here) are replaced ever more slowly.
				if time.Since(replaced) < time.Minute {
					lostWait = min(2*lostWait, time.Minute)
				} else {
					lostWait = relayLostWait
				}
				replaced = time.Now()
				r, err := u.startRelay(ctx, ip)
				if err != nil {
					u.s.deps.Log.Error("udp: the relay pod is gone and a new one did not start", "pod", gone, "err", err, "retryIn", lostWait)
					lost = time.Now()
					continue
				}
				u.useRelay(ctx, r)
				fmt.Fprintf(u.s.deps.ErrOut, "kpf: the UDP relay pod %s is gone; its datagrams go through a new one, %s\n", gone, r.pod.Name)
				lost = time.Time{}
			}
		}
		pod, state := u.s.follower.State()
		if pod == "" {
			continue
		}
		p := u.s.follower.Pod(pod) // the watch's copy: no API call
		if p == nil || p.Status.PodIP == "" {
			continue
		}
		// The same pod at a new IP: its sandbox was made again (a node
		// that restarted recreates its pods' sandboxes, and the network
		// plugin may hand each another address). The relay sends only to
		// the old one: a new relay, made for the new IP. This does not
		// wait for the follower to be ready: a forward of /udp ports only
		// dials no tunnel to the pod itself, so its follower may stay
		// reconnecting after the tunnels it had were lost.
		moved := u.ephemeral == nil && pod == last && u.relayTargetIP() != p.Status.PodIP
		if state != "ready" && !moved {
			continue
		}
		if moved || u.ephemeral != nil && pod == last && u.relayExited(p) {
			last = "" // replace it below
		}
		if pod == last || time.Now().Before(retryAt) {
			continue
		}
		if err := u.moveTo(ctx, p); err != nil {
			u.s.deps.Log.Error("udp: no relay for the new pod", "pod", pod, "err", err, "retryIn", backoff)
			retryAt = time.Now().Add(backoff)
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		last, backoff = pod, time.Second
		u.s.deps.Log.Info("udp now to pod", "pod", pod, "ip", p.Status.PodIP)
	}
}

// relayTargetIP is the IP the relay pod in use sends to.
func (u *udpSide) relayTargetIP() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.relay.targetIP
}

// relayExited: the ephemeral relay in p (the latest kpf added) has ended.
func (u *udpSide) relayExited(p *corev1.Pod) bool {
	u.mu.Lock()
	name := u.relays[p.Name].name
	u.mu.Unlock()
	for _, cs := range p.Status.EphemeralContainerStatuses {
		if cs.Name == name && cs.State.Terminated != nil {
			return true
		}
	}
	return false
}

// moveTo moves the clients to pod p, the forward's new pod or one whose
// ephemeral relay exited: a relay made for it, then streams to that.
func (u *udpSide) moveTo(ctx context.Context, p *corev1.Pod) error {
	if u.ephemeral == nil {
		u.mu.Lock()
		same := u.relay.targetIP == p.Status.PodIP
		u.mu.Unlock()
		if same {
			return nil
		}
		r, err := u.startRelay(ctx, p.Status.PodIP)
		if err != nil {
			return err
		}
		u.useRelay(ctx, r)
		return nil
	}
	u.mu.Lock()
	r, has := u.relays[p.Name]
	u.mu.Unlock()
	if !has || u.relayExited(p) {
		if has {
			fmt.Fprintf(u.s.deps.ErrOut, "kpf: the UDP relay %s in pod %s exited; adding another\n", r.name, p.Name)
		}
		if err := u.addRelay(ctx, p); err != nil {
			return err
		}
	}
	// The same localhost ports, through the follower's new pod.
	dests := u.destinations("127.0.0.1")
	for i, c := range u.clients {
		c.Move(dests[i], nil)
	}
	return nil
}

// close stops the clients and deletes the relay pod.
func (u *udpSide) close() {
	u.cancel()
	<-u.served
	for _, c := range u.clients {
		c.Local.Close()
	}
	u.wg.Wait()
	if u.ephemeral != nil || u.dest {
		// Ephemeral relays exit once their streams are gone (they cannot
		// be removed); a destination's relay pod is the session's.
		return
	}
	u.mu.Lock()
	r := u.relay
	u.mu.Unlock()
	r.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := relaypod.Delete(ctx, u.s.deps.Cluster.Client(), r.pod); err != nil {
		u.s.deps.Log.Error("delete the relay pod", "pod", r.pod.Name, "err", err)
	}
}

func (u *udpSide) status() UDPStatus {
	st := UDPStatus{}
	if u.dest {
		st.Relay = u.relayName()
	} else if u.ephemeral == nil {
		u.mu.Lock()
		st.Relay = u.relay.pod.Name
		u.mu.Unlock()
	} else {
		pod, _ := u.s.follower.State()
		u.mu.Lock()
		if name := u.relays[pod].name; name != "" {
			st.Relay = pod + "/" + name
		}
		u.mu.Unlock()
	}
	for _, c := range u.clients {
		st.Peers += c.Peers()
		st.DatagramsIn += c.DatagramsIn.Load()
		st.DatagramsOut += c.DatagramsOut.Load()
		st.BytesIn += c.BytesIn.Load()
		st.BytesOut += c.BytesOut.Load()
	}
	return st
}
