// Package benchcpu adds two figures to a benchmark: operations per second,
// and the CPU time of each operation (client and server alike when both
// run in the test's process), which a machine shared with other work
// disturbs less than the rate. It imports nothing of blmilter, so the
// benchmarks of every package can use it, those testkit itself imports
// (dnsbl) included.
package benchcpu

import (
	"syscall"
	"testing"
	"time"
)

// Meter measures from Start to Report.
type Meter struct{ cpu0 time.Duration }

// Start starts a meter; start it after the benchmark's setup.
func Start() Meter { return Meter{cpu0: cpuTime()} }

// Report adds unit+"s/s" and "cpu-µs/"+unit (unit is what one operation
// is: "lookup", "session") to b's figures.
func (m Meter) Report(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit+"s/s")
	}
	b.ReportMetric(float64((cpuTime()-m.cpu0).Microseconds())/float64(b.N), "cpu-µs/"+unit)
}

// cpuTime is the user and system CPU time the process has used; 0 where
// getrusage fails.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
