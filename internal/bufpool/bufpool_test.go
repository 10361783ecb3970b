package bufpool

import "testing"

func TestSizes(t *testing.T) {
	for _, tc := range []struct{ n, cap int }{
		{0, 4096}, {1, 4096}, {4096, 4096}, {4097, 8192}, {32 << 10, 32 << 10},
		{32<<10 + 8, 64 << 10}, {256 << 10, 256 << 10}, {Max, Max}, {Max + 1, Max + 1},
	} {
		p := Get(tc.n)
		if len(*p) != tc.n || cap(*p) != tc.cap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tc.n, len(*p), cap(*p), tc.n, tc.cap)
		}
		Put(p)
	}
}

// A buffer put back is handed out again by a Get of its size class (the
// same backing array), at the length asked for; one that is not the pool's
// (a capacity that is no size class) is never taken in. sync.Pool may drop
// a buffer (the race detector drops one Put in four on purpose, and a GC
// empties the pool), so each is tried many times: a pool that reuses
// nothing, or takes in foreign buffers, fails every time.
func TestReuse(t *testing.T) {
	reused := false
	for range 100 {
		p := Get(10000)
		(*p)[0] = 42
		Put(p)
		q := Get(9000) // the same class: 16 KiB
		if len(*q) != 9000 || cap(*q) != 16384 {
			t.Fatalf("Get(9000): len %d cap %d, want 9000 and 16384", len(*q), cap(*q))
		}
		if &(*q)[0] == &(*p)[:1][0] {
			reused = true
			if (*q)[0] != 42 {
				t.Fatal("reused a buffer, but not its bytes: a copy?")
			}
		}
		Put(q)
		if reused {
			break
		}
	}
	if !reused {
		t.Fatal("100 Put/Get rounds of one size class never reused a buffer")
	}

	Put(nil) // a no-op
	foreign := make([]byte, 5000)
	for range 100 {
		Put(&foreign) // not from the pool: its capacity is no size class
		r := Get(5000)
		if cap(*r) != 8192 || &(*r)[0] == &foreign[0] {
			t.Fatalf("Get(5000) after putting a foreign buffer: cap %d, foreign %v", cap(*r), &(*r)[0] == &foreign[0])
		}
		Put(r)
	}
}

func TestGetAllocatesNothingWhenWarm(t *testing.T) {
	Put(Get(32 << 10))
	if n := testing.AllocsPerRun(100, func() { Put(Get(32 << 10)) }); n > 0 {
		t.Fatalf("%v allocations per Get/Put", n)
	}
}
