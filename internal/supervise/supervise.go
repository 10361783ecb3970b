// Package supervise runs a long-lived unit (a forward of a file, a proxy)
// until its context ends: start it, let it serve, and when it fails, wait
// and start it again. The wait grows with each failure in a row (with
// jitter, so that many units do not retry in step, and capped); an error
// that waiting cannot heal (a bad port spec, Forbidden, a port another
// process holds) waits the long, fixed Permanent time instead. The count
// of failures resets only after a run has served for Stable.
//
// It does not explain errors or keep state for status: the caller hears
// of every wait through a callback and shows it.
package supervise

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Policy says how long to wait between runs.
type Policy struct {
	Initial   time.Duration // the wait after the first failure
	Max       time.Duration // the cap of the growing wait
	Permanent time.Duration // the wait after an error waiting cannot heal
	Stable    time.Duration // a run that served this long resets the count
	Jitter    float64       // each wait is off by up to ± this fraction

	now func() time.Time // time.Now; tests set their own clock
}

// Defaults: a forward whose deployment was scaled to 0 serves within
// about 20 s of a pod being ready again, however long it waited.
func Defaults() Policy {
	return Policy{Initial: time.Second, Max: 20 * time.Second, Permanent: time.Minute, Stable: 30 * time.Second, Jitter: 0.2}
}

// permanentError marks an error that waiting cannot heal.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that waiting cannot heal: the unit is retried
// only every Policy.Permanent (someone may fix its cause meanwhile).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent says whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Retry is a wait between two runs.
type Retry struct {
	Err       error         // why the last run ended
	Permanent bool          // Err cannot heal by waiting
	In        time.Duration // the wait
	Failures  int           // failed runs in a row, this one included
}

// Func is one run of a unit: it serves until ctx ends (then its error does
// not matter) or it fails (an error: it is started again) or it is done
// for good (nil). It calls up once it serves.
type Func func(ctx context.Context, up func()) error

// Run runs fn until ctx ends or fn returns nil, telling wait of every
// wait before the next run. It returns when the last run has returned.
func (p Policy) Run(ctx context.Context, fn Func, wait func(Retry)) {
	now := p.now
	if now == nil {
		now = time.Now
	}
	failures := 0
	for {
		var upAt time.Time
		err := fn(ctx, func() { upAt = now() })
		if ctx.Err() != nil || err == nil {
			return
		}
		if !upAt.IsZero() && now().Sub(upAt) >= p.Stable {
			failures = 0 // it served long enough to count as recovered
		}
		failures++
		r := Retry{Err: err, Permanent: IsPermanent(err), Failures: failures}
		r.In = p.Delay(failures, r.Permanent, rand.Float64())
		wait(r)
		t := time.NewTimer(r.In)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Delay is the wait after failures failed runs in a row: Initial doubled
// per failure up to Max, or Permanent; off by up to ±Jitter, with r in
// [0, 1) picking where.
func (p Policy) Delay(failures int, permanent bool, r float64) time.Duration {
	d := p.Permanent
	if !permanent {
		d = p.Initial
		for i := 1; i < failures && d < p.Max; i++ {
			d *= 2
		}
		d = min(d, p.Max)
	}
	return time.Duration(float64(d) * (1 + p.Jitter*(2*r-1)))
}
