// Package doctor diagnoses a forward end to end, in the order a person
// would work through it: the kubeconfig, the API server, who it says you
// are, RBAC, the target and its pod, each port (through a real tunnel),
// the local side and the transports. Each step reports what it saw and,
// when it fails, the fix. It only reads from the cluster: the only
// requests that create anything are the reviews that ask the API server
// who you are and what you may do, which store nothing.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/target"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
)

// Status is a check's verdict.
type Status string

const (
	OK   Status = "ok"
	Fail Status = "fail"
	Warn Status = "warn"
	Skip Status = "skip" // not run: an earlier step failed
)

// Check is one step's finding.
type Check struct {
	Forward string   `json:"forward,omitempty"` // the forward's name, for a file
	Step    string   `json:"step"`
	Status  Status   `json:"status"`
	Summary string   `json:"summary"`
	Details []string `json:"details,omitempty"`
	Fix     string   `json:"fix,omitempty"`
}

// Cluster is how to reach the cluster, as the forward would.
type Cluster struct {
	Flags *genericclioptions.ConfigFlags
	// Config and Client are nil when the kubeconfig could not be loaded;
	// ConfigErr says why.
	Config    *rest.Config
	ConfigErr error
	Client    kube.Interface
	Objects   target.Getter
	// Explain turns an error from the API or the network into advice (the
	// CLI's words); nil leaves errors as they are.
	Explain func(error) string
	// ExplainTarget does it for a failure to find the target in namespace
	// (close names, namespaces that have it).
	ExplainTarget func(err error, namespace string) string
	// PATH is where exec credential plugins are looked for.
	PATH string
}

// Doctor runs the checks and reports each as it ends.
type Doctor struct {
	Cluster
	// StepTimeout bounds each step that talks to the cluster.
	StepTimeout time.Duration
	// ConnectWait is how long a test connection must stay unrefused to
	// count as accepted: the kubelet reports a refusal at once.
	ConnectWait time.Duration
	Report      func(Check)

	failed    bool
	reachable bool
}

// Reachable reports whether the API server answered CheckCluster.
func (d *Doctor) Reachable() bool { return d.reachable }

// Failed reports whether any check failed.
func (d *Doctor) Failed() bool { return d.failed }

func (d *Doctor) report(c Check) {
	if c.Status == Fail {
		d.failed = true
	}
	d.Report(c)
}

// Cluster checks the kubeconfig, the API server and who it says you are;
// once for every forward of the same identity.
func (d *Doctor) CheckCluster(ctx context.Context) {
	d.report(d.kubeconfig())
	if d.Config == nil {
		d.report(Check{Step: "api-server", Status: Skip, Summary: "skipped: no kubeconfig"})
		return
	}
	c := d.apiServer(ctx)
	d.report(c)
	d.reachable = c.Status != Fail
	if !d.reachable {
		d.report(Check{Step: "identity", Status: Skip, Summary: "skipped: the API server did not answer"})
		return
	}
	d.report(d.whoAmI(ctx))
}

// CheckForward checks one forward: RBAC in its namespace, its target and
// pod, its ports, the local side and the transports.
func (d *Doctor) CheckForward(ctx context.Context, fw config.Forward, s spec.Settings) {
	name := fw.Name
	rep := func(c Check) {
		c.Forward = name
		d.report(c)
	}
	if d.Config == nil || !d.reachable {
		skip := Check{Status: Skip, Summary: "skipped: the cluster is not reachable"}
		for _, step := range []string{"rbac", "target", "ports"} {
			skip.Step = step
			rep(skip)
		}
		rep(d.local(fw))
		skip.Step = "transports"
		rep(skip)
		return
	}
	rep(d.rbac(ctx, fw, s))
	t, c := d.target(ctx, fw)
	rep(c)
	if t == nil || t.Pod == nil {
		rep(Check{Step: "ports", Status: Skip, Summary: "skipped: no pod to test"})
		rep(d.local(fw))
		rep(Check{Step: "transports", Status: Skip, Summary: "skipped: no pod to test"})
		return
	}
	// One tunnel per transport, for the port tests and the transports
	// step alike.
	tn := d.dialBoth(ctx, s, t)
	defer tn.close()
	conn, err := tn.pick(s.Transport)
	for _, c := range d.ports(ctx, fw, t, conn, err) {
		rep(c)
	}
	rep(d.local(fw))
	rep(d.transports(s, tn))
}

// step bounds one step's requests; its error says when the bound ran out.
func (d *Doctor) step(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d.StepTimeout, errStepTimeout{d.StepTimeout})
}

type errStepTimeout struct{ d time.Duration }

func (e errStepTimeout) Error() string { return fmt.Sprintf("no answer within %s", e.d) }

// explain is the advice for err, with a step's timeout named as such.
func (d *Doctor) explain(ctx context.Context, err error) string {
	var st errStepTimeout
	if errors.As(context.Cause(ctx), &st) && ctx.Err() != nil {
		return fmt.Sprintf("%s (%v)", st.Error(), err)
	}
	if d.Explain != nil {
		return d.Explain(err)
	}
	return err.Error()
}
