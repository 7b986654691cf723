package main

// The zone server as one of serve's servers: [zone] in the config turns it
// on, the store feeds it and keeps its serial, a reload applies its live
// settings. And the zone commands: export for rbldnsd or a primary name
// server, status for what is served.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/signedref"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/zone"
)

// fleetKey reads [fleet] key_file and previous_key_files; nil without a
// key file. A file that cannot be used is a config problem naming its key.
func fleetKey(cfg *config.Config) (*signedref.Key, error) {
	f := &cfg.Fleet
	if f.KeyFile == "" {
		return nil, nil
	}
	read := func(key, path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err == nil {
			var k []byte
			if k, err = signedref.ParseKey(b); err == nil {
				return k, nil
			}
			err = fmt.Errorf("%s: %w", path, err)
		}
		return nil, cfg.Errorf(key, "%v", err)
	}
	current, err := read("fleet.key_file", f.KeyFile)
	if err != nil {
		return nil, err
	}
	var previous [][]byte
	for i, p := range f.PreviousKeyFiles {
		k, err := read(fmt.Sprintf("fleet.previous_key_files[%d]", i), p)
		if err != nil {
			return nil, err
		}
		previous = append(previous, k)
	}
	return signedref.NewKey(current, previous...)
}

// zoneContent is what [zone] publishes besides its listings.
func zoneContent(cfg *config.Config) zone.Zone {
	z := &cfg.Zone
	return zone.Zone{
		Name:  z.Name,
		TTL:   z.TTL.Duration,
		NS:    append([]string(nil), z.NS...),
		Codes: z.CodeAddrs(),
		SOA: zone.SOA{
			MName: z.SOA.MName, RName: z.SOA.RName,
			Refresh: z.SOA.Refresh.Duration, Retry: z.SOA.Retry.Duration,
			Expire: z.SOA.Expire.Duration, Minimum: z.SOA.Minimum.Duration,
		},
		TXT:       z.TXT,
		PublicURL: cfg.Web.PublicURL,
	}
}

// zoneTSIG reads [zone.tsig]'s secret; nil without a key.
func zoneTSIG(cfg *config.Config) (*zone.TSIG, error) {
	k := &cfg.Zone.TSIG
	if k.Name == "" {
		return nil, nil
	}
	b, err := os.ReadFile(k.SecretFile)
	if err == nil {
		var secret []byte
		if secret, err = zone.ParseTSIGSecret(b); err == nil {
			return &zone.TSIG{Name: k.Name, Algorithm: k.Algorithm, Secret: secret}, nil
		}
		err = fmt.Errorf("%s: %w", k.SecretFile, err)
	}
	return nil, cfg.Errorf("zone.tsig.secret_file", "%v", err)
}

// zoneListings are the store's listings in effect, as the zone takes them.
func zoneListings(st *store.Store) []zone.Listing {
	live := st.LiveListings()
	out := make([]zone.Listing, 0, len(live))
	for _, l := range live {
		zl := zone.Listing{Prefix: l.Prefix, Category: l.Category, Reason: l.Reason}
		if l.ExpiresAt != nil {
			zl.Expires = *l.ExpiresAt
		}
		out = append(out, zl)
	}
	return out
}

// zoneSockets are the UDP and TCP sockets of every [zone] listen address.
// They stand in the services table as the zone's one listener; the zone
// server serves them itself.
type zoneSockets struct {
	pcs []net.PacketConn
	ls  []net.Listener
}

func (z *zoneSockets) Accept() (net.Conn, error) {
	return nil, errors.New("zone sockets are served by the zone server")
}

func (z *zoneSockets) Close() error {
	var errs []error
	for _, pc := range z.pcs {
		errs = append(errs, pc.Close())
	}
	for _, l := range z.ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// Addr names every address, each served over UDP and TCP.
func (z *zoneSockets) Addr() net.Addr {
	addrs := make([]string, len(z.ls))
	for i, l := range z.ls {
		addrs[i] = l.Addr().String()
	}
	return zoneAddr(strings.Join(addrs, ","))
}

type zoneAddr string

func (zoneAddr) Network() string  { return "udp+tcp" }
func (a zoneAddr) String() string { return string(a) }

// listenZone opens UDP and TCP on each [zone] listen address (port 0: the
// same free port for both).
func listenZone(cfg *config.Config) (net.Listener, error) {
	if !cfg.Zone.Served() {
		return nil, nil
	}
	zs := &zoneSockets{}
	for _, a := range cfg.Zone.Listen {
		pc, l, err := listenUDPTCP(a)
		if err != nil {
			zs.Close()
			return nil, fmt.Errorf("zone: %w", err)
		}
		zs.pcs, zs.ls = append(zs.pcs, pc), append(zs.ls, l)
	}
	return zs, nil
}

func listenUDPTCP(addr string) (net.PacketConn, net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, nil, err
	}
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen on %s/udp: %w", addr, err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if ap.Port() != 0 {
			return nil, nil, fmt.Errorf("listen on %s/tcp: %w", addr, err)
		}
	}
	return nil, nil, fmt.Errorf("listen on %s: no port free for both UDP and TCP", addr)
}

// zoneServer runs the zone server and the feeder that keeps it in step
// with the store.
type zoneServer struct {
	srv        *zone.Server
	stopFeeder context.CancelFunc
	feederDone chan struct{}
}

func (z *zoneServer) Serve(ln net.Listener) error {
	zs := ln.(*zoneSockets)
	var wg sync.WaitGroup
	errs := make([]error, len(zs.pcs)+len(zs.ls))
	for i, pc := range zs.pcs {
		wg.Go(func() { errs[i] = z.srv.ServeUDP(pc) })
	}
	for i, l := range zs.ls {
		wg.Go(func() { errs[len(zs.pcs)+i] = z.srv.ServeTCP(l) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, zone.ErrServerClosed) {
			return err
		}
	}
	return zone.ErrServerClosed
}

func (z *zoneServer) Shutdown(ctx context.Context) error {
	z.stopFeeder()
	<-z.feederDone
	return z.srv.Shutdown(ctx)
}

// buildZone makes the zone server, fed from the store with the serial the
// store kept. Until the store is open (with [store] required = false it
// may open later) the zone answers SERVFAIL: never an empty zone, which
// secondaries would take for the list.
func buildZone(d *daemon, cfg *config.Config) (server, func(*config.Config), error) {
	tsig, err := zoneTSIG(cfg)
	if err != nil {
		return nil, nil, err
	}
	ctx := context.Background()
	name := cfg.Zone.Name
	srv, err := zone.New(zone.Options{
		Zone:     zoneContent(cfg),
		Transfer: cfg.Zone.TransferNets(),
		Notify:   cfg.Zone.NotifyAddrs(),
		TSIG:     tsig,
		OnSerial: func(serial uint32, digest string) error {
			if st := d.store.Load(); st != nil {
				return st.SetZoneSerial(ctx, name, serial, digest)
			}
			return errors.New("the store is not open")
		},
		OnPanic: func() { d.metrics.Panic("zone") },
		Logger:  d.logger,
	})
	if err != nil {
		return nil, nil, err
	}
	// The feeder loads only once the store is open: its first Sync is in
	// whenStore, and the changes that wake it come from the store.
	feed := zone.NewFeeder(srv, func() []zone.Listing { return zoneListings(d.store.Load()) })
	feedCtx, stop := context.WithCancel(ctx)
	zsrv := &zoneServer{srv: srv, stopFeeder: stop, feederDone: make(chan struct{})}
	d.whenStore(func(st *store.Store) {
		serial, digest, err := st.ZoneSerial(ctx, name)
		if err != nil {
			// The serial moves on from the clock instead.
			d.logger.Error("the zone's last serial could not be read", slog.Any("err", err))
		}
		srv.SetPublished(serial, digest)
		st.OnChange(func(netip.Prefix) { feed.Changed() })
		feed.Sync()
	})
	go func() {
		defer close(zsrv.feederDone)
		feed.Run(feedCtx)
	}()
	d.zone = srv
	d.metrics.SetZoneStats(srv.Stats)
	live := func(next *config.Config) {
		if next.Zone.Name != name {
			return // a restart-only change, which the reload names
		}
		if err := srv.Reconfigure(zoneContent(next), next.Zone.TransferNets(), next.Zone.NotifyAddrs()); err != nil {
			d.logger.Error("zone settings not applied; the running ones stay", slog.Any("err", err))
		}
	}
	return zsrv, live, nil
}

// whenStore calls f with the store: now when it is open, else when it
// opens.
func (d *daemon) whenStore(f func(*store.Store)) {
	d.storeMu.Lock()
	st := d.store.Load()
	if st == nil {
		d.storeWaiters = append(d.storeWaiters, f)
	}
	d.storeMu.Unlock()
	if st != nil {
		f(st)
	}
}

var zoneCommands = []*command{
	{
		name:     "zone export",
		synopsis: "write the site's own list as a zone for rbldnsd, BIND, NSD or Knot",
		help: `Writes the zone of [zone] with the site's own listings in effect now, for
publishing from files (rsync to rbldnsd, or a primary name server):

  -format rbldnsd  an rbldnsd "combined" dataset; load it as ZONE:combined:FILE
  -format bind     a master file with the records a transfer carries

A listing of a network becomes the wildcards that answer for every address
in it, as blmilter's own zone server answers. The serial is the one the
store keeps for the zone when the content is the same, else the next one.
The store is opened read-only; with -o the file is replaced whole, so a
server reloading it never reads half of it.`,
		store: storeRead,
		setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
			format := fs.String("format", zone.FormatRbldnsd, "`FORMAT` of the output: rbldnsd or bind")
			out := fs.String("o", "", "write to `FILE` instead of standard output")
			return func(c *cmdCtx, args []string) error { return zoneExport(c, args, *format, *out) }
		},
	},
	{
		name:     "zone status",
		synopsis: "show the zone's serial and listings, and what its servers answer",
		help: `Shows the zone of [zone]: the serial the store keeps for it, the listings in
effect, and the serial each [zone] listen address answers for the zone's
SOA. The store is opened read-only. Exits 1 when a listen address does not
answer or answers another serial than the store's.`,
		store: storeRead,
		setup: func(*flag.FlagSet) func(c *cmdCtx, args []string) error { return zoneStatus },
	},
}

func init() { addCommands(zoneCommands...) }

// zoneStore opens the store of a zone command and checks its config names
// a zone.
func zoneStore(c *cmdCtx) (*store.Store, *config.Config, error) {
	st, cfg, err := c.openStore()
	if err != nil {
		return nil, nil, err
	}
	if cfg == nil || !cfg.Zone.Enabled() {
		st.Close()
		return nil, nil, errors.New("no zone: the config's [zone] names none (give -config FILE with [zone] name)")
	}
	return st, cfg, nil
}

func zoneExport(c *cmdCtx, args []string, format, out string) error {
	if len(args) > 0 {
		return usageError("no arguments expected")
	}
	if format != zone.FormatRbldnsd && format != zone.FormatBIND {
		return usageError(fmt.Sprintf("-format %q: want rbldnsd or bind", format))
	}
	st, cfg, err := zoneStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	serial, digest, err := st.ZoneSerial(context.Background(), cfg.Zone.Name)
	if err != nil {
		return err
	}
	listings := zoneListings(st)
	if out == "" {
		_, err := zone.Export(c.stdout, format, zoneContent(cfg), listings, zone.State{Serial: serial, Digest: digest})
		return err
	}
	// A temporary file beside the target, renamed over it when whole.
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	state, err := zone.Export(f, format, zoneContent(cfg), listings, zone.State{Serial: serial, Digest: digest})
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), out)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote %s: zone %s, serial %d, %d listings\n", out, cfg.Zone.Name, state.Serial, len(listings))
	return nil
}

func zoneStatus(c *cmdCtx, args []string) error {
	if len(args) > 0 {
		return usageError("no arguments expected")
	}
	st, cfg, err := zoneStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	name := dns.Fqdn(cfg.Zone.Name)
	serial, _, err := st.ZoneSerial(context.Background(), name)
	if err != nil {
		return err
	}
	stored := fmt.Sprint(serial)
	if serial == 0 {
		stored = "none yet (never served)"
	}
	fmt.Fprintf(c.stdout, "zone %s\nserial in the store: %s\nlistings in effect: %d\n", name, stored, len(st.LiveListings()))
	failed := false
	for _, a := range cfg.Zone.Listen {
		if ap, err := netip.ParseAddrPort(a); err == nil && ap.Port() == 0 {
			fmt.Fprintf(c.stdout, "%s: a port chosen at start; not asked\n", a)
			continue
		}
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeSOA)
		m.RecursionDesired = false
		cl := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := cl.Exchange(m, a)
		switch {
		case err != nil:
			fmt.Fprintf(c.stdout, "%s: no answer: %v\n", a, err)
			failed = true
		case r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0:
			fmt.Fprintf(c.stdout, "%s: %s, no SOA\n", a, dns.RcodeToString[r.Rcode])
			failed = true
		default:
			soa, ok := r.Answer[0].(*dns.SOA)
			if !ok {
				fmt.Fprintf(c.stdout, "%s: answers %v, not an SOA\n", a, r.Answer[0])
				failed = true
				continue
			}
			note := ""
			if soa.Serial != serial {
				note, failed = " (not the store's)", true
			}
			fmt.Fprintf(c.stdout, "%s: serves serial %d%s\n", a, soa.Serial, note)
		}
	}
	if failed {
		return exitCode(1)
	}
	return nil
}
