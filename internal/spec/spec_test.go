package spec

import (
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/spf13/pflag"
)

func TestFlagsStoreCanonicalValuesAndValidateNamesBadOnes(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // error, or "" for none
	}{
		{nil, ""},
		{[]string{"--transport", "WebSocket", "--data-path", "client-go"}, ""},
		{[]string{"--transport", "carrier-pigeon"}, `--transport "carrier-pigeon": want auto, websocket or spdy`},
		{[]string{"--data-path", "fast"}, `--data-path "fast": want kpf or client-go`},
		{[]string{"--reconnect-wait", "0s"}, "--reconnect-wait 0s: must be higher than zero"},
		{[]string{"--pod-running-timeout", "-1s"}, "--pod-running-timeout must be higher than zero"},
		{[]string{"--max-retries", "-2"}, "--max-retries -2: must be 0 (no limit) or more"},
		{[]string{"--idle-timeout", "-1s"}, "--idle-timeout -1s: must be 0 (never) or more"},
		{[]string{"--ping-interval", "5s"}, ""},
		{[]string{"--ping-interval", "500ms"}, "--ping-interval 500ms: must be 1s or more"},
		{[]string{"--ping-interval", "-1s"}, "--ping-interval -1s: must be 1s or more"},
	} {
		s := Defaults()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		s.AddFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		err := s.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.args, err)
		case c.want != "" && (err == nil || err.Error() != c.want):
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
		if len(c.args) > 0 && c.args[1] == "WebSocket" && (s.Transport != tunnel.WebSocket || s.DataPath != tunnel.ClientGoDataPath) {
			t.Errorf("stored %q %q, want the canonical websocket and client-go", s.Transport, s.DataPath)
		}
	}
}

// A user who types --ping-interval 0 means no pings; 0 in the settings is
// the default (15 s), so the flag refuses it, naming the flag and the fix.
func TestPingIntervalZeroIsRefused(t *testing.T) {
	s := Defaults()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	s.AddFlags(fs)
	err := fs.Parse([]string{"--ping-interval", "0"})
	want := `invalid argument "0" for "--ping-interval" flag: pings cannot be turned off; give 1s or more (the default is 15s)`
	if err == nil || err.Error() != want {
		t.Fatalf("--ping-interval 0: %v, want %q", err, want)
	}
	if err := fs.Parse([]string{"--ping-interval", "20s"}); err != nil || s.PingInterval != 20*time.Second {
		t.Fatalf("--ping-interval 20s: %v, %s", err, s.PingInterval)
	}
	if fs.Lookup("ping-interval").Value.Type() != "duration" {
		t.Errorf("type %q, want duration (in help)", fs.Lookup("ping-interval").Value.Type())
	}
}

func TestOnlySomeFlagsAndTheSessionSpec(t *testing.T) {
	s := Defaults()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	s.AddFlags(fs, FlagTransport, FlagReconnectWait)
	if fs.Lookup(FlagMaxRetries) != nil || fs.Lookup(FlagTransport) == nil {
		t.Fatal("AddFlags bound other flags than those named")
	}
	fs.Parse([]string{"--reconnect-wait", "3s"})
	fw := config.Forward{Namespace: "ns", Target: "svc/api", Ports: []portspec.Port{{Remote: "80"}}, Addresses: []string{"localhost"}, Balance: true}
	sp, err := Session(fw, s)
	if err != nil || sp.ReconnectWait != 3*time.Second || sp.PodRunningTimeout != time.Minute || !sp.Balance || sp.Target != "svc/api" || len(sp.Addresses) != 2 {
		t.Fatalf("%+v, %v", sp, err)
	}
	if sp.PingInterval != tunnel.DefaultPingInterval {
		t.Errorf("ping interval %s, want the default %s", sp.PingInterval, tunnel.DefaultPingInterval)
	}
	fw.Addresses = []string{"nowhere"}
	if _, err := Session(fw, s); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Fatalf("a bad address: %v", err)
	}
}
