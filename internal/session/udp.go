package session

import (
	"context"
	"fmt"
	"net"
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

// relayLostWait is how long a relay pod may be gone before another one
// takes its place.
const relayLostWait = 2 * time.Second

// udpSide is a session's /udp ports: a relay pod next to the target, a
// follower of that pod for the streams, and a relay client per port and
// local address, sending to the target pod's IP.
//
// With --udp-relay ephemeral, the relay is instead a container added to
// the target pod (and to each pod the forward follows to), reached
// through the forward's own follower, sending to the pod's localhost.
type udpSide struct {
	s        *Session
	dial     func(ctx context.Context, pod string) (*tunnel.Conn, error)
	clients  []*relay.Client
	remotes  []uint16 // each client's port in the target pod
	targetIP string   // pod mode: the target pod's IP; serve's

	ephemeral *relaypod.Ephemeral // ephemeral mode

	mu sync.Mutex
	// Pod mode: the relay pod and its follower, replaced when the pod
	// goes away (see serve).
	pod        *corev1.Pod
	follower   *follow.Follower
	stopFollow context.CancelFunc
	// Ephemeral mode: each pod's relay container.
	relays map[string]string

	wg sync.WaitGroup
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

// openUDP binds the /udp ports, starts the relay pod and waits for it.
func openUDP(ctx context.Context, s *Session, ports []portspec.Resolved, dial func(ctx context.Context, pod string) (*tunnel.Conn, error)) (*udpSide, error) {
	conns, err := forward.ListenUDP(s.spec.Addresses, ports, s.deps.ErrOut)
	if err != nil {
		return nil, err
	}
	closeAll := func() {
		for _, c := range conns {
			c.Conn.Close()
		}
	}
	t := s.Target
	if s.spec.UDPRelay == "ephemeral" {
		u, err := openEphemeral(ctx, s, conns)
		if err != nil {
			closeAll()
		}
		return u, err
	}
	u := &udpSide{s: s, dial: dial, targetIP: t.Pod.Status.PodIP}
	if err := u.startRelay(ctx); err != nil {
		closeAll()
		return nil, err
	}
	u.addClients(conns, t.Pod.Status.PodIP, u.dialRelay)
	return u, nil
}

// addClients makes a relay client per /udp socket, sending to host at
// the socket's remote port through streams of dial, and says each
// forward's line: once the relay is ready, a client that starts on it is
// carried.
func (u *udpSide) addClients(conns []forward.UDPListener, host string, dial func(context.Context) (net.Conn, error)) {
	s := u.s
	for _, c := range conns {
		fmt.Fprintf(s.deps.Out, "Forwarding from %s -> %d/udp\n", c.Conn.LocalAddr(), c.Remote)
		u.remotes = append(u.remotes, c.Remote)
		u.clients = append(u.clients, &relay.Client{
			Local:       c.Conn,
			Target:      net.JoinHostPort(host, strconv.Itoa(int(c.Remote))),
			IdleTimeout: s.spec.UDPIdleTimeout,
			Log:         s.deps.Log.With("udp", c.Conn.LocalAddr().String()),
			Dial:        dial,
		})
	}
}

// openEphemeral adds the relay to the target pod and makes a client per
// /udp socket, sending to the pod's localhost.
func openEphemeral(ctx context.Context, s *Session, conns []forward.UDPListener) (*udpSide, error) {
	t := s.Target
	u := &udpSide{s: s, relays: map[string]string{},
		ephemeral: &relaypod.Ephemeral{Image: s.spec.RelayImage, Owner: relaypod.Me(), Port: relaypod.EphemeralPort}}
	if err := u.addRelay(ctx, t.Pod); err != nil {
		return nil, err
	}
	u.addClients(conns, "127.0.0.1", u.dialEphemeral)
	return u, nil
}

// addRelay adds an ephemeral relay to pod, and says so: it stays in the
// pod's spec.
func (u *udpSide) addRelay(ctx context.Context, pod *corev1.Pod) error {
	name, err := u.ephemeral.Add(ctx, u.s.deps.Cluster.Client(), pod, relayReadyTimeout)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.relays[pod.Name] = name
	u.mu.Unlock()
	fmt.Fprintf(u.s.deps.ErrOut, "kpf: the UDP relay runs as ephemeral container %s in pod %s; it stops when kpf does, but ephemeral containers stay in a pod's spec until the pod is replaced\n", name, pod.Name)
	return nil
}

// dialEphemeral opens a stream to the relay in the forward's current pod.
func (u *udpSide) dialEphemeral(ctx context.Context) (net.Conn, error) {
	return u.stream(ctx, u.s.follower, relaypod.EphemeralPort), nil
}

// stream is a connection carried through f's tunnels to port.
func (u *udpSide) stream(ctx context.Context, f *follow.Follower, port uint16) net.Conn {
	local, remote := net.Pipe()
	go func() {
		defer remote.Close()
		if _, err := f.Forward(ctx, remote, port, nil); err != nil {
			u.s.deps.Log.Warn("relay stream", "err", err)
		}
	}()
	return local
}

// startRelay starts a relay pod, waits until it is ready, and follows it
// (for its tunnels), in place of the one before, if any.
func (u *udpSide) startRelay(ctx context.Context) error {
	s, t := u.s, u.s.Target
	rp, err := relaypod.Start(ctx, s.deps.Cluster.Client(), relaypod.Spec{Namespace: t.Namespace, Image: s.spec.RelayImage, Target: t.Ref, Owner: relaypod.Me()}, relayReadyTimeout)
	if err != nil {
		return err
	}
	s.deps.Log.Debug("relay pod ready", "pod", rp.Name, "ip", rp.Status.PodIP)
	fctx, stop := context.WithCancel(ctx)
	f, err := follow.New(fctx, follow.Options{
		Namespace: t.Namespace, Ref: "pod/" + rp.Name, PodName: rp.Name, Client: s.deps.Cluster.Client(), Initial: rp,
		Dial: u.dial, ReconnectWait: s.spec.ReconnectWait, Log: s.deps.Log.With("relay", rp.Name),
		// A watch of its own, listed now: the namespace's shared one may
		// not have seen the relay pod turn ready yet.
	})
	if err != nil {
		stop()
		relaypod.Delete(context.WithoutCancel(ctx), s.deps.Cluster.Client(), rp)
		return err
	}
	u.mu.Lock()
	old, stopOld := u.pod, u.stopFollow
	u.pod, u.follower, u.stopFollow = rp, f, stop
	u.mu.Unlock()
	if old != nil {
		stopOld()
		relaypod.Delete(context.WithoutCancel(ctx), s.deps.Cluster.Client(), old)
	}
	return nil
}

// relayLost: the relay pod is gone (deleted, evicted, or ended after
// hearing nothing from kpf, as after a laptop's sleep): its follower has
// no pod.
func (u *udpSide) relayLost() bool {
	u.mu.Lock()
	f := u.follower
	u.mu.Unlock()
	pod, _ := f.State()
	return pod == ""
}

// dialRelay opens a stream to the relay pod through its tunnel.
func (u *udpSide) dialRelay(ctx context.Context) (net.Conn, error) {
	u.mu.Lock()
	f := u.follower
	u.mu.Unlock()
	return u.stream(ctx, f, relaypod.Port), nil
}

// serve runs the relay clients until ctx ends, and moves them to the
// target's new pod when the forward follows it to another.
func (u *udpSide) serve(ctx context.Context) {
	for _, c := range u.clients {
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			if err := c.Serve(ctx); err != nil && ctx.Err() == nil {
				u.s.deps.Log.Error("udp forwarding stopped", "local", c.Local.LocalAddr().String(), "err", err)
			}
		}()
	}
	last := u.s.Target.Pod.Name
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lost time.Time // since when the relay pod has been gone
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
			case time.Since(lost) > relayLostWait:
				// Another relay pod, and the streams to it.
				u.mu.Lock()
				gone := u.pod.Name
				u.mu.Unlock()
				if err := u.startRelay(ctx); err != nil {
					u.s.deps.Log.Error("udp: the relay pod is gone and a new one did not start", "pod", gone, "err", err)
					lost = time.Now() // try again after relayLostWait
					continue
				}
				u.mu.Lock()
				name := u.pod.Name
				u.mu.Unlock()
				fmt.Fprintf(u.s.deps.ErrOut, "kpf: the UDP relay pod %s is gone; its datagrams go through a new one, %s\n", gone, name)
				for i, c := range u.clients {
					c.SetTarget(net.JoinHostPort(u.targetIP, strconv.Itoa(int(u.remotes[i]))))
				}
				lost = time.Time{}
			}
		}
		pod, state := u.s.follower.State()
		if pod == "" || pod == last || state != "ready" {
			continue
		}
		p := u.s.follower.Pod(pod) // the watch's copy: no API call
		if p == nil || p.Status.PodIP == "" {
			continue
		}
		last = pod
		if u.ephemeral != nil {
			// The new pod needs a relay of its own; the clients' streams
			// then go to it, to the same localhost ports.
			u.mu.Lock()
			_, has := u.relays[pod]
			u.mu.Unlock()
			if !has {
				if err := u.addRelay(ctx, p); err != nil {
					u.s.deps.Log.Error("udp: no relay in the new pod", "pod", pod, "err", err)
					last = "" // try again
					continue
				}
			}
			for i, c := range u.clients {
				c.SetTarget(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(u.remotes[i]))))
			}
			u.s.deps.Log.Info("udp now to pod", "pod", pod)
			continue
		}
		u.targetIP = p.Status.PodIP
		for i, c := range u.clients {
			c.SetTarget(net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(u.remotes[i]))))
		}
		u.s.deps.Log.Info("udp now to pod", "pod", pod, "ip", p.Status.PodIP)
	}
}

// close stops the clients and deletes the relay pod.
func (u *udpSide) close() {
	for _, c := range u.clients {
		c.Local.Close()
	}
	u.wg.Wait()
	if u.ephemeral != nil {
		return // the relays exit once their streams are gone; they cannot be removed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u.mu.Lock()
	pod := u.pod
	u.mu.Unlock()
	if err := relaypod.Delete(ctx, u.s.deps.Cluster.Client(), pod); err != nil {
		u.s.deps.Log.Error("delete the relay pod", "pod", pod.Name, "err", err)
	}
}

func (u *udpSide) status() UDPStatus {
	st := UDPStatus{}
	if u.ephemeral == nil {
		u.mu.Lock()
		st.Relay = u.pod.Name
		u.mu.Unlock()
	} else {
		pod, _ := u.s.follower.State()
		u.mu.Lock()
		if name := u.relays[pod]; name != "" {
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
