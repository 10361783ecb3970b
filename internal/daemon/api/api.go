// Package api is the daemon's socket API: the requests the CLI sends and
// the status the daemon answers, as versioned types of their own. The
// daemon builds them from its internals (the manager's rows, its files);
// nothing here is an internal type served as it is, so the manager can
// change without changing what `kpf status --json` promises to scripts.
//
// A field is added, never renamed or removed, within a SchemaVersion.
package api

import (
	"time"

	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
)

// SchemaVersion versions the JSON of status and the socket API. 2: many
// files (files, and each forward's file, cluster and user).
const SchemaVersion = 2

// Status is what GET /v1/status (and POST /v1/wait) answers.
type Status struct {
	SchemaVersion int       `json:"schemaVersion"`
	PID           int       `json:"pid"`
	Started       time.Time `json:"started"`
	Files         []string  `json:"files"`
	Forwards      []Forward `json:"forwards"`
	Metrics       string    `json:"metrics,omitempty"` // the URL of its Prometheus metrics, if served
	// API is the loopback TCP address the API is served on too
	// (--api-addr), if any.
	API string `json:"api,omitempty"`
	// Totals sums every forward's counters.
	Totals Totals `json:"totals"`
	// Restored is what this daemon did, when it started, with each file
	// that a daemon before it ran and did not stop (it was killed, or
	// crashed): restored as the identity that applied it, or not and why.
	Restored []Restore `json:"restored,omitempty"`
	// Warnings are what the daemon could not do as it started, such as
	// serving the API or metrics address of a killed daemon before it
	// (taken by then): kpf status shows them.
	Warnings []string `json:"warnings,omitempty"`
}

// Restore is one file a daemon found recorded when it started.
type Restore struct {
	File string `json:"file"`
	// Restored: its forwards run again, as the identity and with the
	// settings that applied them, as they were applied.
	Restored bool     `json:"restored"`
	Forwards []string `json:"forwards,omitempty"`
	// Note says why it was not restored, or what differs from when it
	// was applied (the file changed since, say).
	Note string `json:"note,omitempty"`
	// PreviousPID is the daemon that ran it before.
	PreviousPID int `json:"previousPid,omitempty"`
}

// Forward is one forward (or proxy) of a file, as status shows it.
type Forward struct {
	Name string `json:"name"`
	// Kind is forward or proxy.
	Kind string `json:"kind,omitempty"`
	// Origin says what started a forward that has no file ("started by
	// mcp"); File is "" then.
	Origin string `json:"origin,omitempty"`
	// File, Context, Cluster and User: which file the forward comes from,
	// and who it connects as.
	File      string   `json:"file,omitempty"`
	Context   string   `json:"context,omitempty"`
	Cluster   string   `json:"cluster,omitempty"`
	User      string   `json:"user,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	Target    string   `json:"target"`
	Ports     []string `json:"ports,omitempty"` // as applied: [LOCAL:]REMOTE[/udp], what a kpf.yaml of it says
	Pod       string   `json:"pod,omitempty"`
	Local     []string `json:"local,omitempty"`
	// Addresses are the ones the file gives it (an auto address as the
	// address it stands for), listening or not.
	Addresses  []string `json:"addresses,omitempty"`
	State      string   `json:"state"`
	Health     string   `json:"health"`
	HealthNote string   `json:"healthDetail,omitempty"`
	Open       int64    `json:"openConnections"`
	Total      int64    `json:"connections"`
	Failed     int64    `json:"failedConnections"`
	BytesIn    int64    `json:"bytesIn"`  // to the local clients, counted as they move
	BytesOut   int64    `json:"bytesOut"` // to the pod
	RateIn     int64    `json:"bytesInPerSecond"`
	RateOut    int64    `json:"bytesOutPerSecond"`
	Reconnects int64    `json:"reconnects"`
	Switches   int64    `json:"podSwitches"`
	HTTPLog    string   `json:"httpLog,omitempty"` // where its HTTP requests are logged
	// Its /udp ports: local peers with a flow now, datagrams each way, and
	// the relay pod.
	UDPPeers     int    `json:"udpPeers,omitempty"`
	DatagramsIn  int64  `json:"datagramsIn,omitempty"`
	DatagramsOut int64  `json:"datagramsOut,omitempty"`
	Relay        string `json:"relayPod,omitempty"`
	// RetryAt is when a forward that is waiting (or failed) opens again;
	// LastError says why it is down.
	RetryAt   time.Time `json:"retryAt,omitzero"`
	LastError string    `json:"lastError,omitempty"`
	// NotListening: the addresses of localhost a port listens without (one
	// failed to bind, the other did), each with why: a client that
	// resolves localhost to it finds nothing there, or another process.
	NotListening []string `json:"notListening,omitempty"`
}

// ApplyRequest asks the daemon to run the forwards of a file as the
// identity and with the settings of the command that applied it.
type ApplyRequest struct {
	File     string            `json:"file"`  // absolute path: the file's key
	Names    []string          `json:"names"` // empty: all, and stop the ones gone from the file
	Identity identity.Identity `json:"identity"`
	Settings spec.Settings     `json:"settings"`
}

// ApplyResult says what changed.
type ApplyResult struct {
	Started   []string `json:"started"`
	Restarted []string `json:"restarted"`
	Unchanged []string `json:"unchanged"`
	Stopped   []string `json:"stopped"`
	// Failed are the forwards (of Started and Restarted) known to fail as
	// they are applied, such as one whose local port another file's
	// forward holds; they are retried, and kpf status shows them.
	Failed []Failure `json:"failed,omitempty"`
}

// Failure is a forward that failed, and why.
type Failure struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// NamesRequest picks forwards for down and restart: the named ones (of
// File, when given), every forward of File, or All.
type NamesRequest struct {
	Names []string `json:"names"`
	File  string   `json:"file,omitempty"`
	All   bool     `json:"all,omitempty"`
}

// Picked says which forwards a NamesRequest picked, by file.
type Picked struct {
	File  string   `json:"file"`
	Names []string `json:"names"`
}

// DownResult is what POST /v1/down answers.
type DownResult struct {
	Stopped []Picked `json:"stopped"`
	// DaemonExits: nothing is left to run, and the daemon exits once this
	// answer is written.
	DaemonExits bool `json:"daemonExits"`
}

// RestartResult is what POST /v1/restart answers.
type RestartResult struct {
	Restarted []Picked `json:"restarted"`
}
