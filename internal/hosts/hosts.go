// Package hosts writes hosts-file lines that give services' cluster names
// the loopback addresses of their forwards (address: auto), in a marked
// block of a file: the rest of the file is left as it was, the block is
// replaced whole, and removed when nothing is forwarded any more.
package hosts

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Entry is one line: an address and the names that lead to it.
type Entry struct {
	Addr  netip.Addr
	Names []string
}

func (e Entry) String() string { return e.Addr.String() + "\t" + strings.Join(e.Names, " ") }

// Service is a forwarded service's entry: its cluster names (name.ns,
// name.ns.svc, name.ns.svc.DOMAIN) at addr.
func Service(addr netip.Addr, namespace, name, domain string) Entry {
	return Entry{Addr: addr, Names: []string{name + "." + namespace, name + "." + namespace + ".svc", name + "." + namespace + ".svc." + domain}}
}

// Shorten adds each service's bare name to its entry where no other entry
// has a service of that name (as a pod in its namespace would resolve it).
func Shorten(entries []Entry) []Entry {
	count := map[string]int{}
	seen := map[string]bool{}
	for _, e := range entries {
		short, _, _ := strings.Cut(e.Names[0], ".")
		if !seen[short+e.Addr.String()] {
			count[short]++
			seen[short+e.Addr.String()] = true
		}
	}
	out := make([]Entry, 0, len(entries))
	for _, e := range entries {
		short, _, _ := strings.Cut(e.Names[0], ".")
		if count[short] == 1 {
			e.Names = append(e.Names[:len(e.Names):len(e.Names)], short)
		}
		out = append(out, e)
	}
	return out
}

// The block's markers.
const (
	Begin = "# BEGIN kpf: written by kpf hosts --write; kpf down removes this block"
	End   = "# END kpf"
)

// Block is the marked block of entries, sorted by address.
func Block(entries []Entry) string {
	entries = slices.Clone(entries)
	slices.SortFunc(entries, func(a, b Entry) int { return a.Addr.Compare(b.Addr) })
	var b strings.Builder
	b.WriteString(Begin + "\n")
	for _, e := range entries {
		b.WriteString(e.String() + "\n")
	}
	b.WriteString(End + "\n")
	return b.String()
}

// Replace is content with its block replaced by entries' (added at the
// end if it had none; removed if entries is empty).
func Replace(content []byte, entries []Entry) ([]byte, error) {
	lines := strings.SplitAfter(string(content), "\n")
	var out []string
	in, found := false, false
	for i, l := range lines {
		t := strings.TrimRight(l, "\r\n")
		switch {
		case t == Begin && !in:
			if found {
				return nil, fmt.Errorf("line %d: a second kpf block; remove one by hand", i+1)
			}
			in, found = true, true
			if len(entries) > 0 {
				out = append(out, Block(entries))
			}
		case t == End && in:
			in = false
		case in:
		default:
			out = append(out, l)
		}
	}
	if in {
		return nil, fmt.Errorf("the kpf block has no %q line; fix the file by hand", End)
	}
	s := strings.Join(out, "")
	if !found && len(entries) > 0 {
		if s != "" && !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
		s += Block(entries)
	}
	return []byte(s), nil
}

// Update rewrites path's block: a new file beside it, renamed over it, so
// that readers see the old file or the new one. A file that cannot be
// replaced (a bind mount, as /etc/hosts is in containers) is rewritten in
// place. A missing file is created (0644) unless entries is empty.
func Update(path string, entries []Entry) error {
	old, err := os.ReadFile(path)
	mode := fs.FileMode(0o644)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if len(entries) == 0 {
			return nil
		}
	case err != nil:
		return err
	default:
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	}
	content, err := Replace(old, entries)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(content, old) && old != nil {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".kpf-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(content)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	err = os.Rename(tmp.Name(), path)
	if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
		return os.WriteFile(path, content, mode)
	}
	return err
}
