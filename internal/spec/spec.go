// Package spec is the one description of a forward that every command and
// the daemon run: what to forward (a config.Forward: target, ports,
// addresses, balance, health), how (Settings: transport, reconnects,
// timeouts, data path) and as whom (an identity.Identity). Flags, kpf.yaml
// and defaults meet here and nowhere else: Defaults holds every default,
// AddFlags binds the same settings for every command, and Session is the
// only place a session.Spec is made.
package spec

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/spf13/pflag"
)

// Settings are how a forward runs. They travel to the daemon as JSON.
type Settings struct {
	Transport         tunnel.Transport `json:"transport"`
	PodRunningTimeout time.Duration    `json:"podRunningTimeout"`
	ReconnectWait     time.Duration    `json:"reconnectWait"`
	MaxRetries        int              `json:"maxRetries,omitempty"`
	NoReconnect       bool             `json:"noReconnect,omitempty"`
	IdleTimeout       time.Duration    `json:"idleTimeout,omitempty"`
	DataPath          tunnel.DataPath  `json:"dataPath"`
	// PingInterval is how often kpf's data path pings each tunnel; 0
	// (from a client that does not send it) is tunnel.DefaultPingInterval.
	PingInterval time.Duration `json:"pingInterval,omitempty"`
	// UDP ports: where the relay runs, its image, and when a peer's flow
	// ends.
	UDPRelay       string        `json:"udpRelay,omitempty"`
	RelayImage     string        `json:"relayImage,omitempty"`
	UDPIdleTimeout time.Duration `json:"udpIdleTimeout,omitempty"`
}

// DefaultRelayImage is the relay image when --relay-image is not given:
// this release's (set by the CLI, which knows the version).
var DefaultRelayImage = "ghcr.io/kpf-dev/kpf:latest"

// RelayModes are the values of --udp-relay.
var RelayModes = []string{"pod", "ephemeral"}

// Defaults are every setting's default, for every command.
func Defaults() Settings {
	return Settings{
		Transport:         tunnel.Auto,
		PodRunningTimeout: time.Minute,
		ReconnectWait:     30 * time.Second,
		DataPath:          tunnel.DefaultDataPath,
		PingInterval:      tunnel.DefaultPingInterval,
		UDPRelay:          "pod",
		UDPIdleTimeout:    time.Minute,
	}
}

// Flag names, for AddFlags' which.
const (
	FlagTransport         = "transport"
	FlagPodRunningTimeout = "pod-running-timeout"
	FlagReconnectWait     = "reconnect-wait"
	FlagMaxRetries        = "max-retries"
	FlagNoReconnect       = "no-reconnect"
	FlagIdleTimeout       = "idle-timeout"
	FlagDataPath          = "data-path"
	FlagUDPRelay          = "udp-relay"
	FlagRelayImage        = "relay-image"
	FlagUDPIdleTimeout    = "udp-idle-timeout"
	FlagPingInterval      = "ping-interval"
)

// MinPingInterval is the shortest --ping-interval: a tunnel that answers
// nothing for two intervals is closed, and a slow path must not look dead.
const MinPingInterval = time.Second

// AddFlags binds the named settings (all when which is empty) to flags.
// Transport and data path are stored in their canonical form as they are
// set ("WebSocket" runs as websocket); a bad value is kept for Validate to
// name.
func (s *Settings) AddFlags(fs *pflag.FlagSet, which ...string) {
	want := func(name string) bool { return len(which) == 0 || slices.Contains(which, name) }
	if want(FlagPodRunningTimeout) {
		fs.DurationVar(&s.PodRunningTimeout, FlagPodRunningTimeout, s.PodRunningTimeout, "The length of time (like 5s, 2m, or 3h, higher than zero) to wait until at least one pod is running")
	}
	if want(FlagTransport) {
		fs.Var(canonical[tunnel.Transport]{&s.Transport, tunnel.ParseTransport}, FlagTransport, "How to reach the API server: auto (WebSocket, then SPDY if the upgrade is refused), websocket or spdy")
	}
	if want(FlagReconnectWait) {
		fs.DurationVar(&s.ReconnectWait, FlagReconnectWait, s.ReconnectWait, "How long a new connection waits for a ready pod while the target has none (a rollout, a restart) before it is closed")
	}
	if want(FlagMaxRetries) {
		fs.IntVar(&s.MaxRetries, FlagMaxRetries, s.MaxRetries, "Give up after this many failed reconnects in a row (0: never)")
	}
	if want(FlagNoReconnect) {
		fs.BoolVar(&s.NoReconnect, FlagNoReconnect, s.NoReconnect, "Exit like kubectl (code 3) when the pod goes away, instead of following the target to another pod")
	}
	if want(FlagIdleTimeout) {
		fs.DurationVar(&s.IdleTimeout, FlagIdleTimeout, s.IdleTimeout, "Stop after this long with no open connection (exit code 6); 0: never")
	}
	if want(FlagUDPRelay) {
		fs.StringVar(&s.UDPRelay, FlagUDPRelay, s.UDPRelay, "where /udp ports' relay runs: pod (a short-lived pod of kpf's in the target's namespace, deleted when the forward stops) or ephemeral (an ephemeral container in the target pod: reaches servers bound to its localhost, needs no right to create pods, and stays in the pod's spec until the pod is replaced)")
	}
	if want(FlagRelayImage) {
		fs.StringVar(&s.RelayImage, FlagRelayImage, s.RelayImage, "the relay's image, for /udp ports and host/ and ip/ targets (default: this release's, ghcr.io/kpf-dev/kpf:VERSION)")
	}
	if want(FlagUDPIdleTimeout) {
		fs.DurationVar(&s.UDPIdleTimeout, FlagUDPIdleTimeout, s.UDPIdleTimeout, "close a UDP peer's flow after this long with no datagram either way")
	}
	if want(FlagPingInterval) {
		fs.DurationVar(&s.PingInterval, FlagPingInterval, s.PingInterval, "How often kpf's data path pings each tunnel, so that idle tunnels survive proxies' and load balancers' idle timeouts (set it below theirs); a tunnel that answers nothing for two intervals is closed and redialled")
		fl := fs.Lookup(FlagPingInterval)
		fl.Value = pingValue{fl.Value, &s.PingInterval}
	}
	if want(FlagDataPath) {
		fs.Var(canonical[tunnel.DataPath]{&s.DataPath, tunnel.ParseDataPath}, FlagDataPath, "SPDY implementation on kpf's side: kpf (its own) or client-go (kubectl's), as an escape hatch")
	}
}

// Validate checks the settings together; errors name the flag.
func (s Settings) Validate() error {
	if _, err := tunnel.ParseTransport(string(s.Transport)); err != nil {
		return err
	}
	if _, err := tunnel.ParseDataPath(string(s.DataPath)); err != nil {
		return err
	}
	if s.PodRunningTimeout <= 0 {
		return fmt.Errorf("--%s must be higher than zero", FlagPodRunningTimeout)
	}
	if s.ReconnectWait <= 0 {
		return fmt.Errorf("--%s %s: must be higher than zero", FlagReconnectWait, s.ReconnectWait)
	}
	if s.MaxRetries < 0 {
		return fmt.Errorf("--%s %d: must be 0 (no limit) or more", FlagMaxRetries, s.MaxRetries)
	}
	if !slices.Contains(RelayModes, s.UDPRelay) && s.UDPRelay != "" {
		return fmt.Errorf("--%s %q: want %s", FlagUDPRelay, s.UDPRelay, strings.Join(RelayModes, " or "))
	}
	if s.UDPIdleTimeout < 0 {
		return fmt.Errorf("--%s %s: must be above 0", FlagUDPIdleTimeout, s.UDPIdleTimeout)
	}
	if s.PingInterval != 0 && s.PingInterval < MinPingInterval {
		return fmt.Errorf("--%s %s: must be %s or more", FlagPingInterval, s.PingInterval, MinPingInterval)
	}
	if s.IdleTimeout < 0 {
		return fmt.Errorf("--%s %s: must be 0 (never) or more", FlagIdleTimeout, s.IdleTimeout)
	}
	return nil
}

// Session is the session.Spec of a forward run with these settings. A
// forward with no namespace takes the identity's (the caller fills it in).
func Session(fw config.Forward, s Settings) (session.Spec, error) {
	addrs, err := portspec.ParseAddresses(fw.Addresses)
	if err != nil {
		return session.Spec{}, err
	}
	return session.Spec{
		Name:              fw.Name,
		Namespace:         fw.Namespace,
		Target:            fw.Target,
		Ports:             fw.Ports,
		Addresses:         addrs,
		AutoAddress:       fw.AutoAddress,
		Transport:         s.Transport,
		PodRunningTimeout: s.PodRunningTimeout,
		ReconnectWait:     s.ReconnectWait,
		MaxRetries:        s.MaxRetries,
		NoReconnect:       s.NoReconnect,
		Balance:           fw.Balance,
		IdleTimeout:       s.IdleTimeout,
		DataPath:          s.DataPath,
		PingInterval:      s.PingInterval,
		UDPRelay:          cmp.Or(s.UDPRelay, "pod"),
		RelayImage:        cmp.Or(s.RelayImage, DefaultRelayImage),
		UDPIdleTimeout:    s.UDPIdleTimeout,
	}, nil
}

// pingValue is --ping-interval: a duration, where 0 is refused. In the
// settings 0 stands for the default (a client that sends none), so a 0
// typed by a user, who means "no pings", would silently ping every 15 s.
type pingValue struct {
	pflag.Value
	p *time.Duration
}

func (v pingValue) Set(s string) error {
	if err := v.Value.Set(s); err != nil {
		return err
	}
	if *v.p == 0 {
		return fmt.Errorf("pings cannot be turned off; give %s or more (the default is %s)", MinPingInterval, tunnel.DefaultPingInterval)
	}
	return nil
}

// canonical is a flag whose value is stored in its canonical form when
// parse accepts it ("WebSocket" as websocket), and as typed otherwise, for
// Validate to name.
type canonical[T ~string] struct {
	p     *T
	parse func(string) (T, error)
}

func (v canonical[T]) String() string {
	if v.p == nil {
		return ""
	}
	return string(*v.p)
}

func (v canonical[T]) Type() string { return "string" }

func (v canonical[T]) Set(s string) error {
	t, err := v.parse(s)
	if err != nil {
		t = T(s)
	}
	*v.p = t
	return nil
}
