// Package audit keeps kpf's local audit trail: a JSON line for every
// connection when it ends and for every forward start, stop and pod
// switch, in a file only its user can read, rotated by size. A record
// holds who (the kubeconfig context, cluster and the user the API server
// reported), where (namespace, target, pod, ports, local address and
// peer), how much (bytes each way) and how it ended; never a credential.
package audit

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// Who is the identity a forward runs as.
type Who struct {
	Context string `json:"context,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	User    string `json:"user,omitempty"` // as the API server reported it, else the kubeconfig's user
}

// Forward names a forward.
type Forward struct {
	Who
	Namespace string `json:"namespace"`
	Name      string `json:"forward,omitempty"` // in a kpf.yaml
	Target    string `json:"target"`
}

// Connection is one connection, written when it ends.
type Connection struct {
	Forward
	Pod        string  `json:"pod,omitempty"`
	RemotePort uint16  `json:"remotePort"`
	Local      string  `json:"local"`          // the address kpf listened on
	Peer       string  `json:"peer"`           // the local client
	Dest       string  `json:"dest,omitempty"` // through kpf proxy: the host:port the client asked for
	Start      string  `json:"start"`
	Seconds    float64 `json:"durationSeconds"`
	BytesIn    int64   `json:"bytesIn"`  // to the client
	BytesOut   int64   `json:"bytesOut"` // to the pod
	Result     string  `json:"result"`   // ok or error
	Error      string  `json:"error,omitempty"`
}

// Event is a forward starting, stopping or switching pods.
type Event struct {
	Forward
	Event  string   `json:"event"` // start, stop, switch
	Pod    string   `json:"pod,omitempty"`
	From   string   `json:"from,omitempty"` // switch
	Reason string   `json:"reason,omitempty"`
	Listen []string `json:"listen,omitempty"` // start: the addresses kpf listens on
	Error  string   `json:"error,omitempty"`  // stop
}

// Default sizes: 10 MB a file, the current one and 3 rotated.
const (
	DefaultMaxBytes = 10 << 20
	DefaultKeep     = 3
)

// Log appends records to a file, rotating it (FILE.1 ... FILE.keep) when
// the next record would take it over maxBytes. Safe for concurrent use;
// a nil *Log writes nothing.
type Log struct {
	path     string
	maxBytes int64
	keep     int

	mu   sync.Mutex
	f    *os.File
	size int64
	now  func() time.Time
}

// Open opens (or creates, 0600) the log at path.
func Open(path string, maxBytes int64, keep int) (*Log, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if keep < 0 {
		keep = 0
	}
	l := &Log{path: path, maxBytes: maxBytes, keep: keep, now: time.Now}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// A file made by something else: it is the user's only now.
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return fmt.Errorf("audit log %s is readable by others and cannot be made private: %w", l.path, err)
		}
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Connection writes a connection's record.
func (l *Log) Connection(c Connection) { l.write("connection", c) }

// Event writes a forward's event.
func (l *Log) Event(e Event) { l.write("forward", e) }

// Close closes the file.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// write appends {"time":..., "kind":..., fields of rec}.
func (l *Log) write(kind string, rec any) {
	if l == nil {
		return
	}
	body, err := json.Marshal(rec)
	if err != nil || len(body) < 2 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	line := make([]byte, 0, len(body)+64)
	line = append(line, `{"time":"`...)
	line = l.now().UTC().AppendFormat(line, time.RFC3339Nano)
	line = append(line, `","kind":`...)
	line = strconv.AppendQuote(line, kind)
	if len(body) > 2 {
		line = append(line, ',')
	}
	line = append(line, body[1:]...)
	line = append(line, '\n')
	if l.size > 0 && l.size+int64(len(line)) > l.maxBytes {
		l.rotate()
		if l.f == nil {
			return
		}
	}
	n, _ := l.f.Write(line)
	l.size += int64(n)
}

// rotate shifts FILE.k to FILE.k+1 (dropping the oldest), FILE to FILE.1,
// and starts FILE afresh. l.mu is held.
func (l *Log) rotate() {
	l.f.Close()
	l.f = nil
	if l.keep == 0 {
		os.Remove(l.path)
	} else {
		os.Remove(l.path + "." + strconv.Itoa(l.keep))
		for k := l.keep - 1; k >= 1; k-- {
			os.Rename(l.path+"."+strconv.Itoa(k), l.path+"."+strconv.Itoa(k+1))
		}
		os.Rename(l.path, l.path+".1")
	}
	if err := l.open(); err != nil {
		l.f = nil
	}
}
