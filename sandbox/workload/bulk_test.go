package workload

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/sandbox/pattern"
)

// serveBulk runs the bulk server's handler on a loopback listener.
func serveBulk(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				bulk(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

func TestBulkRoundTrips(t *testing.T) {
	addr := serveBulk(t)
	if err := BulkDownload(addr, 3<<20+1, 10e9); err != nil {
		t.Fatal(err)
	}
	if err := BulkUpload(addr, 3<<20+1, 10e9); err != nil {
		t.Fatal(err)
	}
}

// CHECK must catch one wrong byte and say where it was.
func TestBulkCheckCatchesACorruptByte(t *testing.T) {
	addr := serveBulk(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 100000)
	pattern.Fill(b, 0)
	b[54321] ^= 1
	fmt.Fprintf(c, "CHECK %d\n", len(b))
	c.Write(b)
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(line, "bad ") || !strings.Contains(line, "byte 54321") {
		t.Fatalf("server said %q, want it to name byte 54321", line)
	}
}
