package node

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// recorder writes Events about pods as the kubelet's and the scheduler's
// recorders do: one Event per (pod, type, reason, message), whose count
// and last timestamp rise when it repeats. Writes happen in the
// background, in order; a full queue drops events, as client-go's
// broadcaster does, rather than slow a pod down.
type recorder struct {
	client    kubernetes.Interface
	component string
	host      string
	log       *slog.Logger
	queue     chan eventReq
	seen      map[string]*corev1.Event // by key; touched only by run
}

type eventReq struct {
	ref                  corev1.ObjectReference
	typ, reason, message string
	at                   time.Time
}

func newRecorder(client kubernetes.Interface, component, host string, log *slog.Logger) *recorder {
	return &recorder{client: client, component: component, host: host, log: log, queue: make(chan eventReq, 1000), seen: map[string]*corev1.Event{}}
}

// run writes queued events until ctx ends.
func (r *recorder) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-r.queue:
			r.write(ctx, e)
		}
	}
}

// event records an event about a pod; fieldPath names a container
// ("spec.containers{app}") or is empty for the pod. Safe for concurrent use.
func (r *recorder) event(namespace, name string, uid types.UID, fieldPath, typ, reason, format string, args ...any) {
	ref := corev1.ObjectReference{
		Kind: "Pod", APIVersion: "v1", Namespace: namespace, Name: name, UID: uid, FieldPath: fieldPath,
	}
	select {
	case r.queue <- eventReq{ref: ref, typ: typ, reason: reason, message: fmt.Sprintf(format, args...), at: time.Now()}:
	default:
	}
}

func (r *recorder) write(ctx context.Context, e eventReq) {
	key := string(e.ref.UID) + "\x00" + e.ref.FieldPath + "\x00" + e.typ + "\x00" + e.reason + "\x00" + e.message
	events := r.client.CoreV1().Events(e.ref.Namespace)
	if old, ok := r.seen[key]; ok {
		ev := old.DeepCopy()
		ev.Count++
		ev.LastTimestamp = metav1.NewTime(e.at)
		if updated, err := events.Update(ctx, ev, metav1.UpdateOptions{}); err == nil {
			r.seen[key] = updated
			return
		}
		delete(r.seen, key) // expired or deleted: start a new one
	}
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", e.ref.Name, e.at.UnixNano()),
			Namespace: e.ref.Namespace,
		},
		InvolvedObject:      e.ref,
		Reason:              e.reason,
		Message:             e.message,
		Type:                e.typ,
		Source:              corev1.EventSource{Component: r.component, Host: r.host},
		FirstTimestamp:      metav1.NewTime(e.at),
		LastTimestamp:       metav1.NewTime(e.at),
		Count:               1,
		ReportingController: r.reportingController(),
		ReportingInstance:   r.host,
	}
	created, err := events.Create(ctx, ev, metav1.CreateOptions{})
	if err != nil {
		if ctx.Err() == nil {
			r.log.Debug("write event", "reason", e.reason, "err", err)
		}
		return
	}
	if len(r.seen) > 5000 {
		r.seen = map[string]*corev1.Event{}
	}
	r.seen[key] = created
}

func (r *recorder) reportingController() string {
	if r.component == "kubelet" {
		return "kubelet"
	}
	return r.component
}
