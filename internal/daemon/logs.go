package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon/api"
)

// The log routes answer the last ?lines= lines (100 unless said, at most
// 10000) as api.LogLines; with ?follow=1, the same lines and then each new
// one as text/plain, until the client goes.
const (
	defaultLines = 100
	maxLines     = 10000
)

func linesParam(r *http.Request) (int, error) {
	return parseLines(r.URL.Query().Get(qLines))
}

// parseLines reads a ?lines= value ("" for the default).
func parseLines(v string) (int, error) {
	if v == "" {
		return defaultLines, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxLines {
		return 0, fmt.Errorf("bad request: lines=%q: want a number from 0 to %d", v, maxLines)
	}
	return n, nil
}

// KeepLine reports whether a line of the daemon's log is of file's
// forward name (either may be ""): its event lines end "(file FILE)" and
// its log records carry file= and forward=.
func KeepLine(l, file, name string) bool {
	if file != "" && !strings.Contains(l, "(file "+file+")") && !strings.Contains(l, "file="+file) && !strings.Contains(l, `file="`+file) {
		return false
	}
	if name != "" {
		return strings.Contains(l, " "+name+": ") || strings.Contains(l, "forward="+name+" ") || strings.HasSuffix(strings.TrimSpace(l), "forward="+name)
	}
	return true
}

func (s *Server) daemonLogs(w http.ResponseWriter, r *http.Request) {
	file, name := r.URL.Query().Get("file"), r.URL.Query().Get("name")
	s.serveLog(w, r, s.Home.Log(), func(l string) bool { return KeepLine(l, file, name) })
}

func (s *Server) forwardLogs(w http.ResponseWriter, r *http.Request) {
	f, code, err := s.find(r, api.KindForward)
	if err != nil {
		httpError(w, err.Error(), code)
		return
	}
	s.serveLog(w, r, s.Home.Log(), func(l string) bool { return KeepLine(l, keyOf(f), f.Name) })
}

func (s *Server) forwardHTTPLog(w http.ResponseWriter, r *http.Request) {
	f, code, err := s.find(r, api.KindForward)
	if err != nil {
		httpError(w, err.Error(), code)
		return
	}
	if f.HTTPLog == "" || f.HTTPLog == "-" {
		fix := "add httpLog: FILE to it in " + f.File
		if f.File == "" {
			fix = `start it with "httpLog": true`
		}
		httpError(w, fmt.Sprintf("forward %q logs no HTTP requests to a file: %s", f.Name, fix), http.StatusNotFound)
		return
	}
	s.serveLog(w, r, f.HTTPLog, func(string) bool { return true })
}

// serveLog answers the kept lines of the file at path.
func (s *Server) serveLog(w http.ResponseWriter, r *http.Request, path string, keep func(string) bool) {
	n, err := linesParam(r)
	if err != nil {
		httpError(w, err.Error(), http.StatusBadRequest)
		return
	}
	follow := yes(r, qFollow)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && !follow {
		writeJSON(w, api.LogLines{Lines: []string{}}) // nothing logged yet
		return
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		httpError(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var lines []string
	var rd *bufio.Reader
	if f != nil {
		defer f.Close()
		rd = bufio.NewReaderSize(f, 64<<10)
		lines = lastLines(rd, n, keep)
	}
	if !follow {
		if lines == nil {
			lines = []string{}
		}
		writeJSON(w, api.LogLines{Lines: lines})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	for _, l := range lines {
		io.WriteString(w, l+"\n")
	}
	flush(w)
	follow1(r.Context(), w, path, rd, keep)
}

// follow1 writes each new kept line of the file until ctx ends; a file
// that did not exist yet is opened once it does.
func follow1(ctx context.Context, w io.Writer, path string, rd *bufio.Reader, keep func(string) bool) {
	var partial string
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if rd == nil {
			if g, err := os.Open(path); err == nil {
				defer g.Close()
				rd = bufio.NewReader(g)
			}
		}
		for rd != nil {
			line, err := rd.ReadString('\n')
			if err != nil {
				partial += line
				break
			}
			line = partial + line
			partial = ""
			if keep(strings.TrimRight(line, "\n")) {
				if _, err := io.WriteString(w, line); err != nil {
					return
				}
			}
		}
		flush(w)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func flush(w io.Writer) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// lastLines reads rd to its end and returns its last n kept lines (a
// last line without its newline is left in rd's past: the follower
// starts after it).
func lastLines(rd *bufio.Reader, n int, keep func(string) bool) []string {
	ring := make([]string, 0, min(n, 1024))
	start := 0
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			break
		}
		line = strings.TrimRight(line, "\n")
		if n == 0 || !keep(line) {
			continue
		}
		if len(ring) < n {
			ring = append(ring, line)
			continue
		}
		ring[start] = line
		start = (start + 1) % n
	}
	return append(ring[start:], ring[:start]...)
}
