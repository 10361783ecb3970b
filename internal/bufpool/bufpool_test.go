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

func TestReuse(t *testing.T) {
	p := Get(10000)
	(*p)[0] = 42
	Put(p)
	q := Get(9000)
	if len(*q) != 9000 || cap(*q) != 16384 {
		t.Fatalf("len %d cap %d", len(*q), cap(*q))
	}
	Put(q)
	Put(nil)                // no-op
	b := make([]byte, 5000) // not from the pool: odd capacity
	Put(&b)                 // ignored
	if r := Get(5000); cap(*r) != 8192 {
		t.Fatalf("cap %d", cap(*r))
	}
}

func TestGetAllocatesNothingWhenWarm(t *testing.T) {
	Put(Get(32 << 10))
	if n := testing.AllocsPerRun(100, func() { Put(Get(32 << 10)) }); n > 0 {
		t.Fatalf("%v allocations per Get/Put", n)
	}
}
