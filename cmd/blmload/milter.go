package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"
)

// With -milter, blmload plays the MTA's side of the milter protocol
// itself, the way Postfix does for each SMTP session: a new connection to
// the milter, negotiation, the client's address at connect, HELO, MAIL
// FROM, RCPT TO and, with -data, the message's header, body and end, then
// QUIT. Without an MTA in between, the milter's own cost per session is
// what the figures show, and with -clients and -first every session can
// come from an address the milter has not seen (a cold cache).

// What blmload offers the milter, as Postfix does: the modifications it
// may make and the steps it may skip or not wait for a reply to (protocol
// version 6). go-milter's client cannot step down to a milter that speaks
// an older version with that offer, and go-milter's own servers speak
// version 2; for them blmload offers what version 2 knows, once it has
// been told so. Either way the milter then asks for what it wants of it.
const (
	milterActions = gomilter.OptAddHeader | gomilter.OptChangeBody | gomilter.OptAddRcpt |
		gomilter.OptRemoveRcpt | gomilter.OptChangeHeader | gomilter.OptQuarantine |
		gomilter.OptChangeFrom | gomilter.OptAddRcptWithArgs | gomilter.OptSetSymList
	milterProtocol = gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom |
		gomilter.OptNoRcptTo | gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH |
		gomilter.OptNoUnknown | gomilter.OptNoData | gomilter.OptRcptRej | gomilter.OptNoHeaderReply |
		gomilter.OptNoConnReply | gomilter.OptNoHeloReply | gomilter.OptNoMailReply | gomilter.OptNoRcptReply |
		gomilter.OptNoDataReply | gomilter.OptNoUnknownReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply |
		gomilter.OptHeaderLeadingSpace
	// The version 2 offer: the first six actions, the first seven steps.
	milterActionsV2  = milterActions & 0x3f
	milterProtocolV2 = milterProtocol & 0x7f
)

// milterTarget splits -addr for -milter: "unix:/path", "inet:host:port" or
// "host:port".
func milterTarget(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", p
	}
	return "tcp", strings.TrimPrefix(addr, "inet:")
}

// milterClient opens milter sessions with the full offer until the milter
// turns out to speak version 2, and with the version 2 offer from then on.
type milterClient struct {
	full, v2 *gomilter.Client
	useV2    atomic.Bool
}

func newMilterClient(cfg config) *milterClient {
	network, address := milterTarget(cfg.Addr)
	opts := gomilter.ClientOptions{
		Dialer:       &net.Dialer{Timeout: cfg.Timeout},
		ReadTimeout:  cfg.Timeout,
		WriteTimeout: cfg.Timeout,
		ActionMask:   milterActions,
		ProtocolMask: milterProtocol,
	}
	c := &milterClient{full: gomilter.NewClientWithOptions(network, address, opts)}
	opts.ActionMask, opts.ProtocolMask = milterActionsV2, milterProtocolV2
	c.v2 = gomilter.NewClientWithOptions(network, address, opts)
	return c
}

func (c *milterClient) Session() (*gomilter.ClientSession, error) {
	if !c.useV2.Load() {
		s, err := c.full.Session()
		if !errors.Is(err, gomilter.ErrUnsupportedMilterVersion) {
			return s, err
		}
		c.useV2.Store(true)
	}
	return c.v2.Session()
}

// actionCode is the SMTP reply an MTA would give for a milter's action.
func actionCode(act *gomilter.Action) string {
	switch act.Code {
	case gomilter.ActAccept, gomilter.ActContinue:
		return "250"
	case gomilter.ActReject:
		return "550"
	case gomilter.ActTempFail:
		return "451"
	case gomilter.ActDiscard:
		return "discard"
	case gomilter.ActReplyCode:
		return strconv.Itoa(act.SMTPCode)
	}
	return "action-" + string(rune(act.Code))
}

// milterStep is one command of a session, with the milter's answer.
type milterStep struct {
	name string
	do   func() (*gomilter.Action, error)
}

// milterSession runs session i against the milter and returns the SMTP
// reply the MTA would give to RCPT (or to the end of data, with -data), or
// of the first step the milter refused.
func milterSession(ctx context.Context, cfg config, client *milterClient, i int) (string, error) {
	if ctx.Err() != nil {
		return "error", ctx.Err()
	}
	cs, err := client.Session()
	if err != nil {
		return "error", err
	}
	defer cs.Close()
	ip := clientAddr(cfg.Clients, cfg.First+i)
	family := gomilter.FamilyInet
	if ip.Is6() {
		family = gomilter.FamilyInet6
	}
	addr := ip.String()
	queueID := fmt.Sprintf("%X", 0x100000+cfg.First+i)
	steps := []milterStep{
		{"connect", func() (*gomilter.Action, error) {
			if err := cs.Macros(gomilter.CodeConn, "j", "mx.load.test", "{daemon_name}", "blmload", "{client_addr}", addr, "_", "["+addr+"]"); err != nil {
				return nil, err
			}
			return cs.Conn("["+addr+"]", family, uint16(40000+i%20000), addr)
		}},
		{"helo", func() (*gomilter.Action, error) { return cs.Helo(cfg.Helo) }},
		{"mail", func() (*gomilter.Action, error) {
			if err := cs.Macros(gomilter.CodeMail, "i", queueID, "{mail_addr}", cfg.From); err != nil {
				return nil, err
			}
			return cs.Mail(cfg.From, nil)
		}},
		{"rcpt", func() (*gomilter.Action, error) {
			if err := cs.Macros(gomilter.CodeRcpt, "i", queueID, "{rcpt_addr}", cfg.Rcpt); err != nil {
				return nil, err
			}
			return cs.Rcpt(cfg.Rcpt, nil)
		}},
	}
	if cfg.Data {
		steps = append(steps,
			milterStep{"header", func() (*gomilter.Action, error) {
				for _, f := range messageHeader(cfg, queueID) {
					act, err := cs.HeaderField(f[0], f[1])
					if err != nil || act.Code != gomilter.ActContinue {
						return act, err
					}
				}
				return cs.HeaderEnd()
			}},
			milterStep{"body", func() (*gomilter.Action, error) { return cs.BodyChunk([]byte(messageBody)) }},
			milterStep{"end of data", func() (*gomilter.Action, error) {
				_, act, err := cs.End()
				return act, err
			}},
		)
	}
	for _, st := range steps {
		act, err := st.do()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() != nil {
				return "error", context.DeadlineExceeded
			}
			return "error", fmt.Errorf("%s: %w", st.name, err)
		}
		if act.Code != gomilter.ActContinue {
			return actionCode(act), nil
		}
	}
	return "250", nil
}

// messageHeader is a small message's header, as an MTA passes it on.
func messageHeader(cfg config, queueID string) [][2]string {
	return [][2]string{
		{"Received", "from [" + cfg.Helo + "] by mx.load.test (Postfix) with ESMTP id " + queueID},
		{"From", "<" + cfg.From + ">"},
		{"To", "<" + cfg.Rcpt + ">"},
		{"Subject", "load test"},
		{"Date", time.Now().UTC().Format(time.RFC1123Z)},
		{"Message-ID", "<" + queueID + "@load.test>"},
	}
}

const messageBody = "A short message for the load test.\r\n"
