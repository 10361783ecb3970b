package cli

import (
	"slices"
	"testing"
)

// kpf run gives each forward a dialable address and a port number, /udp
// ports too (dig -p $KPF_DNS_PORT @$KPF_DNS_HOST), and says the protocol
// in a variable of its own.
func TestForwardEnv(t *testing.T) {
	for _, c := range []struct {
		name, local string
		want        []string
	}{
		{"dns", "127.0.0.1:41878/udp", []string{"KPF_DNS_ADDR=127.0.0.1:41878", "KPF_DNS_HOST=127.0.0.1", "KPF_DNS_PORT=41878", "KPF_DNS_PROTO=udp"}},
		{"api.shop:8080", "[::1]:8080", []string{"KPF_API_SHOP_8080_ADDR=[::1]:8080", "KPF_API_SHOP_8080_HOST=::1", "KPF_API_SHOP_8080_PORT=8080", "KPF_API_SHOP_8080_PROTO=tcp"}},
	} {
		if got := forwardEnv(c.name, c.local); !slices.Equal(got, c.want) {
			t.Errorf("forwardEnv(%q, %q) = %q, want %q", c.name, c.local, got, c.want)
		}
	}
}
