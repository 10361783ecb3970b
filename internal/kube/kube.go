// Package kube holds the API clients kpf uses: the typed clients of the
// groups whose objects a forward can name (core, apps, batch), and
// discovery for kpf expose's EndpointSlice.
//
// client-go's Clientset links the typed clients of every API group, and
// its informer factory every group's informers and listers; together they
// were a third of kpf's binary. kube.Interface is the part of
// kubernetes.Interface kpf calls, so client-go's fake Clientset still
// serves the unit tests.
package kube

import (
	"context"
	"fmt"
	"net/http"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	appsv1 "k8s.io/client-go/kubernetes/typed/apps/v1"
	authnv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authzv1 "k8s.io/client-go/kubernetes/typed/authorization/v1"
	batchv1 "k8s.io/client-go/kubernetes/typed/batch/v1"
	corev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	discoveryv1 "k8s.io/client-go/kubernetes/typed/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Interface is what kpf asks of the API server.
type Interface interface {
	CoreV1() corev1.CoreV1Interface
	AppsV1() appsv1.AppsV1Interface
	BatchV1() batchv1.BatchV1Interface
	AuthenticationV1() authnv1.AuthenticationV1Interface
	AuthorizationV1() authzv1.AuthorizationV1Interface
	DiscoveryV1() discoveryv1.DiscoveryV1Interface // kpf expose's EndpointSlice
}

// Clients implements Interface over one shared HTTP client and rate
// limiter, as kubernetes.NewForConfig would.
type Clients struct {
	core  *corev1.CoreV1Client
	apps  *appsv1.AppsV1Client
	batch *batchv1.BatchV1Client
	authn *authnv1.AuthenticationV1Client
	authz *authzv1.AuthorizationV1Client
	disc  *discoveryv1.DiscoveryV1Client
}

// CoreV1 implements Interface.
func (c *Clients) CoreV1() corev1.CoreV1Interface { return c.core }

// AppsV1 implements Interface.
func (c *Clients) AppsV1() appsv1.AppsV1Interface { return c.apps }

// BatchV1 implements Interface.
func (c *Clients) BatchV1() batchv1.BatchV1Interface { return c.batch }

// AuthenticationV1 implements Interface.
func (c *Clients) AuthenticationV1() authnv1.AuthenticationV1Interface { return c.authn }

// AuthorizationV1 implements Interface.
func (c *Clients) AuthorizationV1() authzv1.AuthorizationV1Interface { return c.authz }

// DiscoveryV1 implements Interface.
func (c *Clients) DiscoveryV1() discoveryv1.DiscoveryV1Interface { return c.disc }

// NewForConfig builds the clients of c. Like kubernetes.NewForConfig, the
// groups share one transport and one token bucket of c.QPS and c.Burst.
func NewForConfig(c *rest.Config) (*Clients, error) {
	cfg, err := withDefaults(c)
	if err != nil {
		return nil, err
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return NewForConfigAndClient(cfg, hc)
}

// NewForConfigAndClient builds the clients of c over hc, an HTTP client
// made for c (rest.HTTPClientFor) that the caller may use too.
func NewForConfigAndClient(c *rest.Config, hc *http.Client) (*Clients, error) {
	cfg, err := withDefaults(c)
	if err != nil {
		return nil, err
	}
	var cs Clients
	if cs.core, err = corev1.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, err
	}
	if cs.apps, err = appsv1.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, err
	}
	if cs.batch, err = batchv1.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, err
	}
	if cs.authn, err = authnv1.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, err
	}
	if cs.disc, err = discoveryv1.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, err
	}
	if cs.authz, err = authzv1.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, err
	}
	return &cs, nil
}

// withDefaults is a copy of c with a user agent and a rate limiter that
// every group shares.
func withDefaults(c *rest.Config) (*rest.Config, error) {
	cfg := *c
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if cfg.RateLimiter == nil && cfg.QPS > 0 {
		if cfg.Burst <= 0 {
			return nil, fmt.Errorf("the client's burst must be above 0 when its QPS is set (QPS %v, burst %d)", cfg.QPS, cfg.Burst)
		}
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	}
	return &cfg, nil
}

// WhoAmI is who the API server takes the client's credentials for
// (SelfSubjectReview: Kubernetes 1.28 and later).
func WhoAmI(ctx context.Context, c Interface) (authenticationv1.UserInfo, error) {
	r, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return authenticationv1.UserInfo{}, err
	}
	return r.Status.UserInfo, nil
}
