package cluster

import (
	"path/filepath"

	"github.com/kpf-dev/kpf/sandbox/node"
)

func killRecordedContainers(d Dir) { node.KillRecorded(filepath.Join(d.NodeDir(), "container-pgids")) }
