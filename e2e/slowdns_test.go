package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startSlowList serves DNS on 127.0.0.1 by asking upstream (rbldnsd),
// except that the answers for names under zone wait delay first: a list
// that answers late, which rbldnsd cannot play. It returns its address.
func startSlowList(t testing.TB, upstream, zone string, delay time.Duration) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	suffix := "." + strings.ToLower(dns.Fqdn(zone))
	client := &dns.Client{Timeout: 2 * time.Second}
	handler := func(w dns.ResponseWriter, req *dns.Msg) {
		if len(req.Question) == 1 && strings.HasSuffix(strings.ToLower(req.Question[0].Name), suffix) {
			time.Sleep(delay)
		}
		resp, _, err := client.Exchange(req, upstream)
		if err != nil {
			resp = new(dns.Msg)
			resp.SetRcode(req, dns.RcodeServerFailure)
		}
		w.WriteMsg(resp)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(handler), NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}
