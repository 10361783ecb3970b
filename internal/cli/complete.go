package cli

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// completionTimeout bounds what one TAB waits for the cluster: on a slow
// or unreachable API server completion offers nothing, promptly.
const completionTimeout = time.Second

// Target kinds as kpf forward takes them; completion offers the long
// names and keeps whichever name the user typed.
var kindNames = map[string]string{
	"pod": "pod", "pods": "pod", "po": "pod",
	"service": "service", "services": "service", "svc": "service",
	"deployment": "deployment", "deployments": "deployment", "deploy": "deployment",
	"replicaset": "replicaset", "replicasets": "replicaset", "rs": "replicaset",
	"statefulset": "statefulset", "statefulsets": "statefulset", "sts": "statefulset",
	"daemonset": "daemonset", "daemonsets": "daemonset", "ds": "daemonset",
	"job": "job", "jobs": "job",
	"replicationcontroller": "replicationcontroller", "replicationcontrollers": "replicationcontroller", "rc": "replicationcontroller",
}

var completionKinds = []string{"pod/", "service/", "deployment/", "statefulset/", "daemonset/", "replicaset/", "job/", "replicationcontroller/"}

// completionCluster connects as the command would, with every request
// bounded by completionTimeout; done releases the connection.
func (g *globals) completionCluster(cmd *cobra.Command) (c *cluster.Conn, ctx context.Context, done func(), ok bool) {
	id, err := g.identity(cmd)
	if err != nil {
		return nil, nil, nil, false
	}
	o := clusterOptions(nil)
	o.Timeout = completionTimeout
	if c, err = cluster.Connect(id, o); err != nil {
		return nil, nil, nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	return c, ctx, func() { cancel(); c.Release() }, true
}

// objects is where completion finds names: a cluster connection's
// clients and namespace.
type objects interface {
	Client() kube.Interface
	Namespace() string
}

// completeForward completes kpf forward's words: TYPE/NAME first, then
// the ports of what it names.
func (g *globals) completeForward(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	c, ctx, cancel, ok := g.completionCluster(cmd)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer cancel()
	if len(args) == 0 {
		return completeTargets(ctx, c, toComplete)
	}
	return completePorts(ctx, c, args[0]), cobra.ShellCompDirectiveNoFileComp
}

func completeTargets(ctx context.Context, c objects, toComplete string) ([]string, cobra.ShellCompDirective) {
	typed, _, hasKind := strings.Cut(toComplete, "/")
	if !hasKind {
		// A bare name is a pod, as in kubectl; or a kind to go on with.
		out := append(slices.Clone(completionKinds), names(ctx, c, "pod")...)
		return filter(out, toComplete), cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	}
	kind, ok := kindNames[strings.ToLower(typed)]
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, n := range names(ctx, c, kind) {
		out = append(out, typed+"/"+n)
	}
	return filter(out, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// names lists the objects of a kind in the namespace in effect.
func names(ctx context.Context, c objects, kind string) []string {
	lo := metav1.ListOptions{}
	ns, cs := c.Namespace(), c.Client()
	var list runtime.Object
	var err error
	switch kind {
	case "pod":
		list, err = cs.CoreV1().Pods(ns).List(ctx, lo)
	case "service":
		list, err = cs.CoreV1().Services(ns).List(ctx, lo)
	case "deployment":
		list, err = cs.AppsV1().Deployments(ns).List(ctx, lo)
	case "statefulset":
		list, err = cs.AppsV1().StatefulSets(ns).List(ctx, lo)
	case "daemonset":
		list, err = cs.AppsV1().DaemonSets(ns).List(ctx, lo)
	case "replicaset":
		list, err = cs.AppsV1().ReplicaSets(ns).List(ctx, lo)
	case "job":
		list, err = cs.BatchV1().Jobs(ns).List(ctx, lo)
	case "replicationcontroller":
		list, err = cs.CoreV1().ReplicationControllers(ns).List(ctx, lo)
	default:
		return nil
	}
	if err != nil {
		return nil
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil
	}
	var out []string
	for _, it := range items {
		if m, err := meta.Accessor(it); err == nil {
			out = append(out, m.GetName())
		}
	}
	return out
}

// completePorts offers the ports of the target: a service's ports (number
// and :name), or the container ports of the pod or of the workload's pod
// template. A UDP port is offered as PORT/udp (and :NAME/udp), which is
// how kpf forwards it.
func completePorts(ctx context.Context, c objects, targetArg string) []string {
	typed, name, hasKind := strings.Cut(targetArg, "/")
	kind := "pod"
	if hasKind {
		kind = kindNames[strings.ToLower(typed)]
	} else {
		name = typed
	}
	ns, cs := c.Namespace(), c.Client()
	var spec *corev1.PodSpec
	switch kind {
	case "service":
		svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		var out []string
		for _, p := range svc.Spec.Ports {
			out = append(out, portWords(p.Port, p.Name, p.Protocol)...)
		}
		return out
	case "pod":
		if p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			spec = &p.Spec
		}
	case "deployment":
		if o, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			spec = &o.Spec.Template.Spec
		}
	case "statefulset":
		if o, err := cs.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			spec = &o.Spec.Template.Spec
		}
	case "daemonset":
		if o, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			spec = &o.Spec.Template.Spec
		}
	case "replicaset":
		if o, err := cs.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			spec = &o.Spec.Template.Spec
		}
	case "job":
		if o, err := cs.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			spec = &o.Spec.Template.Spec
		}
	case "replicationcontroller":
		if o, err := cs.CoreV1().ReplicationControllers(ns).Get(ctx, name, metav1.GetOptions{}); err == nil && o.Spec.Template != nil {
			spec = &o.Spec.Template.Spec
		}
	}
	if spec == nil {
		return nil
	}
	var out []string
	for _, ctr := range spec.Containers {
		for _, p := range ctr.Ports {
			out = append(out, portWords(p.ContainerPort, p.Name, p.Protocol)...)
		}
	}
	return out
}

// portWords are the completions of a port: its number and :name, with
// /udp for a UDP port (SCTP is not forwarded).
func portWords(port int32, name string, proto corev1.Protocol) []string {
	suffix := ""
	switch proto {
	case corev1.ProtocolUDP:
		suffix = "/udp"
	case corev1.ProtocolSCTP:
		return nil
	}
	out := []string{strconv.Itoa(int(port)) + suffix}
	if name != "" {
		out = append(out, ":"+name+suffix)
	}
	return out
}

// completeNamespaces completes -n.
func (g *globals) completeNamespaces(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	c, ctx, cancel, ok := g.completionCluster(cmd)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer cancel()
	l, err := c.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, n := range l.Items {
		out = append(out, n.Name)
	}
	return filter(out, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeKubeconfig completes --context, --cluster and --user from the
// kubeconfig in effect (no API call).
func (g *globals) completeKubeconfig(what string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		id, err := g.identity(cmd)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		kube, err := id.Getter()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		raw, err := kube.ToRawKubeConfigLoader().RawConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		switch what {
		case "context":
			for n := range raw.Contexts {
				out = append(out, n)
			}
		case "cluster":
			for n := range raw.Clusters {
				out = append(out, n)
			}
		case "user":
			for n := range raw.AuthInfos {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return filter(out, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeFileForwards completes the forward names of the file (-f, or
// kpf.yaml here): kpf up and kpf run.
func completeFileForwards(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	file, _ := cmd.Flags().GetString("file")
	path, err := config.Find(file)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	f, err := config.Load(path)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return filter(without(f.Names(), args), toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeDaemonForwards completes the names of the daemon's forwards:
// down, restart, logs.
func completeDaemonForwards(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	st, err := daemon.NewClient(daemon.DefaultHome()).Status(ctx, "")
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, r := range st.Forwards {
		if !slices.Contains(out, r.Name) {
			out = append(out, r.Name)
		}
	}
	return filter(without(out, args), toComplete), cobra.ShellCompDirectiveNoFileComp
}

func filter(words []string, prefix string) []string {
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, prefix) {
			out = append(out, w)
		}
	}
	return out
}

func without(words, taken []string) []string {
	return slices.DeleteFunc(slices.Clone(words), func(w string) bool { return slices.Contains(taken, w) })
}

// registerCompletions wires completion into the command tree.
func (g *globals) registerCompletions(root *cobra.Command) {
	root.RegisterFlagCompletionFunc("namespace", g.completeNamespaces)
	for _, what := range []string{"context", "cluster", "user"} {
		root.RegisterFlagCompletionFunc(what, g.completeKubeconfig(what))
	}
	for _, c := range root.Commands() {
		switch c.Name() {
		case "forward":
			c.ValidArgsFunction = g.completeForward
		case "doctor", "rbac":
			// Like forward (rbac: every word a TYPE/NAME), or a file's
			// forwards with -f.
			rbac := c.Name() == "rbac"
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if f := cmd.Flags().Lookup("file"); f != nil && f.Changed {
					return completeFileForwards(cmd, args, toComplete)
				}
				if rbac {
					args = nil
				}
				return g.completeForward(cmd, args, toComplete)
			}
		case "up", "run":
			c.ValidArgsFunction = completeFileForwards
		case "down", "restart", "logs":
			c.ValidArgsFunction = completeDaemonForwards
		}
		if c.Flags().Lookup("file") != nil {
			c.MarkFlagFilename("file")
		}
	}
}
