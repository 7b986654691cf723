package milter

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

var (
	errReadDeadline  = errors.New("no complete command within read_timeout")
	errWriteDeadline = errors.New("reply not written within write_timeout")
	errEOF           = io.EOF // the MTA closed the connection between commands
)

// readBufSize is the read buffer of a connection: every envelope command
// fits, and skipped content goes through it in pieces of this size.
const readBufSize = 4096

// Read buffers are reused: Postfix opens a connection per SMTP session.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}

// conn is one MTA connection and its session. Only its own goroutine
// touches it, except closeHere (Shutdown and Close).
type conn struct {
	nc  net.Conn
	srv *Server
	br  *bufio.Reader
	out []byte // the replies to the current command, written at once
	big []byte // a parsed packet larger than br's buffer
	// skip is the size of the last packet, still in br's buffer because
	// its data was handed out from there; dropped at the next read.
	skip int

	// Deadlines: each read and write gets read_timeout and write_timeout,
	// and none reaches past sessionEnd. Re-arming a deadline costs two
	// clock reads, so it is done only once the server's coarse clock says
	// a slack (a quarter of the timeout, at most a second) has passed
	// since the last arming: a packet gets at least its timeout less the
	// slack and a clock tick, and never more than its timeout from the
	// moment blmilter began waiting for it. A client that drips a packet
	// byte by byte cannot stretch that.
	sessionEnd time.Time
	readArmed  int64 // coarse time the read deadline was last set; 0: never
	writeArmed int64

	closeOnce  sync.Once
	closedHere atomic.Bool // closed by Shutdown or Close, not by the MTA

	outBuf [64]byte // out's first backing array: replies without text fit

	session
}

func newConn(nc net.Conn, srv *Server) *conn {
	c := &conn{nc: nc, srv: srv, sessionEnd: time.Now().Add(srv.opts.SessionTimeout)}
	c.out = c.outBuf[:0]
	c.session.phase = phaseNew
	return c
}

// serve reads and answers commands until the MTA quits or closes the
// connection, or an error ends it.
func (c *conn) serve() error {
	c.br = readerPool.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
	for {
		cmd, data, err := c.readPacket()
		if err != nil {
			return err
		}
		quit, err := c.handle(cmd, data)
		if err != nil {
			return err
		}
		if err := c.flush(); err != nil {
			return err
		}
		if quit {
			return nil
		}
	}
}

// release closes the connection and returns its buffer.
func (c *conn) release() {
	c.close()
	c.srv.untrack(c)
	if c.br != nil {
		c.br.Reset(nil)
		readerPool.Put(c.br)
		c.br = nil
	}
}

func (c *conn) close() { c.closeOnce.Do(func() { c.nc.Close() }) }

// closeHere closes the connection from outside its goroutine: its read or
// write fails and the session ends.
func (c *conn) closeHere() {
	c.closedHere.Store(true)
	c.close()
	c.srv.untrack(c)
}

// remote names the MTA end of the connection, for the log.
func (c *conn) remote() slog.Attr {
	a := c.nc.RemoteAddr()
	if a == nil {
		return slog.String("mta", "")
	}
	return slog.String("mta", a.Network()+":"+a.String())
}

// readPacket reads the next command. Data of a parsed command is valid
// until the next call; skipped commands return no data.
func (c *conn) readPacket() (cmd byte, data []byte, err error) {
	if c.skip > 0 {
		c.br.Discard(c.skip) // buffered: cannot fail
		c.skip = 0
	}
	if err := c.armRead(); err != nil {
		return 0, nil, err
	}
	hdr, err := c.br.Peek(headerLen)
	if err != nil {
		if len(hdr) == 0 && errors.Is(err, io.EOF) {
			return 0, nil, errEOF
		}
		return 0, nil, c.readErr(err)
	}
	n := binary.BigEndian.Uint32(hdr)
	cmd = hdr[4]
	c.br.Discard(headerLen)
	if n == 0 {
		return 0, nil, protoErr(kindMalformed, "zero-length packet")
	}
	size := int64(n) - 1
	switch packetKinds[cmd] {
	case kindEmpty:
		if size != 0 {
			return 0, nil, protoErr(kindTooLong, "command %q with %d bytes of data, which it has none", cmd, size)
		}
		return cmd, nil, nil
	case kindSkipped:
		if size > maxSkipData {
			return 0, nil, protoErr(kindTooLong, "command %q with %d bytes of data, more than %d", cmd, size, maxSkipData)
		}
		if _, err := c.br.Discard(int(size)); err != nil {
			return 0, nil, c.readErr(err)
		}
		return cmd, nil, nil
	case kindParsed:
		if size > maxParsedData {
			return 0, nil, protoErr(kindTooLong, "command %q with %d bytes of data, more than %d", cmd, size, maxParsedData)
		}
		if int(size) <= c.br.Size() {
			data, err := c.br.Peek(int(size))
			if err != nil {
				return 0, nil, c.readErr(err)
			}
			c.skip = int(size)
			return cmd, data, nil
		}
		if cap(c.big) < int(size) {
			c.big = make([]byte, size)
		}
		data := c.big[:size]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return 0, nil, c.readErr(err)
		}
		return cmd, data, nil
	}
	return 0, nil, protoErr(kindUnknownCommand, "command %q", cmd)
}

func (c *conn) readErr(err error) error {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return protoErr(kindMalformed, "connection closed inside a packet")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errReadDeadline
	}
	return err
}

// flush writes the replies to the current command.
func (c *conn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	if err := c.armWrite(); err != nil {
		return err
	}
	_, err := c.nc.Write(c.out)
	c.out = c.out[:0]
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errWriteDeadline
	}
	return err
}

func slack(timeout time.Duration) int64 { return int64(min(timeout/4, time.Second)) }

func (c *conn) armRead() error {
	now := c.srv.now.Load()
	if c.readArmed != 0 && now-c.readArmed < slack(c.srv.opts.ReadTimeout) {
		return nil
	}
	if err := c.nc.SetReadDeadline(c.deadline(c.srv.opts.ReadTimeout)); err != nil {
		return err
	}
	c.readArmed = max(now, 1)
	return nil
}

func (c *conn) armWrite() error {
	now := c.srv.now.Load()
	if c.writeArmed != 0 && now-c.writeArmed < slack(c.srv.opts.WriteTimeout) {
		return nil
	}
	if err := c.nc.SetWriteDeadline(c.deadline(c.srv.opts.WriteTimeout)); err != nil {
		return err
	}
	c.writeArmed = max(now, 1)
	return nil
}

func (c *conn) deadline(timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if d.After(c.sessionEnd) {
		return c.sessionEnd
	}
	return d
}
