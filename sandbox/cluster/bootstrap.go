package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/kpf-dev/kpf/sandbox/pki"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// identity is a client certificate's subject and the kubeconfig that uses it.
type identity struct {
	user string // kubeconfig file stem
	cn   string
	orgs []string
}

var identities = []identity{
	{UserAdmin, "kpf-sandbox-admin", []string{"system:masters"}},
	{UserDev, "dev", nil},
	{UserViewer, "viewer", nil},
	{UserNobody, "nobody", nil},
	{"controller-manager", "system:kube-controller-manager", nil},
	{"scheduler", "system:kube-scheduler", nil},
	{"node", "system:node:" + NodeName, []string{"system:nodes"}},
}

// writePKI creates the CA, the serving and client certificates and one
// kubeconfig per identity; what exists already is kept.
func (c *Cluster) writePKI() error {
	dir := c.dir.path("pki")
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		return err
	}
	loop := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	reqs := []pki.Request{
		{Name: "apiserver", CN: "kube-apiserver", Server: true, IPs: append(loop, net.IPv4(10, 96, 0, 1)),
			DNS: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{Name: "apiserver-kubelet-client", CN: "kube-apiserver-kubelet-client", Orgs: []string{"kubeadm:cluster-admins"}, Client: true},
		{Name: "kubelet", CN: "system:node:" + NodeName, Orgs: []string{"system:nodes"}, Server: true, IPs: loop, DNS: []string{"localhost", NodeName}},
	}
	for _, id := range identities {
		reqs = append(reqs, pki.Request{Name: "user-" + id.user, CN: id.cn, Orgs: id.orgs, Client: true})
	}
	for _, r := range reqs {
		if _, err := ca.Issue(dir, r); err != nil {
			return fmt.Errorf("issue %s certificate: %w", r.Name, err)
		}
	}
	if _, _, err := pki.ServiceAccountKey(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir.path("kubeconfig"), 0o700); err != nil {
		return err
	}
	for _, id := range identities {
		if err := c.writeKubeconfig(id); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) writeKubeconfig(id identity) error {
	caData, err := os.ReadFile(c.dir.pki("ca.crt"))
	if err != nil {
		return err
	}
	cert, err := os.ReadFile(c.dir.pki("user-" + id.user + ".crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(c.dir.pki("user-" + id.user + ".key"))
	if err != nil {
		return err
	}
	name := "kpf-sandbox"
	if id.user != UserAdmin {
		name += "-" + id.user
	}
	ns := ""
	if id.user == UserDev || id.user == UserViewer || id.user == UserNobody {
		ns = DevNamespace
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kpf-sandbox"] = &clientcmdapi.Cluster{Server: c.APIServerURL(), CertificateAuthorityData: caData}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: "kpf-sandbox", AuthInfo: name, Namespace: ns}
	cfg.CurrentContext = name
	path := c.dir.Kubeconfig(id.user)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// APIServerURL is the API server's address.
func (c *Cluster) APIServerURL() string {
	return fmt.Sprintf("https://127.0.0.1:%d", c.state.Ports.APIServer)
}

// AuditPolicy is the API server's audit policy (docs/security.md gives it to
// users; a test keeps the two the same).
const AuditPolicy = `# Written by kpf-sandbox: port-forward and exec sessions at Metadata level,
# nothing else, so the log stays small and easy to read in tests.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["pods/portforward", "pods/exec", "pods/attach"]
- level: None
`

func (c *Cluster) writeAuditPolicy() (string, error) {
	p := c.dir.path("audit-policy.yaml")
	return p, os.WriteFile(p, []byte(AuditPolicy), 0o600)
}

// readRules are what dev and viewer may read in DevNamespace.
var readRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods", "services", "endpoints", "replicationcontrollers"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"apps"}, Resources: []string{"deployments", "replicasets", "statefulsets", "daemonsets"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"batch"}, Resources: []string{"jobs"}, Verbs: []string{"get", "list", "watch"}},
}

// bootstrap creates the namespaces and RBAC objects the users need.
func (c *Cluster) bootstrap(ctx context.Context) error {
	cs, err := c.Client(UserAdmin)
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DevNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	devRules := append([]rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods/portforward"}, Verbs: []string{"create", "get"}},
	}, readRules...)
	roles := []struct {
		name  string
		user  string
		rules []rbacv1.PolicyRule
	}{
		{"kpf-sandbox-dev", "dev", devRules},
		{"kpf-sandbox-viewer", "viewer", readRules},
	}
	for _, r := range roles {
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: r.name, Namespace: DevNamespace}, Rules: r.rules}
		if err := upsert(ctx, cs, role); err != nil {
			return err
		}
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: r.name, Namespace: DevNamespace},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.name},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: r.user}},
		}
		if err := upsert(ctx, cs, rb); err != nil {
			return err
		}
	}
	return nil
}

func upsert(ctx context.Context, cs kubernetes.Interface, obj any) error {
	var err error
	switch o := obj.(type) {
	case *rbacv1.Role:
		_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			_, err = cs.RbacV1().Roles(o.Namespace).Update(ctx, o, metav1.UpdateOptions{})
		}
	case *rbacv1.RoleBinding:
		_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil // role refs are immutable; subjects are fixed
		}
	}
	return err
}

// Client returns a clientset for one of the sandbox's identities.
func (c *Cluster) Client(user string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.dir.Kubeconfig(user))
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 200, 400
	return kubernetes.NewForConfig(cfg)
}

func (c *Cluster) pkiFile(name string) string { return filepath.Join(string(c.dir), "pki", name) }
