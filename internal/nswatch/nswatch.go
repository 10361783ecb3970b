// Package nswatch shares one informer per namespace among the users of a
// cluster connection: the first user of a namespace starts its informer,
// the last one to leave stops it. follow's pod watches and discover's
// service watches are both a Set.
package nswatch

import (
	"context"
	"errors"
	"sync"

	"k8s.io/client-go/tools/cache"
)

// ErrStopped is Join's error once the Set is stopped.
var ErrStopped = errors.New("the cluster connection's watches are stopped")

// Open makes a namespace's informer, not yet started, and what its users
// share beside it (state of the watch, say).
type Open[T any] func(namespace string) (cache.SharedIndexInformer, T, error)

// Run runs a namespace's informer until ctx ends: a named function of
// the user's package, so that a goroutine dump says whose watch each is.
type Run func(ctx context.Context, inf cache.SharedIndexInformer)

// Set is the informers of one kind of object, one per namespace.
type Set[T any] struct {
	open Open[T]
	run  Run

	mu      sync.Mutex
	byNS    map[string]*entry[T]
	stopped bool
	runs    sync.WaitGroup // the informers, stopped or not
}

type entry[T any] struct {
	inf    cache.SharedIndexInformer
	val    T
	cancel context.CancelFunc
	users  int
}

// New returns an empty Set whose informers open makes and run runs.
func New[T any](open Open[T], run Run) *Set[T] {
	return &Set[T]{open: open, run: run, byNS: map[string]*entry[T]{}}
}

// Join adds a user of namespace's informer, making and starting it for
// the first. leave removes the user (once; later calls do nothing) and
// stops the informer with the last one.
func (s *Set[T]) Join(namespace string) (inf cache.SharedIndexInformer, val T, leave func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, val, nil, ErrStopped
	}
	e := s.byNS[namespace]
	if e == nil {
		i, v, err := s.open(namespace)
		if err != nil {
			return nil, val, nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		e = &entry[T]{inf: i, val: v, cancel: cancel}
		s.byNS[namespace] = e
		s.runs.Go(func() { s.run(ctx, i) })
	}
	e.users++
	var once sync.Once
	return e.inf, e.val, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			e.users--
			if e.users == 0 {
				e.cancel()
				if s.byNS[namespace] == e {
					delete(s.byNS, namespace)
				}
			}
		})
	}, nil
}

// Stop ends every informer, as when the cluster connection closes, and
// returns once they have stopped; a user still joined then hears nothing
// more, and Join fails with ErrStopped.
func (s *Set[T]) Stop() {
	s.mu.Lock()
	s.stopped = true
	for ns, e := range s.byNS {
		e.cancel()
		delete(s.byNS, ns)
	}
	s.mu.Unlock()
	s.runs.Wait()
}

// Namespaces is how many namespaces are watched now.
func (s *Set[T]) Namespaces() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byNS)
}
