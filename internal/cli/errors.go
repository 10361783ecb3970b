package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"syscall"

	"github.com/kpf-dev/kpf/internal/proxydial"
	"github.com/kpf-dev/kpf/internal/rbac"
	"github.com/kpf-dev/kpf/internal/relaypod"

	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/rest"
)

// This file turns API and network errors into messages that say what went
// wrong and what to do, in one place.

// explainConfig: the kubeconfig could not be loaded.
func explainConfig(err error) error {
	return fmt.Errorf("%w (check --kubeconfig, KUBECONFIG and --context)", err)
}

// explain turns a target resolution error into advice.
func explain(ctx context.Context, err error, namespace string, kube genericclioptions.RESTClientGetter, cfg *rest.Config) error {
	if e := explainNetwork(err, cfg); e != nil {
		return e
	}
	var status apierrors.APIStatus
	switch {
	case apierrors.IsNotFound(err) && errors.As(err, &status) && status.Status().Details != nil:
		d := status.Status().Details
		if d.Kind == "namespaces" {
			return fmt.Errorf("namespace %q does not exist (kubectl get namespaces lists them; choose one with -n NAMESPACE)", d.Name)
		}
		kind := strings.TrimSuffix(d.Kind, "s")
		msg := fmt.Sprintf("%s %q not found in namespace %q", kind, d.Name, namespace)
		if hint := notFoundHint(d.Kind, d.Group, d.Name, namespace, kube); hint != "" {
			msg += "; " + hint
		} else {
			msg += " (use -n NAMESPACE to look elsewhere)"
		}
		return errors.New(msg)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w (ask your cluster admin for a Role that allows it, or use another --context)", err)
	case errors.Is(err, target.ErrPodNotRunning), errors.Is(err, target.ErrUDPOnly), errors.Is(err, target.ErrNoSelector):
		return err
	}
	return err
}

// notFoundHint suggests close names in the namespace and namespaces that
// hold the exact name. Lookups that are not allowed are skipped quietly.
func notFoundHint(resourceName, group, name, namespace string, kube genericclioptions.RESTClientGetter) string {
	typ := resourceName
	if group != "" {
		typ += "." + group
	}
	list := func(all bool) []*resource.Info {
		b := resource.NewBuilder(kube).Unstructured().ResourceTypes(typ).SelectAllParam(true).ContinueOnError().Flatten()
		if all {
			b = b.AllNamespaces(true)
		} else {
			b = b.NamespaceParam(namespace)
		}
		infos, _ := b.Do().Infos()
		return infos
	}
	var close []string
	for _, in := range list(false) {
		if similar(in.Name, name) {
			close = append(close, in.Name)
		}
	}
	var elsewhere []string
	for _, in := range list(true) {
		if in.Name == name && in.Namespace != namespace {
			elsewhere = append(elsewhere, in.Namespace)
		}
	}
	sort.Strings(close)
	sort.Strings(elsewhere)
	var hints []string
	if len(elsewhere) > 0 {
		hints = append(hints, fmt.Sprintf("it exists in namespace %s: add -n %s", strings.Join(elsewhere, ", "), elsewhere[0]))
	}
	if len(close) > 0 {
		if len(close) > 5 {
			close = close[:5]
		}
		hints = append(hints, "close names here: "+strings.Join(close, ", "))
	}
	return strings.Join(hints, "; ")
}

// similar: one name contains the other, or they differ by at most two edits.
func similar(a, b string) bool {
	if strings.Contains(a, b) || strings.Contains(b, a) {
		return true
	}
	return editDistance(a, b) <= 2
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// explainNetwork: the API server could not be reached at all.
func explainNetwork(err error, cfg *rest.Config) error {
	var ue *url.Error
	var oe *net.OpError
	var pe *proxydial.ProxyError
	if !errors.As(err, &ue) && !errors.As(err, &oe) && !errors.As(err, &pe) {
		return nil
	}
	host := ""
	if cfg != nil {
		host = cfg.Host
	}
	if e := explainProxy(err, cfg, host); e != nil {
		return e
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach the API server at %s: connection refused (is the cluster up? check --context and --server)", host)
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return fmt.Errorf("cannot reach the API server at %s: timed out (is the cluster up and reachable from here? see --request-timeout)", host)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("cannot reach the API server at %s: %v (check the server address in your kubeconfig)", host, dnsErr)
	}
	return nil
}

// explainProxy: the API server is reached through a proxy, which could
// not be reached or refused the connection. client-go reports a refused
// CONNECT with the status text alone ("Unauthorized"), which reads like
// the API server's answer.
func explainProxy(err error, cfg *rest.Config, host string) error {
	if cfg == nil {
		return nil
	}
	u, perr := url.Parse(host)
	if perr != nil {
		return nil
	}
	p, perr := proxydial.ProxyURL(cfg, u)
	if perr != nil || p == nil {
		return nil
	}
	where := "proxy-url in your kubeconfig"
	if cfg.Proxy == nil {
		where = "HTTPS_PROXY and NO_PROXY in your environment"
	}
	var ue *url.Error
	var re *proxydial.RefusedError
	var dnsErr *net.DNSError
	var cause, hint string
	switch {
	case errors.As(err, &re):
		cause, hint = "the proxy refused: "+re.Status, refusalHint(re.Status)
	case errors.As(err, &ue) && isStatusText(ue.Err.Error()):
		cause, hint = "the proxy refused: "+ue.Err.Error(), refusalHint(ue.Err.Error())
	case errors.Is(err, syscall.ECONNREFUSED):
		cause, hint = "the proxy refused the connection", "is the proxy running? "
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		cause = "timed out"
	case errors.As(err, &dnsErr):
		cause = dnsErr.Error()
	default:
		cause = err.Error()
		if errors.As(err, &ue) {
			cause = ue.Err.Error()
		}
	}
	return fmt.Errorf("cannot reach the API server at %s through the proxy %s: %s (%scheck %s)", host, p.Redacted(), cause, hint, where)
}

// isStatusText reports whether s is an HTTP status text: what Go's HTTP
// client reports for a refused CONNECT.
func isStatusText(s string) bool {
	for code := 400; code < 600; code++ {
		if t := http.StatusText(code); t != "" && t == s {
			return true
		}
	}
	return false
}

func refusalHint(status string) string {
	if strings.Contains(status, "Unauthorized") || strings.Contains(status, "Proxy Authentication Required") {
		return "are the user and password in the proxy's URL right? "
	}
	return ""
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// explainDial turns a failed tunnel upgrade into advice.
func explainDial(err error, cfg *rest.Config, t *target.Target) error {
	if e := explainNetwork(err, cfg); e != nil {
		return e
	}
	// A refused upgrade carries the API server's message as text only.
	if apierrors.IsForbidden(err) || (tunnel.IsUpgradeFailure(err) && strings.Contains(err.Error(), " is forbidden: ")) {
		// %w: the manager retries a Forbidden forward only slowly.
		return fmt.Errorf("forbidden: you may not create pods/portforward in namespace %q (%w); ask for a Role that allows create on pods/portforward there (and get, for the WebSocket transport)", t.Namespace, err)
	}
	return fmt.Errorf("cannot open a tunnel to pod %s/%s: %w", t.Namespace, t.Pod.Name, err)
}

// explainOpen turns a failure to open a session into advice.
func explainOpen(ctx context.Context, err error, namespace string, kube genericclioptions.RESTClientGetter, cfg *rest.Config) error {
	var se *session.StageError
	if !errors.As(err, &se) {
		return err
	}
	switch se.Stage {
	case session.StageResolve:
		return explain(ctx, se.Err, namespace, kube, cfg)
	case session.StageDial:
		return explainDial(se.Err, cfg, se.Target)
	case session.StageRelay:
		return explainRelay(se.Err)
	case session.StageDestination:
		var fe *relaypod.ForbiddenError
		if !errors.As(se.Err, &fe) {
			return se.Err
		}
		// What a host/ or ip/ target needs: its relay pod, and to
		// follow and tunnel to it as to any pod.
		role, _ := rbac.Manifest("kpf-destination-relay", map[string][]rbac.Rule{fe.Namespace: append(rbac.ForDestinations(), rbac.Destination())}, nil)
		return fmt.Errorf("%w; a Role that allows it (bind it to yourself with a RoleBinding, or ask your cluster's admin):\n%s", se.Err, role)
	}
	return se.Err
}

// explainRelay adds, to a relay pod kpf may not create or delete, the Role
// that would allow it.
func explainRelay(err error) error {
	var fe *relaypod.ForbiddenError
	if !errors.As(err, &fe) {
		return fmt.Errorf("the UDP relay: %w", err)
	}
	mode := "pod"
	if fe.Resource == "pods/ephemeralcontainers" {
		mode = "ephemeral"
	}
	role, _ := rbac.Manifest("kpf-udp-relay", map[string][]rbac.Rule{fe.Namespace: {rbac.Relay(mode)}}, nil)
	return fmt.Errorf("%w; a Role that allows it (bind it to yourself with a RoleBinding, or ask your cluster's admin):\n%s", fe, role)
}
