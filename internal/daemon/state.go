package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
)

// What the daemon keeps on disk: one record per applied file, so that a
// daemon that was killed (SIGKILL, the OOM killer, a crash) is started
// again with the files it ran, each as its own identity. A record is
// written whenever the file's forwards change, and removed when kpf down
// stops them or the daemon stops them itself at a clean exit (SIGTERM,
// Ctrl-C: the user or the service manager stopped it, and it cleaned up).
//
// A record never holds a credential: the identity is written as
// identity.Storable leaves it (no --token or --password, no variable that
// may hold a secret, no proxy password). A file whose identity held one
// is not restored: the daemon says so, and which, rather than run it as
// someone else.

// recordVersion versions a record's JSON; a record of another version is
// not restored (and says so).
const recordVersion = 1

// record is an applied file as the daemon ran it.
type record struct {
	Version int       `json:"version"`
	File    string    `json:"file"`
	Applied time.Time `json:"applied"`
	// FileSHA256 is a hash of the file's bytes when it was applied: a
	// file changed since is restored as applied, and that is said.
	FileSHA256 string            `json:"fileSHA256,omitempty"`
	Identity   identity.Identity `json:"identity"`
	// Withheld names what identity.Storable left out of Identity.
	Withheld []string         `json:"withheld,omitempty"`
	Settings spec.Settings    `json:"settings"`
	Forwards []config.Forward `json:"forwards"`
	// Who is who each context of the forwards connected as (context,
	// cluster, user), to tell whether an edited kubeconfig still does.
	Who map[string][3]string `json:"who,omitempty"`
	// PID is the daemon that wrote it.
	PID int `json:"pid"`
}

// Flags are the daemon's own settings, recorded while it runs (in
// state/daemon.json, removed at a clean exit), so that a daemon started
// after one was killed serves where that one did: the same API address
// and metrics address. The API's token is never recorded: each daemon
// writes a new one, as at any start.
type Flags struct {
	Version     int    `json:"version"`
	APIAddr     string `json:"apiAddr,omitempty"`
	MetricsAddr string `json:"metricsAddr,omitempty"`
	PID         int    `json:"pid"`
}

// flagsFile is the record of the running daemon's Flags; not a file's
// record (those are named by a hash).
const flagsFile = "daemon.json"

func (h Home) flagsPath() string { return filepath.Join(h.State(), flagsFile) }

// LastFlags are the Flags a daemon recorded and did not remove: one that
// runs, or one that was killed (ask the socket which).
func (h Home) LastFlags() (Flags, bool) {
	b, err := os.ReadFile(h.flagsPath())
	var f Flags
	if err != nil || json.Unmarshal(b, &f) != nil || f.Version != recordVersion {
		return Flags{}, false
	}
	return f, true
}

// writeFlags records the running daemon's flags, replacing them at once.
func (h Home) writeFlags(f Flags) error {
	if err := os.MkdirAll(h.State(), 0o700); err != nil {
		return err
	}
	f.Version = recordVersion
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(h.State(), ".flags-*") // 0600
	if err != nil {
		return err
	}
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), h.flagsPath())
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// State is the folder of the daemon's records (0700; each 0600).
func (h Home) State() string { return filepath.Join(string(h), "state") }

func (h Home) recordPath(file string) string {
	sum := sha256.Sum256([]byte(file))
	return filepath.Join(h.State(), hex.EncodeToString(sum[:12])+".json")
}

// writeRecord replaces the file's record at once: a new file renamed over
// the old, so a daemon killed while writing leaves the old one or the
// new one, never half of either.
func (h Home) writeRecord(r record) error {
	if err := os.MkdirAll(h.State(), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(h.State(), ".record-*") // 0600
	if err != nil {
		return err
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), h.recordPath(r.File))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write the daemon's record of %s: %w", r.File, err)
	}
	return nil
}

func (h Home) removeRecord(file string) error {
	err := os.Remove(h.recordPath(file))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Recorded lists the files whose records the home holds: those a daemon
// that stopped without kpf down ran, and that the next one restores.
func (h Home) Recorded() []string {
	recs, _ := h.readRecords()
	var out []string
	for _, r := range recs {
		out = append(out, r.File)
	}
	return out
}

// Forget removes the records of files ("" every one) without a daemon:
// kpf down when no daemon runs, so that none restores them.
func (h Home) Forget(file string) ([]string, error) {
	recs, bad := h.readRecords()
	var out []string
	for _, r := range recs {
		if file == "" || r.File == file {
			if err := h.removeRecord(r.File); err != nil {
				return out, err
			}
			out = append(out, r.File)
		}
	}
	if file == "" {
		for _, b := range bad {
			os.Remove(b.path)
		}
		os.Remove(h.flagsPath()) // nothing of the killed daemon's is restored
	}
	return out, nil
}

// badRecord is a record that cannot be read back.
type badRecord struct {
	path string
	err  error
}

// readRecords reads every record, sorted by file; those that cannot be
// read come apart.
func (h Home) readRecords() ([]record, []badRecord) {
	ents, err := os.ReadDir(h.State())
	if err != nil {
		return nil, nil
	}
	var recs []record
	var bad []badRecord
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || e.Name() == flagsFile {
			continue
		}
		p := filepath.Join(h.State(), e.Name())
		b, err := os.ReadFile(p)
		var r record
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err == nil && r.Version != recordVersion {
			err = fmt.Errorf("version %d, this kpf reads version %d", r.Version, recordVersion)
		}
		if err == nil && (r.File == "" || p != h.recordPath(r.File)) {
			err = errors.New("it names no file, or not its own")
		}
		if err != nil {
			bad = append(bad, badRecord{p, err})
			continue
		}
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b record) int { return strings.Compare(a.File, b.File) })
	return recs, bad
}

// hashOf is a hash of a file's bytes, "" when it cannot be read.
func hashOf(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// save writes the record of the file as it runs now, or removes it when
// the file runs nothing; at, when set, is a new apply's stamp. A record
// that cannot be written is logged: the forwards run all the same, and
// only a restart would miss them. s.opMu is held. Forwards started
// without a file (keyed "(ORIGIN) NAME", never an absolute path) are not
// recorded: they belong to the program that started them, and a daemon
// that restarts does not bring them back.
func (s *Server) save(path string, at *stamp) {
	if !filepath.IsAbs(path) {
		return
	}
	run := s.run(path)
	if run == nil {
		if err := s.Home.removeRecord(path); err != nil {
			s.Log.Error("forget the record", "file", path, "err", err)
		}
		return
	}
	if at != nil {
		run.stamp = *at
	}
	id, withheld := run.id.Storable()
	r := record{Version: recordVersion, File: path, Applied: run.stamp.at, FileSHA256: run.stamp.hash,
		Identity: id, Withheld: withheld, Settings: run.settings, Forwards: applied(run.m.Specs(false)), Who: s.whoOf(run), PID: os.Getpid()}
	if err := s.Home.writeRecord(r); err != nil {
		s.Log.Error("record", "file", path, "err", err)
	}
}

// applied leaves out the forwards a discover entry made (Owner set): the
// entry is recorded and makes them again from the cluster as it is then.
func applied(fws []config.Forward) []config.Forward {
	var out []config.Forward
	for _, f := range fws {
		if f.Owner == "" {
			out = append(out, f)
		}
	}
	return out
}

// cleanupTimeout bounds one file's cleanup of what a killed daemon left.
const cleanupTimeout = 2 * time.Minute

// restore runs again each file that a daemon before this one ran and did
// not stop (its record is still there), as the identity that applied it,
// and says of each what it did (status: restored). Before the socket
// answers.
func (s *Server) restore() {
	recs, bad := s.Home.readRecords()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for _, b := range bad {
		s.restored = append(s.restored, api.Restore{File: b.path, Note: fmt.Sprintf("not restored: its record cannot be read (%v)", b.err)})
		os.Remove(b.path)
	}
	for _, rec := range recs {
		if s.run(rec.File) != nil {
			continue // a file the daemon was started with (Initial): applied as it is now
		}
		out, id := s.restoreOne(rec)
		s.restored = append(s.restored, out)
		s.Log.Info("restore", "file", rec.File, "restored", out.Restored, "forwards", out.Forwards, "note", out.Note, "previousPid", rec.PID)
		if s.Cleanup == nil {
			continue
		}
		s.cleaning.Add(1)
		go func() {
			defer s.cleaning.Done()
			ctx, cancel := context.WithTimeout(s.ctx, cleanupTimeout)
			defer cancel()
			if err := s.Cleanup(ctx, id, rec.Forwards); err != nil {
				s.Log.Error("clean up what the daemon before left", "file", rec.File, "err", err)
			}
		}()
	}
}

// restoreOne restores one recorded file, or says why not; id is who it
// connects as now. s.opMu is held.
func (s *Server) restoreOne(rec record) (api.Restore, identity.Identity) {
	out := api.Restore{File: rec.File, PreviousPID: rec.PID}
	again := fmt.Sprintf("apply it again: kpf up -d -f %s", rec.File)
	if len(rec.Withheld) > 0 {
		s.Home.removeRecord(rec.File)
		out.Note = fmt.Sprintf("not restored: its identity held %s, which kpf keeps in memory only and never writes to disk; %s", strings.Join(rec.Withheld, ", "), again)
		return out, rec.Identity
	}
	if len(rec.Forwards) == 0 {
		s.Home.removeRecord(rec.File)
		out.Note = "not restored: it ran no forwards"
		return out, rec.Identity
	}
	if err := rec.Settings.Validate(); err != nil {
		s.Home.removeRecord(rec.File)
		out.Note = fmt.Sprintf("not restored: its settings are not valid for this kpf (%v); %s", err, again)
		return out, rec.Identity
	}
	id, changed := rec.Identity.Rehash()
	var notes []string
	if len(changed) > 0 && s.Describe != nil {
		// An edited kubeconfig (a refreshed token, another current
		// context) may still connect as the same user to the same
		// cluster; if it does not, running the file would connect as
		// someone else than the command that applied it.
		for _, ctx := range slices.Sorted(maps.Keys(rec.Who)) {
			was := rec.Who[ctx]
			c, cl, u := s.Describe(id, ctx)
			if now := [3]string{c, cl, u}; now != was {
				s.Home.removeRecord(rec.File)
				out.Note = fmt.Sprintf("not restored: %s changed since it was applied, and now connects as context %q, cluster %q, user %q, not %q, %q, %q; %s",
					strings.Join(changed, ", "), c, cl, u, was[0], was[1], was[2], again)
				return out, id
			}
		}
		notes = append(notes, fmt.Sprintf("%s changed since it was applied (the same context, cluster and user)", strings.Join(changed, ", ")))
	}
	if _, err := os.Stat(rec.File); err != nil {
		notes = append(notes, fmt.Sprintf("restored as applied at %s: the file is gone since (deleted or moved; kpf down -f %s stops its forwards)", rec.Applied.Format(time.RFC3339), rec.File))
	} else if rec.FileSHA256 != "" && hashOf(rec.File) != rec.FileSHA256 {
		notes = append(notes, fmt.Sprintf("restored as applied at %s: the file changed since (kpf up -d -f %s runs it as it is now)", rec.Applied.Format(time.RFC3339), rec.File))
	}
	s.applyFile(api.ApplyRequest{File: rec.File, Identity: id, Settings: rec.Settings}, rec.Forwards)
	s.save(rec.File, &stamp{rec.Applied, rec.FileSHA256})
	out.Restored = true
	for _, fw := range rec.Forwards {
		out.Forwards = append(out.Forwards, fw.Name)
	}
	out.Note = strings.Join(notes, "; ")
	return out, id
}
