// Package fakeapi is an API server for unit tests of the concurrent core
// (follow, session, manager, daemon): pods are client-go's fake clientset,
// and pods/portforward is served over TLS with the upstream SPDY library
// (the one the kubelet uses), each pod's ports backed by a local
// listener of the test's. Only tests import it: the kpf binary never
// links it. End-to-end behaviour is tested on the sandbox, not here.
package fakeapi

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/streaming/pkg/httpstream"
	apispdy "k8s.io/streaming/pkg/httpstream/spdy"
)

// Server is a fake API server.
type Server struct {
	Client *Clientset
	Config *rest.Config

	srv      *httptest.Server
	mu       sync.Mutex
	backends map[string]string // pod name -> host:port its ports go to
	refuse   map[string]error  // pod name -> why its tunnels are refused
	Dials    atomic.Int64      // tunnels upgraded
	// Handshakes counts the TLS connections clients made, Resumed those
	// that resumed an earlier session.
	Handshakes, Resumed atomic.Int64
	Livez               atomic.Int64 // liveness probes answered
	uid                 atomic.Int64
}

// New starts a server; it stops with the test.
func New(t testing.TB) *Server {
	s := &Server{backends: map[string]string{}, refuse: map[string]error{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/namespaces/{ns}/pods/{pod}/portforward", s.portForward)
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods/{pod}/portforward", s.portForward)
	// The liveness probe every live session sends: without an answer a
	// session would count the API server as silent and drop its tunnels.
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		s.Livez.Add(1)
		io.WriteString(w, "ok")
	})
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.TLS = &tls.Config{VerifyConnection: s.handshake}
	// Tunnels closed as a test ends cut handshakes short: not news.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.Config = &rest.Config{Host: s.srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	rc, err := rest.RESTClientFor(restConfig(s.Config))
	if err != nil {
		t.Fatal(err)
	}
	s.Client = &Clientset{Clientset: fake.NewClientset(), rest: rc}
	return s
}

// handshake counts a TLS handshake, full or resumed.
func (s *Server) handshake(cs tls.ConnectionState) error {
	s.Handshakes.Add(1)
	if cs.DidResume {
		s.Resumed.Add(1)
	}
	return nil
}

// Clientset is client-go's fake clientset, whose core client's REST
// client (the fake's is nil) reaches the server: the liveness probe of a
// session GETs /livez through it.
type Clientset struct {
	*fake.Clientset
	rest *rest.RESTClient
}

// CoreV1 is the fake's core client, with a REST client to the server.
func (c *Clientset) CoreV1() typedcorev1.CoreV1Interface {
	return coreV1{c.Clientset.CoreV1(), c.rest}
}

type coreV1 struct {
	typedcorev1.CoreV1Interface
	rest *rest.RESTClient
}

func (c coreV1) RESTClient() rest.Interface { return c.rest }

// restConfig is cfg as a REST client of the core group needs it.
func restConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	return c
}

// Pod makes a running pod named name in namespace ns with labels, ready or
// not, whose ports all lead to backend (host:port).
func (s *Server) Pod(t testing.TB, ns, name string, labels map[string]string, ready bool, backend string) *corev1.Pod {
	t.Helper()
	s.mu.Lock()
	s.backends[name] = backend
	s.mu.Unlock()
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, UID: types.UID(fmt.Sprintf("uid-%d", s.uid.Add(1))),
			CreationTimestamp: metav1.NewTime(time.Now().Add(-time.Hour + time.Duration(s.uid.Load())*time.Second))},
		Spec: corev1.PodSpec{NodeName: "node", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: cond, LastTransitionTime: metav1.NewTime(time.Now().Add(-time.Minute))}}},
	}
	p, err := s.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// SetReady marks a pod ready or not.
func (s *Server) SetReady(t testing.TB, ns, name string, ready bool) {
	t.Helper()
	p, err := s.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Conditions[0].Status = corev1.ConditionFalse
	if ready {
		p.Status.Conditions[0].Status = corev1.ConditionTrue
	}
	if _, err := s.Client.CoreV1().Pods(ns).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Delete deletes a pod.
func (s *Server) Delete(t testing.TB, ns, name string) {
	t.Helper()
	if err := s.Client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Refuse makes the upgrade to name's tunnels fail with err (nil: accept).
func (s *Server) Refuse(name string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.refuse, name)
	} else {
		s.refuse[name] = err
	}
}

// portForward is the kubelet's side of pods/portforward: every pair of
// error and data streams with the same request ID is one connection to
// the pod's backend; a backend that refuses is reported on the error
// stream, as the kubelet does.
func (s *Server) portForward(w http.ResponseWriter, r *http.Request) {
	pod := r.PathValue("pod")
	s.mu.Lock()
	backend, known := s.backends[pod]
	refused := s.refuse[pod]
	s.mu.Unlock()
	switch {
	case !known:
		http.Error(w, fmt.Sprintf("pods %q not found", pod), http.StatusNotFound)
		return
	case refused != nil:
		http.Error(w, refused.Error(), http.StatusForbidden)
		return
	}
	if _, err := httpstream.Handshake(r, w, []string{"portforward.k8s.io"}); err != nil {
		return
	}
	streams := make(chan httpstream.Stream, 64)
	conn := apispdy.NewResponseUpgrader().UpgradeResponse(w, r, func(st httpstream.Stream, _ <-chan struct{}) error {
		streams <- st
		return nil
	})
	if conn == nil {
		return
	}
	s.Dials.Add(1)
	defer conn.Close()
	type pair struct{ errs, data httpstream.Stream }
	pairs := map[string]*pair{}
	for {
		select {
		case <-conn.CloseChan():
			return
		case st := <-streams:
			id := st.Headers().Get(corev1.PortForwardRequestIDHeader)
			p := pairs[id]
			if p == nil {
				p = &pair{}
				pairs[id] = p
			}
			if st.Headers().Get(corev1.StreamType) == corev1.StreamTypeError {
				p.errs = st
			} else {
				p.data = st
			}
			if p.errs != nil && p.data != nil {
				delete(pairs, id)
				go serveConn(p.errs, p.data, backend)
			}
		}
	}
}

func serveConn(errs, data httpstream.Stream, backend string) {
	defer errs.Close()
	defer data.Close()
	port, _ := strconv.Atoi(data.Headers().Get(corev1.PortHeader))
	c, err := net.Dial("tcp", backend)
	if err != nil {
		fmt.Fprintf(errs, "an error occurred forwarding %d -> %d: error forwarding port %d to pod: %v", port, port, port, err)
		// As the kubelet (cri-streaming's portForward): reset both, which
		// also drops what the client sent that nobody will read.
		data.Reset()
		errs.Reset()
		return
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(c, data)
		c.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(data, c)
	data.Close()
	<-done
}

// Echo starts a TCP server that answers each connection with name and a
// newline, then echoes what it reads until the client half-closes.
func Echo(t testing.TB, name string) string {
	t.Helper()
	return Serve(t, func(c net.Conn) {
		io.WriteString(c, name+"\n")
		io.Copy(c, c)
	})
}

// Serve starts a TCP server that runs serve on each connection, in a
// goroutine of its own, and closes the connection when serve returns; it
// stops with the test.
func Serve(t testing.TB, serve func(net.Conn)) string {
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
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// Closed is an address nothing listens on.
func Closed(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
