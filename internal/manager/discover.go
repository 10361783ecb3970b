package manager

import (
	"context"
	"errors"
	"slices"

	"strings"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/supervise"
)

// discoverOnce runs a discover entry: the forwards it finds run beside
// the file's (under the entry's life, so they end with it), and each new
// set is applied as Apply does, restarting only what changed.
func (m *Manager) discoverOnce(ctx context.Context, f *Forward, up func()) error {
	if m.o.OpenDiscover == nil {
		return supervise.Permanent(errors.New("discover entries are not run here"))
	}
	first, lastNote := true, ""
	err := m.o.OpenDiscover(ctx, f.Spec, func(fws []config.Forward, note string) {
		started, restarted, stopped, ok := m.applyOwned(ctx, f, fws)
		if !ok {
			return // the entry is stopping
		}
		if first {
			first = false
			up()
		}
		f.mu.Lock()
		f.healthNote = note
		f.mu.Unlock()
		m.setState(f, Ready, note)
		var parts []string
		for _, p := range []struct {
			what  string
			names []string
		}{{"started", started}, {"restarted", restarted}, {"stopped", stopped}} {
			if len(p.names) > 0 {
				parts = append(parts, p.what+" "+strings.Join(p.names, ", "))
			}
		}
		switch {
		case len(parts) > 0:
			m.event(f, "%s (%s)", strings.Join(parts, "; "), note)
		case note != lastNote:
			m.event(f, "%s", note)
		}
		lastNote = note
	})
	switch {
	case ctx.Err() != nil:
		return nil
	case err == nil:
		return errors.New("the discovery ended")
	}
	return openError(err)
}

// applyOwned makes the forwards owned by the discover entry e match fws;
// ok is false when ctx ended first. Forwards that failed are not started
// again for each change of the set: their retries do that.
func (m *Manager) applyOwned(ctx context.Context, e *Forward, fws []config.Forward) (started, restarted, stopped []string, ok bool) {
	select {
	case m.ops <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, nil, false
	}
	defer m.unlockOps()
	if ctx.Err() != nil {
		return nil, nil, nil, false
	}
	running := map[string]*Forward{}
	m.mu.Lock()
	for _, f := range m.forwards {
		if f.Spec.Owner == e.Spec.Name {
			running[f.Spec.Name] = f
		}
	}
	m.mu.Unlock()
	want := map[string]bool{}
	var toStop []*Forward
	var toStart []config.Forward
	for _, fw := range fws {
		fw.Owner = e.Spec.Name
		want[fw.Name] = true
		f, ok := running[fw.Name]
		switch {
		case !ok:
			started = append(started, fw.Name)
			toStart = append(toStart, fw)
		case !sameSpec(f.Spec, fw):
			restarted = append(restarted, fw.Name)
			toStop = append(toStop, f)
			toStart = append(toStart, fw)
		}
	}
	for name, f := range running {
		if !want[name] {
			stopped = append(stopped, name)
			toStop = append(toStop, f)
		}
	}
	slices.Sort(stopped)
	m.stop(toStop)
	m.Start(e.life, toStart)
	return started, restarted, stopped, true
}
