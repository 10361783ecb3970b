package api

import (
	"time"

	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
)

// Error is the body of every answer that is not 2xx: a code a program
// can switch on, and the message kpf prints (what went wrong and how to
// fix it).
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// The codes of Error.
const (
	CodeBadRequest   = "bad_request"  // the request is malformed: fix it
	CodeInvalid      = "invalid"      // well formed, but a file or field is invalid
	CodeNotFound     = "not_found"    // no such forward, file or route
	CodeConflict     = "conflict"     // the name is taken, or ambiguous
	CodeUnavailable  = "unavailable"  // not ready in time (wait), or the forward failed to start
	CodeForbidden    = "forbidden"    // the caller may not do this
	CodeUnauthorized = "unauthorized" // no or a wrong token (the TCP listener)
	CodeInternal     = "internal"
)

// Totals are the counters of every forward, summed, in a Status.
type Totals struct {
	Forwards   int   `json:"forwards"`
	Ready      int   `json:"ready"`
	Open       int64 `json:"openConnections"`
	Total      int64 `json:"connections"`
	Failed     int64 `json:"failedConnections"`
	BytesIn    int64 `json:"bytesIn"`
	BytesOut   int64 `json:"bytesOut"`
	Reconnects int64 `json:"reconnects"`
	Switches   int64 `json:"podSwitches"`
}

// Kinds of a Forward.
const (
	KindForward = "forward"
	KindProxy   = "proxy"
)

// File is one applied file, as GET /v1/files lists it.
type File struct {
	Path     string   `json:"path"`
	Forwards []string `json:"forwards"`
	Proxies  []string `json:"proxies"`
}

// StartRequest starts one forward without a file (POST /v1/forwards). It
// runs as Identity (the caller's kubeconfig and context, captured by the
// caller: never a token or a kubeconfig's contents typed in a request) and
// listens on loopback only. Origin labels it in status ("started by
// mcp").
type StartRequest struct {
	// Name is the forward's name; "" names it after its target.
	Name      string   `json:"name,omitempty"`
	Context   string   `json:"context,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	Target    string   `json:"target"`            // TYPE/NAME, as kubectl port-forward takes it
	Ports     []string `json:"ports"`             // [LOCAL:]REMOTE, as kubectl port-forward takes them
	Address   string   `json:"address,omitempty"` // a loopback address; "" is 127.0.0.1
	// HTTPLog logs its HTTP requests to a file in the daemon's home
	// (GET /v1/forwards/{name}/httplog reads it).
	HTTPLog  bool              `json:"httpLog,omitempty"`
	Origin   string            `json:"origin,omitempty"`
	Identity identity.Identity `json:"identity"`
	Settings spec.Settings     `json:"settings"`
	// Wait, if set ("30s"), answers once the forward is ready, or with
	// its error when it is not ready within it.
	Wait string `json:"wait,omitempty"`
	// Session, if set, ties the forward to the caller's event stream
	// opened with GET /v1/events?session=SESSION: when that stream ends
	// (the caller exited, even killed), the forward is stopped.
	Session string `json:"session,omitempty"`
}

// Check is one step of a forward's doctor run.
type Check struct {
	Step    string   `json:"step"`
	Status  string   `json:"status"` // ok, warn, fail, skip
	Summary string   `json:"summary"`
	Details []string `json:"details,omitempty"`
	Fix     string   `json:"fix,omitempty"`
}

// DoctorResult is GET /v1/forwards/{name}/doctor: the checks kpf doctor
// makes, run by the daemon as the forward's identity.
type DoctorResult struct {
	Forward string  `json:"forward"`
	OK      bool    `json:"ok"`
	Checks  []Check `json:"checks"`
}

// LogLines are the last lines of a log (GET /v1/logs,
// /v1/forwards/{name}/logs and /httplog).
type LogLines struct {
	Lines []string `json:"lines"`
}

// Event types of GET /v1/events.
const (
	EventAdded     = "added"             // a forward was started
	EventRemoved   = "removed"           // a forward was stopped
	EventState     = "state"             // its state changed (ready, waiting, reconnecting...)
	EventHealth    = "health"            // its health check's verdict changed
	EventPod       = "pod"               // it follows another pod now
	EventReconnect = "reconnect"         // its tunnel to the pod was dialled again (Count: how many times since the last event)
	EventFailed    = "failed-connection" // connections failed (Count: how many since the last event)
	EventCounters  = "counters"          // once a second with ?counters=1: Status holds every forward's counters
	EventGap       = "gap"               // Last-Event-ID fell out of the buffer: events were missed; Status is the state now
)

// Event is one Server-Sent Event of GET /v1/events (its data, as JSON).
// IDs increase by one per event; counters events carry no id and are not
// replayed.
type Event struct {
	ID      uint64    `json:"id,omitempty"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	File    string    `json:"file,omitempty"`
	Origin  string    `json:"origin,omitempty"`
	Forward string    `json:"forward,omitempty"`
	Message string    `json:"message,omitempty"`
	State   string    `json:"state,omitempty"`
	Health  string    `json:"health,omitempty"`
	Pod     string    `json:"pod,omitempty"`
	Count   int64     `json:"count,omitempty"`
	Status  *Status   `json:"status,omitempty"`
}
