package doctor

import (
	"context"
	"fmt"
	"strings"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/rbac"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/tunnel"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// rbac asks the API server, one SelfSubjectAccessReview per verb, whether
// you may do what the forward needs in its namespace.
func (d *Doctor) rbac(ctx context.Context, fw config.Forward, s spec.Settings) Check {
	c := Check{Step: "rbac"}
	ctx, cancel := d.step(ctx)
	defer cancel()
	kinds := []rbac.Kind{}
	if k, err := rbac.KindOf(fw.Target); err == nil {
		kinds = append(kinds, k)
	}
	var allowed, denied []string
	can := map[string]bool{}
	rules := rbac.For(kinds)
	if rbac.IsDestination(fw.Target) {
		rules = append(rbac.ForDestinations(), rbac.Destination()) // its /udp ports too
	} else if portspec.AnyUDP(fw.Ports) {
		rules = append(rules, rbac.Relay(s.UDPRelay))
	}
	for _, r := range rules {
		for _, verb := range r.Verbs {
			res, sub, _ := strings.Cut(r.Resource, "/")
			review := &authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
				Namespace: fw.Namespace, Verb: verb, Group: r.Group, Resource: res, Subresource: sub,
			}}}
			out, err := d.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
			if err != nil {
				c.Status, c.Summary = Warn, "cannot ask the API server what you may do: "+d.explain(ctx, err)
				return c
			}
			name := rbac.Name(verb, r.Group, r.Resource)
			can[name] = out.Status.Allowed
			if out.Status.Allowed {
				allowed = append(allowed, name)
			} else {
				denied = append(denied, name)
			}
		}
	}
	c.Status = OK
	c.Summary = fmt.Sprintf("in namespace %s you may %s", fw.Namespace, grouped(allowed))
	// A tunnel needs create (SPDY) or get (WebSocket) on pods/portforward.
	spdy, ws := can["create pods/portforward"], can["get pods/portforward"]
	var fatal []string
	for _, n := range denied {
		switch {
		case n == "create pods/portforward" && ws && s.Transport != tunnel.SPDY:
			c.Details = append(c.Details, "no create on pods/portforward: the SPDY transport (kpf's fallback, and older clusters' only one) would be refused")
		case n == "get pods/portforward" && spdy && s.Transport != tunnel.WebSocket:
			c.Details = append(c.Details, "no get on pods/portforward: the WebSocket transport is refused, kpf falls back to SPDY (which newer clusters may refuse)")
		default:
			fatal = append(fatal, n)
		}
	}
	if len(denied) > 0 {
		c.Status = Warn
		c.Summary = fmt.Sprintf("in namespace %s you may not %s", fw.Namespace, grouped(denied))
		c.Fix = "ask your cluster admin for a Role with what is missing (kpf rbac " + fw.Target + " -n " + fw.Namespace + " prints one with exactly what kpf needs)"
	}
	if len(fatal) > 0 {
		c.Status = Fail
	}
	return c
}

// grouped writes "get pods", "list pods", "get services" as "get, list
// pods; get services".
func grouped(rules []string) string {
	var order []string
	verbs := map[string][]string{}
	for _, r := range rules {
		verb, res, _ := strings.Cut(r, " ")
		if _, ok := verbs[res]; !ok {
			order = append(order, res)
		}
		verbs[res] = append(verbs[res], verb)
	}
	out := make([]string, len(order))
	for i, res := range order {
		out[i] = strings.Join(verbs[res], ", ") + " " + res
	}
	return strings.Join(out, "; ")
}
