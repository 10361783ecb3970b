package daemon

import (
	"runtime/debug"
	"sync"
	"time"
)

// settleAfter is how long the forwards must have been quiet (no state,
// health or pod change) before the daemon hands the memory their changes
// left behind back to the system.
const settleAfter = 5 * time.Second

// settler returns garbage to the system once the forwards settle: opening
// 200 forwards allocates tens of MiB that are garbage once they are up,
// and an idle daemon allocates too little for the collector to run (Go
// forces a collection only every 2 minutes) or the scavenger to return
// them soon: the daemon held them, idle, as if each forward needed them.
type settler struct {
	mu    sync.Mutex
	timer *time.Timer
	free  func()        // debug.FreeOSMemory; tests count calls
	after time.Duration // settleAfter; tests wait less
}

// changed notes a change of the forwards: free runs once they have been
// quiet for settleAfter.
func (st *settler) changed() {
	st.mu.Lock()
	defer st.mu.Unlock()
	after := st.after
	if after == 0 {
		after = settleAfter
	}
	if st.timer != nil {
		st.timer.Reset(after)
		return
	}
	free := st.free
	if free == nil {
		free = debug.FreeOSMemory
	}
	st.timer = time.AfterFunc(after, free)
}

// stop stops a pending free.
func (st *settler) stop() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.timer != nil {
		st.timer.Stop()
	}
}
