package discover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/testnet"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func svc(name string, lbls map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: lbls},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports},
	}
}

func tcp(p int32) corev1.ServicePort {
	return corev1.ServicePort{Port: p, Protocol: corev1.ProtocolTCP}
}

func entry(selector string, auto bool) config.Forward {
	e := config.Forward{Name: "discover-shop", Namespace: "shop", Discover: &config.Discover{Selector: selector, Kinds: config.DiscoverKinds}}
	if auto {
		e.AutoAddress = true
	} else {
		e.Addresses = []string{"localhost"}
	}
	return e
}

// TestForwards: a forward per port of each selected service, named
// NAME.NAMESPACE:PORT, at the service's own address with address: auto;
// what cannot be forwarded is said, not silently dropped.
func TestForwards(t *testing.T) {
	ext := svc("ext", nil, tcp(80))
	ext.Spec.Type = corev1.ServiceTypeExternalName
	bare := svc("bare", nil, tcp(80))
	bare.Spec.Selector = nil
	other := svc("elsewhere", nil, tcp(80))
	other.Namespace = "other"
	dns := svc("dns", map[string]string{"tier": "infra"}, corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}, tcp(53), corev1.ServicePort{Port: 9, Protocol: corev1.ProtocolSCTP})
	api := svc("api", map[string]string{"tier": "web"}, tcp(8080), tcp(9090))
	all := []*corev1.Service{dns, ext, api, bare, other}

	fws, skipped, err := Forwards(entry("", true), all, nil, &Addresses{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, fw := range fws {
		names = append(names, fw.Name)
		if fw.Owner != "discover-shop" || fw.Namespace != "shop" || len(fw.Ports) != 1 || !fw.Ports[0].LocalSet || !fw.AutoAddress || len(fw.Addresses) != 1 {
			t.Errorf("%s: %+v", fw.Name, fw)
		}
	}
	if want := []string{"api.shop:8080", "api.shop:9090", "dns.shop:53/udp", "dns.shop:53"}; !slices.Equal(names, want) {
		t.Errorf("forwards %v, want %v", names, want)
	}
	if fws[0].Target != "svc/api" || fws[0].Ports[0].Local != 8080 || fws[0].Ports[0].Remote != "8080" || fws[0].Ports[0].UDP {
		t.Errorf("api:8080 = %+v", fws[0])
	}
	if !fws[2].Ports[0].UDP || fws[3].Ports[0].UDP {
		t.Errorf("dns: UDP %v, TCP %v", fws[2].Ports[0], fws[3].Ports[0])
	}
	if fws[0].Addresses[0] != fws[1].Addresses[0] || fws[0].Addresses[0] == fws[2].Addresses[0] {
		t.Errorf("a service's ports share its address, services differ: %v %v %v", fws[0].Addresses, fws[1].Addresses, fws[2].Addresses)
	}
	if want := config.AutoAddress("", "shop", "svc/api", 0).String(); fws[0].Addresses[0] != want {
		t.Errorf("api at %s, want %s (kpf.yaml's address: auto for svc/api)", fws[0].Addresses[0], want)
	}
	want := "bare (no selector: no pods to forward to)|dns port 9 (SCTP: kpf forwards TCP and UDP)|ext (ExternalName: nothing in the cluster to forward to)"
	if got := strings.Join(skipped, "|"); got != want {
		t.Errorf("skipped:\n %s\nwant\n %s", got, want)
	}

	fws, _, _ = Forwards(entry("tier=web", false), all, nil, &Addresses{})
	if len(fws) != 2 || fws[0].Name != "api.shop:8080" || fws[0].Addresses[0] != "localhost" || fws[0].AutoAddress {
		t.Errorf("-l tier=web, localhost: %+v", fws)
	}
	if _, _, err := Forwards(entry("tier in (", false), all, nil, &Addresses{}); err == nil {
		t.Error("a bad selector: no error")
	}
}

// TestAddressesCollide: two services whose targets hash to one address
// get two addresses, and each keeps its own.
func TestAddressesCollide(t *testing.T) {
	byAddr := map[string]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		name := fmt.Sprintf("svc/s%d", i)
		addr := config.AutoAddress("", "shop", name, 0).String()
		if prev, ok := byAddr[addr]; ok {
			a, b = prev, name
		}
		byAddr[addr] = name
	}
	var as Addresses
	x, y := as.Of("", "shop", a), as.Of("", "shop", b)
	if x == y {
		t.Fatalf("%s and %s both at %s", a, b, x)
	}
	if as.Of("", "shop", b) != y || as.Of("", "shop", a) != x {
		t.Error("an address changed on a second look")
	}
}

// recorder is Run's apply: the sets it was given.
type recorder struct {
	mu   sync.Mutex
	sets [][]string
	note string
}

func (r *recorder) apply(fws []config.Forward, note string) {
	var names []string
	for _, fw := range fws {
		names = append(names, fw.Name+"@"+fw.Addresses[0])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, names)
	r.note = note
}

func (r *recorder) last() (string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return "<none>", ""
	}
	var names []string
	for _, n := range r.sets[len(r.sets)-1] {
		name, _, _ := strings.Cut(n, "@")
		names = append(names, name)
	}
	return strings.Join(names, " "), r.note
}

// TestRunFollowsTheCluster: a service made, changed and deleted shows in
// the next set within seconds; 50 made at once, for two entries of the
// namespace, cost one list and one watch of services.
func TestRunFollowsTheCluster(t *testing.T) {
	cs := fake.NewClientset(svc("api", nil, tcp(8080)))
	var lists, watches atomic.Int64
	cs.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		lists.Add(1)
		return false, nil, nil
	})
	cs.PrependWatchReactor("services", func(k8stesting.Action) (bool, watch.Interface, error) {
		watches.Add(1)
		return false, nil, nil
	})
	w := NewWatches(cs)
	defer w.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	var r, web recorder
	done := make(chan error, 2)
	pw := follow.NewWatches(cs)
	defer pw.Stop()
	go func() { done <- Run(ctx, w, pw, entry("", true), r.apply) }()
	go func() { done <- Run(ctx, w, pw, entry("tier=web", false), web.apply) }()
	expect := func(rec *recorder, want string) {
		t.Helper()
		testnet.Within(t, 5*time.Second, "the set "+want, func() bool { got, _ := rec.last(); return got == want })
	}
	expect(&r, "api.shop:8080")
	expect(&web, "")
	svcs := cs.CoreV1().Services("shop")
	if _, err := svcs.Create(ctx, svc("db", map[string]string{"tier": "web"}, tcp(5432)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(&r, "api.shop:8080 db.shop:5432")
	expect(&web, "db.shop:5432")
	db, _ := svcs.Get(ctx, "db", metav1.GetOptions{})
	db.Spec.Ports[0].Port = 5433
	if _, err := svcs.Update(ctx, db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(&r, "api.shop:8080 db.shop:5433")
	if err := svcs.Delete(ctx, "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(&r, "db.shop:5433")
	want := []string{"db.shop:5433"}
	for i := range 50 {
		if _, err := svcs.Create(ctx, svc(fmt.Sprintf("s%02d", i), nil, tcp(80)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("s%02d.shop:80", i))
	}
	expect(&r, strings.Join(want, " "))
	if _, note := r.last(); note != "51 forwards of services in shop" {
		t.Errorf("note %q", note)
	}
	// Every service at an address of its own.
	r.mu.Lock()
	addrs := map[string]bool{}
	for _, n := range r.sets[len(r.sets)-1] {
		_, a, _ := strings.Cut(n, "@")
		addrs[a] = true
	}
	r.mu.Unlock()
	if len(addrs) != 51 {
		t.Errorf("51 services at %d addresses", len(addrs))
	}
	if l, wa := lists.Load(), watches.Load(); l != 1 || wa != 1 {
		t.Errorf("two entries, 52 services: %d lists and %d watches of services, want 1 and 1", l, wa)
	}
	if n := w.Namespaces(); n != 1 {
		t.Errorf("%d namespaces watched, want 1", n)
	}
	if n := pw.Namespaces(); n != 0 {
		t.Errorf("no headless service, and %d namespaces' pods watched", n)
	}

	// A headless service: a forward per pod, following its pods, on the
	// shared pod watch.
	for _, p := range []*corev1.Pod{pod("db-0", corev1.PodRunning), pod("db-1", corev1.PodPending), pod("db-2", corev1.PodSucceeded), pod("web-1", corev1.PodRunning)} {
		if _, err := cs.CoreV1().Pods("shop").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		if err := svcs.Delete(ctx, fmt.Sprintf("s%02d", i), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	headless := svc("db", map[string]string{"tier": "web"}, corev1.ServicePort{Port: 5432, TargetPort: intstr.FromString("pg")})
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	headless.Spec.Selector = map[string]string{"app": "db"}
	if err := svcs.Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(&web, "db-0.db.shop:5432 db-1.db.shop:5432")
	if err := cs.CoreV1().Pods("shop").Delete(ctx, "db-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(&web, "db-0.db.shop:5432")
	expect(&r, "db-0.db.shop:5432")
	if n := pw.Namespaces(); n != 1 {
		t.Errorf("%d namespaces' pods watched, want 1", n)
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	testnet.Within(t, 5*time.Second, "the watches to stop with their last entry", func() bool { return w.Namespaces() == 0 && pw.Namespaces() == 0 })
}

func pod(name string, phase corev1.PodPhase) *corev1.Pod {
	app, _, _ := strings.Cut(name, "-")
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{"app": app}}, Status: corev1.PodStatus{Phase: phase}}
}

// TestHeadlessForwards: a headless service is forwarded per pod, at the
// pod's address of its own, to the service's target port.
func TestHeadlessForwards(t *testing.T) {
	db := svc("db", nil, corev1.ServicePort{Port: 5432, TargetPort: intstr.FromString("pg")}, corev1.ServicePort{Port: 9187, TargetPort: intstr.FromInt32(9100)}, tcp(80))
	db.Spec.ClusterIP = corev1.ClusterIPNone
	gone := pod("db-9", corev1.PodRunning)
	gone.DeletionTimestamp = &metav1.Time{}
	elsewhere := pod("db-8", corev1.PodRunning)
	elsewhere.Namespace = "other"
	pods := []*corev1.Pod{pod("db-1", corev1.PodRunning), pod("db-0", corev1.PodRunning), pod("web-0", corev1.PodRunning), gone, elsewhere, pod("db-7", corev1.PodFailed)}
	fws, skipped, err := Forwards(entry("", true), []*corev1.Service{db}, pods, &Addresses{})
	if err != nil || len(skipped) != 0 {
		t.Fatal(err, skipped)
	}
	var got []string
	for _, fw := range fws {
		got = append(got, fmt.Sprintf("%s %s %s %s", fw.Name, fw.Target, fw.Ports[0], fw.Addresses[0]))
	}
	a0, a1 := config.AutoAddress("", "shop", "pod/db-0", 0), config.AutoAddress("", "shop", "pod/db-1", 0)
	want := []string{
		fmt.Sprintf("db-0.db.shop:5432 pod/db-0 5432:pg %s", a0), fmt.Sprintf("db-0.db.shop:9187 pod/db-0 9187:9100 %s", a0), fmt.Sprintf("db-0.db.shop:80 pod/db-0 80:80 %s", a0),
		fmt.Sprintf("db-1.db.shop:5432 pod/db-1 5432:pg %s", a1), fmt.Sprintf("db-1.db.shop:9187 pod/db-1 9187:9100 %s", a1), fmt.Sprintf("db-1.db.shop:80 pod/db-1 80:80 %s", a1),
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n %s\nwant\n %s", strings.Join(got, "\n "), strings.Join(want, "\n "))
	}
	// A service whose targetPort changes (the session resolves it when
	// it opens): its forward differs, and so restarts.
	api := svc("api", nil, corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8080)})
	before, _, _ := Forwards(entry("", true), []*corev1.Service{api}, nil, &Addresses{})
	api.Spec.Ports[0].TargetPort = intstr.FromString("http")
	after, _, _ := Forwards(entry("", true), []*corev1.Service{api}, nil, &Addresses{})
	if same(before[0], after[0]) || before[0].Source != "targetPort 8080" || after[0].Source != "targetPort http" {
		t.Errorf("a changed targetPort: %+v, then %+v", before[0], after[0])
	}

	_, skipped, _ = Forwards(entry("", true), []*corev1.Service{db}, nil, &Addresses{})
	if !slices.Equal(skipped, []string{"db (headless: no pods yet)"}) {
		t.Errorf("no pods: skipped %v", skipped)
	}
}

// TestRunSaysWhyItCannotList: services that may not be listed end Run
// with the API's error (Forbidden: the CLI explains it, the manager
// retries it slowly), and no set is applied.
func TestRunSaysWhyItCannotList(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", errors.New("no"))
	})
	w := NewWatches(cs)
	defer w.Stop()
	var r recorder
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Run(ctx, w, follow.NewWatches(cs), entry("", true), r.apply)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "watch services in namespace shop: ") {
		t.Errorf("Run: %v, want a Forbidden error naming the namespace", err)
	}
	if got, _ := r.last(); got != "<none>" {
		t.Errorf("applied %q", got)
	}
}
