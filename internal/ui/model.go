package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/httplog"
)

// Screens.
type screen int

const (
	screenTargets screen = iota
	screenForwards
	screenText // doctor, log, HTTP log
)

// Levels of the targets screen.
type level int

const (
	levelContexts level = iota
	levelNamespaces
	levelTargets
)

// Messages (the results of commands, and the event stream's).
type (
	contextsMsg struct {
		list []Context
		err  error
		// openOwn: the namespaces of context ownCtx could not be
		// listed; open its own namespace once the contexts are known.
		openOwn bool
		ownCtx  string
	}
	namespacesMsg struct {
		context string
		list    []string
		err     error
	}
	targetsMsg struct {
		context, namespace string
		list               []Target
		err                error
	}
	// EventMsg is one event of the daemon's stream (Run sends them).
	EventMsg api.Event
	// DaemonDownMsg says the event stream broke (Run reconnects).
	DaemonDownMsg struct{ Err error }
	statusMsg     struct {
		st  *api.Status
		err error
	}
	startedMsg struct {
		f    *api.Forward
		tied bool
		err  error
	}
	doneMsg struct { // an action that answers with a line to show
		text string
		err  error
	}
	textMsg struct {
		title string
		lines []string
		err   error
		gen   int
	}
	tickMsg struct{ gen int }
)

// row is one line of the targets screen's list.
type row struct {
	text   string // what the filter matches and the list shows
	target *Target
	port   *Port // nil: the target has no declared port
}

// prompt is a line being edited at the bottom.
type prompt struct {
	kind  string // "port", "write" or "overwrite" (a y/N question)
	label string
	value string
	tied  bool // port: tie the forward to this UI's session
	ports []Port
	tgt   Target
	path  string // overwrite: the file
	err   string // why the value typed was refused (the prompt stays)
}

// Model is kpf ui's state; Update and View are Bubble Tea's.
type Model struct {
	o Options

	width, height int
	screen        screen
	help          bool

	// targets screen
	level      level
	context    string // "" until chosen: the current one
	namespace  string
	contexts   []Context
	namespaces []string
	targets    []Target
	rows       []row // the current level's, filtered
	cursor     int
	filter     string
	filtering  bool
	loading    string
	listErr    string // why the targets listed are not all there are
	// nsForbidden: contexts whose namespaces may not be listed (esc
	// from their targets goes to the contexts)
	nsForbidden map[string]bool

	// forwards screen
	status  *api.Status
	fcursor int
	history map[string][]int64 // rate samples per forward, oldest first
	tied    map[string]bool    // forwards this UI started tied to its session
	mine    map[string]bool    // forwards this UI started
	failed  map[string]string  // the last error shown of each of mine that failed

	// text screen (doctor, log, HTTP log)
	title     string
	lines     []string
	scroll    int // first line shown
	follow    bool
	canFollow bool          // a log: follow refreshes it
	every     time.Duration // how often a followed log is read again
	textFn    func(context.Context) ([]string, error)
	textGen   int
	back      screen
	prompt    *prompt
	message   string
	isErr     bool
	daemonUp  bool
	downMsg   string // the message that says the daemon is down
}

// historyLen is how many rate samples a sparkline keeps.
const historyLen = 30

// New makes the model.
func New(o Options) *Model {
	if o.FreePort == nil {
		o.FreePort = FreeLocalPort
	}
	if o.PortFree == nil {
		o.PortFree = PortInUse
	}
	if o.WriteFile == nil {
		o.WriteFile = WriteSet
	}
	m := &Model{o: o, width: 80, height: 24, context: o.Context, namespace: o.Namespace,
		history: map[string][]int64{}, tied: map[string]bool{}, mine: map[string]bool{}, failed: map[string]string{}, nsForbidden: map[string]bool{}}
	m.level, m.every = levelNamespaces, time.Second
	if o.Namespace != "" {
		m.level = levelTargets
	}
	return m
}

// Init loads the first level and the daemon's status.
func (m *Model) Init() tea.Cmd {
	cmds := []tea.Cmd{m.load(), m.refresh()}
	if m.level != levelContexts {
		cmds = append(cmds, m.loadContexts())
	}
	return tea.Batch(cmds...)
}

// loadContexts lists the contexts (the status line names the user).
func (m *Model) loadContexts() tea.Cmd {
	c := m.o.Cluster
	return func() tea.Msg {
		l, err := c.Contexts()
		return contextsMsg{list: l, err: err}
	}
}

func timeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (m *Model) load() tea.Cmd {
	o, kctx, ns := m.o, m.context, m.namespace
	switch m.level {
	case levelContexts:
		m.loading = "contexts"
		return m.loadContexts()
	case levelNamespaces:
		m.loading = "namespaces"
		return func() tea.Msg {
			ctx, cancel := timeout()
			defer cancel()
			l, err := o.Cluster.Namespaces(ctx, kctx)
			return namespacesMsg{kctx, l, err}
		}
	default:
		m.loading = "targets"
		return func() tea.Msg {
			ctx, cancel := timeout()
			defer cancel()
			l, err := o.Cluster.Targets(ctx, kctx, ns)
			return targetsMsg{kctx, ns, l, err}
		}
	}
}

func (m *Model) refresh() tea.Cmd {
	d := m.o.Daemon
	return func() tea.Msg {
		ctx, cancel := timeout()
		defer cancel()
		st, err := d.Status(ctx, "")
		return statusMsg{st, err}
	}
}

func (m *Model) say(format string, a ...any) {
	m.message, m.isErr = fmt.Sprintf(format, a...), false
}

func (m *Model) fail(err error) {
	m.message, m.isErr = err.Error(), true
}

// Update handles a message.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.clamp()
	case tea.KeyMsg:
		return m, m.key(msg)
	case contextsMsg:
		if m.level == levelContexts {
			m.loading = ""
		}
		if msg.err != nil {
			m.fail(msg.err)
		}
		m.contexts = msg.list
		m.rebuild()
		if msg.openOwn && m.level == levelNamespaces && msg.ownCtx == m.context {
			ns := m.ownNamespace()
			m.say("you may not list namespaces: this is %s, the context's own (n or kpf ui -n NAMESPACE opens another)", ns)
			return m, m.openNamespace(ns)
		}
	case namespacesMsg:
		m.loading = ""
		if errors.Is(msg.err, ErrForbidden) && msg.context == m.context && m.level == levelNamespaces {
			m.nsForbidden[m.context] = true
			c, kctx := m.o.Cluster, m.context
			return m, func() tea.Msg {
				l, err := c.Contexts()
				return contextsMsg{list: l, err: err, openOwn: true, ownCtx: kctx}
			}
		}
		if msg.err != nil {
			m.fail(msg.err)
		}
		slices.Sort(msg.list)
		m.namespaces = msg.list
		m.rebuild()
		if i := slices.Index(msg.list, m.namespace); i >= 0 && m.filter == "" {
			m.cursor = i
		}
	case targetsMsg:
		m.loading = ""
		if msg.err != nil {
			m.fail(msg.err)
		}
		if msg.context == m.context && msg.namespace == m.namespace {
			m.targets = msg.list
			m.listErr = ""
			if msg.err != nil {
				m.listErr = msg.err.Error()
			}
			m.rebuild()
		}
	case statusMsg:
		if msg.err != nil {
			m.daemonUp = false
			m.fail(msg.err)
			break
		}
		m.up()
		m.setStatus(msg.st, false)
	case EventMsg:
		m.up()
		if msg.Type == api.EventCounters && msg.Status != nil {
			m.setStatus(msg.Status, true)
			return m, nil
		}
		if msg.Type == api.EventGap && msg.Status != nil {
			m.setStatus(msg.Status, false)
			return m, nil
		}
		return m, m.refresh()
	case DaemonDownMsg:
		m.daemonUp = false
		err := msg.Err
		if err == nil {
			err = errors.New("it ended")
		}
		m.fail(fmt.Errorf("the kpf daemon is down (its event stream: %w): reconnecting", err))
		m.downMsg = m.message
		clear(m.history)
	case startedMsg:
		if msg.err != nil {
			m.fail(msg.err)
			break
		}
		m.mine[msg.f.Name] = true
		how := "kept when kpf ui exits"
		if msg.tied {
			m.tied[msg.f.Name] = true
			how = "stops when kpf ui exits"
		}
		m.say("started %s (%s): %s", msg.f.Name, how, strings.Join(msg.f.Ports, " "))
		return m, m.refresh()
	case doneMsg:
		if msg.err != nil {
			m.fail(msg.err)
		} else {
			m.say("%s", msg.text)
		}
		return m, m.refresh()
	case textMsg:
		if msg.gen != m.textGen || m.screen != screenText {
			break
		}
		if msg.err != nil {
			m.fail(msg.err)
			break
		}
		m.lines = msg.lines
		if m.follow {
			m.scroll = max(0, len(m.lines)-m.listHeight())
		}
		m.clamp()
		if m.follow {
			gen := m.textGen
			return m, tea.Tick(m.every, func(time.Time) tea.Msg { return tickMsg{gen} })
		}
	case tickMsg:
		if msg.gen == m.textGen && m.screen == screenText && m.follow && m.textFn != nil {
			return m, m.fetchText(m.title, m.textFn)
		}
	}
	return m, nil
}

// up notes the daemon answers again; the message that said it was down
// goes.
func (m *Model) up() {
	m.daemonUp = true
	if m.downMsg != "" && m.message == m.downMsg {
		m.say("the kpf daemon answers again")
	}
	m.downMsg = ""
}

// setStatus takes a status; counters adds a rate sample per forward.
func (m *Model) setStatus(st *api.Status, counters bool) {
	m.status = st
	live := map[string]bool{}
	for _, f := range st.Forwards {
		k := key(f)
		live[k] = true
		// A forward this UI started that failed (its port taken since
		// the prompt checked it, say): the message line says why.
		if f.File == "" && m.mine[f.Name] && f.State == "failed" && m.failed[f.Name] != f.LastError {
			m.failed[f.Name] = f.LastError
			m.fail(fmt.Errorf("%s failed: %s", f.Name, f.LastError))
		}
		if counters {
			h := append(m.history[k], f.RateIn+f.RateOut)
			if len(h) > historyLen {
				h = h[len(h)-historyLen:]
			}
			m.history[k] = h
		}
	}
	for k := range m.history {
		if !live[k] {
			delete(m.history, k)
		}
	}
	m.clamp()
}

func key(f api.Forward) string { return f.File + "\x00" + f.Origin + "\x00" + f.Name }

// forwards are the status's forwards and proxies, as the table lists them.
func (m *Model) forwards() []api.Forward {
	if m.status == nil {
		return nil
	}
	return m.status.Forwards
}

func (m *Model) selected() (api.Forward, bool) {
	fws := m.forwards()
	if m.fcursor < 0 || m.fcursor >= len(fws) {
		return api.Forward{}, false
	}
	return fws[m.fcursor], true
}

// rebuild makes the rows of the current level, filtered.
func (m *Model) rebuild() {
	var rows []row
	switch m.level {
	case levelContexts:
		for _, c := range m.contexts {
			t := c.Name
			if c.Current {
				t += " (current)"
			}
			rows = append(rows, row{text: t})
		}
	case levelNamespaces:
		for _, n := range m.namespaces {
			rows = append(rows, row{text: n})
		}
	default:
		for i := range m.targets {
			t := &m.targets[i]
			if len(t.Ports) == 0 {
				rows = append(rows, row{text: t.Ref() + "  (no declared port)", target: t})
			}
			for j := range t.Ports {
				rows = append(rows, row{text: t.Ref() + "  " + portText(t.Ports[j]), target: t, port: &t.Ports[j]})
			}
		}
	}
	if f := strings.ToLower(m.filter); f != "" {
		rows = slices.DeleteFunc(rows, func(r row) bool { return !strings.Contains(strings.ToLower(r.text), f) })
	}
	m.rows = rows
	m.clamp()
}

func portText(p Port) string {
	s := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
	if p.Name != "" {
		s += " (" + p.Name + ")"
	}
	if p.To != "" {
		s += " -> " + p.To
	}
	return s
}

func (m *Model) clamp() {
	n := len(m.rows)
	m.cursor = min(max(m.cursor, 0), max(n-1, 0))
	m.fcursor = min(max(m.fcursor, 0), max(len(m.forwards())-1, 0))
	m.scroll = min(max(m.scroll, 0), max(len(m.lines)-m.listHeight(), 0))
}

// listHeight is how many lines the list (or text) gets: the screen less
// the header, the prompt or message line, the status line, and on the
// forwards screen the selected forward's details.
func (m *Model) listHeight() int {
	h := m.height - 4
	if m.screen == screenForwards {
		h -= 3
	}
	return max(h, 1)
}

// key handles a key press.
func (m *Model) key(k tea.KeyMsg) tea.Cmd {
	if k.Paste {
		m.paste(k.Runes)
		return nil
	}
	if k.Type == tea.KeyRunes && len(k.Runes) > 1 && !k.Alt {
		// Keys typed fast (or sent by tmux) come in one read: each is a
		// key of its own ("/web" is a filter, not a key named "/web").
		var cmds []tea.Cmd
		for _, r := range k.Runes {
			cmds = append(cmds, m.key(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}}))
		}
		return tea.Batch(cmds...)
	}
	s := k.String()
	if s == "ctrl+c" {
		return tea.Quit
	}
	if m.prompt != nil {
		return m.promptKey(k)
	}
	if m.filtering {
		switch k.Type {
		case tea.KeyEnter:
			m.filtering = false
		case tea.KeyEsc:
			m.filtering, m.filter = false, ""
			m.rebuild()
		case tea.KeyBackspace:
			if m.filter != "" {
				r := []rune(m.filter)
				m.filter = string(r[:len(r)-1])
				m.rebuild()
			}
		case tea.KeyRunes, tea.KeySpace:
			m.filter += string(k.Runes)
			m.cursor = 0
			m.rebuild()
		case tea.KeyUp, tea.KeyDown:
			m.move(k)
		}
		return nil
	}
	if m.help {
		m.help = false
		return nil
	}
	switch s {
	case "?":
		m.help = true
		return nil
	case "q":
		return tea.Quit
	}
	switch m.screen {
	case screenTargets:
		return m.targetsKey(k)
	case screenForwards:
		return m.forwardsKey(k)
	default:
		return m.textKey(k)
	}
}

// paste takes pasted text (bracketed paste) as text in the filter or the
// prompt being edited, its line breaks and control characters left out;
// anywhere else it is ignored: pasted text never runs as keys.
func (m *Model) paste(rs []rune) {
	text := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, string(rs))
	switch {
	case m.prompt != nil && m.prompt.kind == "port":
		if strings.Trim(text, "0123456789") == "" {
			m.prompt.value += text
		}
	case m.prompt != nil && m.prompt.kind != "overwrite":
		m.prompt.value += text
	case m.prompt == nil && m.filtering:
		m.filter += text
		m.cursor = 0
		m.rebuild()
	}
}

func (m *Model) move(k tea.KeyMsg) {
	page := m.listHeight()
	d := 0
	switch k.String() {
	case "up", "k":
		d = -1
	case "down", "j":
		d = 1
	case "pgup":
		d = -page
	case "pgdown", " ":
		d = page
	case "home", "g":
		d = -1 << 30
	case "end", "G":
		d = 1 << 30
	}
	switch m.screen {
	case screenTargets:
		m.cursor += d
	case screenForwards:
		m.fcursor += d
	default:
		m.scroll += d
		m.follow = m.canFollow && m.scroll >= len(m.lines)-m.listHeight()
	}
	m.clamp()
}

func (m *Model) targetsKey(k tea.KeyMsg) tea.Cmd {
	switch k.String() {
	case "tab", "f":
		m.screen = screenForwards
		return m.refresh()
	case "/":
		m.filtering = true
		return nil
	case "up", "down", "pgup", "pgdown", "home", "end", "j", "k", "g", "G", " ":
		m.move(k)
		return nil
	case "esc", "backspace", "left":
		if m.filter != "" {
			m.filter = ""
			m.rebuild()
			return nil
		}
		if m.level == levelContexts {
			return nil
		}
		m.level--
		if m.level == levelNamespaces && m.nsForbidden[m.context] {
			m.level = levelContexts // its namespaces cannot be listed
		}
		m.cursor = 0
		m.rebuild()
		return m.load()
	case "enter", "right":
		return m.enter()
	case "n":
		m.prompt = &prompt{kind: "namespace", label: "open the namespace"}
		return nil
	case "a":
		if m.level != levelTargets || len(m.rows) == 0 || m.rows[m.cursor].target == nil {
			return nil
		}
		t := *m.rows[m.cursor].target
		if len(t.Ports) == 0 {
			m.fail(fmt.Errorf("%s declares no port: forward it with kpf forward -n %s %s PORT", t.Ref(), m.namespace, t.Ref()))
			return nil
		}
		return m.start(t, t.Ports, nil, false)
	case "A":
		ns := m.namespace
		if m.level == levelNamespaces {
			if len(m.rows) == 0 {
				m.fail(errors.New("no namespace is selected: A forwards the selected one (esc clears the filter)"))
				return nil
			}
			ns = m.rows[m.cursor].text
		}
		if m.level == levelContexts || ns == "" {
			return nil
		}
		c, kctx := m.o.Cluster, m.context
		m.say("forwarding every service of %s...", ns)
		return func() tea.Msg {
			ctx, cancel := timeout()
			defer cancel()
			file, err := c.ForwardNamespace(ctx, kctx, ns)
			return doneMsg{text: fmt.Sprintf("forwarding every service of %s, kept in step (kpf down -f %s stops it)", ns, file), err: err}
		}
	}
	return nil
}

func (m *Model) enter() tea.Cmd {
	if len(m.rows) == 0 {
		return nil
	}
	r := m.rows[m.cursor]
	switch m.level {
	case levelContexts:
		m.context = strings.TrimSuffix(r.text, " (current)")
		m.level, m.cursor, m.filter, m.namespace = levelNamespaces, 0, "", ""
		m.rebuild()
		return m.load()
	case levelNamespaces:
		return m.openNamespace(r.text)
	}
	if r.port == nil {
		m.fail(fmt.Errorf("%s declares no port: forward it with kpf forward -n %s %s PORT", r.target.Ref(), m.namespace, r.target.Ref()))
		return nil
	}
	local := m.o.FreePort(r.port.Protocol, int(r.port.Port))
	m.prompt = &prompt{kind: "port", tgt: *r.target, ports: []Port{*r.port}, value: strconv.Itoa(local),
		label: fmt.Sprintf("%s:%d/%s local port", r.target.Ref(), r.port.Port, r.port.Protocol)}
	return nil
}

// openNamespace shows the targets of ns.
func (m *Model) openNamespace(ns string) tea.Cmd {
	m.namespace, m.listErr = ns, ""
	m.level, m.cursor, m.filter, m.filtering = levelTargets, 0, "", false
	m.targets = nil
	m.rebuild()
	return m.load()
}

// ownNamespace is the current context's kubeconfig namespace, else
// "default" (as kubectl does).
func (m *Model) ownNamespace() string {
	for _, c := range m.contexts {
		if (m.context == "" && c.Current) || c.Name == m.context {
			if c.Namespace != "" {
				return c.Namespace
			}
		}
	}
	return "default"
}

func (m *Model) promptKey(k tea.KeyMsg) tea.Cmd {
	p := m.prompt
	if p.kind == "overwrite" { // one key answers: y writes, any other does not
		m.prompt = nil
		if k.String() == "y" || k.String() == "Y" {
			return m.write(p.path, true)
		}
		m.say("not written: %s is left as it was", p.path)
		return nil
	}
	switch k.Type {
	case tea.KeyEsc:
		m.prompt = nil
		return nil
	}
	p.err = ""
	switch k.Type {
	case tea.KeyTab:
		if p.kind == "port" {
			p.tied = !p.tied
		}
		return nil
	case tea.KeyBackspace:
		if r := []rune(p.value); len(r) > 0 {
			p.value = string(r[:len(r)-1])
		}
		return nil
	case tea.KeyRunes, tea.KeySpace:
		if p.kind == "port" && strings.Trim(string(k.Runes), "0123456789") != "" {
			return nil
		}
		p.value += string(k.Runes)
		return nil
	case tea.KeyEnter:
	default:
		return nil
	}
	switch p.kind {
	case "port":
		n, err := strconv.Atoi(p.value)
		if err != nil || n < 1 || n > 65535 {
			p.err = fmt.Sprintf("local port %q: want a number from 1 to 65535", p.value)
			return nil
		}
		proto := p.ports[0].Protocol
		if err := m.o.PortFree(proto, n); err != nil {
			free := m.o.FreePort(proto, 0)
			p.err = fmt.Sprintf("local port %d: %v; %d is free (enter takes it)", n, err, free)
			p.value = strconv.Itoa(free)
			return nil
		}
		m.prompt = nil
		return m.start(p.tgt, p.ports, []int{n}, p.tied)
	case "namespace":
		ns := strings.TrimSpace(p.value)
		if ns == "" {
			p.err = "no namespace: type its name"
			return nil
		}
		m.prompt = nil
		return m.openNamespace(ns)
	default:
		m.prompt = nil
		return m.write(p.value, false)
	}
}

// start starts one forward of t's ports (locals: the local port of each,
// or nil for a free one each).
func (m *Model) start(t Target, ports []Port, locals []int, tied bool) tea.Cmd {
	var specs []string
	for i, p := range ports {
		local := 0
		if i < len(locals) {
			local = locals[i]
		} else {
			local = m.o.FreePort(p.Protocol, int(p.Port))
		}
		s := fmt.Sprintf("%d:%d", local, p.Port)
		if p.Protocol == "UDP" {
			s += "/udp"
		}
		specs = append(specs, s)
	}
	// localhost, as kpf forward's default (127.0.0.1 and ::1), which the
	// help says Enter is.
	req := api.StartRequest{Context: m.context, Namespace: m.namespace, Target: t.Ref(), Ports: specs, Address: "localhost",
		HTTPLog: true, Origin: Origin, Identity: m.o.Identity, Settings: m.o.Settings}
	if tied {
		req.Session = m.o.Session
	}
	d := m.o.Daemon
	m.say("starting %s %s...", t.Ref(), strings.Join(specs, " "))
	return func() tea.Msg {
		ctx, cancel := timeout()
		defer cancel()
		f, err := d.Start(ctx, req)
		if err == nil && len(f.Ports) == 0 {
			f.Ports = specs
		}
		return startedMsg{f, tied, err}
	}
}

// write writes the set to path; an existing file is replaced only when
// overwrite (else the user is asked first).
func (m *Model) write(path string, overwrite bool) tea.Cmd {
	if path == "" {
		m.fail(fmt.Errorf("no file name: type where to write the set, such as kpf.yaml"))
		return nil
	}
	b, err := SetFile(path, m.forwards())
	if err != nil {
		m.fail(err)
		return nil
	}
	if err := m.o.WriteFile(path, b, overwrite); err != nil {
		if errors.Is(err, ErrExists) && !overwrite {
			m.prompt = &prompt{kind: "overwrite", path: path, label: path + " exists: overwrite? y/N"}
			return nil
		}
		m.fail(err)
		return nil
	}
	abs, _ := filepath.Abs(path)
	m.say("wrote %s: kpf up -f %s runs it", abs, path)
	return nil
}

func (m *Model) forwardsKey(k tea.KeyMsg) tea.Cmd {
	switch k.String() {
	case "tab", "t", "esc", "backspace", "left":
		m.screen = screenTargets
		return nil
	case "up", "down", "pgup", "pgdown", "home", "end", "j", "k", "g", "G", " ":
		m.move(k)
		return nil
	case "w":
		m.prompt = &prompt{kind: "write", label: "write the set to", value: "kpf.yaml"}
		return nil
	}
	f, ok := m.selected()
	if !ok {
		return nil
	}
	d := m.o.Daemon
	switch k.String() {
	case "s":
		return func() tea.Msg {
			ctx, cancel := timeout()
			defer cancel()
			_, err := d.Stop(ctx, f.Name, f.File)
			return doneMsg{text: "stopped " + f.Name, err: err}
		}
	case "r":
		return func() tea.Msg {
			ctx, cancel := timeout()
			defer cancel()
			_, err := d.RestartForward(ctx, f.Name, f.File)
			return doneMsg{text: "restarted " + f.Name, err: err}
		}
	case "d":
		return m.openText("doctor "+f.Name, false, func(ctx context.Context) ([]string, error) {
			r, err := d.Doctor(ctx, f.Name, f.File)
			if err != nil {
				return nil, err
			}
			return doctorLines(r), nil
		})
	case "l":
		return m.openText("log of "+f.Name, true, func(ctx context.Context) ([]string, error) {
			return d.Logs(ctx, f.File, f.Name, 1000)
		})
	case "h":
		return m.openText("HTTP log of "+f.Name, true, func(ctx context.Context) ([]string, error) {
			l, err := d.HTTPLog(ctx, f.Name, f.File, 1000)
			for i := range l {
				l[i] = httpLine(l[i])
			}
			return l, err
		})
	}
	return nil
}

// httpLine is a line of the HTTP log (httplog.Record's JSON) as one
// readable line: time, method, path, status, sizes, duration, pod. A
// line it cannot read is shown as it is.
func httpLine(line string) string {
	var r httplog.Record
	if err := json.Unmarshal([]byte(line), &r); err != nil || r.Kind != "request" {
		return line
	}
	t := r.Time
	if ts, err := time.Parse(time.RFC3339Nano, r.Time); err == nil {
		t = ts.Local().Format("15:04:05")
	}
	status := strconv.Itoa(r.Status)
	if r.Incomplete {
		status += " (incomplete)"
	}
	return fmt.Sprintf("%s %s %s %s  %s in, %s out, %s  %s", t, r.Method, r.Path, status,
		bytes(r.RequestSize), bytes(r.ResponseSize), time.Duration(r.Seconds*float64(time.Second)).Round(time.Millisecond), r.Pod)
}

func doctorLines(r *api.DoctorResult) []string {
	var out []string
	for _, c := range r.Checks {
		out = append(out, fmt.Sprintf("[%s] %s: %s", c.Status, c.Step, c.Summary))
		for _, d := range c.Details {
			out = append(out, "       "+d)
		}
		if c.Fix != "" {
			out = append(out, "       fix: "+c.Fix)
		}
	}
	if r.OK {
		out = append(out, "every check passed")
	}
	return out
}

func (m *Model) openText(title string, follow bool, fn func(context.Context) ([]string, error)) tea.Cmd {
	m.back, m.screen = m.screen, screenText
	m.title, m.lines, m.scroll, m.follow, m.canFollow, m.textFn = title, []string{"loading..."}, 0, follow, follow, fn
	m.textGen++
	return m.fetchText(title, fn)
}

func (m *Model) fetchText(title string, fn func(context.Context) ([]string, error)) tea.Cmd {
	gen := m.textGen
	return func() tea.Msg {
		ctx, cancel := timeout()
		defer cancel()
		l, err := fn(ctx)
		return textMsg{title: title, lines: l, err: err, gen: gen}
	}
}

func (m *Model) textKey(k tea.KeyMsg) tea.Cmd {
	switch k.String() {
	case "esc", "backspace", "left":
		m.screen = m.back
		m.textGen++
		return nil
	case "F":
		if !m.canFollow {
			return nil
		}
		m.follow = !m.follow
		if m.follow {
			m.scroll = len(m.lines)
			m.clamp()
			return m.fetchText(m.title, m.textFn)
		}
		return nil
	default:
		was := m.follow
		m.move(k)
		if m.follow && !was {
			return m.fetchText(m.title, m.textFn)
		}
	}
	return nil
}
