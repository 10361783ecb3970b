package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type probeKind int

const (
	readiness probeKind = iota
	liveness
)

func (k probeKind) String() string {
	if k == readiness {
		return "readiness"
	}
	return "liveness"
}

// startProbes runs the container's probes until ctx ends. A container with
// no readiness probe is ready once it runs.
func (c *ctr) startProbes(ctx context.Context, run int, env []string) {
	if c.spec.ReadinessProbe == nil {
		c.ready = true
	} else {
		go c.probeLoop(ctx, run, readiness, c.spec.ReadinessProbe, env)
	}
	if c.spec.LivenessProbe != nil {
		go c.probeLoop(ctx, run, liveness, c.spec.LivenessProbe, env)
	}
}

// probed applies a probe's verdict, already debounced by the thresholds.
func (c *ctr) probed(ev evProbe) {
	if ev.run != c.run || !c.isRunning {
		return
	}
	switch ev.kind {
	case readiness:
		if c.ready != ev.ok {
			c.w.log().Info("readiness changed", "container", c.spec.Name, "ready", ev.ok, "detail", ev.msg)
		}
		c.ready = ev.ok
	case liveness:
		if !ev.ok {
			c.w.log().Info("liveness probe failed; restarting container", "container", c.spec.Name, "detail", ev.msg)
			c.signal(sigKill)
		}
	}
}

func (c *ctr) probeLoop(ctx context.Context, run int, kind probeKind, p *corev1.Probe, env []string) {
	period := seconds(p.PeriodSeconds, 10)
	timeout := seconds(p.TimeoutSeconds, 1)
	success, failure := int(max(p.SuccessThreshold, 1)), int(max(p.FailureThreshold, 1))
	if p.FailureThreshold == 0 {
		failure = 3
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(seconds(p.InitialDelaySeconds, 0)):
	}
	okRun, failRun := 0, 0
	verdict := kind == liveness // liveness starts passing, readiness failing
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		err := c.probeOnce(ctx, p, timeout, env)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			okRun, failRun = okRun+1, 0
			if !verdict && okRun >= success {
				verdict = true
				c.w.send(evProbe{c: c, run: run, kind: kind, ok: true})
			}
		} else {
			okRun, failRun = 0, failRun+1
			c.w.event(c, corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", capitalized(kind.String()), err)
			if kind == liveness && failRun >= failure {
				c.w.event(c, corev1.EventTypeNormal, "Killing", "Container %s failed liveness probe, will be restarted", c.spec.Name)
			}
			if (verdict || kind == liveness) && failRun >= failure {
				verdict = false
				c.w.send(evProbe{c: c, run: run, kind: kind, ok: false, msg: err.Error()})
				if kind == liveness {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func seconds(n int32, def int) time.Duration {
	if n <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(n) * time.Second
}

func (c *ctr) probeOnce(ctx context.Context, p *corev1.Probe, timeout time.Duration, env []string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host := c.w.addr.Probe().String()
	switch {
	case p.HTTPGet != nil:
		h := p.HTTPGet
		port, err := c.resolvePort(h.Port)
		if err != nil {
			return err
		}
		if h.Host != "" {
			host = h.Host
		}
		scheme := strings.ToLower(string(h.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := h.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/1.37")
		for _, hh := range h.HTTPHeaders {
			req.Header.Add(hh.Name, hh.Value)
		}
		client := &http.Client{
			Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := c.resolvePort(p.TCPSocket.Port)
		if err != nil {
			return err
		}
		if p.TCPSocket.Host != "" {
			host = p.TCPSocket.Host
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return fmt.Errorf("exec probe has no command")
		}
		path, err := lookPath(p.Exec.Command[0], env)
		if strings.Contains(p.Exec.Command[0], "/") {
			path, err = p.Exec.Command[0], nil
		}
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, path, p.Exec.Command[1:]...)
		cmd.Env, cmd.Dir = env, c.w.dir
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = inNetns(c.w.addr.NS, cmd.Start)
		if err == nil {
			err = cmd.Wait()
		}
		if err != nil {
			return fmt.Errorf("command %q: %v: %s", strings.Join(p.Exec.Command, " "), err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	return fmt.Errorf("probe kind not supported by the sandbox (httpGet, tcpSocket and exec are)")
}

// resolvePort turns a probe's port, a number or a container port name, into
// a number.
func (c *ctr) resolvePort(p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("probe port %q is not a port name of container %s", p.StrVal, c.spec.Name)
}

func capitalized(s string) string { return strings.ToUpper(s[:1]) + s[1:] }
