package cli

import (
	"context"
	"net"
	"sync"
)

// sockPairs makes connected pairs of loopback TCP sockets: a stream
// through the tunnel needs a local socket with a write side of its own to
// close (net.Pipe has none), so that each side's end of input passes on
// as a half-close.
type sockPairs struct {
	ln      net.Listener
	mu      sync.Mutex
	waiting map[string]chan net.Conn // by the dialled socket's local address
	early   map[string]net.Conn      // accepted before their dialler asked
}

func newSockPairs(ctx context.Context) (*sockPairs, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sp := &sockPairs{ln: ln, waiting: map[string]chan net.Conn{}, early: map[string]net.Conn{}}
	context.AfterFunc(ctx, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			key := c.RemoteAddr().String()
			sp.mu.Lock()
			if ch, ok := sp.waiting[key]; ok {
				delete(sp.waiting, key)
				ch <- c
			} else {
				sp.early[key] = c
			}
			sp.mu.Unlock()
		}
	}()
	return sp, nil
}

// pair returns two connected sockets.
func (sp *sockPairs) pair(ctx context.Context) (net.Conn, net.Conn, error) {
	a, err := (&net.Dialer{}).DialContext(ctx, "tcp", sp.ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	key := a.LocalAddr().String()
	ch := make(chan net.Conn, 1)
	sp.mu.Lock()
	if c, ok := sp.early[key]; ok {
		delete(sp.early, key)
		ch <- c
	} else {
		sp.waiting[key] = ch
	}
	sp.mu.Unlock()
	select {
	case b := <-ch:
		return a, b, nil
	case <-ctx.Done():
		sp.mu.Lock()
		delete(sp.waiting, key)
		sp.mu.Unlock()
		a.Close()
		return nil, nil, ctx.Err()
	}
}
