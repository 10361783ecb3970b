package workload

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/sandbox/pattern"
)

// BulkDownload asks a kpf.test/bulk server at addr for n bytes and checks
// every one of them against the pattern.
func BulkDownload(addr string, n uint64, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "SEND %d\n", n); err != nil {
		return err
	}
	var v pattern.Verifier
	got, err := pattern.Copy(&v, c, make([]byte, 256*1024))
	if err != nil {
		return fmt.Errorf("download from %s after %d bytes: %w", addr, got, err)
	}
	if uint64(got) != n {
		return fmt.Errorf("download from %s: got %d bytes, want %d", addr, got, n)
	}
	return nil
}

// BulkUpload sends n pattern bytes to a kpf.test/bulk server at addr, which
// checks every one of them against the pattern ("CHECK n").
func BulkUpload(addr string, n uint64, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "CHECK %d\n", n); err != nil {
		return err
	}
	if _, err := pattern.Copy(c, pattern.NewReader(n), make([]byte, 256*1024)); err != nil {
		return fmt.Errorf("upload to %s: %w", addr, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("upload to %s: reading the server's verdict: %w", addr, err)
	}
	if got, want := strings.TrimSpace(line), fmt.Sprintf("ok %d", n); got != want {
		return fmt.Errorf("upload to %s: server says %q, want %q", addr, got, want)
	}
	return nil
}

// BulkEcho sends payload to a kpf.test/bulk server's ECHO, closes its
// write side, and checks that exactly the payload comes back.
func BulkEcho(addr string, payload []byte, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	go func() {
		c.Write([]byte("ECHO\n"))
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("echo from %s after %d of %d bytes: %w", addr, len(got), len(payload), err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo from %s: %d bytes came back for %d sent, and they differ", addr, len(got), len(payload))
	}
	return nil
}
