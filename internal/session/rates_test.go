package session

import (
	"testing"
	"time"
)

// Rates are bytes per second since the last sample at least a second
// old, taken when asked: no timer per forward.
func TestRatesAreMeasuredWhenAsked(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var r rates
	steps := []struct {
		after           time.Duration
		in, out         int64
		rateIn, rateOut int64
	}{
		{0, 0, 0, 0, 0},
		{500 * time.Millisecond, 100, 0, 0, 0},          // not a second yet
		{time.Second, 1000, 500, 1000, 500},             // over the first second
		{1500 * time.Millisecond, 5000, 500, 1000, 500}, // the last second's, until another has passed
		{3 * time.Second, 3000, 500, 1000, 0},           // over the two seconds no one asked
		{4 * time.Second, 3000, 500, 0, 0},              // idle
	}
	for _, s := range steps {
		in, out := r.rate(t0.Add(s.after), s.in, s.out)
		if in != s.rateIn || out != s.rateOut {
			t.Errorf("at %s with %d/%d bytes: rates %d/%d, want %d/%d", s.after, s.in, s.out, in, out, s.rateIn, s.rateOut)
		}
	}
}
