package cluster

import (
	"testing"
	"time"
)

// Two kpf-sandbox up run at once each started an etcd on one data folder;
// the second must wait for the first and see the state it left.
func TestLockSerialisesAndRereadsState(t *testing.T) {
	dir := Dir(t.TempDir())
	a, err := Open(dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	unlockA, err := a.lock()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 1)
	go func() {
		unlockB, err := b.lock()
		if err != nil {
			t.Error(err)
			got <- -1
			return
		}
		defer unlockB()
		got <- b.state.Ports.APIServer
	}()
	select {
	case <-got:
		t.Fatal("the second lock was taken while the first was held")
	case <-time.After(200 * time.Millisecond):
	}
	a.state.Ports.APIServer = 4242
	if err := dir.Save(a.state); err != nil {
		t.Fatal(err)
	}
	unlockA()
	if port := <-got; port != 4242 {
		t.Fatalf("the second holder saw API server port %d, want the 4242 the first saved", port)
	}
}
