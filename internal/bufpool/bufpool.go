// Package bufpool hands out byte buffers in power-of-two size classes from
// 4 KiB to 1 MiB, so the data path allocates nothing per frame or per
// read once it is warm, and idle connections hold no buffers at all.
package bufpool

import (
	"math/bits"
	"sync"
)

const (
	minShift = 12 // 4 KiB
	maxShift = 20 // 1 MiB

	// Max is the largest pooled buffer.
	Max = 1 << maxShift
)

var pools [maxShift - minShift + 1]sync.Pool

func class(n int) int {
	if n <= 1<<minShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// Get returns a buffer of length n (capacity of its size class). Buffers
// larger than Max are allocated and are not pooled.
func Get(n int) *[]byte {
	if n > Max {
		b := make([]byte, n)
		return &b
	}
	c := class(n)
	if p, ok := pools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minShift))
	return &b
}

// Put returns a buffer from Get. The caller must not use it afterwards.
func Put(p *[]byte) {
	if p == nil {
		return
	}
	c := cap(*p)
	if c > Max || c < 1<<minShift || c&(c-1) != 0 {
		return
	}
	*p = (*p)[:c]
	pools[class(c)].Put(p)
}
