package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/testnet"
)

func startReq(target string, ports ...string) api.StartRequest {
	return api.StartRequest{Target: target, Ports: ports, Origin: "started by test", Identity: as("dev", "alice"), Settings: spec.Defaults()}
}

// A forward started without a file shows in status with its origin and
// no file, is found, stopped and forgotten by name, and its name is its
// own while it runs.
func TestStartForwardWithoutFile(t *testing.T) {
	c, o, dir := start(t)
	ctx := context.Background()
	file := writeFile(t, dir, "kpf.yaml", "forwards:\n  - name: db\n    target: svc/db\n    ports: [5432]\n")
	if _, err := c.Apply(ctx, api.ApplyRequest{File: file, Identity: as("dev", "alice"), Settings: spec.Defaults()}); err != nil {
		t.Fatal(err)
	}
	f, err := c.Start(ctx, startReq("svc/web-api", "8080:80"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "web-api" || f.Origin != "started by test" || f.File != "" || f.Kind != api.KindForward {
		t.Fatalf("started %+v: want web-api, started by test, no file", f)
	}
	testnet.Within(t, 5*time.Second, "the forward to open", func() bool { _, ok := o.get("web-api@dev"); return ok })
	st, err := c.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Files) != 1 || st.Files[0] != file || st.Totals.Forwards != 2 {
		t.Fatalf("status files %v totals %+v: want only %s, 2 forwards", st.Files, st.Totals, file)
	}
	// Named after its target again: the next free name.
	f2, err := c.Start(ctx, startReq("svc/web-api", "8081:80"))
	if err != nil || f2.Name != "web-api-2" {
		t.Fatalf("second start: %+v, %v: want web-api-2", f2, err)
	}
	req := startReq("svc/other", "9000")
	req.Name = "web-api"
	_, err = c.Start(ctx, req)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != api.CodeConflict {
		t.Fatalf("a taken name: %v, want a conflict", err)
	}
	got, err := c.Forward(ctx, "web-api", "")
	if err != nil || got.Target != "svc/web-api" {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if _, err := c.Stop(ctx, "web-api", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Forward(ctx, "web-api", ""); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("get after stop: %v, want not found", err)
	}
	fws, err := c.Forwards(ctx, "")
	if err != nil || len(fws) != 2 {
		t.Fatalf("forwards after stop: %d, %v: want db and web-api-2", len(fws), err)
	}
	// The daemon still runs the rest: stopping one forward is not down.
	if !c.Running() {
		t.Fatal("the daemon exited")
	}
	// Stopped by kpf down, a file-less forward's name is free again.
	if _, _, err := c.Down(ctx, api.NamesRequest{Names: []string{"web-api-2"}}); err != nil {
		t.Fatal(err)
	}
	if f, err := c.Start(ctx, startReq("svc/web-api", "8081:80")); err != nil || f.Name != "web-api" {
		t.Fatalf("start after down: %+v, %v", f, err)
	}
	if f, err := c.Start(ctx, startReq("svc/web-api", "8082:80")); err != nil || f.Name != "web-api-2" {
		t.Fatalf("start after down: %+v, %v", f, err)
	}
}

// Bad requests are refused with the field, the value and the fix, as
// JSON errors.
func TestStartForwardRefusesBadRequests(t *testing.T) {
	c, _, _ := start(t)
	for _, tc := range []struct {
		name string
		edit func(*api.StartRequest)
		want string
	}{
		{"no target", func(r *api.StartRequest) { r.Target = "" }, "target is empty: name what to forward to as TYPE/NAME"},
		{"no ports", func(r *api.StartRequest) { r.Ports = nil }, "ports is empty"},
		{"bad port", func(r *api.StartRequest) { r.Ports = []string{"99999"} }, "ports: "},
		{"not loopback", func(r *api.StartRequest) { r.Address = "0.0.0.0" }, `address "0.0.0.0": a forward started without a file listens on loopback only`},
		{"bad name", func(r *api.StartRequest) { r.Name = "Web API" }, `name "Web API": want lower-case letters`},
		{"bad wait", func(r *api.StartRequest) { r.Wait = "soon" }, `wait "soon": want a duration`},
		{"a local port twice", func(r *api.StartRequest) { r.Ports = []string{"8080:80", "8080:81"} }, `ports: local port given twice: "8080:80" and "8080:81" both listen on local port 8080`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := startReq("svc/web", "8080")
			tc.edit(&req)
			_, err := c.Start(context.Background(), req)
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Code != api.CodeBadRequest || !strings.Contains(ae.Message, tc.want) {
				t.Fatalf("got %#v, want a bad_request saying %q", err, tc.want)
			}
		})
	}
}

// A forward that is not ready in the time asked is stopped, and the
// answer says why.
func TestStartForwardWaitFails(t *testing.T) {
	c, _, _ := start(t)
	req := startReq("svc/web", "8080")
	req.Wait = "1s"
	_, err := c.Start(context.Background(), req)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, `forward "web" was not ready within 1s, and was stopped`) {
		t.Fatalf("got %v", err)
	}
	if fws, _ := c.Forwards(context.Background(), ""); len(fws) != 0 {
		t.Fatalf("left behind: %+v", fws)
	}
}

// The event stream tells a forward added and removed, with increasing
// ids.
func TestEventsAddedRemoved(t *testing.T) {
	s := &Server{Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener}
	c := serve(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := make(chan api.Event, 16)
	done := make(chan error, 1)
	go func() {
		done <- c.Events(ctx, false, func(e api.Event) error { evs <- e; return nil })
	}()
	// The stream is open once the daemon counts its subscriber.
	testnet.Within(t, 5*time.Second, "the stream to open", func() bool { return subscribers(s) == 1 })
	if _, err := c.Start(ctx, startReq("svc/web", "8080")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stop(ctx, "web", ""); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for _, want := range []string{api.EventAdded, api.EventRemoved} {
		select {
		case e := <-evs:
			if e.Type != want || e.Forward != "web" || e.Origin != "started by test" || e.ID <= last {
				t.Fatalf("event %+v, want %s of web with an id after %d", e, want, last)
			}
			last = e.ID
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
	cancel()
	<-done
}

// subscribers is how many streams s serves.
func subscribers(s *Server) int {
	s.hub().mu.Lock()
	defer s.hub().mu.Unlock()
	return s.hub().subs
}

// A client resuming after events it has not seen gets them; one whose id
// fell out of the buffer gets a gap event with the status, then the
// events after it.
func TestEventsResume(t *testing.T) {
	s := &Server{Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener, eventBuffer: 3}
	c := serve(t, s)
	h := s.hub()
	base := h.subscribe(0) // ids start here, not at 0
	if base < uint64(time.Now().Add(-time.Minute).UnixMicro()) {
		t.Fatalf("a daemon's ids start at %d: below the time it started, an earlier daemon's could be taken for its own", base)
	}
	for i := range 5 {
		h.publish(api.Event{Type: api.EventState, Forward: fmt.Sprint(i)})
	}
	id := func(n uint64) string { return fmt.Sprint(base + n) }
	read := func(lastID string, n int) []api.Event {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://kpf/v1/events", nil)
		if q, ok := strings.CutPrefix(lastID, "?"); ok {
			req.URL.RawQuery = "lastEventId=" + q // for clients that cannot set headers
		} else {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got []api.Event
		errEnough := errors.New("enough")
		err = ReadEvents(resp.Body, func(e api.Event) error {
			got = append(got, e)
			if len(got) == n {
				return errEnough
			}
			return nil
		})
		if !errors.Is(err, errEnough) {
			t.Fatal(err)
		}
		return got
	}
	got := read(id(3), 2)
	if got[0].ID != base+4 || got[1].ID != base+5 || got[0].Forward != "3" {
		t.Fatalf("resumed after 3: %+v", got)
	}
	if got = read("?"+id(4), 1); got[0].ID != base+5 {
		t.Fatalf("resumed after ?lastEventId=4: %+v", got)
	}
	// Ids 1 and 2 are gone (the buffer holds 3, 4, 5).
	got = read(id(1), 1)
	if got[0].Type != api.EventGap || got[0].Status == nil || !strings.Contains(got[0].Message, "events after id "+id(1)+" are no longer kept (the daemon keeps the last 3)") {
		t.Fatalf("resumed after 1: %+v, want a gap", got[0])
	}
	// An id this daemon never gave is a gap too: one beyond its last, and
	// one of the daemon before it (which counted from its own start, so
	// its ids are below this one's first).
	if got = read(id(99), 1); got[0].Type != api.EventGap {
		t.Fatalf("resumed after %s: %+v, want a gap", id(99), got[0])
	}
	if got = read("3", 1); got[0].Type != api.EventGap {
		t.Fatalf("resumed after an earlier daemon's id 3: %+v, want a gap", got[0])
	}
}

func TestHubSince(t *testing.T) {
	h := &hubState{size: 2, wake: make(chan struct{})}
	if evs, gap, _ := h.since(0); gap || len(evs) != 0 {
		t.Fatalf("empty: %v %v", evs, gap)
	}
	for range 3 {
		h.publish(api.Event{})
	}
	for _, tc := range []struct {
		id   uint64
		want []uint64
		gap  bool
	}{{0, nil, true}, {1, []uint64{2, 3}, false}, {2, []uint64{3}, false}, {3, nil, false}, {4, nil, true}} {
		evs, gap, _ := h.since(tc.id)
		var ids []uint64
		for _, e := range evs {
			ids = append(ids, e.ID)
		}
		if gap != tc.gap || fmt.Sprint(ids) != fmt.Sprint(tc.want) {
			t.Errorf("since(%d) = %v gap %v, want %v gap %v", tc.id, ids, gap, tc.want, tc.gap)
		}
	}
}

// A kpf newer than the running daemon says to restart it when the daemon
// does not know a route (it answers in plain text).
func TestOlderDaemon(t *testing.T) {
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r) // Go's "404 page not found", text/plain
	}))
	defer old.Close()
	resp, err := http.Get(old.URL + "/v1/forwards")
	if err != nil {
		t.Fatal(err)
	}
	err = readError(resp, "GET", "/v1/forwards?file=x")
	resp.Body.Close()
	if !errors.Is(err, ErrDaemonTooOld) || err.Error() != "the running kpf daemon is older than this kpf and does not know GET /v1/forwards: restart the daemon (kpf down --all, then kpf up -d)" {
		t.Fatalf("got %v", err)
	}
}

// The TCP listener: loopback only, the token, no web pages of other
// sites, no CORS.
func TestTCPListener(t *testing.T) {
	if _, err := CheckAPIAddr("0.0.0.0:7070"); !errors.Is(err, ErrAPIAddr) || err.Error() != `--api-addr "0.0.0.0:7070": the daemon's API listens on loopback only (it starts forwards as you): use 127.0.0.1:PORT or [::1]:PORT` {
		t.Fatalf("0.0.0.0: %v", err)
	}
	if _, err := CheckAPIAddr("localhost:7070"); err != nil {
		t.Fatalf("localhost: %v", err)
	}
	s := &Server{Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener, APIAddr: "127.0.0.1:0"}
	c := serve(t, s)
	token, err := os.ReadFile(c.Home.APIToken())
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(c.Home.APIToken()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v", fi.Mode())
	}
	addr := s.APIAt().String()
	for _, tc := range []struct {
		name          string
		token, origin string
		want          int
		scheme        string
	}{
		{"no token", "", "", http.StatusUnauthorized, ""},
		{"wrong token", "nope", "", http.StatusUnauthorized, ""},
		{"token", strings.TrimSpace(string(token)), "", http.StatusOK, ""},
		{"another site", strings.TrimSpace(string(token)), "https://evil.example", http.StatusForbidden, ""},
		{"its own origin", strings.TrimSpace(string(token)), "http://" + addr, http.StatusOK, ""},
		{"rebound name", strings.TrimSpace(string(token)), "host:evil.example", http.StatusForbidden, ""},
		// Auth schemes are case-insensitive (RFC 9110 §11.1).
		{"lower-case scheme", strings.TrimSpace(string(token)), "", http.StatusOK, "bearer"},
		{"upper-case scheme", strings.TrimSpace(string(token)), "", http.StatusOK, "BEARER"},
		{"another scheme", strings.TrimSpace(string(token)), "", http.StatusUnauthorized, "Basic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+addr+"/v1/status", nil)
			if tc.scheme == "" {
				tc.scheme = "Bearer"
			}
			if tc.token != "" {
				req.Header.Set("Authorization", tc.scheme+" "+tc.token)
			}
			if h, ok := strings.CutPrefix(tc.origin, "host:"); ok {
				req.Host = h // DNS rebinding: another name for 127.0.0.1
			} else if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if v := resp.Header.Get("Access-Control-Allow-Origin"); v != "" {
				t.Fatalf("CORS header %q", v)
			}
		})
	}
}

// The forwards started with a session stop when the stream holding it
// ends (its caller exited, or was killed); others, and a forward that
// took the name of one stopped before, stay.
func TestSessionEndStopsItsForwards(t *testing.T) {
	c, _, _ := start(t)
	ctx := context.Background()
	req := startReq("svc/web", "8080")
	req.Session = "s1"
	if _, err := c.Start(ctx, req); err != nil {
		t.Fatal(err)
	}
	req = startReq("svc/db", "5432")
	req.Session = "s1"
	if _, err := c.Start(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, startReq("svc/kept", "9090")); err != nil {
		t.Fatal(err)
	}
	// web is stopped, and its name taken by a forward of no session.
	if _, err := c.Stop(ctx, "web", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, startReq("svc/web", "8081")); err != nil {
		t.Fatal(err)
	}
	hctx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	held := make(chan error, 1)
	go func() { held <- c.HoldSession(hctx, "s1", ready) }()
	<-ready
	cancel()
	<-held
	testnet.Within(t, 5*time.Second, "db to stop with its session", func() bool {
		_, err := c.Forward(ctx, "db", "")
		return err != nil
	})
	fws, err := c.Forwards(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range fws {
		names = append(names, f.Name)
	}
	if fmt.Sprint(names) != "[kept web]" {
		t.Fatalf("left: %v, want kept and the new web", names)
	}
}

// down with all and names is a contradiction: refused, nothing stopped
// (it used to stop every file and end the daemon, the names ignored).
func TestDownAllWithNamesIsRefused(t *testing.T) {
	s := &Server{Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener}
	c := serve(t, s)
	for _, body := range []string{`{"names":["x"],"all":true}`, `{"file":"/f.yaml","all":true}`} {
		resp, err := c.http.Post("http://kpf/v1/down", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "all takes no names and no file") {
			t.Fatalf("down %s: %s %s, want 400 naming the contradiction", body, resp.Status, b)
		}
	}
	if !c.Running() {
		t.Fatal("the daemon stopped")
	}
}

// A forward started without a file has no -f to stop it with: what the
// daemon says of it names a command that works (kpf down NAME, the API),
// and its name is no file's forward's, so that the name alone finds it.
func TestFilelessForwardsAreNamedByCommandsThatWork(t *testing.T) {
	c, _, dir := start(t)
	ctx := context.Background()
	a := writeFile(t, dir, "a.yaml", fileA)
	if _, err := c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("c", "u"), Settings: spec.Defaults()}); err != nil {
		t.Fatal(err)
	}
	// Named after its target, past a file's forward of the name.
	if f, err := c.Start(ctx, startReq("sts/db", "15433:5432")); err != nil || f.Name != "db-2" {
		t.Fatalf("start sts/db: %+v, %v: want db-2 (db is a.yaml's)", f, err)
	}
	req := startReq("svc/x", "15434:80")
	req.Name = "api"
	_, err := c.Start(ctx, req)
	want := fmt.Sprintf(`a forward named "api" runs already, of %s (stop it with: kpf down api -f %s); or choose another name`, a, a)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Message != want {
		t.Fatalf("a file's name: %v\nwant %s", err, want)
	}
	// Its local port, wanted by a file's forward.
	web := startReq("svc/web", "19090:80")
	web.Name = "web"
	if _, err := c.Start(ctx, web); err != nil {
		t.Fatal(err)
	}
	b := writeFile(t, dir, "b.yaml", "forwards:\n  - {name: other, target: svc/x, ports: [\"19090:80\"]}\n")
	c.Apply(ctx, api.ApplyRequest{File: b, Identity: as("c", "u"), Settings: spec.Defaults()})
	_, err = c.Wait(ctx, b, 5*time.Second)
	want = `local port 19090 on 127.0.0.1 is used by forward "web" started by test, without a file (stop it with: kpf down web, or DELETE /v1/forwards/web)`
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "-f (") {
		t.Fatalf("err %v\nwant %s", err, want)
	}
	// A file applied later with its name: the file's is stopped with -f,
	// then the name is the file-less one's alone.
	d := writeFile(t, dir, "d.yaml", "forwards:\n  - {name: web, target: svc/web, ports: [\"19091:80\"]}\n")
	c.Apply(ctx, api.ApplyRequest{File: d, Identity: as("c", "u"), Settings: spec.Defaults()})
	_, _, err = c.Down(ctx, api.NamesRequest{Names: []string{"web"}})
	want = fmt.Sprintf(`forward "web" runs from 2 places (no file (started by test), %s): kpf down web -f FILE stops a file's; kpf down web then stops the one started by test`, d)
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Message != want {
		t.Fatalf("down web: %v\nwant %s", err, want)
	}
	if _, _, err := c.Down(ctx, api.NamesRequest{Names: []string{"web"}, File: d}); err != nil {
		t.Fatal(err)
	}
	if stopped, _, err := c.Down(ctx, api.NamesRequest{Names: []string{"web"}}); err != nil || stopped[0].Names[0] != "web" {
		t.Fatalf("down web: %+v, %v", stopped, err)
	}
}

// A query parameter a route does not take, or a yes-or-no one of another
// value, is refused with its name and what is allowed: never read as its
// default (?counters=yes sent no counters, and said nothing).
func TestQueryParametersAreChecked(t *testing.T) {
	c, _, _ := start(t)
	for _, tc := range []struct{ path, want string }{
		{"/v1/events?counters=yes", `bad request: counters="yes": want 1, true, 0, false`},
		{"/v1/logs?follow=on", `bad request: follow="on": want 1, true, 0, false`},
		{"/v1/status?fle=/a.yaml", `bad request: query parameter "fle": GET /v1/status takes only file`},
		{"/v1/files?file=/a.yaml", `bad request: query parameter "file": GET /v1/files takes no query parameters`},
		{"/v1/forwards/web/logs?line=5", `bad request: query parameter "line": GET /v1/forwards/{name}/logs takes only file, lines, follow`},
		{"/v1/logs?lines=many", `bad request: lines="many": want a number from 0 to 10000`},
		// Every value is checked, not only the first.
		{"/v1/logs?lines=5&lines=abc", `bad request: query parameter "lines" is given 2 times (5, abc): give it once`},
		// Checked before the forward is looked up (it answered 404).
		{"/v1/forwards/nosuch/httplog?lines=1e3", `bad request: lines="1e3": want a number from 0 to 10000`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			err := c.Get(context.Background(), tc.path, &struct{}{})
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Message != tc.want {
				t.Fatalf("got %v, want 400 %q", err, tc.want)
			}
		})
	}
	// The documented values pass.
	for _, path := range []string{"/v1/status?file=", "/v1/logs?follow=0&lines=1", "/v1/forwards?file=/a.yaml"} {
		if err := c.Get(context.Background(), path, &json.RawMessage{}); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

// GET /v1/forwards/NAME?file=FILE of a forward that runs, but from another
// file, says FILE has no such forward and where NAME runs (it said
// "(running: none)" while NAME ran).
func TestForwardOfAnotherFileIsNamed(t *testing.T) {
	c, _, dir := start(t)
	ctx := context.Background()
	a := writeFile(t, dir, "a.yaml", fileA)
	if _, err := c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("c", "u"), Settings: spec.Defaults()}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.yaml")
	_, err := c.Forward(ctx, "db", other)
	want := fmt.Sprintf(`%s has no forward "db" running (its forwards: none); "db" runs from %s: drop ?file= or give that file`, other, a)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Message != want {
		t.Fatalf("got %v\nwant 404 %q", err, want)
	}
}

// A request without the settings object it requires (openapi.yaml) is
// refused naming the field: it was refused as `--transport "": want
// auto...`, a flag the caller never sent.
func TestMissingSettingsAreNamed(t *testing.T) {
	c, _, dir := start(t)
	a := writeFile(t, dir, "a.yaml", fileA)
	want := `bad request: the field "settings" is missing: the request needs it (docs/api/openapi.yaml lists the required fields)`
	for _, tc := range []struct {
		path string
		body map[string]any
	}{
		{"/v1/forwards", map[string]any{"target": "svc/web", "ports": []string{"8080"}}},
		{"/v1/forwards", map[string]any{"target": "svc/web", "ports": []string{"8080"}, "settings": nil}},
		{"/v1/apply", map[string]any{"file": a}},
	} {
		err := c.do(context.Background(), "POST", tc.path, tc.body, &json.RawMessage{})
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Message != want {
			t.Errorf("POST %s %v: got %v\nwant 400 %q", tc.path, tc.body, err, want)
		}
	}
}
