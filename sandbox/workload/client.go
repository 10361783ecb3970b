package workload

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/sandbox/pattern"
)

// BulkDownload asks a kpf.test/bulk server at addr for n bytes and checks
// every one of them against the pattern.
func BulkDownload(addr string, n uint64, timeout time.Duration) error {
	c, err := Dial(addr, timeout)
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

// HTTPDownload is BulkDownload over HTTP/1.1: GET /bytes/n from a
// kpf.test/bulk server, the body checked against the pattern.
func HTTPDownload(addr string, n uint64, timeout time.Duration) error {
	c, err := Dial(addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "GET /bytes/%d HTTP/1.1\r\nHost: bulk\r\nUser-Agent: kpf-bench\r\n\r\n", n); err != nil {
		return err
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("GET /bytes/%d from %s: %w", n, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(n) {
		return fmt.Errorf("GET /bytes/%d from %s: %s, %d bytes", n, addr, resp.Status, resp.ContentLength)
	}
	var v pattern.Verifier
	got, err := pattern.Copy(&v, resp.Body, make([]byte, 256*1024))
	if err != nil || uint64(got) != n {
		return fmt.Errorf("GET /bytes/%d from %s: %d bytes, %v", n, addr, got, err)
	}
	return nil
}

// BulkUpload sends n pattern bytes to a kpf.test/bulk server at addr, which
// checks every one of them against the pattern ("CHECK n").
func BulkUpload(addr string, n uint64, timeout time.Duration) error {
	c, err := Dial(addr, timeout)
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
	c, err := Dial(addr, timeout)
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
