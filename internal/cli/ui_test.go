package cli

import (
	"slices"
	"testing"

	"github.com/kpf-dev/kpf/internal/ui"
	corev1 "k8s.io/api/core/v1"
)

// A container's ports as kpf ui lists them: TCP (also when the protocol
// is left out) and UDP; SCTP cannot be forwarded and is left out.
func TestUIPorts(t *testing.T) {
	spec := corev1.PodSpec{Containers: []corev1.Container{
		{Ports: []corev1.ContainerPort{{ContainerPort: 8080, Name: "http"}, {ContainerPort: 53, Name: "dns", Protocol: corev1.ProtocolUDP}}},
		{Ports: []corev1.ContainerPort{{ContainerPort: 9999, Protocol: corev1.ProtocolSCTP}, {ContainerPort: 5432, Protocol: corev1.ProtocolTCP}}},
	}}
	want := []ui.Port{{Port: 8080, Name: "http", Protocol: "TCP"}, {Port: 53, Name: "dns", Protocol: "UDP"}, {Port: 5432, Protocol: "TCP"}}
	if got := uiPorts(spec); !slices.Equal(got, want) {
		t.Fatalf("uiPorts = %+v, want %+v", got, want)
	}
}
