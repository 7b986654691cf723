package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/blmilter/blmilter/zone"
)

// SetZoneStats adds the zone server's series (blmilter_zone_*), read from
// f at each scrape. Call it once, when the zone is served.
func (m *Metrics) SetZoneStats(f func() zone.Stats) {
	m.Registry.MustRegister(newZoneCollector(f))
}

type zoneCollector struct {
	stats                                  func() zone.Stats
	serial, queries, answers, xfrs, notify *prometheus.Desc
	tsigRefused, tcpRefused, panics        *prometheus.Desc
}

func newZoneCollector(f func() zone.Stats) *zoneCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("blmilter_zone_"+name, help, labels, nil)
	}
	return &zoneCollector{
		stats:       f,
		serial:      d("serial", "The serial the zone serves."),
		queries:     d("queries_total", "Queries read, by transport: udp, tcp.", "transport"),
		answers:     d("answers_total", "Answers by kind: listed, nxdomain, nodata, refused (outside the zone), truncated (retry over TCP), formerr, dropped.", "result"),
		xfrs:        d("transfers_total", "Zone transfers: axfr, ixfr, ixfr_full (an IXFR answered with the whole zone), refused, failed.", "result"),
		notify:      d("notify_total", "NOTIFYs to secondaries: acked, given_up.", "result"),
		tsigRefused: d("tsig_refused_total", "Queries whose TSIG did not verify."),
		tcpRefused:  d("tcp_refused_total", "TCP connections closed at once: over the connection limits."),
		panics:      d("panics_total", "Queries dropped by a panic; the server lived on."),
	}
}

func (c *zoneCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.serial, c.queries, c.answers, c.xfrs, c.notify, c.tsigRefused, c.tcpRefused, c.panics} {
		ch <- d
	}
}

func (c *zoneCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.serial, prometheus.GaugeValue, float64(s.Serial))
	counter(c.queries, s.UDPQueries, "udp")
	counter(c.queries, s.TCPQueries, "tcp")
	for _, a := range []struct {
		result string
		v      uint64
	}{{"listed", s.Listed}, {"nxdomain", s.NXDomain}, {"nodata", s.NoData}, {"refused", s.Refused}, {"truncated", s.Truncated}, {"formerr", s.FormErr}, {"dropped", s.Dropped}} {
		counter(c.answers, a.v, a.result)
	}
	for _, x := range []struct {
		result string
		v      uint64
	}{{"axfr", s.AXFR}, {"ixfr", s.IXFR}, {"ixfr_full", s.IXFRFull}, {"refused", s.XFRRefused}, {"failed", s.XFRFailed}} {
		counter(c.xfrs, x.v, x.result)
	}
	counter(c.notify, s.NotifyAcked, "acked")
	counter(c.notify, s.NotifyGivenUp, "given_up")
	counter(c.tsigRefused, s.TSIGRefused)
	counter(c.tcpRefused, s.TCPRefused)
	counter(c.panics, s.Panics)
}
