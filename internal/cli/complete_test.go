package cli

import (
	"context"
	"slices"
	"testing"

	"github.com/kpf-dev/kpf/internal/kube"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// fakeObjects is a cluster connection's clients, in namespace ns.
type fakeObjects struct{ client kube.Interface }

func (f fakeObjects) Client() kube.Interface { return f.client }
func (fakeObjects) Namespace() string        { return "ns" }

// Ports complete as they are forwarded: a UDP port as PORT/udp and
// :NAME/udp, a TCP one as PORT and :NAME, an SCTP one not at all.
func TestCompletePortsOffersUDPPortsWithTheirSuffix(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dns", Namespace: "ns"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			{Port: 9999, Protocol: corev1.ProtocolSCTP},
		}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
			{Name: "syslog", ContainerPort: 514, Protocol: corev1.ProtocolUDP},
			{ContainerPort: 8080},
		}}}}},
	)
	c := fakeObjects{cs}
	if got, want := completePorts(context.Background(), c, "svc/dns"), []string{"53/udp", ":dns/udp", "53", ":dns-tcp"}; !slices.Equal(got, want) {
		t.Errorf("svc/dns: %q, want %q", got, want)
	}
	if got, want := completePorts(context.Background(), c, "pod/p"), []string{"514/udp", ":syslog/udp", "8080"}; !slices.Equal(got, want) {
		t.Errorf("pod/p: %q, want %q", got, want)
	}
}
