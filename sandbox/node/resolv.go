package node

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// Each container sees the resolv.conf the kubelet would write for its pod,
// as a container runtime gives it: its process starts in a mount namespace
// of its own (SysProcAttr.Unshareflags, which Go makes private), as
// `kpf-sandbox container-init RESOLV PROGRAM ARGV...`, which bind-mounts
// the pod's file over /etc/resolv.conf and executes the container's
// program in its place (Go cannot mount between fork and exec).

// hostResolvConf is the node's resolver configuration.
const hostResolvConf = "/etc/resolv.conf"

// resolvConf is a resolv.conf's settings.
type resolvConf struct {
	nameservers, searches []string
	options               []string // "name" or "name:value"
}

func parseResolvConf(b []byte) resolvConf {
	var rc resolvConf
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			rc.nameservers = append(rc.nameservers, f[1])
		case "search", "domain":
			rc.searches = f[1:]
		case "options":
			rc.options = append(rc.options, f[1:]...)
		}
	}
	return rc
}

func (rc resolvConf) String() string {
	var b strings.Builder
	for _, ns := range rc.nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(rc.searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(rc.searches, " "))
	}
	if len(rc.options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(rc.options, " "))
	}
	return b.String()
}

// podResolvConf is the pod's resolv.conf, as the kubelet makes it from its
// dnsPolicy and dnsConfig and the node's own resolv.conf (host):
// ClusterFirst (the default) asks the cluster DNS and searches the pod's
// namespace, then the cluster, then the node's search domains, with
// ndots:5; Default is the node's; None is dnsConfig's alone. dnsConfig's
// nameservers and searches are added, its options replace those of the
// same name.
func podResolvConf(pod *corev1.Pod, host []byte) resolvConf {
	hostRC := parseResolvConf(host)
	var rc resolvConf
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	if policy == corev1.DNSClusterFirst && pod.Spec.HostNetwork {
		policy = corev1.DNSDefault
	}
	switch policy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		rc.nameservers = []string{ClusterDNS}
		rc.searches = append([]string{pod.Namespace + ".svc." + ClusterDomain, "svc." + ClusterDomain, ClusterDomain}, hostRC.searches...)
		rc.options = []string{"ndots:5"}
	case corev1.DNSDefault:
		rc = hostRC
	}
	if c := pod.Spec.DNSConfig; c != nil {
		for _, ns := range c.Nameservers {
			if !slices.Contains(rc.nameservers, ns) {
				rc.nameservers = append(rc.nameservers, ns)
			}
		}
		for _, s := range c.Searches {
			if !slices.Contains(rc.searches, s) {
				rc.searches = append(rc.searches, s)
			}
		}
		for _, o := range c.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			rc.options = slices.DeleteFunc(rc.options, func(x string) bool {
				name, _, _ := strings.Cut(x, ":")
				return name == o.Name
			})
			rc.options = append(rc.options, opt)
		}
	}
	return rc
}

// ContainerInit is `kpf-sandbox container-init RESOLV PROGRAM ARGV...`: in
// the container's new mount namespace, it puts RESOLV over
// /etc/resolv.conf and executes PROGRAM with ARGV. Should the mount fail
// (a node without /etc/resolv.conf), the container says so in its log and
// runs with the node's.
func ContainerInit(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("container-init: want RESOLV PROGRAM ARGV..., got %q", args)
	}
	resolv, prog, argv := args[0], args[1], args[2:]
	if err := unix.Mount(resolv, hostResolvConf, "", unix.MS_BIND, ""); err != nil {
		fmt.Fprintf(os.Stderr, "kpf-sandbox: mount the pod's resolv.conf over %s: %v (the container sees the node's)\n", hostResolvConf, err)
	}
	return unix.Exec(prog, argv, os.Environ())
}
