package session

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/hist"
	"github.com/kpf-dev/kpf/internal/tunnel"
)

// stats are what a session counts for status and metrics, beyond the
// data path's counters: per remote port, the failures by reason, the
// tunnel dials and their times, and the time to the pod's first byte.
type stats struct {
	ports map[uint16]*forward.Counters // by remote port; fixed at Open

	mu        sync.Mutex
	transport tunnel.Transport // the one in use once a tunnel opened: later dials take it too
	failures  map[failure]int64
	lastErr   string

	dials, dialFailures atomic.Int64
	dialTime, firstByte hist.Histogram
}

type failure struct {
	port   uint16
	reason string
}

func newStats(transport tunnel.Transport) *stats {
	return &stats{ports: map[uint16]*forward.Counters{}, transport: transport, failures: map[failure]int64{}}
}

// counters are a remote port's.
func (s *stats) counters(port uint16) *forward.Counters { return s.ports[port] }

// inUse is the transport to dial with: the spec's until a tunnel opened
// (auto may fall back to SPDY), then the one that tunnel took.
func (s *stats) inUse() tunnel.Transport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transport
}

// dialled records a tunnel dial.
func (s *stats) dialled(took time.Duration, c *tunnel.Conn, err error) {
	s.dials.Add(1)
	if err != nil {
		s.dialFailures.Add(1)
		return
	}
	s.dialTime.Observe(took)
	s.mu.Lock()
	s.transport = c.Transport
	s.mu.Unlock()
}

// ended records a connection's end.
func (s *stats) ended(e forward.Ended) {
	if e.FirstByte > 0 {
		s.firstByte.Observe(e.FirstByte)
	}
	if e.Err == nil {
		return
	}
	s.mu.Lock()
	s.failures[failure{e.Remote, Reason(e.Err)}]++
	s.lastErr = e.Err.Error()
	s.mu.Unlock()
}

// Reasons are every value Reason returns.
var Reasons = []string{"refused", "pod", "no_pod", "stopped", "tunnel"}

// Reason sorts a connection's failure into a few kinds, for metrics:
// refused (nothing listens on the port), pod (another error the kubelet
// reported), no_pod (no ready pod within --reconnect-wait), stopped (the
// forward stopped), tunnel (the tunnel failed).
func Reason(err error) string {
	var re *tunnel.RemoteError
	switch {
	case errors.As(err, &re) && strings.Contains(re.Message, "refused"):
		return "refused"
	case errors.As(err, &re):
		return "pod"
	case errors.Is(err, follow.ErrNoReadyPod):
		return "no_pod"
	case errors.Is(err, context.Canceled):
		return "stopped"
	}
	return "tunnel"
}

// Metrics is a session's counters at one moment.
type Metrics struct {
	Pod                 string // the pod new connections go to now
	Transport           string
	Ports               []PortMetrics
	Dials, DialFailures int64
	DialTime, FirstByte hist.Snapshot
	Reconnects          int64
	Switches            int64
	UDP                 UDPStatus // zero without /udp ports
}

// PortMetrics are one remote port's.
type PortMetrics struct {
	Remote            uint16
	Open, Total       int64
	Failed            map[string]int64 // by Reason
	BytesIn, BytesOut int64            // to the client, to the pod
}

// Metrics reads the session's counters.
func (s *Session) Metrics() Metrics {
	st := s.stats
	st.mu.Lock()
	m := Metrics{Transport: string(st.transport)}
	remotes := make([]uint16, 0, len(st.ports))
	for p := range st.ports {
		remotes = append(remotes, p)
	}
	slices.Sort(remotes)
	for _, remote := range remotes {
		c := st.ports[remote]
		pm := PortMetrics{Remote: remote, Open: c.Open.Load(), Total: c.Total.Load(), BytesIn: c.Bytes.In.Load(), BytesOut: c.Bytes.Out.Load(), Failed: map[string]int64{}}
		for f, n := range st.failures {
			if f.port == remote {
				pm.Failed[f.reason] = n
			}
		}
		m.Ports = append(m.Ports, pm)
	}
	st.mu.Unlock()
	m.Dials, m.DialFailures = st.dials.Load(), st.dialFailures.Load()
	m.DialTime, m.FirstByte = st.dialTime.Snapshot(), st.firstByte.Snapshot()
	m.Reconnects, m.Switches = s.follower.Reconnects(), s.follower.Switches()
	m.Pod, _ = s.follower.State()
	if s.udp != nil {
		m.UDP = s.udp.status()
	}
	return m
}
