package dnsbl

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strconv"
	"unsafe"
)

const hexDigits = "0123456789abcdef"

// nibbles[b] is the four bytes "L.H." for byte b (low nibble, dot, high
// nibble, dot) packed little-endian, for IPv6 query names.
var nibbles = func() (t [256]uint32) {
	for b := range t {
		t[b] = uint32(hexDigits[b&0x0f]) | '.'<<8 | uint32(hexDigits[b>>4])<<16 | '.'<<24
	}
	return t
}()

// decimals[b] is b in decimal followed by a dot ("7." "42." "255."),
// packed little-endian into text, with its length.
var decimals = func() (t [256]struct {
	text uint32
	len  uint8
}) {
	for b := range t {
		s := strconv.Itoa(b) + "."
		var buf [4]byte
		copy(buf[:], s)
		t[b].text = binary.LittleEndian.Uint32(buf[:])
		t[b].len = uint8(len(s))
	}
	return t
}()

// QueryName returns the RFC 5782 name under which zone publishes ip, as a
// fully qualified name with a trailing dot: "2.0.0.127.zen.example." for
// 127.0.0.2, 32 reversed nibbles for IPv6. An IPv4-mapped IPv6 address is
// asked as the IPv4 address it carries, because that is how lists publish
// it. An invalid ip gives "".
func QueryName(ip netip.Addr, zone string) string {
	ip = ip.Unmap()
	zone = trimDot(zone)
	var n int
	switch {
	case ip.Is4():
		n = 16 // appendName writes the longest form, then cuts
	case ip.Is6():
		n = 64
	default:
		return ""
	}
	if zone != "" {
		n += len(zone) + 1
	}
	// Exactly one allocation, handed over as the string without a copy:
	// nothing else holds b.
	b := appendName(make([]byte, 0, n), ip, zone)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// AppendQueryName appends QueryName(ip, zone) to dst and returns the
// extended slice. It allocates only when dst must grow, so a caller with
// a reused buffer builds names for free. An invalid ip appends nothing.
func AppendQueryName(dst []byte, ip netip.Addr, zone string) []byte {
	return appendName(dst, ip.Unmap(), zone)
}

// appendName is AppendQueryName without the unmapping, so that an
// IPv4-mapped address is written as IPv6 nibbles (see Query.KeepMapped).
// Both forms are written from tables several bytes per store, straight
// into dst.
func appendName(dst []byte, ip netip.Addr, zone string) []byte {
	zone = trimDot(zone)
	n := len(dst)
	switch {
	case ip.Is4():
		// RFC 5782 section 2.1: the octets in reverse order, in decimal.
		// Room for the longest form ("255.255.255.255."), then cut.
		a := ip.As4()
		dst = slices.Grow(dst, 16+len(zone)+1)[:n+16]
		out := (*[16]byte)(dst[n:])
		w := 0
		for i := 3; i >= 0; i-- {
			d := decimals[a[i]]
			binary.LittleEndian.PutUint32(out[w:], d.text)
			w += int(d.len)
		}
		dst = dst[:n+w]
	case ip.Is6():
		// RFC 5782 section 2.4: all 32 nibbles, low nibble first, reversed,
		// lower-case hex, no zero compression.
		a := ip.As16()
		dst = slices.Grow(dst, 64+len(zone)+1)[:n+64]
		out := (*[64]byte)(dst[n:])
		for i := range 8 {
			binary.LittleEndian.PutUint64(out[8*i:], uint64(nibbles[a[15-2*i]])|uint64(nibbles[a[14-2*i]])<<32)
		}
	default:
		return dst
	}
	if zone == "" {
		return dst
	}
	dst = append(dst, zone...)
	return append(dst, '.')
}

// trimDot drops one trailing dot, so "zen.example." is not doubled.
func trimDot(zone string) string {
	if n := len(zone); n > 0 && zone[n-1] == '.' {
		return zone[:n-1]
	}
	return zone
}
