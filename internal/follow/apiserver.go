package follow

import (
	"context"
	"time"

	"k8s.io/client-go/rest"
)

// WatchAPIServer probes the API server's /livez every period. Tunnels run
// through the API server, and a silent one (paused, or a dead network path)
// leaves them hanging until TCP gives up, which takes many minutes; after
// bound without an answer, every tunnel is dropped so that new connections
// redial once the API server answers again.
func WatchAPIServer(ctx context.Context, client rest.Interface, f *Follower, period, bound time.Duration) {
	lastOK := time.Now()
	down := false
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, period)
		err := client.Get().AbsPath("/livez").Do(pctx).Error()
		cancel()
		switch {
		case err == nil:
			if down {
				f.o.Log.Info("API server answers again")
				down = false
			}
			lastOK = time.Now()
		case !down && time.Since(lastOK) >= bound:
			down = true
			f.DropTunnels("the API server did not answer for " + time.Since(lastOK).Round(time.Second).String())
		}
	}
}
