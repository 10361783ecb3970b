package meter

import (
	"testing"
)

type recordTap struct{ in, out []byte }

func (r *recordTap) In(p []byte)  { r.in = append(r.in, p...) }
func (r *recordTap) Out(p []byte) { r.out = append(r.out, p...) }

// A connection's meter counts into its forward's as bytes move, shows
// them to its tap, and remembers when the first byte reached the client.
func TestChildCountsIntoParentAndShowsTap(t *testing.T) {
	var forward Meter
	conn := forward.Child()
	tap := &recordTap{}
	conn.SetTap(tap)
	if !conn.FirstIn().IsZero() {
		t.Fatal("FirstIn set before any byte")
	}
	conn.WroteOut([]byte("GET / HTTP/1.1\r\n\r\n"))
	conn.WroteIn([]byte("HTTP/1.1 200 OK\r\n\r\n"))
	conn.ShowOut([]byte("x"))
	conn.AddOut(1)
	if got, want := string(tap.out), "GET / HTTP/1.1\r\n\r\nx"; got != want {
		t.Errorf("tap saw out %q, want %q", got, want)
	}
	if got, want := string(tap.in), "HTTP/1.1 200 OK\r\n\r\n"; got != want {
		t.Errorf("tap saw in %q, want %q", got, want)
	}
	for name, m := range map[string]*Meter{"connection": conn, "forward": &forward} {
		if in, out := m.In.Load(), m.Out.Load(); in != 19 || out != 19 {
			t.Errorf("%s meter: in %d out %d, want 19 and 19", name, in, out)
		}
		if m.FirstIn().IsZero() {
			t.Errorf("%s meter: FirstIn not set after bytes reached the client", name)
		}
	}
	conn.SetPod("web-1")
	if conn.Pod() != "web-1" || forward.Pod() != "" {
		t.Errorf("pods: connection %q forward %q, want web-1 and none", conn.Pod(), forward.Pod())
	}
}

// A nil meter counts nothing and does not panic: connections without a
// forward's counters pass nil.
func TestNilMeter(t *testing.T) {
	var m *Meter
	m.WroteIn([]byte("a"))
	m.WroteOut([]byte("b"))
	m.ShowOut([]byte("c"))
	m.AddIn(1)
	m.AddOut(1)
	m.SetPod("x")
	if !m.FirstIn().IsZero() {
		t.Fatal("a nil meter has a first byte")
	}
}
