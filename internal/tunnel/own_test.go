package tunnel

import (
	"testing"

	"k8s.io/client-go/rest"
)

// Tunnels to one API server share a TLS configuration with a session
// cache (so later dials resume the session); the set stays bounded.
func TestTLSConfigsAreSharedAndBounded(t *testing.T) {
	a := &rest.Config{Host: "https://a.example", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	ca, err := tlsConfigFor(a)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := tlsConfigFor(a)
	if ca != again || ca.ClientSessionCache == nil {
		t.Fatalf("same REST configuration: got %p then %p, session cache %v", ca, again, ca.ClientSessionCache)
	}
	for range 3 * maxTLSConfigs {
		if _, err := tlsConfigFor(&rest.Config{Host: "https://b.example", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}); err != nil {
			t.Fatal(err)
		}
	}
	tlsConfigs.Lock()
	n := len(tlsConfigs.m)
	tlsConfigs.Unlock()
	if n > maxTLSConfigs {
		t.Fatalf("%d TLS configurations kept, want at most %d", n, maxTLSConfigs)
	}
}
