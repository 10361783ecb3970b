//go:build !linux

package doctor

import "runtime"

// holder: this system does not tell kpf who listens on a port.
func holder(uint16) (int, string) { return 0, "" }

func holderHint(port uint16) string {
	if runtime.GOOS == "windows" {
		return "netstat -ano | findstr :" + itoa(port) + " shows which"
	}
	return "lsof -nP -iTCP:" + itoa(port) + " -sTCP:LISTEN shows which"
}
