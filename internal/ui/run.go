package ui

import (
	"context"
	"errors"
	"io"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/kpf-dev/kpf/internal/daemon/api"
)

// Run shows the UI on the terminal of in and out until the user quits or
// ctx ends. The daemon's event stream (with counters once a second) feeds
// it; when the stream breaks it is opened again.
func Run(ctx context.Context, o Options, in io.Reader, out io.Writer) error {
	m := New(o)
	p := tea.NewProgram(m, tea.WithAltScreen(), tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(out))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pump(ctx, o.Daemon, p.Send)
	}()
	_, err := p.Run()
	cancel()
	<-done
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// pump sends the daemon's events until ctx ends, opening the stream
// again a second after it broke.
func pump(ctx context.Context, d Daemon, send func(tea.Msg)) {
	for ctx.Err() == nil {
		err := d.Events(ctx, true, func(e api.Event) error {
			send(EventMsg(e))
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		send(DaemonDownMsg{Err: err})
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Frame is the UI's first screen at width×height, as text: what kpf ui
// shows once the cluster and the daemon answered (kpf ui --print).
func Frame(o Options, width, height int) string {
	m := New(o)
	m.Update(tea.WindowSizeMsg{Width: width, Height: height})
	// run runs c and the commands its messages lead to (a few levels:
	// opening the context's namespace when namespaces are forbidden).
	var run func(c tea.Cmd, depth int)
	run = func(c tea.Cmd, depth int) {
		if c == nil || depth > 3 {
			return
		}
		switch msg := c().(type) {
		case tea.BatchMsg:
			for _, c := range msg {
				run(c, depth)
			}
		case nil, tickMsg:
		default:
			_, next := m.Update(msg)
			run(next, depth+1)
		}
	}
	if m.level != levelContexts {
		run(m.loadContexts(), 0)
	}
	run(m.load(), 0)
	run(m.refresh(), 0)
	return m.View()
}
