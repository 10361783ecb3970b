// Package metrics serves kpf's forwards as Prometheus metrics: per
// forward and port, connections (accepted, open, failed by reason) and
// bytes each way; per forward, tunnel dials, reconnects, pod switches,
// ready and healthy state, and histograms of the tunnel dial time and of
// the time to the pod's first byte. Every label is bounded (forward,
// file, namespace, target, port, transport, reason; the pod only on
// kpf_forward_info): no client address ever becomes a label.
// docs/metrics.md lists them.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/kpf-dev/kpf/internal/proxy"

	"github.com/kpf-dev/kpf/internal/hist"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Forward is one forward at one moment.
type Forward struct {
	Name, File             string
	Namespace, Target, Pod string
	Ready                  bool
	Healthy                *bool // nil: no health check
	Session                *session.Metrics
	Proxy                  *proxy.Status // for a proxy of the file
}

// Source lists the forwards; it is called at every scrape.
type Source func() []Forward

var (
	fwdLabels  = []string{"forward", "file", "namespace", "target", "transport"}
	portLabels = append(append([]string{}, fwdLabels...), "port")
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	connsTotal   = desc("kpf_connections_total", "Connections accepted on a forward's local port.", portLabels...)
	connsFailed  = desc("kpf_connections_failed_total", "Connections that ended with an error, by reason: refused (nothing listens on the port in the pod), pod (another error the kubelet reported), no_pod (no ready pod within --reconnect-wait), stopped, tunnel.", append(append([]string{}, portLabels...), "reason")...)
	connsOpen    = desc("kpf_connections_open", "Connections open now.", portLabels...)
	bytesClient  = desc("kpf_client_bytes_total", "Bytes sent to the local clients, counted as they move.", portLabels...)
	bytesPod     = desc("kpf_pod_bytes_total", "Bytes sent to the pod, counted as they move.", portLabels...)
	dials        = desc("kpf_tunnel_dials_total", "Tunnels dialled to the API server (pods/portforward).", fwdLabels...)
	dialFailures = desc("kpf_tunnel_dial_failures_total", "Tunnel dials that failed.", fwdLabels...)
	reconnects   = desc("kpf_reconnects_total", "Tunnels redialled after one was lost.", fwdLabels...)
	switches     = desc("kpf_pod_switches_total", "Moves of new connections to another pod.", fwdLabels...)
	dialTime     = desc("kpf_tunnel_dial_duration_seconds", "Time to open a tunnel (TLS, upgrade, streams).", fwdLabels...)
	firstByte    = desc("kpf_first_byte_duration_seconds", "Time from accepting a connection to the pod's first byte reaching the client.", fwdLabels...)
	ready        = desc("kpf_forward_ready", "1 when the forward listens and has a pod, else 0.", "forward", "file", "namespace", "target")
	healthy      = desc("kpf_forward_healthy", "1 when the forward's health check passes, 0 when it fails; absent without a health check.", "forward", "file", "namespace", "target")
	pxConns      = desc("kpf_proxy_connections_total", "Connections a proxy carried to the cluster (or, with direct, outside it).", "forward", "file")
	pxOpen       = desc("kpf_proxy_connections_open", "Connections a proxy carries now.", "forward", "file")
	pxFailed     = desc("kpf_proxy_connections_failed_total", "Proxied connections that ended with an error.", "forward", "file")
	pxRefused    = desc("kpf_proxy_refused_total", "Requests a proxy refused: unknown names or ports, names outside the cluster, wrong credentials.", "forward", "file")
	pxClient     = desc("kpf_proxy_client_bytes_total", "Bytes a proxy sent to its clients.", "forward", "file")
	pxPod        = desc("kpf_proxy_pod_bytes_total", "Bytes a proxy sent to pods.", "forward", "file")
	udpPeers     = desc("kpf_udp_peers", "Local peers of a forward's /udp ports with a flow now.", fwdLabels...)
	udpClientDg  = desc("kpf_udp_client_datagrams_total", "Datagrams a forward's /udp ports sent to local peers.", fwdLabels...)
	udpPodDg     = desc("kpf_udp_pod_datagrams_total", "Datagrams a forward's /udp ports sent to the pod.", fwdLabels...)
	udpClientB   = desc("kpf_udp_client_bytes_total", "Datagram bytes a forward's /udp ports sent to local peers.", fwdLabels...)
	udpPodB      = desc("kpf_udp_pod_bytes_total", "Datagram bytes a forward's /udp ports sent to the pod.", fwdLabels...)
	info         = desc("kpf_forward_info", "1 per forward, with the pod it uses now (join on forward).", "forward", "file", "namespace", "target", "pod", "transport")
)

type collector struct{ src Source }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connsTotal, connsFailed, connsOpen, bytesClient, bytesPod, dials, dialFailures, reconnects, switches, dialTime, firstByte, ready, healthy, info, pxConns, pxOpen, pxFailed, pxRefused, pxClient, pxPod, udpPeers, udpClientDg, udpPodDg, udpClientB, udpPodB} {
		ch <- d
	}
}

func gauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range c.src() {
		if px := f.Proxy; px != nil {
			l := []string{f.Name, f.File}
			ch <- prometheus.MustNewConstMetric(pxConns, prometheus.CounterValue, float64(px.Total), l...)
			ch <- prometheus.MustNewConstMetric(pxOpen, prometheus.GaugeValue, float64(px.Open), l...)
			ch <- prometheus.MustNewConstMetric(pxFailed, prometheus.CounterValue, float64(px.Failed), l...)
			ch <- prometheus.MustNewConstMetric(pxRefused, prometheus.CounterValue, float64(px.Refused), l...)
			ch <- prometheus.MustNewConstMetric(pxClient, prometheus.CounterValue, float64(px.BytesIn), l...)
			ch <- prometheus.MustNewConstMetric(pxPod, prometheus.CounterValue, float64(px.BytesOut), l...)
		}
		base := []string{f.Name, f.File, f.Namespace, f.Target}
		ch <- prometheus.MustNewConstMetric(ready, prometheus.GaugeValue, gauge(f.Ready), base...)
		if f.Healthy != nil {
			ch <- prometheus.MustNewConstMetric(healthy, prometheus.GaugeValue, gauge(*f.Healthy), base...)
		}
		s := f.Session
		if s == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(info, prometheus.GaugeValue, 1, append(base[:4:4], f.Pod, s.Transport)...)
		fl := append(base[:4:4], s.Transport)
		ch <- prometheus.MustNewConstMetric(dials, prometheus.CounterValue, float64(s.Dials), fl...)
		ch <- prometheus.MustNewConstMetric(dialFailures, prometheus.CounterValue, float64(s.DialFailures), fl...)
		ch <- prometheus.MustNewConstMetric(reconnects, prometheus.CounterValue, float64(s.Reconnects), fl...)
		ch <- prometheus.MustNewConstMetric(switches, prometheus.CounterValue, float64(s.Switches), fl...)
		if u := s.UDP; u.Relay != "" {
			ch <- prometheus.MustNewConstMetric(udpPeers, prometheus.GaugeValue, float64(u.Peers), fl...)
			ch <- prometheus.MustNewConstMetric(udpClientDg, prometheus.CounterValue, float64(u.DatagramsIn), fl...)
			ch <- prometheus.MustNewConstMetric(udpPodDg, prometheus.CounterValue, float64(u.DatagramsOut), fl...)
			ch <- prometheus.MustNewConstMetric(udpClientB, prometheus.CounterValue, float64(u.BytesIn), fl...)
			ch <- prometheus.MustNewConstMetric(udpPodB, prometheus.CounterValue, float64(u.BytesOut), fl...)
		}
		ch <- histogram(dialTime, s.DialTime, fl)
		ch <- histogram(firstByte, s.FirstByte, fl)
		for _, p := range s.Ports {
			pl := append(fl[:5:5], strconv.Itoa(int(p.Remote)))
			ch <- prometheus.MustNewConstMetric(connsTotal, prometheus.CounterValue, float64(p.Total), pl...)
			ch <- prometheus.MustNewConstMetric(connsOpen, prometheus.GaugeValue, float64(p.Open), pl...)
			ch <- prometheus.MustNewConstMetric(bytesClient, prometheus.CounterValue, float64(p.BytesIn), pl...)
			ch <- prometheus.MustNewConstMetric(bytesPod, prometheus.CounterValue, float64(p.BytesOut), pl...)
			for _, reason := range session.Reasons {
				ch <- prometheus.MustNewConstMetric(connsFailed, prometheus.CounterValue, float64(p.Failed[reason]), append(pl[:6:6], reason)...)
			}
		}
	}
}

func histogram(d *prometheus.Desc, s hist.Snapshot, labels []string) prometheus.Metric {
	return prometheus.MustNewConstHistogram(d, s.Count, s.Sum, s.Buckets, labels...)
}

// Handler serves src's forwards, and Go's and the process's own
// metrics, at /metrics.
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "kpf metrics: /metrics\n")
	})
	return mux
}

// Listen opens addr for metrics. A host that is not loopback (or none,
// which is every address) is allowed, with a warning on warn: whoever
// reaches it sees the forwards' names, pods and traffic.
func Listen(addr string, warn io.Writer) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %q: want HOST:PORT, such as 127.0.0.1:9090", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w (is another program using the port? choose another)", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		fmt.Fprintf(warn, "warning: metrics on %s are reachable from other machines: they name your forwards, pods and traffic (use 127.0.0.1 to keep them on this machine)\n", ln.Addr())
	}
	return ln, nil
}

// Serve serves metrics on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener, src Source) error {
	srv := &http.Server{Handler: Handler(src), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
