package daemon

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A wait interrupted by its caller (Ctrl-C on kpf up --wait) ends with
// the caller's reason, not the HTTP client's text about the socket's URL.
func TestClientInterruptedSaysSo(t *testing.T) {
	home := Home(t.TempDir())
	ln, err := net.Listen("unix", filepath.Join(string(home), "kpf.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept() // a daemon still waiting: no answer yet
		if err == nil {
			held <- c
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		c := <-held
		defer c.Close()
		cancel()
	}()
	start := time.Now()
	_, err = NewClient(home).Wait(ctx, "/x/kpf.yaml", time.Minute)
	if !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "http://kpf") {
		t.Fatalf("Wait = %v, want context.Canceled and nothing of the HTTP client", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("Wait took %s after the interrupt", time.Since(start))
	}
}
