package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/sandbox/workload"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BuiltinPrefix marks the images the agent runs itself (see package workload).
const BuiltinPrefix = "kpf.test/"

const (
	sigTerm = syscall.SIGTERM
	sigKill = syscall.SIGKILL
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ctr is one container of a pod; owned by its worker's run goroutine.
type ctr struct {
	w         *podWorker
	spec      corev1.Container
	init      bool
	ephemeral bool // added later through pods/ephemeralcontainers: runs once

	run          int // incremented at each start; stale events carry an old one
	cmd          *exec.Cmd
	pgid         int
	isRunning    bool
	startedAt    time.Time
	finishedAt   time.Time
	everStarted  bool
	exitCode     int32
	termReason   string
	waitReason   string
	waitMessage  string
	lastTerm     *corev1.ContainerStateTerminated
	restarts     int32
	ready        bool
	pullFailures int    // consecutive failed pulls, for the back-off
	pullMsg      string // why the last pull failed
	restartTimer *time.Timer
	stopProbes   context.CancelFunc
}

func newCtr(w *podWorker, spec corev1.Container, init bool) *ctr {
	return &ctr{w: w, spec: spec, init: init, waitReason: "ContainerCreating"}
}

func (c *ctr) running() bool      { return c.isRunning }
func (c *ctr) neverStarted() bool { return !c.everStarted && c.restartTimer == nil }
func (c *ctr) succeeded() bool {
	return c.everStarted && !c.isRunning && c.exitCode == 0 && c.restartTimer == nil
}

// terminal: stopped and not going to be restarted.
func (c *ctr) terminal() bool { return c.everStarted && !c.isRunning && c.restartTimer == nil }

func (c *ctr) start() error {
	c.run++
	c.restartTimer = nil
	if msg := c.pullError(); msg != "" {
		c.pullFailed(msg)
		return nil
	}
	c.pullFailures = 0
	c.w.event(c, corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.spec.Image)
	if c.everStarted {
		c.lastTerm = c.terminated()
		c.restarts++
	}
	c.everStarted = true
	c.ready = false
	argv, err := c.argv()
	if err == nil {
		err = c.exec(argv)
	}
	if err != nil {
		c.isRunning = false
		c.exitCode, c.termReason = 128, "StartError"
		c.waitReason, c.waitMessage = "RunContainerError", err.Error()
		c.finishedAt = time.Now()
		c.w.event(c, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return err
	}
	c.waitReason, c.waitMessage = "", ""
	c.w.event(c, corev1.EventTypeNormal, "Created", "Created container: %s", c.spec.Name)
	c.w.event(c, corev1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	return nil
}

// pullError is why the image cannot be had, as a failed pull would say:
// the sandbox's registry is its built-in kpf.test/* images; any other
// image runs the container's command on this machine, so without one
// there is nothing to run.
func (c *ctr) pullError() string {
	img := c.spec.Image
	if name, ok := strings.CutPrefix(img, BuiltinPrefix); ok {
		name, _, _ = strings.Cut(name, ":")
		if _, ok := workload.Names[name]; !ok {
			return fmt.Sprintf("rpc error: code = NotFound desc = failed to pull and unpack image %q: %s: not found (the sandbox's images: kpf.test/http, echo, bulk, udp-echo)", img, img)
		}
		return ""
	}
	if len(c.spec.Command) == 0 && c.w.a.entrypoint(img) == "" {
		return fmt.Sprintf("image %q: the sandbox pulls no images, it runs local programs: set the container's command (e.g. [redis-server]), use a built-in kpf.test/* image, or load the image with kpf-sandbox image add (a program) or image load (an OCI image layout)", img)
	}
	return ""
}

// pullFailed reports a failed pull as the kubelet does: ErrImagePull, a
// moment later ImagePullBackOff, and another try after a back-off that
// doubles from 2 s to 20 s. The container has not started: no restart.
func (c *ctr) pullFailed(msg string) {
	c.pullFailures++
	c.pullMsg = msg
	c.waitReason, c.waitMessage = "ErrImagePull", msg
	c.w.event(c, corev1.EventTypeNormal, "Pulling", "Pulling image %q", c.spec.Image)
	c.w.event(c, corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", c.spec.Image, msg)
	c.w.event(c, corev1.EventTypeWarning, "Failed", "Error: ErrImagePull")
	run := c.run
	delay := min(time.Second<<min(c.pullFailures, 5), 20*time.Second)
	time.AfterFunc(time.Second, func() { c.w.send(evPullBackOff{c: c, run: run}) })
	c.restartTimer = time.AfterFunc(delay, func() { c.w.send(evRestart{c: c, run: run}) })
}

// pullBackOff: waiting to try the pull again.
func (c *ctr) pullBackOff(ev evPullBackOff) {
	if ev.run != c.run || c.waitReason != "ErrImagePull" {
		return
	}
	c.waitReason = "ImagePullBackOff"
	c.waitMessage = fmt.Sprintf("Back-off pulling image %q: ErrImagePull: %s", c.spec.Image, c.pullMsg)
	c.w.event(c, corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.spec.Image)
	c.w.event(c, corev1.EventTypeWarning, "Failed", "Error: ImagePullBackOff")
}

func (c *ctr) exec(argv []string) error {
	if err := os.MkdirAll(c.w.dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(c.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	env := c.env()
	path := argv[0]
	if !strings.Contains(path, "/") {
		if path, err = lookPath(argv[0], env); err != nil {
			return err
		}
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Env: env, Stdout: logf, Stderr: logf}
	cmd.Dir = c.spec.WorkingDir
	if cmd.Dir == "" {
		cmd.Dir = c.w.dir
	}
	// Own process group so that stopping a container stops its children;
	// killed with the agent so that no container outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.ownResolvConf(cmd); err != nil {
		return err
	}
	// Started from a thread in the pod's network namespace, the process
	// is in it.
	if err := inNetns(c.w.addr.NS, cmd.Start); err != nil {
		return err
	}
	c.cmd, c.pgid = cmd, cmd.Process.Pid
	c.isRunning, c.startedAt = true, time.Now()
	c.w.a.pids.add(c.pgid)
	run := c.run
	go func() {
		err := cmd.Wait()
		c.w.a.pids.remove(cmd.Process.Pid)
		// Children left in the group go with their leader.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		code, reason := exitStatus(err)
		c.w.send(evExit{c: c, code: code, reason: reason, run: run})
	}()
	var pctx context.Context
	pctx, c.stopProbes = context.WithCancel(context.Background())
	c.startProbes(pctx, run, env)
	c.w.log().Info("container started", "container", c.spec.Name, "pid", c.pgid, "argv", strings.Join(argv, " "))
	return nil
}

// ownResolvConf makes the container see its pod's resolv.conf, on a node
// that serves the cluster DNS (see resolv.go).
func (c *ctr) ownResolvConf(cmd *exec.Cmd) error {
	if c.w.addr.NS == "" || !c.w.a.clusterDNS.Load() {
		return nil
	}
	host, _ := os.ReadFile(hostResolvConf)
	path := filepath.Join(c.w.dir, "resolv.conf")
	if err := os.WriteFile(path, []byte(podResolvConf(c.w.pod, host).String()), 0o644); err != nil {
		return err
	}
	cmd.Args = append([]string{c.w.a.cfg.Self, "container-init", path, cmd.Path}, cmd.Args...)
	cmd.Path = c.w.a.cfg.Self
	cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	return nil
}

func exitStatus(err error) (int32, string) {
	if err == nil {
		return 0, "Completed"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int32(ws.Signal()), "Error"
		}
		return int32(ee.ExitCode()), "Error"
	}
	return 128, "Error"
}

func (c *ctr) exited(ev evExit) {
	if ev.run != c.run {
		return
	}
	c.isRunning, c.ready = false, false
	c.exitCode, c.termReason, c.finishedAt = ev.code, ev.reason, time.Now()
	if c.stopProbes != nil {
		c.stopProbes()
	}
	c.w.log().Info("container exited", "container", c.spec.Name, "code", ev.code)
}

func (c *ctr) signal(sig syscall.Signal) {
	if c.isRunning && c.pgid > 0 {
		syscall.Kill(-c.pgid, sig)
	}
}

func (c *ctr) cancelRestart() {
	if c.restartTimer != nil {
		c.restartTimer.Stop()
		c.restartTimer = nil
	}
}

// scheduleRestart restarts after a back-off that doubles from 1 s to 20 s
// (the kubelet's CrashLoopBackOff, shortened for a test cluster), and starts
// again from 1 s after a run of a minute or more.
func (c *ctr) scheduleRestart() {
	delay := time.Second << min(c.restarts, 5)
	if !c.startedAt.IsZero() && c.finishedAt.Sub(c.startedAt) > time.Minute {
		delay = time.Second
	}
	delay = min(delay, 20*time.Second)
	if c.restarts > 0 || c.exitCode != 0 {
		c.waitReason = "CrashLoopBackOff"
		c.waitMessage = fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", delay, c.spec.Name, c.w.name, c.w.namespace, c.w.uid)
		c.w.event(c, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s_%s(%s)", c.spec.Name, c.w.name, c.w.namespace, c.w.uid)
	}
	run := c.run
	c.restartTimer = time.AfterFunc(delay, func() { c.w.send(evRestart{c: c, run: run}) })
}

func (c *ctr) terminated() *corev1.ContainerStateTerminated {
	return &corev1.ContainerStateTerminated{
		ExitCode:    c.exitCode,
		Reason:      c.termReason,
		StartedAt:   metav1.NewTime(c.startedAt),
		FinishedAt:  metav1.NewTime(c.finishedAt),
		ContainerID: c.containerID(),
	}
}

func (c *ctr) containerID() string {
	return fmt.Sprintf("kpf-sandbox://%s-%s-%d", c.w.uid, c.spec.Name, c.run)
}

func (c *ctr) status() corev1.ContainerStatus {
	started := c.isRunning
	cs := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      c.spec.Image,
		RestartCount: c.restarts,
		Ready:        c.ready && c.isRunning,
		Started:      &started,
	}
	switch {
	case c.isRunning:
		cs.ContainerID = c.containerID()
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
	case c.waitReason != "" || c.restartTimer != nil || !c.everStarted:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
		if cs.State.Waiting.Reason == "" {
			cs.State.Waiting.Reason = "ContainerCreating"
		}
		if c.everStarted && c.restartTimer != nil {
			cs.LastTerminationState.Terminated = c.terminated()
		}
	default:
		cs.ContainerID = c.containerID()
		cs.State.Terminated = c.terminated()
	}
	if cs.LastTerminationState.Terminated == nil && c.lastTerm != nil {
		cs.LastTerminationState.Terminated = c.lastTerm
	}
	return cs
}

func (c *ctr) logPath() string { return filepath.Join(c.w.dir, c.spec.Name+".log") }

// argv is the command line: the agent itself for built-in images, else the
// container's command and args with $(VAR) references expanded.
func (c *ctr) argv() ([]string, error) {
	env := envMap(c.env())
	var argv []string
	if strings.HasPrefix(c.spec.Image, BuiltinPrefix) {
		name := strings.TrimPrefix(c.spec.Image, BuiltinPrefix)
		name, _, _ = strings.Cut(name, ":")
		argv = append([]string{c.w.a.cfg.Self, "workload", name}, c.spec.Command...)
	} else if ep := c.w.a.entrypoint(c.spec.Image); ep != "" && len(c.spec.Command) == 0 {
		argv = []string{ep}
	} else {
		if len(c.spec.Command) == 0 {
			return nil, fmt.Errorf("image %q: the sandbox runs no images, only local programs: set the container's command (e.g. [redis-server]) or use a built-in kpf.test/* image", c.spec.Image)
		}
		argv = append(argv, c.spec.Command...)
	}
	argv = append(argv, c.spec.Args...)
	for i := range argv {
		argv[i] = expand(argv[i], env)
	}
	return argv, nil
}

// env is the container's environment: a minimal base, what the sandbox
// tells every container, then the spec's env with $(VAR) expansion.
func (c *ctr) env() []string {
	w := c.w
	var tcp, udp []string
	for _, p := range c.spec.Ports {
		if p.Protocol == corev1.ProtocolUDP {
			udp = append(udp, strconv.Itoa(int(p.ContainerPort)))
		} else {
			tcp = append(tcp, strconv.Itoa(int(p.ContainerPort)))
		}
	}
	env := []string{
		"PATH=" + defaultPath,
		"HOME=" + w.dir,
		"HOSTNAME=" + w.name,
		containerMarker,
		"KPF_POD_ADDR=" + w.addr.Bind().String(),
		"KPF_POD_IP=" + w.addr.Reported.String(),
		"KPF_POD_NAME=" + w.name,
		"KPF_POD_NAMESPACE=" + w.namespace,
		"KPF_CONTAINER_NAME=" + c.spec.Name,
		"KPF_TCP_PORTS=" + strings.Join(tcp, ","),
		"KPF_UDP_PORTS=" + strings.Join(udp, ","),
	}
	m := envMap(env)
	for _, e := range c.spec.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = c.fieldRef(e.ValueFrom.FieldRef.FieldPath)
		} else {
			v = expand(v, m)
		}
		m[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	return env
}

func (c *ctr) fieldRef(path string) string {
	p := c.w.pod
	switch path {
	case "metadata.name":
		return p.Name
	case "metadata.namespace":
		return p.Namespace
	case "metadata.uid":
		return string(p.UID)
	case "spec.nodeName":
		return p.Spec.NodeName
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName
	case "status.podIP", "status.podIPs":
		return c.w.addr.Reported.String()
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1"
	}
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return p.Labels[strings.TrimSuffix(k, "']")]
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return p.Annotations[strings.TrimSuffix(k, "']")]
	}
	return ""
}

func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// expand replaces $(VAR) with its value as the kubelet does: $$ is a
// literal $, and a reference to an undefined variable is left as it is.
func expand(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteByte(s[i])
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func lookPath(name string, env []string) (string, error) {
	path := envMap(env)["PATH"]
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in PATH %s: install it on this machine (the sandbox runs local programs)", name, path)
}
