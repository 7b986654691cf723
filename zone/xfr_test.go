package zone

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var testKey = &TSIG{Name: "xfr.example.org.", Algorithm: "hmac-sha256", Secret: []byte("0123456789abcdef0123456789abcdef")}

// transferIn runs AXFR or IXFR (from serial) and returns every record
// received, and how many messages carried them.
func transferIn(t testing.TB, addr string, qtype uint16, serial uint32, key *TSIG) ([]dns.RR, int, error) {
	t.Helper()
	m := new(dns.Msg)
	if qtype == dns.TypeIXFR {
		m.SetIxfr("bl.example.org.", serial, "ns1.example.org.", "hostmaster.example.org.")
	} else {
		m.SetAxfr("bl.example.org.")
	}
	tr := &dns.Transfer{DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second}
	if key != nil {
		m.SetTsig(key.Name, dns.Fqdn(key.Algorithm), 300, time.Now().Unix())
		tr.TsigSecret = map[string]string{key.Name: base64.StdEncoding.EncodeToString(key.Secret)}
	}
	ch, err := tr.In(m, addr)
	if err != nil {
		return nil, 0, err
	}
	var out []dns.RR
	msgs := 0
	for env := range ch {
		if env.Error != nil {
			return out, msgs, env.Error
		}
		msgs++
		out = append(out, env.RR...)
	}
	return out, msgs, nil
}

// rrSet is records as text, for comparing zones.
func rrSet(rrs []dns.RR) map[string]bool {
	out := map[string]bool{}
	for _, rr := range rrs {
		out[strings.ToLower(rr.String())] = true
	}
	return out
}

func diffSets(a, b map[string]bool) string {
	var lines []string
	for k := range a {
		if !b[k] {
			lines = append(lines, "- "+k)
		}
	}
	for k := range b {
		if !a[k] {
			lines = append(lines, "+ "+k)
		}
	}
	slices.Sort(lines)
	if len(lines) > 20 {
		lines = append(lines[:20], fmt.Sprintf("... %d more", len(lines)-20))
	}
	return strings.Join(lines, "\n")
}

// zoneRecords is what an AXFR of the server's current snapshot must hold.
func zoneRecords(s *Server) []dns.RR {
	sn := s.snap.Load()
	out := []dns.RR{sn.soa}
	sn.eachRecord(func(rr dns.RR) bool { out = append(out, rr); return true })
	return out
}

func TestAXFR(t *testing.T) {
	opts := testOptions()
	var ls []Listing
	// Enough records for several messages.
	for i := range 3000 {
		ls = append(ls, Listing{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 256), byte(i)}), 32), Category: "zombie", Reason: fmt.Sprint("case ", i)})
	}
	ls = append(ls, serverListings...)
	ts := startServer(t, opts, ls)

	rrs, msgs, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if msgs < 2 {
		t.Errorf("%d records came in %d message, want several", len(rrs), msgs)
	}
	first, ok1 := rrs[0].(*dns.SOA)
	last, ok2 := rrs[len(rrs)-1].(*dns.SOA)
	if !ok1 || !ok2 || first.Serial != ts.Serial() || last.Serial != ts.Serial() {
		t.Fatalf("AXFR does not start and end with the SOA: %v ... %v", rrs[0], rrs[len(rrs)-1])
	}
	if got, want := rrSet(rrs), rrSet(zoneRecords(ts.Server)); len(diffSets(got, want)) > 0 {
		t.Errorf("AXFR differs from the zone:\n%s", diffSets(got, want))
	}
	// Every listing is in it.
	if want := 2*(3000+len(serverListings)) - 2; len(rrs) < want {
		t.Errorf("%d records, want at least %d", len(rrs), want)
	}
	if ts.Stats().AXFR != 1 {
		t.Errorf("AXFR count %d, want 1", ts.Stats().AXFR)
	}
}

func TestTransferAccess(t *testing.T) {
	t.Run("not from a transfer network", func(t *testing.T) {
		opts := testOptions()
		opts.Transfer = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		ts := startServer(t, opts, serverListings)
		for _, qt := range []uint16{dns.TypeAXFR, dns.TypeIXFR} {
			_, _, err := transferIn(t, ts.addr, qt, 1, nil)
			if err == nil || !strings.Contains(err.Error(), "rcode: 5") {
				t.Errorf("%s: err %v, want rcode 5 (REFUSED)", dns.TypeToString[qt], err)
			}
		}
		if ts.Stats().XFRRefused != 2 {
			t.Errorf("XFRRefused %d, want 2", ts.Stats().XFRRefused)
		}
		if !strings.Contains(ts.log.String(), "refused a zone transfer") {
			t.Error("the refusal is not logged")
		}
	})
	t.Run("no transfer networks: nobody", func(t *testing.T) {
		opts := testOptions()
		opts.Transfer = nil
		ts := startServer(t, opts, serverListings)
		if _, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, nil); err == nil {
			t.Error("AXFR allowed with no transfer networks")
		}
	})
	t.Run("TSIG", func(t *testing.T) {
		opts := testOptions()
		opts.TSIG = testKey
		ts := startServer(t, opts, serverListings)
		if _, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, nil); err == nil || !strings.Contains(err.Error(), "rcode: 5") {
			t.Errorf("unsigned AXFR: err %v, want rcode 5 (REFUSED)", err)
		}
		wrong := &TSIG{Name: testKey.Name, Algorithm: testKey.Algorithm, Secret: []byte("another secret of enough bytes!!")}
		if _, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, wrong); err == nil {
			t.Error("AXFR signed with the wrong secret succeeded")
		}
		otherName := &TSIG{Name: "other.example.org.", Algorithm: testKey.Algorithm, Secret: testKey.Secret}
		if _, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, otherName); err == nil {
			t.Error("AXFR signed with an unknown key succeeded")
		}
		rrs, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, testKey)
		if err != nil {
			t.Fatalf("signed AXFR: %v", err)
		}
		if got, want := rrSet(rrs), rrSet(zoneRecords(ts.Server)); len(diffSets(got, want)) > 0 {
			t.Errorf("signed AXFR differs:\n%s", diffSets(got, want))
		}
		if ts.Stats().TSIGRefused != 2 {
			t.Errorf("TSIGRefused %d, want 2", ts.Stats().TSIGRefused)
		}
		// A signed plain query gets a signed answer.
		for _, network := range []string{"udp", "tcp"} {
			m := new(dns.Msg) // signing takes the TSIG off the message: one each
			m.SetQuestion("bl.example.org.", dns.TypeSOA)
			m.SetTsig(testKey.Name, dns.HmacSHA256, 300, time.Now().Unix())
			c := &dns.Client{Net: network, TsigSecret: map[string]string{testKey.Name: base64.StdEncoding.EncodeToString(testKey.Secret)}, Timeout: 2 * time.Second}
			r, _, err := c.Exchange(m, ts.addr)
			if err != nil {
				t.Fatalf("%s: signed SOA query: %v", network, err)
			}
			if r.IsTsig() == nil || len(r.Answer) != 1 {
				t.Errorf("%s: answer to a signed query: %v", network, r)
			}
		}
	})
}

// applyIXFR applies an IXFR answer (RFC 1995 section 4) to the records of
// a zone and returns the result; a full-zone answer replaces them.
func applyIXFR(t *testing.T, zone map[string]bool, rrs []dns.RR) (map[string]bool, bool) {
	t.Helper()
	head, ok := rrs[0].(*dns.SOA)
	if !ok {
		t.Fatalf("IXFR does not start with an SOA: %v", rrs[0])
	}
	if len(rrs) == 1 {
		return zone, true
	}
	if _, ok := rrs[1].(*dns.SOA); !ok {
		return rrSet(rrs[:len(rrs)-1]), false // the whole zone
	}
	out := map[string]bool{}
	for k := range zone {
		out[k] = true
	}
	i := 1
	for i < len(rrs)-1 {
		from := rrs[i].(*dns.SOA)
		delete(out, strings.ToLower(from.String()))
		i++
		for ; i < len(rrs) && rrs[i].Header().Rrtype != dns.TypeSOA; i++ {
			if !out[strings.ToLower(rrs[i].String())] {
				t.Errorf("IXFR deletes %v, which the zone does not hold", rrs[i])
			}
			delete(out, strings.ToLower(rrs[i].String()))
		}
		to := rrs[i].(*dns.SOA)
		out[strings.ToLower(to.String())] = true
		i++
		for ; i < len(rrs) && rrs[i].Header().Rrtype != dns.TypeSOA; i++ {
			out[strings.ToLower(rrs[i].String())] = true
		}
	}
	if tail := rrs[len(rrs)-1].(*dns.SOA); tail.Serial != head.Serial {
		t.Errorf("IXFR ends with serial %d, starts with %d", tail.Serial, head.Serial)
	}
	return out, true
}

func TestIXFR(t *testing.T) {
	opts := testOptions()
	opts.TSIG = testKey
	ts := startServer(t, opts, serverListings)
	s1 := ts.Serial()
	z1, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, testKey)
	if err != nil {
		t.Fatal(err)
	}

	// Two changes: one added, one removed, one changed category.
	ls2 := slices.Clone(serverListings)
	ls2 = append(ls2, Listing{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Category: "zombie", Reason: "new"})
	s2, changed := ts.Update(ls2)
	if !changed || !serialAfter(s2, s1) {
		t.Fatalf("serial %d after %d, changed %v", s2, s1, changed)
	}
	ls3 := slices.Clone(ls2[1:])
	ls3[0].Category = "zombie"
	s3, _ := ts.Update(ls3)
	z3, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, testKey)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("from the first serial", func(t *testing.T) {
		rrs, _, err := transferIn(t, ts.addr, dns.TypeIXFR, s1, testKey)
		if err != nil {
			t.Fatal(err)
		}
		got, incremental := applyIXFR(t, rrSet(z1), rrs)
		if !incremental {
			t.Error("the whole zone, where the journal holds the changes")
		}
		if d := diffSets(got, rrSet(z3)); d != "" {
			t.Errorf("IXFR applied to serial %d is not serial %d:\n%s", s1, s3, d)
		}
		if len(rrs) > 40 {
			t.Errorf("%d records for three changed listings", len(rrs))
		}
	})
	t.Run("from the second serial", func(t *testing.T) {
		z2 := zoneRecordsAt(t, opts, ls2, s2)
		rrs, _, err := transferIn(t, ts.addr, dns.TypeIXFR, s2, testKey)
		if err != nil {
			t.Fatal(err)
		}
		got, incremental := applyIXFR(t, rrSet(z2), rrs)
		if !incremental {
			t.Error("the whole zone, where the journal holds the change")
		}
		if d := diffSets(got, rrSet(z3)); d != "" {
			t.Errorf("IXFR applied to serial %d is not serial %d:\n%s", s2, s3, d)
		}
	})
	t.Run("up to date", func(t *testing.T) {
		rrs, _, err := transferIn(t, ts.addr, dns.TypeIXFR, s3, testKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(rrs) != 1 || rrs[0].(*dns.SOA).Serial != s3 {
			t.Errorf("IXFR from the current serial: %v, want the SOA alone", rrs)
		}
	})
	t.Run("unknown serial: the whole zone", func(t *testing.T) {
		rrs, _, err := transferIn(t, ts.addr, dns.TypeIXFR, s1-100, testKey)
		if err != nil {
			t.Fatal(err)
		}
		got, incremental := applyIXFR(t, nil, rrs)
		if incremental {
			t.Error("incremental from a serial the journal never had")
		}
		if d := diffSets(got, rrSet(z3)); d != "" {
			t.Errorf("full IXFR differs from AXFR:\n%s", d)
		}
	})
	t.Run("over UDP: the SOA", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetIxfr("bl.example.org.", s1, "ns1.example.org.", "hostmaster.example.org.")
		m.SetTsig(testKey.Name, dns.HmacSHA256, 300, time.Now().Unix())
		c := &dns.Client{Net: "udp", TsigSecret: map[string]string{testKey.Name: base64.StdEncoding.EncodeToString(testKey.Secret)}, Timeout: 2 * time.Second}
		r, _, err := c.Exchange(m, ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Answer) != 1 || r.Answer[0].(*dns.SOA).Serial != s3 {
			t.Errorf("IXFR over UDP: %v", r)
		}
	})
	t.Run("journal bound", func(t *testing.T) {
		opts := testOptions()
		opts.JournalRecords = 10
		ts := startServer(t, opts, serverListings)
		first := ts.Serial()
		for i := range 5 {
			ts.Update(append(slices.Clone(serverListings), Listing{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 32), Category: "zombie"}))
		}
		rrs, _, err := transferIn(t, ts.addr, dns.TypeIXFR, first, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, incremental := applyIXFR(t, nil, rrs); incremental {
			t.Error("incremental from a serial the journal dropped")
		}
		if ts.Stats().IXFRFull != 1 {
			t.Errorf("IXFRFull %d, want 1", ts.Stats().IXFRFull)
		}
	})
}

// zoneRecordsAt builds the records of listings at serial, as a server
// would hold them.
func zoneRecordsAt(t *testing.T, opts Options, ls []Listing, serial uint32) []dns.RR {
	t.Helper()
	opts.Serial = serial
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	b := s.opts.Zone.compile(s.tpl, ls, time.Now())
	s.snap.Store(s.opts.Zone.newSnapshot(&s.apex, b, serial, nil))
	return zoneRecords(s)
}
