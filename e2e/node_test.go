package e2e

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/kpf-dev/kpf/sandbox/workload"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeTopology is the sandbox node's topology that the running tests
// expect: $KPF_E2E_NODE_TOPOLOGY (make e2e sets legacy for its second
// run), or cri, kpf-sandbox's default.
func nodeTopology() string {
	if t := os.Getenv("KPF_E2E_NODE_TOPOLOGY"); t != "" {
		return t
	}
	return "cri"
}

// TestWebSocketsReachTheNodeAsTheyAre: on the default topology (a node of
// Kubernetes 1.36+), the node declares ExtendWebSocketsToKubelet, and the
// API server proxies kpf's WebSocket port-forwards to it unchanged
// (apiserver_websocket_streaming_requests_total counts them as
// proxied_to_kubelet, none as translated_at_apiserver), where the node
// takes the tunnelled SPDY out itself (its kubelet_websocket_streaming_
// requests_total counts them). On the legacy topology, the node declares
// nothing and the API server translates.
func TestWebSocketsReachTheNodeAsTheyAre(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	topo := nodeTopology()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := sb.Admin.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	declares := slices.Contains(n.Status.DeclaredFeatures, "ExtendWebSocketsToKubelet")
	if declares != (topo == "cri") {
		t.Fatalf("on the %s topology, node %s declares %v", topo, n.Name, n.Status.DeclaredFeatures)
	}
	before := streamingCounts(t, sb)
	p, ls := kpf(sb).start(t, 2, "-n", ns, "--transport", "websocket", "pod/bulk", ":9000")
	if err := workload.BulkDownload(ls[0].Addr, 1<<20, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	after := streamingCounts(t, sb)
	proxied, translated, tunnelled := after.proxied-before.proxied, after.translated-before.translated, after.node-before.node
	t.Logf("%s topology: port-forwards proxied to the node %d, translated by the API server %d, tunnelled by the node %d", topo, proxied, translated, tunnelled)
	if topo == "cri" && (proxied < 1 || translated != 0 || tunnelled < 1) {
		t.Fatalf("on the cri topology, kpf's WebSocket port-forward: proxied %d, translated %d, tunnelled by the node %d; want proxied and tunnelled, none translated", proxied, translated, tunnelled)
	}
	if topo == "legacy" && (translated < 1 || proxied != 0 || tunnelled != 0) {
		t.Fatalf("on the legacy topology, kpf's WebSocket port-forward: proxied %d, translated %d, tunnelled by the node %d; want translated only", proxied, translated, tunnelled)
	}
}

type streamingCount struct{ proxied, translated, node int }

var (
	apiserverStreaming = regexp.MustCompile(`(?m)^apiserver_websocket_streaming_requests_total\{([^}]*)\} (\d+)`)
	nodeStreaming      = regexp.MustCompile(`(?m)^kubelet_websocket_streaming_requests_total\{subresource="portforward"\} (\d+)`)
)

// streamingCounts reads the API server's count of WebSocket port-forwards
// by what it did with them, and the node's count of those it tunnelled
// (a legacy node from before this test has no metrics: none tunnelled).
func streamingCounts(t *testing.T, sb *sandboxtest.Sandbox) streamingCount {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc := sb.Admin.CoreV1().RESTClient()
	b, err := rc.Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("API server metrics: %v", err)
	}
	var c streamingCount
	for _, m := range apiserverStreaming.FindAllStringSubmatch(string(b), -1) {
		if !regexp.MustCompile(`subresource="portforward"`).MatchString(m[1]) {
			continue
		}
		v, _ := strconv.Atoi(m[2])
		switch {
		case regexp.MustCompile(`proxy_type="proxied_to_kubelet"`).MatchString(m[1]):
			c.proxied = v
		case regexp.MustCompile(`proxy_type="translated_at_apiserver"`).MatchString(m[1]):
			c.translated = v
		}
	}
	cl, err := cluster.Open(sb.Dir, sb.Bin, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err = cl.NodeGet(ctx, "/metrics")
	if err != nil && nodeTopology() == "cri" {
		t.Fatalf("node metrics: %v", err)
	}
	if m := nodeStreaming.FindStringSubmatch(string(b)); m != nil {
		c.node, _ = strconv.Atoi(m[1])
	} else if nodeTopology() == "cri" {
		t.Fatalf("the node's metrics have no kubelet_websocket_streaming_requests_total:\n%s", b)
	}
	return c
}
