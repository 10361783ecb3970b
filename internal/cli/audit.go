package cli

import (
	"context"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/audit"
	"github.com/kpf-dev/kpf/internal/identity"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const auditLogUsage = "append a JSON line per connection (who, pod, ports, client, bytes, result) and per forward start, stop and pod switch to this file (created 0600, rotated at 10 MB, 3 kept)"

// openAudit opens the audit log at path; "" is none.
func openAudit(path string) (*audit.Log, error) {
	if path == "" {
		return nil, nil
	}
	return audit.Open(path, audit.DefaultMaxBytes, audit.DefaultKeep)
}

// whoOnce asks the API server once who the cluster's user is, for the
// audit log; the kubeconfig's user name stands in when it cannot say.
type whoOnce struct {
	once sync.Once
	who  audit.Who
}

func (c *kubeCluster) auditWho(ctx context.Context) audit.Who {
	c.who.once.Do(func() {
		w := &c.who.who
		w.Context, w.Cluster, w.User = identity.Describe(c.kube)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if r, err := c.client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil && r.Status.UserInfo.Username != "" {
			w.User = r.Status.UserInfo.Username
		}
	})
	return c.who.who
}
