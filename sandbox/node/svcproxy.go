package node

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// serviceProxy is the node's service proxy, as kube-proxy's userspace mode
// was: a route makes every address of the Service range local to the node
// (ip route add local 10.96.0.0/16 dev lo), so that a pod's packets to a
// ClusterIP, sent to its default gateway (the node), are the node's own;
// and the agent listens on each ClusterIP:port of a Service that has ready
// endpoints, and proxies each connection (TCP) or each client's datagrams
// (UDP) to one of them, in turn, dialled from the node.
//
// Why userspace rather than nftables DNAT rules: it needs no netfilter (no
// kernel modules, no rules to leave behind but one route) and follows
// EndpointSlices by itself; what it gives up is the client's address (a
// backend sees connections from the node, 198.18.0.1, as with userspace
// kube-proxy) and speed, which no sandbox test measures through a
// ClusterIP. A Service port without ready endpoints has no listener: a
// connection is refused, as kube-proxy's REJECT rule does.
type serviceProxy struct {
	log   *slog.Logger
	svcs  *services
	mu    sync.Mutex
	ports map[string]*proxyPort // "IP:PORT/PROTO"
	done  bool
}

// proxyPort is one ClusterIP:port being served.
type proxyPort struct {
	key      string
	backends atomic.Pointer[[]netip.AddrPort]
	next     atomic.Uint32 // round robin
	close    func()
}

func newServiceProxy(log *slog.Logger, svcs *services) *serviceProxy {
	return &serviceProxy{log: log, svcs: svcs, ports: map[string]*proxyPort{}}
}

// addServiceRoute makes the addresses of cidr local to the node.
func addServiceRoute(cidr string) error {
	return ip("route", "replace", "local", cidr, "dev", "lo")
}

// removeServiceRoute removes the route addServiceRoute added, if there.
func removeServiceRoute(cidr string) { ip("route", "del", "local", cidr, "dev", "lo") }

// RemoveServiceRoute removes the Service range's route (the agent does on
// exit; kpf-sandbox down after a crash).
func RemoveServiceRoute() { removeServiceRoute(ServiceCIDR) }

// sync brings the listeners of one Service ("ns/name") in line with it
// and its endpoints.
func (p *serviceProxy) sync(key string) {
	// Under the lock from reading the state to applying it, so that of
	// two syncs of a Service the later one wins.
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	want := map[string][]netip.AddrPort{}
	if svc := p.svcs.service(key); svc != nil && svc.Spec.Type != corev1.ServiceTypeExternalName {
		for _, cip := range svc.Spec.ClusterIPs {
			addr, err := netip.ParseAddr(cip)
			if err != nil || !addr.Is4() {
				continue // None (headless), or IPv6 the node has no route for
			}
			for _, sp := range svc.Spec.Ports {
				if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != corev1.ProtocolUDP {
					continue
				}
				if bs := p.svcs.backends(key, sp); len(bs) > 0 {
					want[portKey(addr, sp)] = bs
				}
			}
		}
	}
	prefix := key + " "
	for k, pp := range p.ports {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if bs, ok := want[k[len(prefix):]]; ok {
			pp.backends.Store(&bs)
			delete(want, k[len(prefix):])
			continue
		}
		pp.close()
		delete(p.ports, k)
	}
	for addrKey, bs := range want {
		pp, err := p.listen(addrKey, bs)
		if err != nil {
			p.log.Warn("service proxy", "service", key, "port", addrKey, "err", err)
			continue
		}
		p.ports[prefix+addrKey] = pp
	}
}

func portKey(addr netip.Addr, sp corev1.ServicePort) string {
	return net.JoinHostPort(addr.String(), strconv.Itoa(int(sp.Port))) + "/" + string(sp.Protocol)
}

// stop closes every listener.
func (p *serviceProxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	for k, pp := range p.ports {
		pp.close()
		delete(p.ports, k)
	}
}

func (p *serviceProxy) listen(addrKey string, bs []netip.AddrPort) (*proxyPort, error) {
	hostPort, proto := addrKey[:len(addrKey)-4], addrKey[len(addrKey)-3:]
	pp := &proxyPort{key: addrKey}
	pp.backends.Store(&bs)
	if proto == "TCP" {
		ln, err := net.Listen("tcp4", hostPort)
		if err != nil {
			return nil, err
		}
		pp.close = func() { ln.Close() }
		go pp.serveTCP(ln)
		return pp, nil
	}
	pc, err := net.ListenPacket("udp4", hostPort)
	if err != nil {
		return nil, err
	}
	u := &udpProxy{pp: pp, pc: pc.(*net.UDPConn), sessions: map[netip.AddrPort]*udpSession{}}
	pp.close = u.close
	go u.serve()
	return pp, nil
}

// pick returns the backends to try, starting with the next in turn.
func (pp *proxyPort) pick() []netip.AddrPort {
	bs := *pp.backends.Load()
	if len(bs) == 0 {
		return nil
	}
	i := int(pp.next.Add(1)) % len(bs)
	return append(slices.Clone(bs[i:]), bs[:i]...)
}

func (pp *proxyPort) serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed: the Service or its endpoints went
		}
		go pp.proxyTCP(c.(*net.TCPConn))
	}
}

// proxyTCP carries one connection to the first backend that answers;
// half-close goes through both ways.
func (pp *proxyPort) proxyTCP(c *net.TCPConn) {
	defer c.Close()
	var b *net.TCPConn
	for _, be := range pp.pick() {
		d, err := net.DialTimeout("tcp4", be.String(), 3*time.Second)
		if err == nil {
			b = d.(*net.TCPConn)
			break
		}
	}
	if b == nil {
		c.SetLinger(0) // reset, as a refused connection would be
		return
	}
	defer b.Close()
	errc := make(chan error, 2)
	pipe := func(dst, src *net.TCPConn) {
		_, err := io.Copy(dst, src)
		dst.CloseWrite()
		errc <- err
	}
	go pipe(b, c)
	go pipe(c, b)
	<-errc
	<-errc
}

// udpProxy relays datagrams of each client (source address) to one
// backend, and the backend's answers back from the ClusterIP:port.
type udpProxy struct {
	pp       *proxyPort
	pc       *net.UDPConn
	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
}

type udpSession struct {
	backend netip.AddrPort
	conn    *net.UDPConn
}

// udpIdle ends a client's session after this long without a datagram
// either way (kube-proxy's userspace mode used 250 ms; conntrack's UDP
// timeout is 30 s).
const udpIdle = 30 * time.Second

func (u *udpProxy) close() {
	u.pc.Close()
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, s := range u.sessions {
		s.conn.Close()
		delete(u.sessions, k)
	}
}

func (u *udpProxy) serve() {
	buf := make([]byte, 64*1024)
	for {
		n, from, err := u.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s := u.session(from)
		if s == nil {
			continue
		}
		s.conn.Write(buf[:n])
	}
}

// session is the client's session, made on its first datagram; one whose
// backend is no longer ready is replaced.
func (u *udpProxy) session(from netip.AddrPort) *udpSession {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s, ok := u.sessions[from]; ok {
		if slices.Contains(*u.pp.backends.Load(), s.backend) {
			return s
		}
		s.conn.Close()
		delete(u.sessions, from)
	}
	for _, be := range u.pp.pick() {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(be))
		if err != nil {
			continue
		}
		s := &udpSession{backend: be, conn: c}
		u.sessions[from] = s
		go u.answers(from, s)
		return s
	}
	return nil
}

// answers relays a backend's datagrams to the client until the session is
// idle or closed.
func (u *udpProxy) answers(client netip.AddrPort, s *udpSession) {
	buf := make([]byte, 64*1024)
	for {
		s.conn.SetReadDeadline(time.Now().Add(udpIdle))
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && !ne.Timeout() && !errors.Is(err, net.ErrClosed) {
				continue // ICMP unreachable from a backend going away: keep the session
			}
			break
		}
		if _, err := u.pc.WriteToUDPAddrPort(buf[:n], client); err != nil && errors.Is(err, net.ErrClosed) {
			break
		}
	}
	u.mu.Lock()
	if u.sessions[client] == s {
		delete(u.sessions, client)
	}
	u.mu.Unlock()
	s.conn.Close()
}
