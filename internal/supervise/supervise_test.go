package supervise

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Initial: time.Second, Max: 20 * time.Second, Permanent: time.Minute, Jitter: 0.2}
	for _, c := range []struct {
		name      string
		failures  int
		permanent bool
		r         float64
		want      time.Duration
	}{
		{"first", 1, false, 0.5, time.Second},
		{"doubles", 3, false, 0.5, 4 * time.Second},
		{"capped", 10, false, 0.5, 20 * time.Second},
		{"many failures stay capped", 1000, false, 0.5, 20 * time.Second},
		{"jitter low", 1, false, 0, 800 * time.Millisecond},
		{"jitter high", 10, false, 0.999999, 24 * time.Second},
		{"permanent", 1, true, 0.5, time.Minute},
		{"permanent does not grow", 7, true, 0.5, time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := p.Delay(c.failures, c.permanent, c.r); got.Round(time.Millisecond) != c.want {
				t.Errorf("Delay(%d, %v, %v) = %s, want %s", c.failures, c.permanent, c.r, got, c.want)
			}
		})
	}
}

var errBroken = errors.New("broken")

// Failures grow the wait; a run that served for Stable resets the count;
// nil ends the loop; the waits say why.
func TestRunBacksOffAndResets(t *testing.T) {
	clock := time.Unix(0, 0)
	p := Policy{Initial: time.Millisecond, Max: 4 * time.Millisecond, Permanent: 2 * time.Millisecond, Stable: time.Minute,
		now: func() time.Time { return clock }}
	runs := 0
	var got []Retry
	p.Run(context.Background(), func(ctx context.Context, up func()) error {
		runs++
		switch runs {
		case 1, 2, 3:
			return errBroken
		case 4: // serves long enough to count as recovered, then fails
			up()
			clock = clock.Add(time.Minute)
			return errBroken
		case 5:
			up() // up, but not for long: no reset
			clock = clock.Add(time.Minute - time.Nanosecond)
			return Permanent(errBroken)
		case 6:
			return errBroken
		}
		return nil
	}, func(r Retry) { got = append(got, r) })
	if runs != 7 {
		t.Fatalf("%d runs, want 7", runs)
	}
	want := []Retry{
		{errBroken, false, time.Millisecond, 1},
		{errBroken, false, 2 * time.Millisecond, 2},
		{errBroken, false, 4 * time.Millisecond, 3},
		{errBroken, false, time.Millisecond, 1}, // reset
		{errBroken, true, 2 * time.Millisecond, 2},
		{errBroken, false, 4 * time.Millisecond, 3},
	}
	if len(got) != len(want) {
		t.Fatalf("waits %+v, want %+v", got, want)
	}
	for i := range want {
		if !errors.Is(got[i].Err, errBroken) || got[i].Permanent != want[i].Permanent || got[i].In != want[i].In || got[i].Failures != want[i].Failures {
			t.Errorf("wait %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// Stopping is prompt during a long wait, and Run returns only after the
// run it started has.
func TestRunStopsDuringAWait(t *testing.T) {
	p := Policy{Initial: time.Hour, Max: time.Hour, Permanent: time.Hour, Stable: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx, func(ctx context.Context, up func()) error { return errBroken }, func(Retry) { close(waiting) })
	}()
	<-waiting
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
}

func TestPermanent(t *testing.T) {
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) is not nil")
	}
	err := Permanent(errBroken)
	if !IsPermanent(err) || !errors.Is(err, errBroken) || err.Error() != "broken" {
		t.Errorf("Permanent(errBroken) = %v", err)
	}
	if IsPermanent(errBroken) {
		t.Error("a plain error is permanent")
	}
}
