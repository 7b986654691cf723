package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Limits of one request. Postfix's largest attributes (a recipient, a
// certificate subject) are far below MaxLineLength, and a full Postfix 3.x
// request has about 40 attributes.
const (
	MaxLineLength = 8192
	MaxAttributes = 100
)

// Errors of ParseRequest that end the connection: after them the framing of
// the stream can no longer be trusted.
var (
	ErrLineTooLong       = errors.New("policyd: attribute line too long")
	ErrTooManyAttributes = errors.New("policyd: too many attributes")
)

// Request is one policy request: the attributes blmilter uses, and the
// first structural problem found, if any. Other attributes are counted and
// ignored.
type Request struct {
	Request       string // "smtpd_access_policy"
	ProtocolState string // CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY, ETRN
	ClientAddress string
	ClientName    string
	HeloName      string
	Sender        string
	Recipient     string
	SASLUsername  string
	QueueID       string
	Instance      string
	// ReverseClientName is the client's PTR name, not verified;
	// EncryptionProtocol and EncryptionCipher describe TLS ("" without).
	ReverseClientName  string
	EncryptionProtocol string
	EncryptionCipher   string

	Attributes int    // attribute lines in the request
	Malformed  string // first structural problem ("" if none), for the log
}

// field indexes for the seen mask.
const (
	fRequest = 1 << iota
	fProtocolState
	fClientAddress
	fClientName
	fHeloName
	fSender
	fRecipient
	fSASLUsername
	fQueueID
	fInstance
	fReverseClientName
	fEncryptionProtocol
	fEncryptionCipher
)

// ParseRequest reads one request from r into req: name=value lines up to an
// empty line. A line may end in "\n" or "\r\n". Lines longer than
// MaxLineLength (or than r's buffer, whichever is smaller) return
// ErrLineTooLong; more than MaxAttributes lines return ErrTooManyAttributes.
// A line without '=' or with an empty name does not end the request: it is
// noted in req.Malformed and the rest is read, so the connection stays in
// step with its peer. At a clean end of stream before any line, the error is
// io.EOF; in the middle of a request it is io.ErrUnexpectedEOF.
//
// req is reused between requests of a connection: a value equal to the
// previous one keeps its string, so a Postfix session asking once per
// recipient costs no allocation for the repeated attributes.
func ParseRequest(r *bufio.Reader, req *Request) error {
	var seen uint
	req.Attributes = 0
	req.Malformed = ""
	lines := 0
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			switch {
			case errors.Is(err, bufio.ErrBufferFull):
				return ErrLineTooLong
			case err == io.EOF && lines == 0 && len(line) == 0:
				return io.EOF
			case err == io.EOF:
				return io.ErrUnexpectedEOF
			default:
				return fmt.Errorf("policyd: read request: %w", err)
			}
		}
		if len(line) > MaxLineLength {
			return ErrLineTooLong
		}
		lines++
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) == 0 {
			break
		}
		req.Attributes++
		if req.Attributes > MaxAttributes {
			return ErrTooManyAttributes
		}
		eq := bytes.IndexByte(line, '=')
		if eq <= 0 {
			if req.Malformed == "" {
				if eq < 0 {
					req.Malformed = "attribute line without '='"
				} else {
					req.Malformed = "attribute without a name"
				}
			}
			continue
		}
		name, value := line[:eq], line[eq+1:]
		var dst *string
		var bit uint
		// string(name) in a switch does not allocate.
		switch string(name) {
		case "request":
			dst, bit = &req.Request, fRequest
		case "protocol_state":
			dst, bit = &req.ProtocolState, fProtocolState
		case "client_address":
			dst, bit = &req.ClientAddress, fClientAddress
		case "client_name":
			dst, bit = &req.ClientName, fClientName
		case "helo_name":
			dst, bit = &req.HeloName, fHeloName
		case "sender":
			dst, bit = &req.Sender, fSender
		case "recipient":
			dst, bit = &req.Recipient, fRecipient
		case "sasl_username":
			dst, bit = &req.SASLUsername, fSASLUsername
		case "queue_id":
			dst, bit = &req.QueueID, fQueueID
		case "instance":
			dst, bit = &req.Instance, fInstance
		case "reverse_client_name":
			dst, bit = &req.ReverseClientName, fReverseClientName
		case "encryption_protocol":
			dst, bit = &req.EncryptionProtocol, fEncryptionProtocol
		case "encryption_cipher":
			dst, bit = &req.EncryptionCipher, fEncryptionCipher
		default:
			continue
		}
		seen |= bit
		if string(value) != *dst {
			*dst = string(value)
		}
	}
	reset := func(bit uint, dst *string) {
		if seen&bit == 0 {
			*dst = ""
		}
	}
	reset(fRequest, &req.Request)
	reset(fProtocolState, &req.ProtocolState)
	reset(fClientAddress, &req.ClientAddress)
	reset(fClientName, &req.ClientName)
	reset(fHeloName, &req.HeloName)
	reset(fSender, &req.Sender)
	reset(fRecipient, &req.Recipient)
	reset(fSASLUsername, &req.SASLUsername)
	reset(fQueueID, &req.QueueID)
	reset(fInstance, &req.Instance)
	reset(fReverseClientName, &req.ReverseClientName)
	reset(fEncryptionProtocol, &req.EncryptionProtocol)
	reset(fEncryptionCipher, &req.EncryptionCipher)
	return nil
}
