package node

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// startDNS serves h on a free loopback port and returns its address.
func startDNS(t *testing.T, h dns.Handler) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: h}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func query(t *testing.T, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := (&dns.Client{}).Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r
}

func answers(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.CNAME:
			out = append(out, "CNAME "+rr.Target)
		}
	}
	slices.Sort(out)
	return out
}

func TestClusterDNS(t *testing.T) {
	// The node's nameserver: answers example.org. with 192.0.2.7.
	upstream := startDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "example.org." {
			rr, _ := dns.NewRR("example.org. 60 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	}))
	svcs := newServices()
	svcs.setService(testService("10.96.3.4", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}), false)
	headless := testService(corev1.ClusterIPNone)
	headless.Name = "db"
	svcs.setService(headless, false)
	es := testSlice("db-1", "pg", corev1.ProtocolTCP, 5432, map[string]bool{"198.18.0.5": true, "198.18.0.6": true, "198.18.0.7": false})
	es.Labels["kubernetes.io/service-name"] = "db"
	host := "db-0"
	for i := range es.Endpoints {
		if es.Endpoints[i].Addresses[0] == "198.18.0.5" {
			es.Endpoints[i].Hostname = &host
		}
	}
	svcs.setSlice(es, false)
	svcs.setService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ext"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}}, false)
	for name, target := range map[string]string{"inner": "web.ns.svc.cluster.local", "chain": "inner.ns.svc.cluster.local", "loop": "loop.ns.svc.cluster.local", "gone": "nowhere.example"} {
		svcs.setService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target}}, false)
	}

	server := startDNS(t, &clusterDNS{log: slog.New(slog.NewTextHandler(io.Discard, nil)), svcs: svcs, upstream: []string{upstream}})
	for _, tc := range []struct {
		name  string
		rcode int
		want  []string
	}{
		{"web.ns.svc.cluster.local", dns.RcodeSuccess, []string{"10.96.3.4"}},
		{"WEB.ns.svc.cluster.local", dns.RcodeSuccess, []string{"10.96.3.4"}},
		{"db.ns.svc.cluster.local", dns.RcodeSuccess, []string{"198.18.0.5", "198.18.0.6"}},
		{"db-0.db.ns.svc.cluster.local", dns.RcodeSuccess, []string{"198.18.0.5"}},
		// With the target's records: a pod's resolver does not follow a
		// bare CNAME (it answered the CNAME alone).
		{"ext.ns.svc.cluster.local", dns.RcodeSuccess, []string{"192.0.2.7", "CNAME example.org."}},
		{"inner.ns.svc.cluster.local", dns.RcodeSuccess, []string{"10.96.3.4", "CNAME web.ns.svc.cluster.local."}},
		{"chain.ns.svc.cluster.local", dns.RcodeSuccess, []string{"10.96.3.4", "CNAME inner.ns.svc.cluster.local.", "CNAME web.ns.svc.cluster.local."}},
		{"loop.ns.svc.cluster.local", dns.RcodeSuccess, []string{"CNAME loop.ns.svc.cluster.local."}}, // a loop: stops
		{"gone.ns.svc.cluster.local", dns.RcodeSuccess, []string{"CNAME nowhere.example."}},
		{"10-1-2-3.ns.pod.cluster.local", dns.RcodeSuccess, []string{"10.1.2.3"}},
		{"web.other.svc.cluster.local", dns.RcodeNameError, nil},
		{"web.ns.ns.svc.cluster.local", dns.RcodeNameError, nil}, // a search path's first try
		{"nothing.cluster.local", dns.RcodeNameError, nil},
		{"example.org", dns.RcodeSuccess, []string{"192.0.2.7"}}, // forwarded
		{"nowhere.example", dns.RcodeNameError, nil},             // forwarded
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := query(t, server, tc.name, dns.TypeA)
			if r.Rcode != tc.rcode || !slices.Equal(answers(r), tc.want) {
				t.Errorf("%s: rcode %s answers %v; want %s %v", tc.name, dns.RcodeToString[r.Rcode], answers(r), dns.RcodeToString[tc.rcode], tc.want)
			}
		})
	}
	if r := query(t, server, "web.ns.svc.cluster.local", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA of an IPv4 Service: %s %v; want NOERROR and no answer", dns.RcodeToString[r.Rcode], r.Answer)
	}
	// Without a nameserver to forward to, outside names fail.
	bare := startDNS(t, &clusterDNS{log: slog.New(slog.NewTextHandler(io.Discard, nil)), svcs: svcs})
	if r := query(t, bare, "example.org", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstream: %s; want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

func TestHostNameserversSkipTheClusterDNS(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("nameserver 10.96.0.10\nnameserver 198.18.0.1\nnameserver 192.0.2.53\n"), 0o644)
	if got := hostNameservers(p); !slices.Equal(got, []string{"192.0.2.53:53"}) {
		t.Errorf("hostNameservers = %v, want [192.0.2.53:53]", got)
	}
}

func TestPodResolvConf(t *testing.T) {
	host := []byte("# the node's\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n")
	five := "2"
	for _, tc := range []struct {
		name string
		spec corev1.PodSpec
		want string
	}{
		{"ClusterFirst by default", corev1.PodSpec{},
			"nameserver 10.96.0.10\nsearch app.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"},
		{"Default is the node's", corev1.PodSpec{DNSPolicy: corev1.DNSDefault},
			"nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"},
		{"None is dnsConfig's", corev1.PodSpec{DNSPolicy: corev1.DNSNone, DNSConfig: &corev1.PodDNSConfig{
			Nameservers: []string{"192.0.2.1"}, Searches: []string{"a.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &five}}}},
			"nameserver 192.0.2.1\nsearch a.example\noptions ndots:2\n"},
		{"ClusterFirst with dnsConfig", corev1.PodSpec{DNSConfig: &corev1.PodDNSConfig{
			Searches: []string{"b.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &five}, {Name: "rotate"}}}},
			"nameserver 10.96.0.10\nsearch app.svc.cluster.local svc.cluster.local cluster.local corp.example b.example\noptions ndots:2 rotate\n"},
		{"host network ClusterFirst is Default", corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirst},
			"nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app"}, Spec: tc.spec}
			if got := podResolvConf(pod, host).String(); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	if got := strings.Count(podResolvConf(&corev1.Pod{}, nil).String(), "nameserver"); got != 1 {
		t.Errorf("no host resolv.conf: %d nameservers, want the cluster DNS only", got)
	}
}

// FuzzParseResolvConf: any file parses, and what a parsed file writes
// parses back to the same settings.
func FuzzParseResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 192.0.2.53\nsearch a.example b.example\noptions ndots:5 edns0\n"))
	f.Add([]byte("# comment\n; other\ndomain x\nnameserver\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rc := parseResolvConf(b)
		again := parseResolvConf([]byte(rc.String()))
		if rc.String() != again.String() {
			t.Errorf("%q parses to\n%s\nwhich parses to\n%s", b, rc, again)
		}
	})
}
