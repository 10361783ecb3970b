package metrics

import (
	"bytes"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/hist"
	"github.com/kpf-dev/kpf/internal/session"
)

func TestExposition(t *testing.T) {
	var dial hist.Histogram
	dial.Observe(30 * time.Millisecond)
	ok := false
	src := func() []Forward {
		return []Forward{
			{Name: "db", File: "/p/kpf.yaml", Namespace: "shop", Target: "statefulset/db", Pod: "db-0", Ready: true, Healthy: &ok, Session: &session.Metrics{
				Transport: "websocket", Dials: 3, DialFailures: 1, DialTime: dial.Snapshot(), Reconnects: 2, Switches: 1,
				Ports: []session.PortMetrics{{Remote: 5432, Open: 1, Total: 7, BytesIn: 1000, BytesOut: 200, Failed: map[string]int64{"refused": 2}}},
			}},
			{Name: "dns", Namespace: "kube-system", Target: "svc/dns", Pod: "dns-1", Ready: true, Session: &session.Metrics{
				Transport: "spdy", UDP: session.UDPStatus{Peers: 2, DatagramsIn: 9, DatagramsOut: 7, BytesIn: 900, BytesOut: 300, Relay: "kpf-relay-x"},
			}},
			{Name: "api", Namespace: "shop", Target: "svc/api"}, // not open: state only
		}
	}
	rec := httptest.NewRecorder()
	Handler(src).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	for _, want := range []string{
		`kpf_client_bytes_total{file="/p/kpf.yaml",forward="db",namespace="shop",port="5432",target="statefulset/db",transport="websocket"} 1000`,
		`kpf_pod_bytes_total{file="/p/kpf.yaml",forward="db",namespace="shop",port="5432",target="statefulset/db",transport="websocket"} 200`,
		`kpf_connections_failed_total{file="/p/kpf.yaml",forward="db",namespace="shop",port="5432",reason="refused",target="statefulset/db",transport="websocket"} 2`,
		`kpf_connections_failed_total{file="/p/kpf.yaml",forward="db",namespace="shop",port="5432",reason="no_pod",target="statefulset/db",transport="websocket"} 0`,
		`kpf_connections_open{file="/p/kpf.yaml",forward="db",namespace="shop",port="5432",target="statefulset/db",transport="websocket"} 1`,
		`kpf_tunnel_dial_failures_total{file="/p/kpf.yaml",forward="db",namespace="shop",target="statefulset/db",transport="websocket"} 1`,
		`kpf_tunnel_dial_duration_seconds_bucket{file="/p/kpf.yaml",forward="db",namespace="shop",target="statefulset/db",transport="websocket",le="0.05"} 1`,
		`kpf_forward_healthy{file="/p/kpf.yaml",forward="db",namespace="shop",target="statefulset/db"} 0`,
		`kpf_forward_info{file="/p/kpf.yaml",forward="db",namespace="shop",pod="db-0",target="statefulset/db",transport="websocket"} 1`,
		`kpf_forward_ready{file="",forward="api",namespace="shop",target="svc/api"} 0`,
		`kpf_udp_peers{file="",forward="dns",namespace="kube-system",target="svc/dns",transport="spdy"} 2`,
		`kpf_udp_client_datagrams_total{file="",forward="dns",namespace="kube-system",target="svc/dns",transport="spdy"} 9`,
		`kpf_udp_pod_datagrams_total{file="",forward="dns",namespace="kube-system",target="svc/dns",transport="spdy"} 7`,
		`kpf_udp_client_bytes_total{file="",forward="dns",namespace="kube-system",target="svc/dns",transport="spdy"} 900`,
		`kpf_udp_pod_bytes_total{file="",forward="dns",namespace="kube-system",target="svc/dns",transport="spdy"} 300`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s", want)
		}
	}
	if strings.Contains(out, `kpf_udp_peers{file="/p/kpf.yaml",forward="db"`) {
		t.Error("a forward without /udp ports has UDP metrics")
	}
	if strings.Contains(out, `kpf_forward_healthy{file="",forward="api"`) {
		t.Error("a forward without a health check has a healthy gauge")
	}
}

func TestListenWarnsOffLoopback(t *testing.T) {
	for addr, warns := range map[string]bool{"127.0.0.1:0": false, "localhost:0": false, "[::1]:0": false, "0.0.0.0:0": true, ":0": true} {
		var warn bytes.Buffer
		ln, err := Listen(addr, &warn)
		if err != nil {
			if strings.Contains(addr, "::1") {
				continue // no IPv6 here
			}
			t.Fatalf("%s: %v", addr, err)
		}
		ln.Close()
		if got := strings.Contains(warn.String(), "reachable from other machines"); got != warns {
			t.Errorf("%s: warning %q", addr, warn.String())
		}
	}
	if _, err := Listen("9090", io.Discard); err == nil || !strings.Contains(err.Error(), "HOST:PORT") {
		t.Errorf("9090: %v", err)
	}
}
