package main

// The TLS floor: what any userspace TLS client must spend to move a
// forward's bytes. The tls-floor path is a forwarder that does nothing
// but that: a process of its own (this program, run as "bench
// tls-relay SINK") takes local connections and sends their bytes over one
// TLS connection each, with the cipher the API server and kpf agree on
// (TLS 1.3, AES-128-GCM), to a sink in the bench process that ends the
// TLS and passes the bytes to the bench pod. Its CPU per GiB against
// kpf's is how close kpf's data path comes to the floor.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"time"
)

// floorCipher is the cipher both ends use: what Go's TLS 1.3 picks
// between kpf and the API server on a CPU with AES instructions.
const floorCipher = tls.TLS_AES_128_GCM_SHA256

// startTLSSink listens for the relay's TLS connections on loopback and
// passes each one's bytes to and from target (the bench pod).
func startTLSSink(target string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kpf-bench-sink"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				p, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer p.Close()
				pipe(c, p)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

// pipe copies both ways until both directions end, passing on each
// side's end of writing.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		io.CopyBuffer(b, a, make([]byte, 256<<10))
		closeWrite(b)
		close(done)
	}()
	io.CopyBuffer(a, b, make([]byte, 256<<10))
	closeWrite(a)
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// tlsRelay is the tls-floor forwarder: "bench tls-relay SINK". It runs
// until killed, or returns why it cannot.
func tlsRelay(sink string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, MaxVersion: tls.VersionTLS13}
	fmt.Printf("Forwarding from %s -> %s (TLS floor)\n", ln.Addr(), sink)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			raw, err := net.Dial("tcp", sink)
			if err != nil {
				fmt.Fprintln(os.Stderr, "tls-relay:", err)
				return
			}
			cc := &corkedConn{Conn: raw}
			t := tls.Client(cc, cfg)
			defer t.Close()
			if err := t.Handshake(); err != nil {
				fmt.Fprintln(os.Stderr, "tls-relay:", err)
				return
			}
			cc.mu.Lock()
			cc.corked = true
			cc.mu.Unlock()
			if cs := t.ConnectionState(); cs.CipherSuite != floorCipher {
				fmt.Fprintf(os.Stderr, "tls-relay: cipher %s, not %s\n", tls.CipherSuiteName(cs.CipherSuite), tls.CipherSuiteName(floorCipher))
			}
			done := make(chan struct{})
			go func() {
				// Down: what TLS decrypts, to the local connection.
				io.CopyBuffer(c, t, make([]byte, 256<<10))
				closeWrite(c)
				close(done)
			}()
			// Up: each read's bytes as TLS records, all of them in one
			// write, as kpf sends a frame.
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := t.Write(buf[:n]); werr != nil || cc.flush() != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			t.CloseWrite()
			cc.flush()
			<-done
		}()
	}
}

// corkedConn collects writes until flush: the records of one TLS Write go
// out in one system call, not one each.
// The handshake's writes go out at once (corked is set after it).
type corkedConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *corkedConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}
