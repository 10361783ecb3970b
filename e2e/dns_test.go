package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

const dnsApp = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: dns}
spec:
  replicas: 1
  selector: {matchLabels: {app: dns}}
  template:
    metadata: {labels: {app: dns}}
    spec:
      containers:
      - name: dnsmasq
        image: dnsmasq
        command: [/usr/sbin/dnsmasq, --keep-in-foreground, --no-resolv, --no-hosts, --port=53, --user=root, --log-facility=-, "--address=/example.test/192.0.2.53"]
        ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]
        readinessProbe: {tcpSocket: {port: 53}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  selector: {app: dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}, {name: dns-tcp, port: 53, targetPort: dns-tcp}]
`

// dig asks the forward for example.test and returns the answer.
func dig(port int, extra ...string) (string, error) {
	args := append([]string{"@127.0.0.1", "-p", fmt.Sprint(port), "example.test", "+short", "+tries=1", "+time=2"}, extra...)
	out, err := exec.Command("dig", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestDigThroughUDPAndTCP: dig reaches a real DNS server (dnsmasq) in a
// pod through one kpf forward of its service's UDP and TCP port 53, and
// keeps getting answers while the server's deployment rolls.
func TestDigThroughUDPAndTCP(t *testing.T) {
	needPodNetwork(t)
	needPrograms(t, "dig")
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, dnsApp)
	sb.ReadyPods(t, ns, "app=dns", 1)
	port := freePort(t)
	p, _ := startUDP(t, sb, 1, "-n", ns, "svc/dns", fmt.Sprintf("%d:53/udp", port), fmt.Sprintf("%d:53", port))
	for _, mode := range [][]string{nil, {"+tcp"}} {
		if out, err := dig(port, mode...); err != nil || out != "192.0.2.53" {
			t.Fatalf("dig %v: %v %q\n%s", mode, err, out, p.Output())
		}
	}
	// A rollout while queries go on: the forward moves to the new pod.
	stop := make(chan struct{})
	done := make(chan [2]int)
	go func() {
		ok, failed := 0, 0
		for {
			select {
			case <-stop:
				done <- [2]int{ok, failed}
				return
			default:
			}
			if out, err := dig(port); err == nil && out == "192.0.2.53" {
				ok++
			} else {
				failed++
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	rollout(t, sb, ns, "deployment/dns")
	newPod := sb.ReadyPods(t, ns, "app=dns", 1)[0].Name
	p.WaitLine(t, `udp now to pod" pod=`+newPod, 30*time.Second)
	sandboxtest.WaitFor(t, 30*time.Second, "an answer from the new pod", func() (bool, error) {
		out, err := dig(port)
		return err == nil && out == "192.0.2.53", nil
	})
	close(stop)
	n := <-done
	t.Logf("during the rollout: %d queries answered, %d not (UDP: a query a server that stops drops is lost, as it would be)", n[0], n[1])
	if n[0] == 0 {
		t.Error("no query was answered during the rollout")
	}
}
