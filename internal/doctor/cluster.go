package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/proxydial"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/discovery"
)

// kubeconfig: which files, context, cluster, user and namespace, and
// whether an exec credential plugin can be found.
func (d *Doctor) kubeconfig() Check {
	c := Check{Step: "kubeconfig"}
	loader := d.Flags.ToRawKubeConfigLoader()
	var files []string
	if access := loader.ConfigAccess(); access.IsExplicitFile() {
		files = []string{access.GetExplicitFile()}
	} else {
		for _, f := range access.GetLoadingPrecedence() {
			if _, err := os.Stat(f); err == nil {
				files = append(files, f)
			}
		}
	}
	if d.ConfigErr != nil {
		c.Status, c.Summary = Fail, d.ConfigErr.Error()
		c.Fix = "check --kubeconfig, KUBECONFIG and --context (kubectl config get-contexts lists the contexts)"
		if len(files) == 0 {
			c.Fix = "no kubeconfig found: set KUBECONFIG or --kubeconfig, or create ~/.kube/config (your cluster's provider has a command for it)"
		}
		return c
	}
	if len(files) == 0 {
		c.Status = Fail
		c.Summary = "no kubeconfig: KUBECONFIG is not set and ~/.kube/config does not exist, so kpf (like kubectl) tries http://localhost:8080"
		c.Fix = "set KUBECONFIG or --kubeconfig, or create ~/.kube/config (your cluster's provider has a command for it)"
		return c
	}
	ctxName, cluster, user := identity.Describe(d.Flags)
	ns, _, _ := loader.Namespace()
	c.Status = OK
	c.Summary = fmt.Sprintf("context %s (cluster %s, user %s), namespace %s", orNone(ctxName), orNone(cluster), orNone(user), ns)
	if len(files) > 0 {
		c.Details = append(c.Details, "from "+strings.Join(files, ", "))
	}
	raw, err := loader.RawConfig()
	if err != nil {
		return c
	}
	if cl, ok := raw.Clusters[cluster]; ok {
		c.Details = append(c.Details, "server "+cl.Server)
	}
	if ai, ok := raw.AuthInfos[user]; ok && ai.Exec != nil {
		cmd := ai.Exec.Command
		path := cmd
		if !strings.ContainsRune(cmd, filepath.Separator) {
			path = identity.LookPath(cmd, d.PATH)
		} else if _, err := os.Stat(cmd); err != nil {
			path = ""
		}
		if path == "" {
			c.Status = Fail
			c.Summary += fmt.Sprintf("; its credential plugin %q is not on your PATH", cmd)
			c.Fix = "install the plugin of user " + user + " or put it on your PATH"
			if ai.Exec.InstallHint != "" {
				c.Fix += ": " + strings.TrimSpace(ai.Exec.InstallHint)
			}
			return c
		}
		c.Details = append(c.Details, "credentials from the exec plugin "+path)
	}
	return c
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// apiServer asks the API server its version, as kubectl version does.
func (d *Doctor) apiServer(ctx context.Context) Check {
	c := Check{Step: "api-server"}
	host := d.Config.Host
	via := ""
	if u, err := url.Parse(host); err == nil {
		if p, err := proxydial.ProxyURL(d.Config, u); err == nil && p != nil {
			via = " through the proxy " + p.Redacted()
		}
	}
	dc, err := discovery.NewDiscoveryClientForConfig(d.Config)
	if err != nil {
		c.Status, c.Summary = Fail, err.Error()
		return c
	}
	ctx, cancel := d.step(ctx)
	defer cancel()
	body, err := dc.RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		c.Status = Fail
		c.Summary = fmt.Sprintf("%s%s did not answer: %s", host, via, d.explain(ctx, err))
		c.Fix = apiFix(err)
		return c
	}
	var v version.Info
	if err := json.Unmarshal(body, &v); err != nil {
		c.Status, c.Summary = Fail, fmt.Sprintf("%s%s answered /version with something else than a version: %v", host, via, err)
		c.Fix = "is the server address in your kubeconfig a Kubernetes API server?"
		return c
	}
	c.Status, c.Summary = OK, fmt.Sprintf("%s%s answers: Kubernetes %s", host, via, v.GitVersion)
	return c
}

// apiFix is the fix for an API server that did not answer.
func apiFix(err error) string {
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	switch {
	case apierrors.IsUnauthorized(err):
		return "the API server refused your credentials: they expired or belong to another cluster; log in again (your provider's login command, or a fresh kubeconfig)"
	case strings.Contains(err.Error(), "getting credentials"):
		return "your exec credential plugin failed: run it by hand to see why (often: log in again)"
	case errors.As(err, &unknownCA), errors.As(err, &invalid), errors.As(err, &verify):
		return "the API server's certificate is not signed by the certificate authority in your kubeconfig: was the cluster recreated? fetch a fresh kubeconfig (--insecure-skip-tls-verify only to test)"
	case errors.As(err, &hostErr):
		return "the API server's certificate does not name the address you use: use the address it was issued for, or set tls-server-name in the kubeconfig"
	}
	return ""
}

// whoAmI asks the API server who it takes you for (SelfSubjectReview).
func (d *Doctor) whoAmI(ctx context.Context) Check {
	c := Check{Step: "identity"}
	ctx, cancel := d.step(ctx)
	defer cancel()
	u, err := kube.WhoAmI(ctx, d.Client)
	switch {
	case apierrors.IsNotFound(err):
		c.Status, c.Summary = Warn, "the API server cannot say who you are (SelfSubjectReview: Kubernetes 1.28 and later)"
		return c
	case apierrors.IsUnauthorized(err):
		c.Status, c.Summary, c.Fix = Fail, "the API server refused your credentials: "+err.Error(), apiFix(err)
		return c
	case err != nil:
		c.Status, c.Summary = Warn, "cannot ask who you are: "+d.explain(ctx, err)
		return c
	}
	c.Status, c.Summary = OK, "the API server knows you as "+u.Username
	if len(u.Groups) > 0 {
		c.Summary += " (groups: " + strings.Join(u.Groups, ", ") + ")"
	}
	return c
}
