package relay

import (
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"
)

// roundTrip sends msg from c until it comes back.
func roundTrip(t *testing.T, c *net.UDPConn, msg string) {
	t.Helper()
	buf := make([]byte, 100)
	for range 50 {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == msg {
			return
		}
	}
	t.Fatalf("%q never came back", msg)
}

// TestFlowsAreBounded: a relay keeps at most MaxFlows flows (each a
// socket and a goroutine in a pod of 64 MiB): a DNS client that asks from
// a new port each time, or anyone who may port-forward to the relay,
// cannot make it grow without end. A new flow beyond the bound closes the
// least recently used one (kpf hears CLOSE), and every peer, evicted
// ones included, is still answered.
func TestFlowsAreBounded(t *testing.T) {
	echo := newUDPServer(t, 1)
	h := start(t, echo.addr, func(_ *Client, s *Server) { s.MaxFlows = 8 })
	var peers []*net.UDPConn
	for i := range 20 {
		p := peer(t, h.local)
		roundTrip(t, p, fmt.Sprintf("peer %d", i))
		peers = append(peers, p)
	}
	waitFor(t, "at most 8 flows at kpf", func() bool { return h.client.Peers() <= 8 })
	if n := h.relay.flows.Load(); n > 8 {
		t.Errorf("the relay holds %d flows, want at most its MaxFlows 8", n)
	}
	roundTrip(t, peers[0], "evicted, then back")
}

// TestIdleFlowsHoldNoBuffer: a flow waiting for its target's reply holds
// no datagram buffer of its own (64 KiB each: 1,000 flows would be more
// than the relay pod's 64 MiB).
func TestIdleFlowsHoldNoBuffer(t *testing.T) {
	const n = 400
	echo := newUDPServer(t, 1)
	h := start(t, echo.addr, nil)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		roundTrip(t, peer(t, h.local), fmt.Sprintf("peer %d", i))
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	inuse := func(m *runtime.MemStats) int64 { return int64(m.HeapInuse + m.StackInuse) }
	if per := (inuse(&after) - inuse(&before)) / n; per > 16<<10 {
		t.Errorf("%d bytes of heap and stack for each open flow, want under 16 KiB", per)
	}
}

// TestOneStreamCannotTakeEveryFlow: a stream that holds the relay's
// every flow (anyone who may port-forward to the relay can open one) does
// not starve kpf's: a new flow beyond MaxFlows closes one of the stream
// that holds the most.
func TestOneStreamCannotTakeEveryFlow(t *testing.T) {
	echo := newUDPServer(t, 1)
	h := start(t, echo.addr, func(_ *Client, s *Server) { s.MaxFlows = 8 })
	<-h.client.Ready() // kpf's stream is open, with no flow yet
	addr := h.relayAddr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(append([]byte(Magic), Version))
	c.Write(Append(nil, Frame{Type: TypeHello, Payload: []byte(echo.addr)}))
	if err := readMagic(c); err != nil {
		t.Fatal(err)
	}
	r := NewReader(c)
	if f, err := r.Read(); err != nil || f.Type != TypeOK {
		t.Fatalf("HELLO: %v %v", f, err)
	}
	for id := uint32(1); id <= 8; id++ { // every flow the relay may hold
		c.Write(Append(nil, Frame{Type: TypeData, Flow: id, Payload: []byte("hog")}))
		for {
			f, err := r.Read()
			if err != nil {
				t.Fatalf("flow %d: %v", id, err)
			}
			if f.Type == TypeData {
				break
			}
		}
	}
	for i := range 4 {
		roundTrip(t, peer(t, h.local), fmt.Sprintf("kpf's peer %d", i))
	}
	if n := h.client.Peers(); n != 4 {
		t.Errorf("kpf holds %d flows, want its 4: the relay closed kpf's rather than the stream's that holds the most", n)
	}
}
