package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon/api"
)

// ErrNotRunning: no daemon answers on the socket.
var ErrNotRunning = errors.New("no kpf daemon is running (start one with: kpf up -d)")

// Client talks to the daemon.
type Client struct {
	Home Home
	http *http.Client
}

// NewClient returns a client for the daemon of home.
func NewClient(home Home) *Client {
	sock := home.Socket()
	return &Client{Home: home, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

// Running reports whether a daemon answers.
func (c *Client) Running() bool {
	_, err := c.Status(context.Background(), "")
	return err == nil
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://kpf"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			// Interrupted (Ctrl-C on kpf up --wait): the caller's own
			// reason, not the client's "Post http://kpf/v1/wait?...".
			return ctx.Err()
		}
		var ue *url.Error
		if errors.As(err, &ue) && ctx.Err() == nil {
			return ErrNotRunning
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(resp, method, path)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Status asks for the status of every forward, or of one file's.
func (c *Client) Status(ctx context.Context, file string) (*api.Status, error) {
	var st api.Status
	if err := c.do(ctx, http.MethodGet, "/v1/status?"+url.Values{"file": {file}}.Encode(), nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Apply runs the forwards of a file.
func (c *Client) Apply(ctx context.Context, req api.ApplyRequest) (*api.ApplyResult, error) {
	var res api.ApplyResult
	return &res, c.do(ctx, http.MethodPost, "/v1/apply", req, &res)
}

// Down stops forwards; the daemon exits when none is left.
func (c *Client) Down(ctx context.Context, req api.NamesRequest) (stopped []api.Picked, daemonExits bool, err error) {
	var res api.DownResult
	err = c.do(ctx, http.MethodPost, "/v1/down", req, &res)
	return res.Stopped, res.DaemonExits, err
}

// Restart restarts forwards.
func (c *Client) Restart(ctx context.Context, req api.NamesRequest) ([]api.Picked, error) {
	var res api.RestartResult
	err := c.do(ctx, http.MethodPost, "/v1/restart", req, &res)
	return res.Restarted, err
}

// Wait waits until every forward of file (of every file, with "") is
// ready and healthy.
func (c *Client) Wait(ctx context.Context, file string, timeout time.Duration) (*api.Status, error) {
	var st api.Status
	q := url.Values{"timeout": {timeout.String()}, "file": {file}}
	err := c.do(ctx, http.MethodPost, "/v1/wait?"+q.Encode(), nil, &st)
	return &st, err
}

// readError is the error of an answer that is not 2xx: the daemon's
// api.Error, or, from a daemon older than this kpf that answers in plain
// text, its text; a route such a daemon does not know says to restart it.
func readError(resp *http.Response, method, path string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e api.Error
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && json.Unmarshal(b, &e) == nil && e.Message != "" {
		return &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Message}
	}
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		p, _, _ := strings.Cut(path, "?")
		return tooOld(method, p)
	}
	return &APIError{Status: resp.StatusCode, Code: codeOf(resp.StatusCode), Message: strings.TrimSpace(string(b))}
}

// Files lists the applied files.
func (c *Client) Files(ctx context.Context) ([]api.File, error) {
	var out []api.File
	return out, c.do(ctx, http.MethodGet, "/v1/files", nil, &out)
}

// Forwards lists the forwards (of file, if not "").
func (c *Client) Forwards(ctx context.Context, file string) ([]api.Forward, error) {
	var out []api.Forward
	return out, c.do(ctx, http.MethodGet, "/v1/forwards?"+url.Values{"file": {file}}.Encode(), nil, &out)
}

func forwardPath(name, file, suffix string, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	if file != "" {
		q.Set("file", file)
	}
	p := "/v1/forwards/" + url.PathEscape(name) + suffix
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return p
}

// Forward is one forward, by name (of file, if not "").
func (c *Client) Forward(ctx context.Context, name, file string) (*api.Forward, error) {
	var f api.Forward
	return &f, c.do(ctx, http.MethodGet, forwardPath(name, file, "", nil), nil, &f)
}

// Start starts a forward without a file.
func (c *Client) Start(ctx context.Context, req api.StartRequest) (*api.Forward, error) {
	var f api.Forward
	return &f, c.do(ctx, http.MethodPost, "/v1/forwards", req, &f)
}

// Stop stops one forward.
func (c *Client) Stop(ctx context.Context, name, file string) (*api.Forward, error) {
	var f api.Forward
	return &f, c.do(ctx, http.MethodDelete, forwardPath(name, file, "", nil), nil, &f)
}

// RestartForward restarts one forward.
func (c *Client) RestartForward(ctx context.Context, name, file string) ([]api.Picked, error) {
	var res api.RestartResult
	err := c.do(ctx, http.MethodPost, forwardPath(name, file, "/restart", nil), nil, &res)
	return res.Restarted, err
}

// Doctor runs kpf doctor's checks of a forward in the daemon.
func (c *Client) Doctor(ctx context.Context, name, file string) (*api.DoctorResult, error) {
	var d api.DoctorResult
	return &d, c.do(ctx, http.MethodGet, forwardPath(name, file, "/doctor", nil), nil, &d)
}

// HTTPLog is the last lines of a forward's HTTP log.
func (c *Client) HTTPLog(ctx context.Context, name, file string, lines int) ([]string, error) {
	var l api.LogLines
	err := c.do(ctx, http.MethodGet, forwardPath(name, file, "/httplog", url.Values{"lines": {strconv.Itoa(lines)}}), nil, &l)
	return l.Lines, err
}

// FollowLog writes the last lines of a log (path: /v1/logs?... or
// /v1/forwards/NAME/httplog?...) and then each new one to w, until ctx
// ends.
func (c *Client) FollowLog(ctx context.Context, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://kpf"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return ErrNotRunning
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(resp, http.MethodGet, path)
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Logs is the last lines of the daemon's log, of file's forward name
// (either may be "").
func (c *Client) Logs(ctx context.Context, file, name string, lines int) ([]string, error) {
	var l api.LogLines
	q := url.Values{"lines": {strconv.Itoa(lines)}, "file": {file}, "name": {name}}
	return l.Lines, c.do(ctx, http.MethodGet, "/v1/logs?"+q.Encode(), nil, &l)
}

// Events reads the event stream (with every forward's counters once a
// second, if counters) and calls fn with each event until ctx ends or
// fn returns an error.
func (c *Client) Events(ctx context.Context, counters bool, fn func(api.Event) error) error {
	path := "/v1/events"
	if counters {
		path += "?counters=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://kpf"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ErrNotRunning
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(resp, http.MethodGet, path)
	}
	return ReadEvents(resp.Body, fn)
}

// ReadEvents parses a text/event-stream of api.Events.
func ReadEvents(r io.Reader, fn func(api.Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data.Len() == 0 {
				continue
			}
			var e api.Event
			if err := json.Unmarshal([]byte(data.String()), &e); err != nil {
				return fmt.Errorf("event stream: %w", err)
			}
			data.Reset()
			if err := fn(e); err != nil {
				return err
			}
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// Get answers a GET of the API (path with its query) into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// HoldSession opens the event stream of session and holds it until ctx
// ends: the forwards started with that Session stop when it closes, so
// even if this process is killed. ready is closed once the daemon holds
// it (or it failed: the error is returned).
func (c *Client) HoldSession(ctx context.Context, session string, ready chan<- struct{}) error {
	path := "/v1/events?" + url.Values{"session": {session}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://kpf"+path, nil)
	if err != nil {
		close(ready)
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		close(ready)
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		close(ready)
		return readError(resp, http.MethodGet, path)
	}
	// The headers came: the daemon's handler runs, and ends the session
	// when this stream closes.
	close(ready)
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}
