package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/relay"
	"github.com/kpf-dev/kpf/internal/relaypod"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// relayKeepAlive is how often kpf pings a destination relay on the stream
// that keeps it from exiting while the forward has no connection.
const relayKeepAlive = 10 * time.Second

// destRelay is the relay pod of a host/ or ip/ target, which is the
// forward's target pod: everything a forward does with its pod (follow
// it, balance, health checks, counters, audit, the HTTP log) it does with
// the relay pod. Its destination and ports are fixed when it is made (its
// arguments): each TCP port a loopback listener of the relay piped to the
// destination, each /udp port an --allow of its datagram relay.
//
// The forward follows the relay pods kpf made for it, by the UIDs it
// recorded when it made them (made), as it follows a workload's pods, so
// that one that replaces it (keep makes it when the last is deleted,
// evicted or exited) is followed like a workload's new pod. A pod that
// carries the forward's LabelForward label but that kpf did not make is
// never followed: anyone who may create pods could make one, and would
// get the forward's traffic. close deletes the pods kpf made, by name and
// UID (no list: a Role may lack it).
type destRelay struct {
	spec   relaypod.Spec
	routes map[uint16]uint16 // the destination's TCP port → the relay's loopback port
	s      *Session

	mu   sync.Mutex
	made map[types.UID]*corev1.Pod // every relay pod made for the forward
}

// created records a relay pod kpf made (relaypod.Spec.Created).
func (r *destRelay) created(p *corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.made[p.UID] = p
}

// ours: p is a relay pod kpf made for the forward (follow.Options.Accept).
func (r *destRelay) ours(p *corev1.Pod) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.made[p.UID]
	return ok
}

// newForwardID names a forward's destination relays (LabelForward).
func newForwardID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// startDestination makes the relay pod of d and returns the target it
// carries.
func startDestination(ctx context.Context, spec Spec, deps Deps, d target.Destination) (*target.Target, *destRelay, error) {
	ports, err := target.DestinationPorts(d, spec.Ports)
	if err != nil {
		return nil, nil, &StageError{Stage: StageResolve, Err: err}
	}
	ns := spec.Namespace
	if ns == "" {
		ns = deps.Cluster.Namespace()
	}
	r := &destRelay{routes: map[uint16]uint16{}, made: map[types.UID]*corev1.Pod{}}
	var tcp, allow []string
	for _, p := range ports {
		switch {
		case p.UDP:
			allow = append(allow, d.At(p.Remote))
		case r.routes[p.Remote] == 0:
			r.routes[p.Remote] = uint16(relaypod.FirstRoutePort + len(tcp))
			tcp = append(tcp, strconv.Itoa(int(r.routes[p.Remote]))+"="+d.At(p.Remote))
		}
	}
	slices.Sort(allow)
	r.spec = relaypod.Spec{Namespace: ns, Image: spec.RelayImage, Target: d.Ref(), Allow: slices.Compact(allow), TCP: tcp, Owner: relaypod.Me(), Forward: newForwardID(), Created: r.created}
	pod, err := relaypod.Start(ctx, deps.Cluster.Client(), r.spec, relayReadyTimeout)
	if err != nil {
		return nil, nil, &StageError{Stage: StageDestination, Err: fmt.Errorf("the relay pod of %s: %w", d.Ref(), err)}
	}
	deps.Log.Debug("destination relay running", "pod", pod.Name, "to", d.Ref(), "tcp", tcp, "udp", allow)
	fmt.Fprintf(deps.ErrOut, "kpf: %s is dialled from inside the cluster by the relay pod %s/%s, deleted when the forward stops\n", d.Ref(), ns, pod.Name)
	return target.ForDestination(ns, d, pod, ports), r, nil
}

// port is the relay pod's port for the destination's TCP port.
func (r *destRelay) port(remote uint16) uint16 {
	if p, ok := r.routes[remote]; ok {
		return p
	}
	return remote
}

// check opens the keep-alive stream and waits for the relay's answer
// (its version), until the relay answers or timeout passes.
func (r *destRelay) check(ctx context.Context, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		conn := r.s.stream(ctx, relaypod.Port)
		err := relay.Check(conn, time.Until(deadline))
		if err == nil {
			return conn, nil
		}
		conn.Close()
		last = err
		var ve *relay.VersionError
		var he *relay.HelloError
		if errors.As(err, &ve) || errors.As(err, &he) {
			return nil, err // no answer will be another
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond): // a relay that does not listen yet
		}
	}
	pod, _ := r.s.follower.State()
	return nil, fmt.Errorf("the relay pod %s runs but did not answer within %s (%v; its log: kubectl logs -n %s %s)", pod, timeout, last, r.spec.Namespace, pod)
}

// keep holds a keep-alive stream to the relay (a relay with no client
// exits), and makes another relay pod when the one in use is gone, until
// ctx ends.
func (r *destRelay) keep(ctx context.Context, first net.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn := first
		for ctx.Err() == nil {
			if conn != nil {
				err := relay.Keep(ctx, conn, relayKeepAlive)
				r.s.deps.Log.Debug("relay keep-alive stream ended", "err", err)
			}
			conn = nil
			if pod, _ := r.s.follower.State(); pod == "" {
				select {
				case <-ctx.Done():
					return
				case <-r.s.follower.Changed():
				}
				continue
			}
			c := r.s.stream(ctx, relaypod.Port)
			if err := relay.Check(c, 5*time.Second); err != nil {
				c.Close()
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
			conn = c
		}
	}()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lost time.Time
	lostWait := relayLostWait
	var replaced time.Time
	gone := r.s.Target.Pod.Name
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if pod, _ := r.s.follower.State(); pod != "" {
			gone, lost = pod, time.Time{}
			continue
		}
		if lost.IsZero() {
			lost = time.Now()
			continue
		}
		if time.Since(lost) < lostWait {
			continue
		}
		// Relays that end soon after they start are replaced ever more
		// slowly.
		if time.Since(replaced) < time.Minute {
			lostWait = min(2*lostWait, time.Minute)
		} else {
			lostWait = relayLostWait
		}
		replaced = time.Now()
		p, err := relaypod.Start(ctx, r.s.deps.Cluster.Client(), r.spec, relayReadyTimeout)
		if err != nil {
			if ctx.Err() == nil {
				r.s.deps.Log.Error("the relay pod is gone and a new one did not start", "target", r.spec.Target, "err", err, "retryIn", lostWait)
			}
			lost = time.Now()
			continue
		}
		fmt.Fprintf(r.s.deps.ErrOut, "kpf: the relay pod of %s is gone; a new one, %s, carries it\n", r.spec.Target, p.Name)
		r.s.deps.Log.Info("relay pod replaced", "target", r.spec.Target, "gone", gone, "pod", p.Name)
		lost = time.Time{}
	}
}

// close deletes the relay pods kpf made for the forward, by name and UID
// (one already gone is no error).
func (r *destRelay) close(c kube.Interface, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.mu.Lock()
	made := make([]*corev1.Pod, 0, len(r.made))
	for _, p := range r.made {
		made = append(made, p)
	}
	r.mu.Unlock()
	for _, p := range made {
		if err := relaypod.Delete(ctx, c, p); err != nil {
			log.Error("delete the relay pod", "pod", p.Name, "err", err)
		}
	}
}

// relayPorts is the forward's backend for a destination: its follower,
// with each destination port carried to the relay's listener for it.
type relayPorts struct {
	*follow.Follower
	r *destRelay
}

func (b relayPorts) Forward(ctx context.Context, local net.Conn, port uint16, m *meter.Meter) (tunnel.Stats, error) {
	return b.Follower.Forward(ctx, local, b.r.port(port), m)
}

// stream is a connection carried through the session's follower to port
// of its current pod.
func (s *Session) stream(ctx context.Context, port uint16) net.Conn {
	local, remote := net.Pipe()
	s.streams.Add(1)
	go func() {
		defer s.streams.Done()
		defer remote.Close()
		if _, err := s.follower.Forward(ctx, remote, port, nil); err != nil && ctx.Err() == nil {
			s.deps.Log.Debug("relay stream", "err", err)
		}
	}()
	return local
}
