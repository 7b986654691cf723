package zone

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/store"
)

// benchListings makes n listings the way a real list looks (see
// testkit.ListingPrefixes), in every category.
func benchListings(n int, seed uint64) []Listing {
	cats := []string{"zombie", "dynamic", "spam-source", "open-proxy", "local"}
	out := make([]Listing, n)
	for i, p := range testkit.ListingPrefixes(n, seed) {
		out[i] = Listing{Prefix: p, Category: cats[i%len(cats)], Reason: fmt.Sprintf("evidence %d", i)}
	}
	return out
}

// BenchmarkUpdate is the time to build and publish the zone of 100,000
// listings after one changed.
func BenchmarkUpdate100k(b *testing.B) {
	ls := benchListings(100000, 1)
	s, err := New(testOptions())
	if err != nil {
		b.Fatal(err)
	}
	s.Update(ls)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ls[0].Reason = fmt.Sprint(i)
		s.Update(ls)
	}
}

// BenchmarkMemoryPerListing reports the heap the served zone of 100,000
// listings holds, per listing, after a GC.
func BenchmarkMemoryPerListing(b *testing.B) {
	ls := benchListings(100000, 2)
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := New(testOptions())
		if err != nil {
			b.Fatal(err)
		}
		s.Update(ls)
		runtime.GC()
		runtime.ReadMemStats(&after)
		names, rrs := s.snap.Load().b.tree.records()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(ls)), "bytes/listing")
		b.ReportMetric(float64(names)/float64(len(ls)), "names/listing")
		b.ReportMetric(float64(rrs), "records")
		runtime.KeepAlive(s)
	}
}

// benchQueries are query packets for the listings, half of them listed.
func benchQueries(b *testing.B, ls []Listing, n int) [][]byte {
	rng := rand.New(rand.NewPCG(3, 4))
	out := make([][]byte, n)
	for i := range out {
		var a netip.Addr
		if i%2 == 0 {
			l := ls[rng.IntN(len(ls))]
			a = l.Prefix.Addr()
		} else {
			a = netip.AddrFrom4([4]byte{byte(1 + rng.IntN(223)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		}
		m := new(dns.Msg)
		m.SetQuestion(addrName(a, "bl.example.org."), dns.TypeA)
		m.SetEdns0(1232, false)
		p, err := m.Pack()
		if err != nil {
			b.Fatal(err)
		}
		out[i] = p
	}
	return out
}

// BenchmarkAnswerUDP is the answer path of one UDP query without the
// socket: parse, look up, write the answer.
func BenchmarkAnswerUDP(b *testing.B) { benchAnswer(b, (*Server).answerUDP) }

// BenchmarkAnswerSlowPath is the same through miekg/dns, for comparison.
func BenchmarkAnswerSlowPath(b *testing.B) { benchAnswer(b, (*Server).slowAnswer) }

// benchAnswer answers queries for a zone of 100,000 listings, half of them
// listed, with answer.
func benchAnswer(b *testing.B, answer func(s *Server, req []byte, from netip.AddrPort, local net.Addr, out []byte) []byte) {
	ls := benchListings(100000, 1)
	s, err := New(testOptions())
	if err != nil {
		b.Fatal(err)
	}
	s.Update(ls)
	qs := benchQueries(b, ls, 4096)
	from := netip.MustParseAddrPort("127.0.0.1:5353")
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	out := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if answer(s, qs[i%len(qs)], from, local, out[:0]) == nil {
			b.Fatal("no answer")
		}
	}
}

// BenchmarkAXFR100k transfers the zone of 100,000 listings over loopback
// TCP and reports its size on the wire.
func BenchmarkAXFR100k(b *testing.B) {
	ts := startServer(b, testOptions(), benchListings(100000, 1))
	for range b.N {
		start := time.Now()
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			b.Fatal(err)
		}
		cc := &countingConn{Conn: nc}
		m := new(dns.Msg)
		m.SetAxfr("bl.example.org.")
		tr := &dns.Transfer{Conn: &dns.Conn{Conn: cc}, ReadTimeout: 10 * time.Second}
		ch, err := tr.In(m, ts.addr)
		if err != nil {
			b.Fatal(err)
		}
		records, msgs := 0, 0
		for env := range ch {
			if env.Error != nil {
				b.Fatal(env.Error)
			}
			records += len(env.RR)
			msgs++
		}
		nc.Close()
		b.ReportMetric(float64(records), "records")
		b.ReportMetric(float64(msgs), "messages")
		b.ReportMetric(float64(cc.read)/1e6, "MB")
		b.ReportMetric(time.Since(start).Seconds(), "s/transfer")
	}
}

type countingConn struct {
	net.Conn
	read int
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read += n
	return n, err
}

// BenchmarkStoreChangeToAnswer100k is the time from a change made in
// another process (the command line) to the zone answering it, with
// 100,000 listings in the store: the store's poll, taking the listings,
// the rebuild. Reported as the mean and the worst over b.N changes.
func BenchmarkStoreChangeToAnswer100k(b *testing.B) {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "blmilter.db")
	st, err := store.Open(path, store.Options{PollInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	st.Close()
	// One transaction for the bulk: AddListing commits each on its own.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		b.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range benchListings(100000, 1) {
		if _, err := tx.Exec(`INSERT INTO listings (prefix, category, reason, source, listed_at) VALUES (?, ?, ?, 'bench', ?)`,
			l.Prefix.String(), l.Category, l.Reason, time.Now().UnixNano()); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	db.Close()

	daemon, err := store.Open(path, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer daemon.Close()
	cli, err := store.Open(path, store.Options{PollInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	ts := startServer(b, testOptions(), nil)
	followStore(b, daemon, ts.Server)
	if n := len(daemon.LiveListings()); n != 100000 {
		b.Fatalf("%d listings in the store", n)
	}
	var total, worst time.Duration
	b.ResetTimer()
	for i := range b.N {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		start := time.Now()
		if _, err := cli.AddListing(ctx, store.Listing{Prefix: netip.PrefixFrom(a, 32), Category: "zombie"}); err != nil {
			b.Fatal(err)
		}
		name := addrName(a, "bl.example.org.")
		for dnstest.AnswerA(ask(b, ts.addr, "udp", name, dns.TypeA)) == "" {
			if time.Since(start) > 10*time.Second {
				b.Fatal("not served after 10 s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(start)
		total += took
		worst = max(worst, took)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/change")
	b.ReportMetric(float64(worst.Milliseconds()), "ms-worst")
}
