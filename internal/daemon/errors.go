package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/kpf-dev/kpf/internal/daemon/api"
)

// httpError answers msg as an api.Error (JSON, with a code for the HTTP
// status): the daemon's messages already say cause and fix; the code is
// for programs.
func httpError(w http.ResponseWriter, msg string, status int) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Error{Code: codeOf(status), Message: msg})
}

func codeOf(status int) string {
	switch status {
	case http.StatusBadRequest:
		return api.CodeBadRequest
	case http.StatusUnprocessableEntity:
		return api.CodeInvalid
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return api.CodeNotFound
	case http.StatusConflict:
		return api.CodeConflict
	case http.StatusServiceUnavailable:
		return api.CodeUnavailable
	case http.StatusForbidden:
		return api.CodeForbidden
	case http.StatusUnauthorized:
		return api.CodeUnauthorized
	}
	return api.CodeInternal
}

// APIError is an answer of the daemon that is not 2xx, as the client
// reads it.
type APIError struct {
	Status  int    // the HTTP status
	Code    string // api.Error's
	Message string
}

func (e *APIError) Error() string { return e.Message }

// ErrDaemonTooOld: the running daemon is older than this kpf and does not
// know a route it asked for.
var ErrDaemonTooOld = errors.New("the running kpf daemon is older than this kpf")

// tooOld says which route an older daemon did not know, and how to get a
// new one.
func tooOld(method, path string) error {
	return fmt.Errorf("%w and does not know %s %s: restart the daemon (kpf down --all, then kpf up -d)", ErrDaemonTooOld, method, path)
}
