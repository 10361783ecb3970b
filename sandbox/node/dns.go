package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// clusterDNS is the cluster's DNS server, as CoreDNS with its kubernetes
// plugin is on a real cluster, served by the node (on its pod network
// address, 198.18.0.1:53) behind the kube-system/kube-dns Service at
// ClusterDNS, whose EndpointSlice the agent writes. It answers, from the
// Services and EndpointSlices it watches:
//
//	SVC.NS.svc.cluster.local        A: the ClusterIP; a headless Service's
//	                                ready endpoint IPs; ExternalName: CNAME,
//	                                with the target's records (as CoreDNS)
//	HOST.SVC.NS.svc.cluster.local   A: a headless Service's ready endpoint
//	                                with that hostname (StatefulSet pods)
//	A-B-C-D.NS.pod.cluster.local    A: A.B.C.D (CoreDNS's "pods insecure")
//
// and NXDOMAIN for any other name in cluster.local. Every other name goes
// to the nameservers of the node's /etc/resolv.conf, and their answer is
// the pod's (CoreDNS's "forward . /etc/resolv.conf"); without one it is
// SERVFAIL.
type clusterDNS struct {
	log      *slog.Logger
	svcs     *services
	upstream []string // host:port
}

// dnsTTL is CoreDNS's kubernetes plugin default.
const dnsTTL = 5

const zone = ClusterDomain + "."

// dnsAddr is where the node serves the cluster DNS: its address on the pod
// network.
var dnsAddr = netip.MustParseAddrPort("198.18.0.1:53")

// hostNameservers are the nameservers of resolv.conf at path, as host:port,
// leaving out any that would send a query back to the cluster DNS.
func hostNameservers(path string) []string {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	svcNet := netip.MustParsePrefix(ServiceCIDR)
	var out []string
	for _, s := range cfg.Servers {
		if a, err := netip.ParseAddr(s); err == nil && (svcNet.Contains(a) || a == dnsAddr.Addr()) {
			continue
		}
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	return out
}

// serve answers on addr (UDP and TCP) until ctx ends.
func (d *clusterDNS) serve(ctx context.Context, addr string) error {
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("cluster DNS: %w", err)
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("cluster DNS: %w", err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: d}
	tcp := &dns.Server{Listener: ln, Handler: d}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	go func() {
		<-ctx.Done()
		udp.Shutdown()
		tcp.Shutdown()
	}()
	return nil
}

// ServeDNS answers one query.
func (d *clusterDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	if !dns.IsSubDomain(zone, strings.ToLower(q.Name)) {
		w.WriteMsg(d.forward(r, w.RemoteAddr().Network()))
		return
	}
	w.WriteMsg(d.answer(r))
}

// answer answers a query for a name in the cluster's zone, an
// ExternalName's CNAME followed.
func (d *clusterDNS) answer(r *dns.Msg) *dns.Msg {
	m := d.lookup(r)
	d.chase(m, r.Question[0], 0)
	return m
}

// lookup answers a query for a name in the cluster's zone from its
// records alone.
func (d *clusterDNS) lookup(r *dns.Msg) *dns.Msg {
	q := r.Question[0]
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	name := strings.ToLower(q.Name)
	labels := dns.SplitDomainName(strings.TrimSuffix(name, zone))
	var rrs []dns.RR
	found := false
	switch n := len(labels); {
	case n == 0:
		found = true // the zone itself
		if q.Qtype == dns.TypeSOA {
			rrs = append(rrs, d.soa())
		}
	case n == 3 && labels[2] == "svc":
		rrs, found = d.service(q.Name, labels[1]+"/"+labels[0])
	case n == 4 && labels[3] == "svc":
		for _, e := range d.svcs.ready(labels[2] + "/" + labels[1]) {
			if e.hostname == labels[0] && d.headless(labels[2]+"/"+labels[1]) {
				rrs, found = append(rrs, aRecord(q.Name, e.addr)), true
			}
		}
	case n == 3 && labels[2] == "pod":
		if a, err := netip.ParseAddr(strings.ReplaceAll(labels[0], "-", ".")); err == nil && a.Is4() {
			rrs, found = []dns.RR{aRecord(q.Name, a)}, true
		}
	}
	if !found {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{d.soa()}
		return m
	}
	for _, rr := range rrs {
		if t := rr.Header().Rrtype; t == q.Qtype || q.Qtype == dns.TypeANY || t == dns.TypeCNAME {
			m.Answer = append(m.Answer, rr)
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{d.soa()} // the name is there, not this type
	}
	return m
}

// maxChase bounds a chain of CNAMEs (ExternalName Services naming each
// other) followed in one answer.
const maxChase = 8

// chase follows a CNAME that ends m's answer (an ExternalName Service's)
// as CoreDNS does: the target's records of q's type are added to the
// answer, from the cluster's own records when the target is in its zone,
// else from the node's nameservers. A resolver in a pod does not follow
// a bare CNAME itself: ext.NS.svc.cluster.local failed from a pod.
func (d *clusterDNS) chase(m *dns.Msg, q dns.Question, depth int) {
	if len(m.Answer) == 0 || q.Qtype == dns.TypeCNAME || q.Qtype == dns.TypeANY || depth >= maxChase {
		return
	}
	cname, ok := m.Answer[len(m.Answer)-1].(*dns.CNAME)
	if !ok {
		return
	}
	for _, rr := range m.Answer {
		if strings.EqualFold(rr.Header().Name, cname.Target) {
			return // a loop: the CNAMEs so far
		}
	}
	next := new(dns.Msg)
	next.SetQuestion(cname.Target, q.Qtype)
	next.RecursionDesired = true
	var got *dns.Msg
	if dns.IsSubDomain(zone, strings.ToLower(cname.Target)) {
		got = d.lookup(next)
	} else {
		got = d.forward(next, "udp")
	}
	if got.Rcode != dns.RcodeSuccess {
		return // the CNAME alone, as before: the pod's resolver may try
	}
	m.Answer = append(m.Answer, got.Answer...)
	if dns.IsSubDomain(zone, strings.ToLower(cname.Target)) {
		d.chase(m, q, depth+1)
	}
}

func (d *clusterDNS) headless(key string) bool {
	svc := d.svcs.service(key)
	return svc != nil && svc.Spec.ClusterIP == corev1.ClusterIPNone
}

// service is a Service's records, and whether it exists with any.
func (d *clusterDNS) service(qname, key string) ([]dns.RR, bool) {
	svc := d.svcs.service(key)
	if svc == nil {
		return nil, false
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return []dns.RR{&dns.CNAME{
			Hdr:    dns.RR_Header{Name: qname, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: dnsTTL},
			Target: dns.Fqdn(svc.Spec.ExternalName),
		}}, true
	}
	var rrs []dns.RR
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		for _, e := range d.svcs.ready(key) {
			if e.addr.Is4() {
				rrs = append(rrs, aRecord(qname, e.addr))
			}
		}
		return rrs, len(rrs) > 0
	}
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil && a.Is4() {
			rrs = append(rrs, aRecord(qname, a))
		}
	}
	return rrs, true
}

func aRecord(name string, a netip.Addr) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL}, A: a.AsSlice()}
}

func (d *clusterDNS) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: dnsTTL},
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: dnsTTL,
	}
}

// forward asks the node's nameservers, over the transport the query came
// on; SERVFAIL if none answers.
func (d *clusterDNS) forward(r *dns.Msg, network string) *dns.Msg {
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	if network == "tcp" {
		c.Net = "tcp"
	}
	for _, up := range d.upstream {
		resp, _, err := c.Exchange(r, up)
		if err == nil && resp.Truncated && c.Net == "udp" {
			resp, _, err = (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(r, up)
		}
		if err == nil {
			resp.Id = r.Id
			return resp
		}
		d.log.Debug("cluster DNS: forward", "upstream", up, "err", err)
	}
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeServerFailure)
	return m
}

// ensureDNSService makes the kube-system/kube-dns Service at ClusterDNS (no
// selector: its one endpoint, in an EndpointSlice the agent owns, is the
// node's DNS server), as a cluster's DNS add-on is installed. A kube-dns
// Service already there is kept.
func ensureDNSService(ctx context.Context, cs kubernetes.Interface, nodeName string) error {
	labels := map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "kpf-sandbox-dns", "app.kubernetes.io/managed-by": "kpf-sandbox"}
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: metav1.NamespaceSystem, Labels: labels},
		Spec: corev1.ServiceSpec{
			ClusterIP:  ClusterDNS,
			ClusterIPs: []string{ClusterDNS},
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: udp},
				{Name: "dns-tcp", Port: 53, Protocol: tcp},
			},
		},
	}
	_, err := cs.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Service kube-system/kube-dns at %s: %w", ClusterDNS, err)
	}
	name, port, ready := "dns", int32(dnsAddr.Port()), true
	nameTCP := "dns-tcp"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns-node", Namespace: metav1.NamespaceSystem, Labels: map[string]string{
			discoveryv1.LabelServiceName: "kube-dns",
			discoveryv1.LabelManagedBy:   "kpf-sandbox-node",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{dnsAddr.Addr().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			NodeName:   &nodeName,
		}},
		Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &udp}, {Name: &nameTCP, Port: &port, Protocol: &tcp}},
	}
	slices := cs.DiscoveryV1().EndpointSlices(slice.Namespace)
	if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		cur, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		slice.ResourceVersion = cur.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		return err
	} else if err != nil {
		return fmt.Errorf("create EndpointSlice kube-system/kube-dns-node: %w", err)
	}
	return nil
}
