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

// udpSide is a session's /udp ports: a relay pod next to the target, a
// follower of that pod for the streams, and a relay client per port and
// local address, sending to the target pod's IP.
type udpSide struct {
	s        *Session
	pod      *corev1.Pod // the relay's
	follower *follow.Follower
	clients  []*relay.Client
	remotes  []uint16 // each client's port in the target pod
	wg       sync.WaitGroup
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
	rp, err := relaypod.Start(ctx, s.deps.Client, relaypod.Spec{Namespace: t.Namespace, Image: s.spec.RelayImage, Target: t.Ref, Owner: relaypod.Me()}, relayReadyTimeout)
	if err != nil {
		closeAll()
		return nil, err
	}
	s.deps.Log.Debug("relay pod ready", "pod", rp.Name, "ip", rp.Status.PodIP)
	f, err := follow.New(ctx, follow.Options{
		Namespace: t.Namespace, Ref: "pod/" + rp.Name, PodName: rp.Name, Client: s.deps.Client, Initial: rp,
		Dial: dial, ReconnectWait: s.spec.ReconnectWait, Log: s.deps.Log.With("relay", rp.Name),
		// A watch of its own, listed now: the namespace's shared one may
		// not have seen the relay pod turn ready yet.
	})
	if err != nil {
		closeAll()
		relaypod.Delete(context.WithoutCancel(ctx), s.deps.Client, rp)
		return nil, err
	}
	u := &udpSide{s: s, pod: rp, follower: f}
	for _, c := range conns {
		// Once the relay is ready: a client that starts on this line is
		// carried.
		fmt.Fprintf(s.deps.Out, "Forwarding from %s -> %d/udp\n", c.Conn.LocalAddr(), c.Remote)
		u.remotes = append(u.remotes, c.Remote)
		u.clients = append(u.clients, &relay.Client{
			Local:       c.Conn,
			Target:      net.JoinHostPort(t.Pod.Status.PodIP, strconv.Itoa(int(c.Remote))),
			IdleTimeout: s.spec.UDPIdleTimeout,
			Log:         s.deps.Log.With("udp", c.Conn.LocalAddr().String()),
			Dial:        u.dialRelay,
		})
	}
	return u, nil
}

// dialRelay opens a stream to the relay pod through its tunnel.
func (u *udpSide) dialRelay(ctx context.Context) (net.Conn, error) {
	local, remote := net.Pipe()
	go func() {
		defer remote.Close()
		if _, err := u.follower.Forward(ctx, remote, relaypod.Port, nil); err != nil {
			u.s.deps.Log.Warn("relay stream", "err", err)
		}
	}()
	return local, nil
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := relaypod.Delete(ctx, u.s.deps.Client, u.pod); err != nil {
		u.s.deps.Log.Error("delete the relay pod", "pod", u.pod.Name, "err", err)
	}
}

func (u *udpSide) status() UDPStatus {
	st := UDPStatus{Relay: u.pod.Name}
	for _, c := range u.clients {
		st.Peers += c.Peers()
		st.DatagramsIn += c.DatagramsIn.Load()
		st.DatagramsOut += c.DatagramsOut.Load()
		st.BytesIn += c.BytesIn.Load()
		st.BytesOut += c.BytesOut.Load()
	}
	return st
}
