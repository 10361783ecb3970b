package ui

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
)

var unsafeName = regexp.MustCompile(`[^a-z0-9-]+`)

// SetFile is the forwards as a kpf.yaml that kpf up -f runs: each forward
// (not proxies) with its context, namespace, target, ports as applied and
// address; names made valid and unique. It is parsed back before it is
// returned, so a set kpf up would refuse is an error here.
func SetFile(path string, fws []api.Forward) ([]byte, error) {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	b.WriteString("# The forwards of the kpf daemon, written by kpf ui (w): kpf up -f THIS_FILE runs them.\nversion: 1\nforwards:\n")
	seen := map[string]bool{}
	n := 0
	for _, f := range fws {
		if f.Kind == api.KindProxy || len(f.Ports) == 0 {
			continue
		}
		name := strings.Trim(unsafeName.ReplaceAllString(strings.ToLower(f.Name), "-"), "-")
		if name == "" {
			name = "forward"
		}
		for i, base := 2, name; seen[name]; i++ {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		seen[name] = true
		n++
		fmt.Fprintf(&b, "  - name: %s\n", q(name))
		if f.Context != "" {
			fmt.Fprintf(&b, "    context: %s\n", q(f.Context))
		}
		if f.Namespace != "" {
			fmt.Fprintf(&b, "    namespace: %s\n", q(f.Namespace))
		}
		fmt.Fprintf(&b, "    target: %s\n", q(f.Target))
		ports := make([]string, len(f.Ports))
		for i, p := range f.Ports {
			ports[i] = q(p)
		}
		fmt.Fprintf(&b, "    ports: [%s]\n", strings.Join(ports, ", "))
		if len(f.Addresses) > 0 && !(len(f.Addresses) == 1 && f.Addresses[0] == "localhost") {
			fmt.Fprintf(&b, "    address: %s\n", q(strings.Join(f.Addresses, ",")))
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("no forwards to write to %s: start one first (Enter on a port in the targets screen)", path)
	}
	out := []byte(b.String())
	if _, err := config.Parse(path, out); err != nil {
		return nil, fmt.Errorf("the set would not be a valid kpf.yaml: %w", err)
	}
	return out, nil
}

// ErrExists says a file to write already exists and was left as it was.
var ErrExists = errors.New("the file exists")

// WriteSet writes b to path atomically (a temporary file in the same
// folder, then renamed over path): a reader sees the old file or the new
// one, never half of one. Unless overwrite, an existing path is left
// untouched and the error wraps ErrExists.
func WriteSet(path string, b []byte, overwrite bool) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err != nil {
		return err
	}
	if overwrite {
		return os.Rename(tmp.Name(), path)
	}
	// A hard link fails if path exists: no window in which another
	// writer's file could be replaced.
	if err = os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
		// A file system without hard links: check, then rename.
		if _, serr := os.Lstat(path); serr == nil {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
		return os.Rename(tmp.Name(), path)
	}
	os.Remove(tmp.Name())
	return nil
}
