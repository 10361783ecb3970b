package ui

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/mattn/go-runewidth"
	"github.com/muesli/termenv"
)

// styles are the model's, from a renderer of its own: colour, or none.
type styles struct {
	title, tab, sel, dim, bad, good, warn, head lipgloss.Style
}

func newStyles(noColor bool) styles {
	r := lipgloss.NewRenderer(io.Discard)
	if noColor {
		r.SetColorProfile(termenv.Ascii)
	} else {
		r.SetColorProfile(termenv.ANSI)
	}
	s := r.NewStyle
	return styles{
		title: s().Bold(true),
		tab:   s().Bold(true).Foreground(lipgloss.Color("6")),
		sel:   s().Reverse(true),
		dim:   s().Foreground(lipgloss.Color("8")),
		bad:   s().Foreground(lipgloss.Color("1")),
		good:  s().Foreground(lipgloss.Color("2")),
		warn:  s().Foreground(lipgloss.Color("3")),
		head:  s().Bold(true).Underline(true),
	}
}

// cut makes s exactly w cells wide: cut with "…" or padded.
func cut(s string, w int) string {
	if w <= 0 {
		return ""
	}
	if runewidth.StringWidth(s) > w {
		s = runewidth.Truncate(s, w, "…")
	}
	return runewidth.FillRight(s, w)
}

// MinWidth and MinHeight are the smallest screen the UI draws on.
const MinWidth, MinHeight = 20, 6

// filterLine is the filter being typed, w cells wide: the keys after it
// if they fit, and its end (where typing goes) if it is longer than w.
func filterLine(filter string, w int) string {
	text := "/" + filter + "_"
	if full := text + "  (enter: keep the filter, esc: clear)"; runewidth.StringWidth(full) <= w {
		return cut(full, w)
	}
	if runewidth.StringWidth(text) <= w {
		return cut(text, w)
	}
	r := []rune(text)
	for runewidth.StringWidth(string(r)) > w-1 {
		r = r[1:]
	}
	return cut("…"+string(r), w)
}

// View draws the screen.
func (m *Model) View() string {
	st := m.styles()
	w, h := m.width, m.height
	if w < MinWidth || h < MinHeight {
		// Exactly the screen, whatever its size: a line that says so.
		lines := make([]string, h)
		if h > 0 {
			lines[0] = cut(fmt.Sprintf("terminal too small (need %d×%d)", MinWidth, MinHeight), w)
		}
		return strings.Join(lines, "\n")
	}
	var lines []string
	add := func(s string) { lines = append(lines, s) }

	// The header: which screen, and the keys to change it.
	tabs := []string{"targets", "forwards"}
	var hb strings.Builder
	hb.WriteString("kpf ui  ")
	for i, t := range tabs {
		if screen(i) == m.screen || (m.screen == screenText && screen(i) == m.back) {
			hb.WriteString("[" + t + "] ")
		} else {
			hb.WriteString(" " + t + "  ")
		}
	}
	hb.WriteString(" tab: switch  ?: help  q: quit")
	add(st.tab.Render(cut(hb.String(), w)))

	if m.help {
		lines = append(lines, m.helpLines(w, h-3)...)
	} else {
		switch m.screen {
		case screenTargets:
			lines = append(lines, m.targetsLines(st, w)...)
		case screenForwards:
			lines = append(lines, m.forwardsLines(st, w)...)
		default:
			lines = append(lines, m.textLines(st, w)...)
		}
	}
	// A prompt's refusal gets lines of its own, whole, above it.
	var refusal []string
	if m.prompt != nil && m.prompt.err != "" {
		refusal = wrap(m.prompt.err, w, max(h-4, 1))
	}
	for len(lines) < h-2-len(refusal) {
		add("")
	}
	lines = lines[:h-2-len(refusal)]
	for _, l := range refusal {
		add(st.bad.Render(cut(l, w)))
	}

	// The prompt, the filter being typed, or the last message.
	switch {
	case m.prompt != nil && m.prompt.kind == "port":
		how := "kept when kpf ui exits"
		if m.prompt.tied {
			how = "stops when kpf ui exits"
		}
		add(st.title.Render(cut(fmt.Sprintf("%s: %s_ [tab] %s · enter · esc", m.prompt.label, m.prompt.value, how), w)))
	case m.prompt != nil && m.prompt.kind == "overwrite":
		add(st.bad.Render(cut(m.prompt.label+" _", w)))
	case m.prompt != nil:
		verb := "write"
		if m.prompt.kind == "namespace" {
			verb = "open"
		}
		add(st.title.Render(cut(fmt.Sprintf("%s: %s_  enter: %s  esc: cancel", m.prompt.label, m.prompt.value, verb), w)))
	case m.filtering:
		add(st.title.Render(filterLine(m.filter, w)))
	case m.isErr:
		add(st.bad.Render(cut(m.message, w)))
	default:
		add(cut(m.message, w))
	}
	add(st.dim.Render(cut(m.statusLine(), w)))
	return strings.Join(lines, "\n")
}

// wrap breaks s into lines of at most w cells, at most n of them (the
// last cut with "…" if it must be).
func wrap(s string, w, n int) []string {
	var out []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case runewidth.StringWidth(line+" "+word) <= w:
			line += " " + word
		default:
			out = append(out, line)
			line = word
		}
	}
	out = append(out, line)
	if len(out) > n {
		out[n-1] = strings.Join(out[n-1:], " ")
		out = out[:n]
	}
	return out
}

func (m *Model) styles() styles { return newStyles(m.o.NoColor) }

// statusLine names the context, the identity and the daemon.
func (m *Model) statusLine() string {
	kctx, user, cluster := m.context, "", ""
	for _, c := range m.contexts {
		if (kctx == "" && c.Current) || c.Name == kctx {
			kctx, user, cluster = c.Name, c.User, c.Cluster
		}
	}
	if kctx == "" {
		kctx = "(current)"
	}
	s := "context " + kctx
	if user != "" {
		s += " · user " + user + " on " + cluster
	}
	switch {
	case m.daemonUp && m.status != nil:
		s += fmt.Sprintf(" · daemon pid %d", m.status.PID)
	default:
		s += " · daemon not answering"
	}
	if m.o.Socket != "" {
		s += " at " + m.o.Socket
	}
	return s
}

func (m *Model) targetsLines(st styles, w int) []string {
	var crumb string
	switch m.level {
	case levelContexts:
		crumb = "contexts (enter: its namespaces)"
	case levelNamespaces:
		crumb = fmt.Sprintf("%s > namespaces (enter: its targets, n: type one, A: forward it whole, esc: contexts)", m.ctxName())
	default:
		crumb = fmt.Sprintf("%s > %s > targets (enter: forward the port, a: all its ports, esc: back)", m.ctxName(), m.namespace)
	}
	if m.filter != "" {
		crumb = "/" + m.filter + "  " + crumb
	}
	out := []string{st.head.Render(cut(crumb, w))}
	if m.loading != "" && len(m.rows) == 0 {
		return append(out, cut("  loading "+m.loading+"...", w))
	}
	if len(m.rows) == 0 && m.level == levelTargets && m.listErr != "" {
		// Why there is nothing (the message line may say something else).
		for _, l := range wrap(m.listErr, w-2, 3) {
			out = append(out, st.bad.Render(cut("  "+l, w)))
		}
		return out
	}
	if len(m.rows) == 0 {
		return append(out, cut("  (nothing here)", w))
	}
	n := m.listHeight()
	first := max(0, min(m.cursor-n/2, len(m.rows)-n))
	for i := first; i < len(m.rows) && i < first+n; i++ {
		r := m.rows[i]
		text := r.text
		if r.target != nil && r.port != nil {
			text = fmt.Sprintf("%-38s %s", cut(r.target.Ref(), 38), portText(*r.port))
			if r.target.Ready != "" {
				text += "  " + r.target.Ready
			}
		}
		if i == m.cursor {
			out = append(out, st.sel.Render(cut("> "+text, w)))
		} else {
			out = append(out, cut("  "+text, w))
		}
	}
	return out
}

func (m *Model) ctxName() string {
	if m.context != "" {
		return m.context
	}
	for _, c := range m.contexts {
		if c.Current {
			return c.Name
		}
	}
	return "(current context)"
}

// column is one column of the forwards table.
type column struct {
	name  string
	width int // 0: the rest
	get   func(m *Model, f api.Forward) string
}

func (m *Model) columns(w int) []column {
	name := column{"NAME", 16, func(_ *Model, f api.Forward) string { return f.Name }}
	state := column{"STATE", 13, func(_ *Model, f api.Forward) string { return f.State }}
	local := column{"LOCAL", 21, func(_ *Model, f api.Forward) string {
		if len(f.Local) > 0 {
			return f.Local[0]
		}
		return strings.Join(f.Addresses, ",")
	}}
	conn := column{"CONN", 5, func(_ *Model, f api.Forward) string { return strconv.FormatInt(f.Open, 10) }}
	rateCol := column{"RATE", 9, func(_ *Model, f api.Forward) string { return rate(f.RateIn + f.RateOut) }}
	spark := column{"", 10, func(m *Model, f api.Forward) string { return sparkline(m.history[key(f)], 10) }}
	keep := column{"ENDS", 7, func(m *Model, f api.Forward) string { return m.ends(f) }}
	if w < 120 {
		name.width, state.width, local.width, spark.width = 13, 12, 19, 8
		spark.get = func(m *Model, f api.Forward) string { return sparkline(m.history[key(f)], 8) }
		return []column{name, state, local, conn, rateCol, spark, keep}
	}
	// Wide: longer names (a discover entry's NAME.NAMESPACE:PORT).
	name.width = min(16+(w-120)/2, 40)
	return []column{name, state,
		{"HEALTH", 9, func(_ *Model, f api.Forward) string { return f.Health }},
		{"POD", 24, func(_ *Model, f api.Forward) string { return f.Pod }},
		local, conn,
		{"IN", 9, func(_ *Model, f api.Forward) string { return rate(f.RateIn) }},
		{"OUT", 9, func(_ *Model, f api.Forward) string { return rate(f.RateOut) }},
		spark,
		{"RECON", 5, func(_ *Model, f api.Forward) string { return strconv.FormatInt(f.Reconnects, 10) }},
		keep,
		{"LAST ERROR", 0, func(_ *Model, f api.Forward) string { return f.LastError }},
	}
}

// ends says when a forward stops: with this UI ("with ui"), kept in the
// daemon ("kept"), or with its file.
func (m *Model) ends(f api.Forward) string {
	switch {
	case f.File == "" && m.tied[f.Name]:
		return "with ui"
	case f.File == "":
		return "kept"
	default:
		return "file"
	}
}

func (m *Model) forwardsLines(st styles, w int) []string {
	cols := m.columns(w)
	line := func(get func(c column) string) string {
		var b strings.Builder
		used := 0
		for i, c := range cols {
			cw := c.width
			if cw == 0 || i == len(cols)-1 {
				cw = max(w-used, 0)
			}
			cw = min(cw, max(w-used, 0))
			b.WriteString(cut(get(c), cw))
			used += cw
			if used < w && i < len(cols)-1 {
				b.WriteByte(' ')
				used++
			}
		}
		return b.String()
	}
	out := []string{st.head.Render(line(func(c column) string { return c.name }))}
	fws := m.forwards()
	n := m.listHeight()
	if len(fws) == 0 {
		out = append(out, cut("  no forwards: pick a port in the targets screen (tab), Enter forwards it", w))
	}
	first := max(0, min(m.fcursor-n/2, len(fws)-n))
	for i := first; i < len(fws) && i < first+n; i++ {
		f := fws[i]
		if !m.daemonUp {
			// What the daemon last said is not true any more.
			f.State, f.Health, f.Pod, f.Open, f.RateIn, f.RateOut = "unknown", "", "", 0, 0, 0
		}
		s := line(func(c column) string { return c.get(m, f) })
		switch {
		case !m.daemonUp:
			s = st.dim.Render(s)
		case i == m.fcursor:
			s = st.sel.Render(s)
		case f.State == "ready":
			s = st.good.Render(s)
		case f.State == "failed":
			s = st.bad.Render(s)
		case f.State != "":
			s = st.warn.Render(s)
		}
		out = append(out, s)
	}
	for len(out) < n+1 {
		out = append(out, "")
	}
	// The selected forward's details.
	if _, ok := m.selected(); ok && !m.daemonUp {
		out = append(out, cut("the kpf daemon is down: these are the forwards it last listed, in a state", w),
			cut("unknown (kpf status starts it again and restores them)", w), "")
	} else if f, ok := m.selected(); ok {
		from := f.File
		if from == "" {
			from = f.Origin
		}
		out = append(out,
			cut(fmt.Sprintf("%s: %s -> %s/%s (%s) pod %s  health %s %s", f.Name, strings.Join(f.Local, " "), f.Namespace, f.Target, strings.Join(f.Ports, " "), f.Pod, f.Health, f.HealthNote), w),
			cut(fmt.Sprintf("connections %d open, %d in all, %d failed · in %s out %s · reconnects %d · %s", f.Open, f.Total, f.Failed, bytes(f.BytesIn), bytes(f.BytesOut), f.Reconnects, from), w),
			st.bad.Render(cut(lastError(f), w)))
	}
	return out
}

func lastError(f api.Forward) string {
	if f.LastError == "" {
		return ""
	}
	return "last error: " + f.LastError
}

func (m *Model) textLines(st styles, w int) []string {
	follow := ""
	if m.canFollow {
		follow = "  F: follow (off)"
		if m.follow {
			follow = "  F: follow (on)"
		}
	}
	out := []string{st.head.Render(cut(m.title+"  (esc: back, up/down/pgup/pgdown: scroll"+follow+")", w))}
	n := m.listHeight()
	for i := m.scroll; i < len(m.lines) && i < m.scroll+n; i++ {
		out = append(out, cut(m.lines[i], w))
	}
	return out
}

// Help is each key, what it does, and the CLI command that does the
// same (the UI adds no power of its own). Each fits one line of 80.
var Help = [][3]string{
	{"enter", "open; on a port: forward it", "kpf forward -n NS TYPE/NAME LOCAL:REMOTE"},
	{"tab", "port prompt: kept, or stops w/ ui", ""},
	{"a", "forward every port of the target", "kpf forward -n NS TYPE/NAME PORT..."},
	{"A", "forward a namespace whole, live", "kpf up --all -n NS -d"},
	{"/", "filter as you type (esc clears)", ""},
	{"n", "open a namespace by its name", "kpf ui -n NS"},
	{"tab", "switch targets and forwards", "kpf status --watch"},
	{"s", "stop the forward", "kpf down NAME"},
	{"r", "restart it", "kpf restart NAME"},
	{"d", "run doctor on it", "kpf doctor -n NS TYPE/NAME PORT"},
	{"l", "its log (F: follow)", "kpf logs -f NAME"},
	{"h", "its HTTP log (F: follow)", "kpf logs --http -f NAME"},
	{"w", "write the set to a kpf.yaml", "kpf status --save FILE"},
	{"esc", "back (also backspace, left)", ""},
	{"right", "as enter", ""},
	{"j k", "down, up (also the arrow keys)", ""},
	{"g G", "first, last (also home, end)", ""},
	{"space", "a page down (also pgdown; pgup)", ""},
	{"f t", "to forwards, to targets (as tab)", ""},
	{"q", "quit (kept forwards keep running)", ""},
}

func (m *Model) helpLines(w, _ int) []string {
	out := []string{cut(fmt.Sprintf("%-5s %-33s %s", "key", "(any key closes this help)", "the same from the command line"), w)}
	for _, r := range Help {
		out = append(out, cut(fmt.Sprintf("%-5s %-33s %s", r[0], r[1], r[2]), w))
	}
	return out
}
