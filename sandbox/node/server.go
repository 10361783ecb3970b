package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// The kubelet's default stream creation timeout.
const streamCreationTimeout = 30 * time.Second

// allowedClients are the certificate names that may call the kubelet API:
// the API server's kubelet client, and cluster admins.
var allowedClients = []string{"kube-apiserver-kubelet-client"}

func (a *Agent) server() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/portForward/{namespace}/{pod}", a.servePortForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", a.servePortForward)
	mux.HandleFunc("/containerLogs/{namespace}/{pod}/{container}", a.serveLogs)
	mux.HandleFunc("/pods", a.servePods)
	mux.HandleFunc("/metrics", a.serveMetrics)
	pool := x509.NewCertPool()
	if ca, err := os.ReadFile(a.cfg.ClientCA); err == nil {
		pool.AppendCertsFromPEM(ca)
	}
	return &http.Server{
		Handler:           a.authorize(mux),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs:  pool,
			MinVersion: tls.VersionTLS12,
			// SPDY upgrades need HTTP/1.1.
			NextProtos: []string{"http/1.1"},
		},
		ErrorLog: nil,
	}
}

// authorize admits the API server's kubelet client and system:masters.
func (a *Agent) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		subj := r.TLS.PeerCertificates[0].Subject
		if r.URL.Path != "/healthz" && !slices.Contains(allowedClients, subj.CommonName) && !slices.Contains(subj.Organization, "system:masters") {
			http.Error(w, fmt.Sprintf("Forbidden (user=%s)", subj.CommonName), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Agent) servePortForward(w http.ResponseWriter, r *http.Request) {
	ns, name, uid := r.PathValue("namespace"), r.PathValue("pod"), types.UID(r.PathValue("uid"))
	pw := a.worker(ns, name, uid)
	if pw == nil {
		http.Error(w, "pod does not exist", http.StatusNotFound)
		return
	}
	if a.cri != nil {
		a.servePortForwardCRI(w, r, pw)
		return
	}
	// The legacy node serves the streams in its handler.
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(trackingWriter{w, &pw.sessions}, r, forwarder{a}, ns+"/"+name, string(pw.uid), opts,
		a.cfg.StreamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// serveMetrics serves, as the kubelet's /metrics does, how many WebSocket
// streaming requests the node handled itself (tunnelled SPDY, which the
// API server proxied unchanged), in the Prometheus text format.
func (a *Agent) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP kubelet_websocket_streaming_requests_total Number of WebSocket streaming requests the kubelet handled, by subresource.\n")
	fmt.Fprintf(w, "# TYPE kubelet_websocket_streaming_requests_total counter\n")
	fmt.Fprintf(w, "kubelet_websocket_streaming_requests_total{subresource=\"portforward\"} %d\n", a.tunnelled.Load())
}

// forwarder connects a port-forward stream to a port of a pod, as the
// container runtime does.
type forwarder struct{ a *Agent }

func (f forwarder) PortForward(ctx context.Context, name, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	pw := f.a.workerByUID(types.UID(uid))
	if pw == nil {
		return fmt.Errorf("pod %s (uid %s) not found on this node", name, uid)
	}
	addr, err := pw.target()
	if err != nil {
		return err
	}
	// Inside the pod's network namespace, localhost, as a container
	// runtime dials; without a pod network, the pod's loopback address.
	target := net.JoinHostPort(addr.Local.String(), strconv.Itoa(int(port)))
	var conn net.Conn
	err = inNetns(addr.NS, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		var err error
		conn, err = d.DialContext(ctx, "tcp", target)
		return err
	})
	if err != nil {
		return fmt.Errorf("failed to connect to port %d in pod %s: %w", port, name, err)
	}
	defer conn.Close()
	errc := make(chan error, 1)
	go func() {
		// Client to pod; when the client is done writing, say so to the pod
		// and keep reading its answer.
		_, err := io.Copy(conn, stream)
		conn.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	if _, err := io.Copy(stream, conn); err != nil && ctx.Err() == nil {
		return fmt.Errorf("copy from pod %s port %d: %w", name, port, err)
	}
	return nil
}

func (a *Agent) servePods(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	type row struct{ Namespace, Name, UID, Addr string }
	var rows []row
	for _, pw := range a.workers {
		pw.mu.Lock()
		rows = append(rows, row{pw.namespace, pw.name, string(pw.uid), pw.local.Local.String()})
		pw.mu.Unlock()
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(rows)
}

// serveLogs serves a container's output for kubectl logs, with follow and
// tailLines.
func (a *Agent) serveLogs(w http.ResponseWriter, r *http.Request) {
	ns, name, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	pw := a.worker(ns, name, "")
	if pw == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s not found on this node", ns, name), http.StatusNotFound)
		return
	}
	f, err := os.Open(pw.dir + "/" + container + ".log")
	if err != nil {
		http.Error(w, fmt.Sprintf("container %q in pod %s/%s has no logs yet", container, ns, name), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	if n, err := strconv.Atoi(r.URL.Query().Get("tailLines")); err == nil && n >= 0 {
		var lines []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if len(lines) > n {
				lines = lines[1:]
			}
		}
		io.WriteString(w, strings.Join(lines, "\n"))
		if len(lines) > 0 {
			io.WriteString(w, "\n")
		}
	} else {
		io.Copy(w, f)
	}
	if r.URL.Query().Get("follow") != "true" {
		return
	}
	fl, _ := w.(http.Flusher)
	for {
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-pw.done:
			io.Copy(w, f)
			return
		case <-time.After(200 * time.Millisecond):
		}
		io.Copy(w, f)
	}
}
