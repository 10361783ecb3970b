//go:build !linux || kpf_portable

package sysio

import "errors"

// Raw is false: this build moves data with the net package's own reads
// and writes (through the Go scheduler), on every platform Go supports.
// The callers check Raw and never call the functions below.
const Raw = false

var errPortable = errors.New("sysio: raw system calls are not in this build (kpf_portable, or not Linux)")

// Read is not available in this build.
func Read(int, []byte) (int, error) { return 0, errPortable }

// Write is not available in this build.
func Write(int, []byte) (int, error) { return 0, errPortable }

// Writev is not available in this build.
func Writev(int, [][]byte) (int, error) { return 0, errPortable }

// Peek is not available in this build.
func Peek(int) error { return errPortable }
