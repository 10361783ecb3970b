package node

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/proxy"
	translator "k8s.io/apiserver/pkg/util/proxy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

// criStreams is the container runtime's streaming server, as containerd
// runs one: a plain HTTP listener of its own on loopback that serves each
// port-forward at the one-time URL the runtime's PortForward call handed to
// the kubelet. It is k8s.io/cri-streaming's server, the one containerd and
// CRI-O use, and it holds the streaming idle timeout.
type criStreams struct {
	streaming.Server
	http *http.Server
	addr string
}

func (a *Agent) startCRIStreams() (*criStreams, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cfg := streaming.DefaultConfig
	cfg.Addr = ln.Addr().String()
	cfg.StreamIdleTimeout = a.cfg.StreamIdleTimeout
	cfg.StreamCreationTimeout = streamCreationTimeout
	s, err := streaming.NewServer(cfg, criRuntime{a})
	if err != nil {
		ln.Close()
		return nil, err
	}
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	return &criStreams{Server: s, http: hs, addr: cfg.Addr}, nil
}

func (c *criStreams) close() { c.http.Close() }

// criRuntime is what the streaming server calls: the runtime's side.
type criRuntime struct{ a *Agent }

var errNoExec = errors.New("the sandbox node runs no exec or attach")

func (criRuntime) Exec(context.Context, string, []string, io.Reader, io.WriteCloser, io.WriteCloser, bool, <-chan remotecommand.TerminalSize) error {
	return errNoExec
}

func (criRuntime) Attach(context.Context, string, io.Reader, io.WriteCloser, io.WriteCloser, bool, <-chan remotecommand.TerminalSize) error {
	return errNoExec
}

// PortForward connects a stream to a port of the pod whose sandbox ID (the
// pod's UID here) the kubelet named.
func (r criRuntime) PortForward(ctx context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	name := podSandboxID
	if pw := r.a.workerByUID(types.UID(podSandboxID)); pw != nil {
		name = pw.namespace + "/" + pw.name
	}
	return forwarder(r).PortForward(ctx, name, podSandboxID, port, stream)
}

// servePortForwardCRI is the kubelet's port-forward handler
// (k8s.io/kubernetes pkg/kubelet/server getPortForward): it asks the runtime
// for a streaming URL and proxies the request there; a WebSocket that
// tunnels SPDY (what the API server proxies unchanged to a node that
// declares ExtendWebSocketsToKubelet) goes through the API server's
// tunnelling handler first, which the kubelet runs too.
func (a *Agent) servePortForwardCRI(w http.ResponseWriter, r *http.Request, pw *podWorker) {
	tunnel := wsstream.IsWebSocketRequestWithTunnelingProtocol(r)
	opts := &portforward.V4Options{}
	if !tunnel {
		var err error
		if opts, err = portforward.NewV4Options(r); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	resp, err := a.cri.GetPortForward(&runtimeapi.PortForwardRequest{PodSandboxId: string(pw.uid), Port: opts.Ports})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	u, err := url.Parse(resp.Url)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var h http.Handler = proxy.NewUpgradeAwareHandler(u, nil, false, true, proxyErrors{a})
	if tunnel {
		a.tunnelled.Add(1)
		h = translator.NewTunnelingHandler(h)
	}
	h.ServeHTTP(trackingWriter{w, &pw.sessions}, r)
}

// proxyErrors answers a failed proxy as the kubelet does: 500 and the error.
type proxyErrors struct{ a *Agent }

func (p proxyErrors) Error(w http.ResponseWriter, r *http.Request, err error) {
	p.a.log.Warn("proxy port-forward to the CRI streaming server", "path", r.URL.Path, "err", err)
	http.Error(w, err.Error(), http.StatusInternalServerError)
}
