package sandboxtest

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a process started by a test: its output is collected line by line
// so the test can wait for a line, and it is stopped when the test ends.
type Proc struct {
	Cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string
	cond *sync.Cond
	done chan struct{}
	err  error
}

// Start runs cmd, merging stdout and stderr, and kills its process group
// at cleanup.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.cond.Broadcast()
			p.mu.Unlock()
		}
	}()
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		close(p.done)
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("output of %s:\n%s", strings.Join(cmd.Args, " "), p.Output())
		}
	})
	return p
}

// Stop kills the process group and waits for the process to end.
func (p *Proc) Stop() {
	if p.Cmd.Process != nil {
		syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) { p.Cmd.Process.Signal(sig) }

// Wait waits for the process to exit and returns its error.
func (p *Proc) Wait(timeout time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// WaitLine waits for an output line matching re and returns its submatches.
func (p *Proc) WaitLine(t testing.TB, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timer := time.AfterFunc(timeout, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; ; {
		for ; i < len(p.out); i++ {
			if m := rx.FindStringSubmatch(p.out[i]); m != nil {
				return m
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing a line matching %q; output:\n%s", p.Cmd.Path, p.err, re, strings.Join(p.out, "\n"))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q within %s; output:\n%s", re, timeout, strings.Join(p.out, "\n"))
		}
		p.cond.Wait()
	}
}

// String describes the process for messages.
func (p *Proc) String() string {
	return fmt.Sprintf("%s (pid %d)", strings.Join(p.Cmd.Args, " "), p.Cmd.Process.Pid)
}
