// Package hist is a histogram of durations with fixed buckets, safe for
// concurrent use and cheap to observe (two atomic adds), for the times
// kpf reports as metrics without tying its core to a metrics library.
package hist

import (
	"sync/atomic"
	"time"
)

// Buckets are the upper bounds in seconds, as Prometheus's default ones:
// from 5 ms to 10 s.
var Buckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Histogram counts observations per bucket.
type Histogram struct {
	counts [12]atomic.Uint64 // one per bucket, and +Inf
	sumNs  atomic.Int64
}

// Observe records d.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(Buckets) && s > Buckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

// Snapshot is a histogram at one moment: cumulative counts per upper
// bound (as Prometheus wants them), the total count and the sum.
type Snapshot struct {
	Count   uint64
	Sum     float64 // seconds
	Buckets map[float64]uint64
}

// Snapshot reads h.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Buckets: make(map[float64]uint64, len(Buckets)), Sum: time.Duration(h.sumNs.Load()).Seconds()}
	var cum uint64
	for i, b := range Buckets {
		cum += h.counts[i].Load()
		s.Buckets[b] = cum
	}
	s.Count = cum + h.counts[len(Buckets)].Load()
	return s
}
