package tunnel

import (
	"context"
	"errors"
	"testing"

	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/testnet"
)

// A connection given a tunnel that has closed (a proxy cut it while kpf
// was stopped) fails with ErrNotOpened, which says that nothing of it
// reached the pod, so that the follower may send it on another tunnel.
// On both data paths.
func TestClosedTunnelOpensNoStreams(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, "ns", "web", nil, true, fakeapi.Echo(t, "web"))
	for _, dp := range []DataPath{OwnDataPath, ClientGoDataPath} {
		t.Run(string(dp), func(t *testing.T) {
			c, err := Dial(context.Background(), APIServer{Config: s.Config}, "ns", "web", SPDY, dp)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			client, server := testnet.TCPPair(t)
			defer client.Close()
			client.Write([]byte("hello"))
			_, err = c.Forward(server, 80, nil)
			if !errors.Is(err, ErrNotOpened) {
				t.Fatalf("Forward on a closed tunnel: %v, want ErrNotOpened", err)
			}
		})
	}
}
