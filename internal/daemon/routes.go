package daemon

import (
	"net/http"
)

// Route is one operation of the daemon's API. The table is the API: the
// handler serves it, and a test checks it against docs/api/openapi.yaml,
// path for path and method for method, so the two cannot drift.
type Route struct {
	Method, Path string
	handler      func(*Server) http.HandlerFunc
}

// Routes is the daemon's API, every path under /v1/.
func Routes() []Route {
	h := func(f func(*Server, http.ResponseWriter, *http.Request)) func(*Server) http.HandlerFunc {
		return func(s *Server) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) { f(s, w, r) }
		}
	}
	return []Route{
		{"GET", "/v1/status", h((*Server).status)},
		{"POST", "/v1/apply", h((*Server).apply)},
		{"POST", "/v1/down", h((*Server).down)},
		{"POST", "/v1/restart", h((*Server).restart)},
		{"POST", "/v1/wait", h((*Server).wait)},
		{"GET", "/v1/files", h((*Server).listFiles)},
		{"GET", "/v1/forwards", h((*Server).listForwards)},
		{"POST", "/v1/forwards", h((*Server).startForward)},
		{"GET", "/v1/forwards/{name}", h((*Server).getForward)},
		{"DELETE", "/v1/forwards/{name}", h((*Server).stopForward)},
		{"POST", "/v1/forwards/{name}/restart", h((*Server).restartForward)},
		{"GET", "/v1/forwards/{name}/doctor", h((*Server).doctorForward)},
		{"GET", "/v1/forwards/{name}/logs", h((*Server).forwardLogs)},
		{"GET", "/v1/forwards/{name}/httplog", h((*Server).forwardHTTPLog)},
		{"GET", "/v1/proxies", h((*Server).listProxies)},
		{"GET", "/v1/proxies/{name}", h((*Server).getProxy)},
		{"GET", "/v1/logs", h((*Server).daemonLogs)},
		{"GET", "/v1/events", h((*Server).eventStream)},
	}
}

// mux serves Routes; anything else is a JSON not_found.
func (s *Server) mux() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range Routes() {
		mux.HandleFunc(rt.Method+" "+rt.Path, rt.handler(s))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpError(w, "no route "+r.Method+" "+r.URL.Path+" in the kpf daemon's API (docs/api.md lists them)", http.StatusNotFound)
	})
	return s.noticeChanges(mux)
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
