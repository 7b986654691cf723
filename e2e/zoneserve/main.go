// Command zoneserve serves a DNSBL zone from a file of listings with the
// zone package, as the daemon will: the speed comparison (e2e/zoneperf.sh)
// runs it beside rbldnsd. Each line of the file is
//
//	PREFIX CATEGORY [REASON...]
//
// It prints "ready ADDRESS" once it answers, and stops on SIGTERM. With
// -rbldnsd FILE it writes the same zone as an rbldnsd file there instead
// and exits, so both servers of the comparison serve one zone.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/blmilter/blmilter/zone"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5300", "UDP and TCP address")
	name := flag.String("zone", "bl.example.org", "the zone's name")
	file := flag.String("listings", "", "the listings file")
	workers := flag.Int("workers", 0, "UDP readers (0: the zone package's default, one per CPU but one)")
	rbldnsd := flag.String("rbldnsd", "", "write the zone as an rbldnsd file here, and exit")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var err error
	if *rbldnsd != "" {
		err = export(*rbldnsd, *name, *file)
	} else {
		err = run(*listen, *name, *file, *workers, log)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "zoneserve:", err)
		os.Exit(1)
	}
}

func run(listen, name, file string, workers int, log *slog.Logger) error {
	ls, err := readListings(file)
	if err != nil {
		return err
	}
	srv, err := zone.New(zone.Options{
		Zone:    perfZone(name),
		Workers: workers,
		Logger:  log,
	})
	if err != nil {
		return err
	}
	start := time.Now()
	srv.Update(ls)
	fmt.Fprintf(os.Stderr, "zoneserve: %d listings loaded in %v\n", len(ls), time.Since(start).Round(time.Millisecond))
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(pc, l) }()
	fmt.Printf("ready %s\n", pc.LocalAddr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-done:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// perfZone is the zone the comparison serves, besides its listings.
func perfZone(name string) zone.Zone {
	return zone.Zone{
		Name:      name,
		TTL:       5 * time.Minute,
		NS:        []string{"ns1.example.net."},
		SOA:       zone.SOA{Refresh: time.Hour, Retry: 10 * time.Minute, Expire: 7 * 24 * time.Hour, Minimum: 5 * time.Minute},
		Codes:     map[string]netip.Addr{"zombie": netip.MustParseAddr("127.0.0.4"), "dynamic": netip.MustParseAddr("127.0.0.10"), "spam-source": netip.MustParseAddr("127.0.0.2")},
		TXT:       "{category}: {reason}; see {url}",
		PublicURL: "https://lookup.example.org",
	}
}

// export writes the zone with the listings of file as an rbldnsd file at
// path.
func export(path, name, file string) error {
	ls, err := readListings(file)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	if _, err := zone.Export(bw, zone.FormatRbldnsd, perfZone(name), ls, zone.State{}); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func readListings(path string) ([]zone.Listing, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []zone.Listing
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if len(fields) < 2 {
			return nil, fmt.Errorf("%s:%d: want PREFIX CATEGORY [REASON]", path, n)
		}
		p, err := netip.ParsePrefix(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, zone.Listing{Prefix: p, Category: fields[1], Reason: strings.Join(fields[2:], " ")})
	}
	return out, sc.Err()
}
