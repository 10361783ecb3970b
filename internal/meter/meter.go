// Package meter counts a connection's bytes as they move, into its
// forward's totals, and shows them to a tap (the HTTP log) on the way. It
// is what status, metrics and the audit trail read; it never changes or
// keeps the bytes.
package meter

import (
	"sync/atomic"
	"time"
)

// Meter counts bytes as they move, so that totals and rates are live
// while a connection lasts (tunnel.Stats counts them when it ends). A meter made
// with Child adds to its parent as well: a connection's meter feeds its
// forward's. A nil *Meter counts nothing.
type Meter struct {
	In, Out atomic.Int64 // to the local client, and to the pod
	parent  *Meter
	tap     Tap
	pod     atomic.Pointer[string]
	// first is when the first byte reached the client (unix ns); 0 before.
	first atomic.Int64
}

// Tap sees a connection's bytes as they move, without keeping or
// changing them (the HTTP log): In what reaches the client, Out what is
// sent to the pod. Each is called from one goroutine at a time.
type Tap interface {
	In(p []byte)
	Out(p []byte)
}

// Child is a meter that also counts into m.
func (m *Meter) Child() *Meter { return &Meter{parent: m} }

// SetTap makes m show its bytes to t; set it before the connection runs.
func (m *Meter) SetTap(t Tap) { m.tap = t }

// SetPod records the pod that carries the connection.
func (m *Meter) SetPod(name string) {
	if m != nil {
		m.pod.Store(&name)
	}
}

// Pod is the pod that carries the connection, "" before one was chosen.
func (m *Meter) Pod() string {
	if p := m.pod.Load(); p != nil {
		return *p
	}
	return ""
}

// WroteIn counts (and shows a tap) p, written to the local client.
func (m *Meter) WroteIn(p []byte) {
	if m == nil {
		return
	}
	if m.tap != nil {
		m.tap.In(p)
	}
	m.AddIn(int64(len(p)))
}

// WroteOut counts (and shows a tap) p, sent to the pod; call it before
// sending, so that a tap sees a request before its answer.
func (m *Meter) WroteOut(p []byte) {
	if m == nil {
		return
	}
	if m.tap != nil {
		m.tap.Out(p)
	}
	m.AddOut(int64(len(p)))
}

// ShowOut shows p, about to be sent to the pod, to the tap without
// counting it: for a writer that counts what it managed to send.
func (m *Meter) ShowOut(p []byte) {
	if m != nil && m.tap != nil {
		m.tap.Out(p)
	}
}

// AddIn counts n bytes written to the local client.
func (m *Meter) AddIn(n int64) {
	for ; m != nil; m = m.parent {
		if m.In.Add(n) == n && n > 0 {
			m.first.CompareAndSwap(0, time.Now().UnixNano())
		}
	}
}

// AddOut counts n bytes sent to the pod.
func (m *Meter) AddOut(n int64) {
	for ; m != nil; m = m.parent {
		m.Out.Add(n)
	}
}

// FirstIn is when the first byte reached the client, zero before (and
// for a nil meter).
func (m *Meter) FirstIn() time.Time {
	if m == nil {
		return time.Time{}
	}
	if ns := m.first.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}
