package main

import (
	"syscall"
	"unsafe"
)

// clockMonotonic is CLOCK_MONOTONIC, the clock Python's time.monotonic_ns()
// reads on Linux: one clock for every process of the machine, so a stamp
// written by the worker can be compared with a reading taken here.
const clockMonotonic = 1

// monoNs reads CLOCK_MONOTONIC in nanoseconds.
func monoNs() int64 {
	var ts syscall.Timespec
	_, _, errno := syscall.RawSyscall(
		syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		panic("clock_gettime(CLOCK_MONOTONIC) failed: " + errno.Error())
	}
	return ts.Sec*1_000_000_000 + ts.Nsec
}

// stampOf parses the decimal number a stamping worker puts at the start
// of a chunk's text ("123456789 "); ok is false when there is none.
func stampOf(text []byte) (ns int64, ok bool) {
	for _, c := range text {
		if c < '0' || c > '9' {
			break
		}
		ns = ns*10 + int64(c-'0')
		ok = true
	}
	return ns, ok
}

// cpuSeconds is the user and system CPU this process has used so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}
