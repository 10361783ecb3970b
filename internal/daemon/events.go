package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon/api"
)

// EventBuffer is how many events the daemon keeps for clients that
// resume with Last-Event-ID.
const EventBuffer = 1024

// hubState turns changes of the forwards into events: each change is
// found by comparing status rows (diff), run when a manager reports a
// change (poke), after each request that may add or remove forwards, and
// once a second while someone listens (for counters: reconnects, failed
// connections). Events get increasing ids and the last EventBuffer are
// kept, so that a client that lost its stream resumes where it was.
type hubState struct {
	mu     sync.Mutex
	size   int // EventBuffer, or less in tests
	lastID uint64
	buf    []api.Event   // the last events, oldest first
	wake   chan struct{} // closed at each event, then replaced
	subs   int

	diffMu sync.Mutex // one diff at a time; held while publishing its events
	rows   map[string]api.Forward
	primed bool

	poked chan struct{}
}

func (s *Server) hub() *hubState {
	s.hubOnce.Do(func() {
		// Ids start above any an earlier daemon gave: from the time this
		// one started, in microseconds (a daemon gives far fewer than one
		// event a microsecond), so that a client resuming with an id of
		// the daemon before this one gets a gap, never a silent skip.
		s.ev = &hubState{size: EventBuffer, wake: make(chan struct{}), poked: make(chan struct{}, 1), lastID: uint64(time.Now().UnixMicro())}
		if s.eventBuffer > 0 {
			s.ev.size = s.eventBuffer
		}
	})
	return s.ev
}

// poke asks for a diff soon; it never blocks (a manager calls it).
func (h *hubState) poke() {
	select {
	case h.poked <- struct{}{}:
	default:
	}
}

// run diffs when poked, and once a second while someone listens, until
// the daemon stops.
func (h *hubState) run(s *Server) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-h.poked:
		case <-t.C:
			h.mu.Lock()
			n := h.subs
			h.mu.Unlock()
			if n == 0 {
				continue
			}
		}
		h.diff(s)
	}
}

func rowKey(f api.Forward) string { return f.File + "\x00" + f.Origin + "\x00" + f.Name }

// diff compares the forwards with the last diff's and publishes what
// changed.
func (h *hubState) diff(s *Server) {
	h.diffMu.Lock()
	defer h.diffMu.Unlock()
	st := s.statusOf("")
	now := time.Now()
	rows := make(map[string]api.Forward, len(st.Forwards))
	var out []api.Event
	ev := func(f api.Forward, typ string) api.Event {
		return api.Event{Time: now, Type: typ, File: f.File, Origin: f.Origin, Forward: f.Name, State: f.State, Health: f.Health, Pod: f.Pod}
	}
	for _, f := range st.Forwards {
		k := rowKey(f)
		rows[k] = f
		old, ok := h.rows[k]
		if !ok {
			if h.primed {
				e := ev(f, api.EventAdded)
				e.Message = "started " + f.Target
				out = append(out, e)
			}
			continue
		}
		if f.State != old.State {
			e := ev(f, api.EventState)
			e.Message = old.State + " -> " + f.State
			if f.LastError != "" && f.State != "ready" {
				e.Message += ": " + f.LastError
			}
			out = append(out, e)
		}
		if f.Health != old.Health {
			e := ev(f, api.EventHealth)
			e.Message = old.Health + " -> " + f.Health
			if f.HealthNote != "" {
				e.Message += ": " + f.HealthNote
			}
			out = append(out, e)
		}
		if f.Pod != old.Pod && f.Pod != "" && old.Pod != "" {
			e := ev(f, api.EventPod)
			e.Message = fmt.Sprintf("now on pod %s (was %s)", f.Pod, old.Pod)
			out = append(out, e)
		}
		if d := f.Reconnects - old.Reconnects; d > 0 {
			e := ev(f, api.EventReconnect)
			e.Count = d
			out = append(out, e)
		}
		if d := f.Failed - old.Failed; d > 0 {
			e := ev(f, api.EventFailed)
			e.Count = d
			out = append(out, e)
		}
	}
	for k, f := range h.rows {
		if _, ok := rows[k]; !ok {
			e := ev(f, api.EventRemoved)
			e.State = "stopped"
			out = append(out, e)
		}
	}
	h.rows, h.primed = rows, true
	for _, e := range out {
		h.publish(e)
	}
}

// publish gives e the next id and keeps it.
func (h *hubState) publish(e api.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastID++
	e.ID = h.lastID
	if len(h.buf) == h.size {
		copy(h.buf, h.buf[1:])
		h.buf = h.buf[:h.size-1]
	}
	h.buf = append(h.buf, e)
	close(h.wake)
	h.wake = make(chan struct{})
}

// since returns the events after id, and a channel closed at the next
// one. gap: events after id are no longer kept (or id was never given
// out: another daemon's).
func (h *hubState) since(id uint64) (evs []api.Event, gap bool, wake <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case id > h.lastID:
		gap = true
	case id < h.lastID:
		first := h.lastID - uint64(len(h.buf)) + 1 // the oldest kept
		if id+1 < first {
			gap = true
		} else {
			evs = append(evs, h.buf[id+1-first:]...)
		}
	}
	return evs, gap, h.wake
}

func (h *hubState) subscribe(delta int) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs += delta
	return h.lastID
}

// events is GET /v1/events: Server-Sent Events. Without Last-Event-ID
// the stream starts with the events to come; with it, with the ones
// after it. If those are no longer kept, a gap event comes first, with
// the status as it is now. ?counters=1 adds a counters event (every
// forward's counters) once a second: these have no id and are not kept.
func (s *Server) eventStream(w http.ResponseWriter, r *http.Request) {
	h := s.hub()
	counters := yes(r, qCounters)
	last := h.subscribe(1)
	defer h.subscribe(-1)
	if session := r.URL.Query().Get("session"); session != "" {
		// The caller's forwards of this session live as long as this
		// stream: its end (the caller exited, or was killed) stops them.
		defer s.endSession(session)
	}
	resume := r.Header.Get("Last-Event-ID")
	if resume == "" {
		resume = r.URL.Query().Get("lastEventId") // for clients that cannot set headers
	}
	if resume != "" {
		id, err := strconv.ParseUint(resume, 10, 64)
		if err != nil {
			httpError(w, fmt.Sprintf("Last-Event-ID %q: want the id of an event this daemon sent (a number)", resume), http.StatusBadRequest)
			return
		}
		last = id
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": kpf daemon events (pid %d)\n\n", os.Getpid())
	flush(w)
	tick := make(<-chan time.Time)
	if counters {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		evs, gap, wake := h.since(last)
		if gap {
			st := s.statusOf("")
			if err := writeEvent(w, api.Event{Time: time.Now(), Type: api.EventGap,
				Message: fmt.Sprintf("events after id %d are no longer kept (the daemon keeps the last %d): the status is as it is now", last, h.size), Status: &st}); err != nil {
				return
			}
			last = h.subscribe(0)
			continue
		}
		for _, e := range evs {
			if err := writeEvent(w, e); err != nil {
				return
			}
			last = e.ID
		}
		flush(w)
		select {
		case <-r.Context().Done():
			return
		case <-wake:
		case <-tick:
			st := s.statusOf("")
			if err := writeEvent(w, api.Event{Time: time.Now(), Type: api.EventCounters, Status: &st}); err != nil {
				return
			}
			flush(w)
		case <-keepAlive.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
			flush(w)
		}
	}
}

func writeEvent(w io.Writer, e api.Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if e.ID != 0 {
		if _, err := fmt.Fprintf(w, "id: %d\n", e.ID); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, b)
	return err
}
