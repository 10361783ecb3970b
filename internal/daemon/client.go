package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
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
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return errors.New(strings.TrimSpace(string(b)))
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
