package cluster

import (
	"path/filepath"

	"github.com/kpf-dev/kpf/sandbox/node"
)

// killRecordedContainers stops the containers, and removes the pod network
// namespaces and the Service range's route, that a node agent which did not
// stop cleanly left.
func killRecordedContainers(d Dir) {
	node.KillRecorded(filepath.Join(d.NodeDir(), "container-pgids"))
	node.RemoveStaleNetns()
	node.RemoveServiceRoute()
}
