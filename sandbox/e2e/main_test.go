// Package e2e tests the sandbox itself: its node, pods, port-forward through
// the real API server with both kubectl releases, RBAC, audit and faults.
package e2e

import (
	"testing"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m) }
