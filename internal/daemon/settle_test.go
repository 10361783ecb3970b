package daemon

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/testnet"
)

// Memory goes back to the system once the forwards have been quiet for a
// while: once per quiet spell, not at each change.
func TestSettlerFreesOncePerQuietSpell(t *testing.T) {
	var frees atomic.Int32
	st := &settler{free: func() { frees.Add(1) }, after: 50 * time.Millisecond}
	defer st.stop()
	for range 5 {
		st.changed() // a burst: 200 forwards turning ready
	}
	testnet.Within(t, 5*time.Second, "a free after the burst", func() bool { return frees.Load() == 1 })
	st.changed() // a pod switch, later
	testnet.Within(t, 5*time.Second, "a free after the next change", func() bool { return frees.Load() == 2 })
}
