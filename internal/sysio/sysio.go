// Package sysio makes the system calls of kpf's data path on non-blocking
// sockets: reads, writes and peeks that return at once, with data or
// EAGAIN.
//
// On Linux they are made without telling the Go scheduler (RawSyscall).
// A call that cannot block needs no hand-off of its P, and skipping the
// scheduler's bookkeeping matters more than it seems: the first
// scheduler-visible system call after the process was idle wakes the
// runtime's monitor thread (sysmon), which then polls every 20 µs until
// the process is idle again. A forwarded connection wakes kpf three or
// four times (accept, the pod's answer, the client's close, the pod's), so
// about 40% of kpf's context switches per connection were sysmon's. Only
// the calls that must wait (accept, close) still go through the
// scheduler.
//
// A call a signal interrupts (EINTR) is made again. Every function here
// requires a non-blocking descriptor: a raw call that
// blocked would hold its thread and its P for as long as it waited.
package sysio
