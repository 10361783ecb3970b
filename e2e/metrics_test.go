package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestPrometheusScrapesKpfUp: a real Prometheus (Debian's) scrapes kpf
// up running three forwards; PromQL gives back the bytes the clients
// moved through each (within 1%) and the connection counts, and promtool
// finds nothing wrong with the exposition.
func TestPrometheusScrapesKpfUp(t *testing.T) {
	needPrograms(t, "prometheus", "promtool")
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	echoPodIn(t, sb, ns)
	dir := t.TempDir()
	metricsPort := freePort(t)
	names := []string{"a", "b", "c"}
	var file strings.Builder
	fmt.Fprintf(&file, "metrics: 127.0.0.1:%d\nforwards:\n", metricsPort)
	locals := map[string]string{}
	for _, n := range names {
		p := freePort(t)
		locals[n] = fmt.Sprintf("127.0.0.1:%d", p)
		fmt.Fprintf(&file, "- {name: %s, namespace: %s, target: pod/echo, ports: [\"%d:7070\"]}\n", n, ns, p)
	}
	path := filepath.Join(dir, "kpf.yaml")
	if err := os.WriteFile(path, []byte(file.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	up := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "up", "-f", path, "--table", "never"))
	up.WaitLine(t, `metrics: http://127.0.0.1:\d+/metrics`, 30*time.Second)
	for _, n := range names {
		up.WaitLine(t, n+`: ready`, 60*time.Second)
	}
	// Traffic: forward i gets i+1 connections of known sizes each way.
	moved := map[string]int64{}
	conns := map[string]int{}
	for i, n := range names {
		for j := 0; j <= i; j++ {
			size := 100_000*(i+1) + 7*j
			if err := echoOnce(locals[n], size); err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			moved[n] += int64(size)
			conns[n]++
		}
	}
	scrape, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(scrape.Body)
	scrape.Body.Close()
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(string(body))
	if out, err := check.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	promPort := freePort(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("global: {scrape_interval: 1s}\nscrape_configs:\n- job_name: kpf\n  static_configs: [{targets: ['127.0.0.1:%d']}]\n", metricsPort)), 0o600)
	sandboxtest.Start(t, exec.Command("prometheus", "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort)))
	query := func(q string) (map[string]float64, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", promPort, url.QueryEscape(q)))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string
			Data   struct {
				Result []struct {
					Metric map[string]string
					Value  [2]any
				}
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, s := range r.Data.Result {
			v, _ := strconv.ParseFloat(s.Value[1].(string), 64)
			out[s.Metric["forward"]] = v
		}
		return out, nil
	}
	within := func(got float64, want int64) bool { return math.Abs(got-float64(want)) <= 0.01*float64(want) }
	for _, q := range []struct {
		promql string
		want   func(string) int64
	}{
		{"sum by (forward) (kpf_client_bytes_total)", func(n string) int64 { return moved[n] }},
		{"sum by (forward) (kpf_pod_bytes_total)", func(n string) int64 { return moved[n] }},
		{"sum by (forward) (kpf_connections_total)", func(n string) int64 { return int64(conns[n]) }},
		{"sum by (forward) (kpf_forward_ready)", func(string) int64 { return 1 }},
	} {
		var got map[string]float64
		sandboxtest.WaitFor(t, 60*time.Second, "Prometheus answering "+q.promql, func() (bool, error) {
			var err error
			got, err = query(q.promql)
			if err != nil {
				return false, nil
			}
			for _, n := range names {
				if !within(got[n], q.want(n)) {
					return false, nil
				}
			}
			return true, nil
		})
		t.Logf("%s: %v", q.promql, got)
	}
	// Every query of the Grafana dashboard we ship is valid PromQL that
	// finds kpf's series.
	dash, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var board struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &board); err != nil {
		t.Fatalf("docs/grafana-dashboard.json: %v", err)
	}
	for _, p := range board.Panels {
		for _, tg := range p.Targets {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", promPort, url.QueryEscape(tg.Expr)))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), `"status":"success"`) {
				t.Errorf("dashboard panel %q: %s: %s", p.Title, tg.Expr, b)
			}
		}
	}
	up.Stop()
}
