package node

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/component-helpers/nodedeclaredfeatures"
	"k8s.io/component-helpers/nodedeclaredfeatures/features/extendwebsocketstokubelet"
	ndftypes "k8s.io/component-helpers/nodedeclaredfeatures/types"
)

// Topology is the path a port-forward takes through the node.
type Topology string

const (
	// TopologyCRI is a node of Kubernetes 1.36 or later (the default): the
	// kubelet declares ExtendWebSocketsToKubelet in the node's
	// status.declaredFeatures, so the API server proxies WebSocket
	// port-forwards to it unchanged; the kubelet takes the SPDY tunnelled in
	// the WebSocket out itself (the API server's tunnelling handler, which
	// the kubelet runs) and proxies the streams to the container runtime's
	// CRI streaming server, a listener of its own, as kubelet -> containerd.
	TopologyCRI Topology = "cri"
	// TopologyLegacy is an older node: it declares no feature, so the API
	// server translates WebSockets into SPDY itself, and the kubelet API
	// handler serves the streams.
	TopologyLegacy Topology = "legacy"
)

// Topologies lists the node topologies, the default first.
var Topologies = []Topology{TopologyCRI, TopologyLegacy}

// ParseTopology checks a --node-topology value ("" is the default).
func ParseTopology(s string) (Topology, error) {
	if s == "" {
		return TopologyCRI, nil
	}
	for _, t := range Topologies {
		if string(t) == s {
			return t, nil
		}
	}
	names := make([]string, len(Topologies))
	for i, t := range Topologies {
		names[i] = string(t)
	}
	return "", fmt.Errorf("--node-topology %q: want %s", s, strings.Join(names, " or "))
}

// DefaultStreamIdleTimeout is the kubelet's default
// --streaming-connection-idle-timeout, and containerd's stream_idle_timeout.
const DefaultStreamIdleTimeout = 4 * time.Hour

// ParseStreamIdleTimeout checks a --streaming-connection-idle-timeout value
// ("" is the default, 4 h).
func ParseStreamIdleTimeout(s string) (time.Duration, error) {
	if s == "" {
		return DefaultStreamIdleTimeout, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		return 0, fmt.Errorf("--streaming-connection-idle-timeout %q: want a duration of 1s or more, such as 5m (the default is %s)", s, DefaultStreamIdleTimeout)
	}
	return d, nil
}

// declaredFeatures are the features the node declares in its status, found
// as the kubelet finds them (component-helpers' nodedeclaredfeatures, from
// its feature gates), among those the sandbox node implements.
func (t Topology) declaredFeatures() []string {
	gates := ndftypes.FeatureGateMap{
		extendwebsocketstokubelet.ExtendWebSocketsToKubeletFeatureGate: t == TopologyCRI,
	}
	return implemented.DiscoverNodeFeatures(&ndftypes.NodeConfiguration{
		FeatureGates: gates,
		Version:      version.MustParse(KubeletVersion),
	})
}

// implemented are the declarable node features the sandbox node has.
var implemented = nodedeclaredfeatures.New([]ndftypes.Feature{extendwebsocketstokubelet.Feature})
