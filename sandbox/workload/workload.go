// Package workload implements the sandbox's built-in container images, run
// by the node agent as `kpf-sandbox workload NAME`:
//
//	kpf.test/http      HTTP: / names the pod; /healthz (503 after /healthz/fail,
//	                   200 again after /healthz/recover); /bytes/N streams N
//	                   pattern bytes; /echo returns the body; /sha256 its hash;
//	                   from inside the pod: /resolv.conf, /lookup/NAME (its
//	                   addresses), /dial?net=tcp|udp&addr=HOST:PORT&send=TEXT
//	                   (what came back).
//	kpf.test/echo      TCP echo, half-close aware.
//	kpf.test/bulk      TCP line protocol: "SEND n" streams n pattern bytes;
//	                   "RECV n" reads n bytes and answers their sha256;
//	                   "CHECK n" reads n bytes, checks each against the
//	                   pattern and answers "ok n" (or what was wrong);
//	                   "ECHO" echoes; every connection first reads one line.
//	kpf.test/udp-echo  UDP echo.
//
// Each listens on the pod's address ($KPF_POD_ADDR) and on every container
// port of its protocol ($KPF_TCP_PORTS, $KPF_UDP_PORTS), or on its default
// port when the container declares none.
package workload

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/sandbox/pattern"
)

// Names lists the built-in images and their default ports.
var Names = map[string]int{"http": 8080, "echo": 7070, "bulk": 9000, "udp-echo": 5300}

// Run runs the named workload until SIGTERM.
func Run(name string, args []string) error {
	def, ok := Names[name]
	if !ok {
		return fmt.Errorf("unknown built-in image kpf.test/%s (known: http, echo, bulk, udp-echo)", name)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	addr := os.Getenv("KPF_POD_ADDR")
	if addr == "" {
		addr = "127.0.0.1"
	}
	envPorts := "KPF_TCP_PORTS"
	if name == "udp-echo" {
		envPorts = "KPF_UDP_PORTS"
	}
	ports, err := parsePorts(os.Getenv(envPorts), args)
	if err != nil {
		return err
	}
	if len(ports) == 0 {
		ports = []int{def}
	}
	errc := make(chan error, len(ports))
	var servers []*http.Server
	var listeners []net.Listener
	var active atomic.Int64 // TCP connections being served, for a graceful stop
	for _, port := range ports {
		hp := net.JoinHostPort(addr, strconv.Itoa(port))
		if name == "udp-echo" {
			pc, err := net.ListenPacket("udp", hp)
			if err != nil {
				return err
			}
			defer pc.Close()
			go func() { errc <- udpEcho(pc) }()
			log.Printf("kpf.test/%s listening on udp %s", name, hp)
			continue
		}
		ln, err := net.Listen("tcp", hp)
		if err != nil {
			return err
		}
		defer ln.Close()
		listeners = append(listeners, ln)
		log.Printf("kpf.test/%s listening on tcp %s", name, hp)
		switch name {
		case "http":
			srv := httpServer()
			servers = append(servers, srv)
			go func() { errc <- ignoreClosed(srv.Serve(ln)) }()
		case "echo":
			go func() { errc <- serveTCP(ln, echo, &active) }()
		case "bulk":
			go func() { errc <- serveTCP(ln, bulk, &active) }()
		}
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	// Shut down as a well-behaved server does on SIGTERM: keep serving for
	// a moment, as a preStop sleep would, while clients learn the pod is
	// terminating; then stop accepting and let the connections in flight
	// finish (within the pod's grace).
	log.Printf("kpf.test/%s: terminating in %s", name, shutdownDelay)
	time.Sleep(shutdownDelay)
	log.Printf("kpf.test/%s: terminating: finishing %d open connections", name, active.Load())
	drain, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, srv := range servers {
		srv.Shutdown(drain)
	}
	for _, ln := range listeners {
		ln.Close()
	}
	for active.Load() > 0 && drain.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// shutdownDelay is how long a workload keeps serving after SIGTERM.
const shutdownDelay = time.Second

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// parsePorts reads a comma list, and --port N arguments that override it.
func parsePorts(list string, args []string) ([]int, error) {
	var ports []int
	for i := 0; i < len(args); i++ {
		if args[i] == "--port" && i+1 < len(args) {
			list, i = args[i+1], i+1
		}
	}
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %q: want a number from 1 to 65535", s)
		}
		ports = append(ports, n)
	}
	return ports, nil
}

func serveTCP(ln net.Listener, handle func(*net.TCPConn), active *atomic.Int64) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		active.Add(1)
		go func() {
			defer active.Add(-1)
			defer c.Close()
			handle(c.(*net.TCPConn))
		}()
	}
}

// echo copies back until the client closes its write side, then closes ours.
func echo(c *net.TCPConn) {
	io.CopyBuffer(c, c, make([]byte, 64*1024))
	c.CloseWrite()
}

func bulk(c *net.TCPConn) {
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	verb, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	n, _ := strconv.ParseUint(arg, 10, 64)
	buf := make([]byte, 256*1024)
	if verb == "GET" {
		// GET /bytes/N HTTP/1.1: SEND as an HTTP response, so that the
		// same bulk transfer can be measured as HTTP (the HTTP log's cost).
		path, _, _ := strings.Cut(arg, " ")
		n, _ = strconv.ParseUint(strings.TrimPrefix(path, "/bytes/"), 10, 64)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if strings.TrimSpace(l) == "" {
				break
			}
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", n)
		pattern.Copy(c, pattern.NewReader(n), buf)
		c.CloseWrite()
		return
	}
	switch strings.ToUpper(verb) {
	case "SEND":
		pattern.Copy(c, pattern.NewReader(n), buf)
		c.CloseWrite()
	case "RECV":
		h := sha256.New()
		got, _ := pattern.Copy(h, io.LimitReader(br, int64(n)), buf)
		if uint64(got) != n {
			fmt.Fprintf(c, "short %d\n", got)
			return
		}
		fmt.Fprintf(c, "%x\n", h.Sum(nil))
		c.CloseWrite()
	case "CHECK":
		var v pattern.Verifier
		got, err := pattern.Copy(&v, io.LimitReader(br, int64(n)), buf)
		switch {
		case err != nil:
			fmt.Fprintf(c, "bad %v\n", err)
		case uint64(got) != n:
			fmt.Fprintf(c, "short %d\n", got)
		default:
			fmt.Fprintf(c, "ok %d\n", got)
		}
		c.CloseWrite()
	case "ECHO":
		pattern.Copy(c, br, buf)
		c.CloseWrite()
	default:
		fmt.Fprintf(c, "unknown command %q: use SEND n, RECV n, CHECK n or ECHO\n", verb)
	}
}

func udpEcho(pc net.PacketConn) error {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		pc.WriteTo(buf[:n], from)
	}
}

func httpServer() *http.Server {
	pod := os.Getenv("KPF_POD_NAME")
	var failing atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pod %s namespace %s\n", pod, os.Getenv("KPF_POD_NAMESPACE"))
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "unhealthy (set by /healthz/fail)", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/healthz/fail", func(w http.ResponseWriter, r *http.Request) {
		failing.Store(true)
		io.WriteString(w, "healthz now fails\n")
	})
	mux.HandleFunc("/healthz/recover", func(w http.ResponseWriter, r *http.Request) {
		failing.Store(false)
		io.WriteString(w, "healthz now passes\n")
	})
	mux.HandleFunc("/bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseUint(r.PathValue("n"), 10, 64)
		if err != nil {
			http.Error(w, "want /bytes/N with N a byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatUint(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		io.CopyBuffer(w, pattern.NewReader(n), make([]byte, 256*1024))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("/sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%x %d\n", h.Sum(nil), n)
	})
	// What the cluster looks like from inside the pod.
	mux.HandleFunc("/resolv.conf", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "/etc/resolv.conf")
	})
	mux.HandleFunc("/lookup/{name}", lookup)
	mux.HandleFunc("/dial", dial)
	// Every answer names its pod, so tests can tell where a connection went.
	named := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pod-Name", pod)
		mux.ServeHTTP(w, r)
	})
	return &http.Server{Handler: named}
}

// lookup resolves a name as the pod's programs do (its /etc/resolv.conf,
// search path and all): its addresses, one a line, sorted; 404 if the
// name does not exist, 502 for another failure.
func lookup(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, r.PathValue("name"))
	if err != nil {
		var de *net.DNSError
		code := http.StatusBadGateway
		if errors.As(err, &de) && de.IsNotFound {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	slices.Sort(addrs)
	io.WriteString(w, strings.Join(addrs, "\n")+"\n")
}

// dial connects from the pod to addr (HOST:PORT, HOST resolved in the pod)
// over net (tcp or udp), sends send, and answers what came back: for TCP
// all until the peer closes (after our half-close), for UDP one datagram.
func dial(w http.ResponseWriter, r *http.Request) {
	network, addr, send := r.FormValue("net"), r.FormValue("addr"), r.FormValue("send")
	if network != "tcp" && network != "udp" {
		http.Error(w, "want /dial?net=tcp|udp&addr=HOST:PORT&send=TEXT", http.StatusBadRequest)
		return
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, send); err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	var got []byte
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		got, err = io.ReadAll(io.LimitReader(c, 1<<20))
	} else {
		buf := make([]byte, 64*1024)
		var n int
		n, err = c.Read(buf)
		got = buf[:n]
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Write(got)
}
