package daemon

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Route is one operation of the daemon's API. The table is the API: the
// handler serves it, and a test checks it against docs/api/openapi.yaml,
// path for path, method for method and query parameter for query
// parameter, so the two cannot drift.
type Route struct {
	Method, Path string
	// Query are the query parameters it takes; any other is refused.
	Query   []string
	handler func(*Server) http.HandlerFunc
}

// Query parameters, by name.
const (
	qFile        = "file"
	qName        = "name"
	qLines       = "lines"
	qFollow      = "follow"
	qTimeout     = "timeout"
	qCounters    = "counters"
	qSession     = "session"
	qLastEventID = "lastEventId"
)

// BoolValues are what a yes-or-no query parameter (follow, counters)
// takes; anything else is refused rather than read as no.
var BoolValues = []string{"1", "true", "0", "false"}

// BoolParams are the yes-or-no query parameters.
var BoolParams = []string{qFollow, qCounters}

// yes reads a yes-or-no query parameter the route checked.
func yes(r *http.Request, name string) bool {
	v := r.URL.Query().Get(name)
	return v == "1" || v == "true"
}

// Routes is the daemon's API, every path under /v1/.
func Routes() []Route {
	h := func(f func(*Server, http.ResponseWriter, *http.Request)) func(*Server) http.HandlerFunc {
		return func(s *Server) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) { f(s, w, r) }
		}
	}
	file := []string{qFile}
	logs := []string{qFile, qLines, qFollow}
	return []Route{
		{"GET", "/v1/status", file, h((*Server).status)},
		{"POST", "/v1/apply", nil, h((*Server).apply)},
		{"POST", "/v1/down", nil, h((*Server).down)},
		{"POST", "/v1/restart", nil, h((*Server).restart)},
		{"POST", "/v1/wait", []string{qTimeout, qFile}, h((*Server).wait)},
		{"GET", "/v1/files", nil, h((*Server).listFiles)},
		{"GET", "/v1/forwards", file, h((*Server).listForwards)},
		{"POST", "/v1/forwards", nil, h((*Server).startForward)},
		{"GET", "/v1/forwards/{name}", file, h((*Server).getForward)},
		{"DELETE", "/v1/forwards/{name}", file, h((*Server).stopForward)},
		{"POST", "/v1/forwards/{name}/restart", file, h((*Server).restartForward)},
		{"GET", "/v1/forwards/{name}/doctor", file, h((*Server).doctorForward)},
		{"GET", "/v1/forwards/{name}/logs", logs, h((*Server).forwardLogs)},
		{"GET", "/v1/forwards/{name}/httplog", logs, h((*Server).forwardHTTPLog)},
		{"GET", "/v1/proxies", file, h((*Server).listProxies)},
		{"GET", "/v1/proxies/{name}", file, h((*Server).getProxy)},
		{"GET", "/v1/logs", []string{qFile, qName, qLines, qFollow}, h((*Server).daemonLogs)},
		{"GET", "/v1/events", []string{qLastEventID, qCounters, qSession}, h((*Server).eventStream)},
	}
}

// mux serves Routes; anything else is a JSON not_found.
func (s *Server) mux() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range Routes() {
		mux.HandleFunc(rt.Method+" "+rt.Path, rt.checkQuery(rt.handler(s)))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpError(w, "no route "+r.Method+" "+r.URL.Path+" in the kpf daemon's API (docs/api.md lists them)", http.StatusNotFound)
	})
	return s.noticeChanges(mux)
}

// checkQuery refuses a query parameter the route does not take, one given
// more than once, a bad lines and a yes-or-no one of another value,
// naming it and what is allowed: a typo
// (?counters=yes, ?lnes=5) is told, not silently read as its default.
func (rt Route) checkQuery(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			httpError(w, fmt.Sprintf("bad request: the query %q: %v", r.URL.RawQuery, err), http.StatusBadRequest)
			return
		}
		for _, k := range slices.Sorted(maps.Keys(q)) {
			if !slices.Contains(rt.Query, k) {
				takes := "no query parameters"
				if len(rt.Query) > 0 {
					takes = "only " + strings.Join(rt.Query, ", ")
				}
				httpError(w, fmt.Sprintf("bad request: query parameter %q: %s %s takes %s", k, rt.Method, rt.Path, takes), http.StatusBadRequest)
				return
			}
			if len(q[k]) > 1 {
				httpError(w, fmt.Sprintf("bad request: query parameter %q is given %d times (%s): give it once", k, len(q[k]), strings.Join(q[k], ", ")), http.StatusBadRequest)
				return
			}
			if k == qLines {
				// Checked before the forward is looked up: a bad value is
				// told whatever the path names.
				if _, err := parseLines(q.Get(k)); err != nil {
					httpError(w, err.Error(), http.StatusBadRequest)
					return
				}
			}
			if !slices.Contains(BoolParams, k) {
				continue
			}
			for _, v := range q[k] {
				if !slices.Contains(BoolValues, v) {
					httpError(w, fmt.Sprintf("bad request: %s=%q: want %s", k, v, strings.Join(BoolValues, ", ")), http.StatusBadRequest)
					return
				}
			}
		}
		next(w, r)
	}
}

// noticeChanges looks for forwards added or removed once a request that
// may change them is answered, so that the event stream tells at once.
func (s *Server) noticeChanges(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		if r.Method != http.MethodGet {
			s.hub().diff(s)
		}
	})
}
