package session

import (
	"errors"
	"testing"
)

// A failed check is ErrUnhealthy, and says only why: the health shown
// beside it says "unhealthy" already.
func TestCheckErrorIsUnhealthyAndSaysOnlyWhy(t *testing.T) {
	cause := errors.New("refused")
	err := unhealthy("port %d: %w", 80, cause)
	if !errors.Is(err, ErrUnhealthy) || !errors.Is(err, cause) {
		t.Fatalf("%v: want ErrUnhealthy and its cause", err)
	}
	if err.Error() != "port 80: refused" {
		t.Fatalf("text %q, want the reason alone", err.Error())
	}
}
