package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// postfixRequest is a request as Postfix 3.x sends it at RCPT.
const postfixRequest = "request=smtpd_access_policy\n" +
	"protocol_state=RCPT\n" +
	"protocol_name=ESMTP\n" +
	"helo_name=mail.example.net\n" +
	"queue_id=8045F2AB23\n" +
	"sender=foo@example.net\n" +
	"recipient=bar@example.org\n" +
	"recipient_count=0\n" +
	"client_address=192.0.2.10\n" +
	"client_name=mail.example.net\n" +
	"reverse_client_name=mail.example.net\n" +
	"instance=123.456.7\n" +
	"sasl_method=\n" +
	"sasl_username=\n" +
	"sasl_sender=\n" +
	"size=12345\n" +
	"ccert_subject=\n" +
	"encryption_protocol=TLSv1.3\n" +
	"encryption_cipher=TLS_AES_256_GCM_SHA384\n" +
	"encryption_keysize=256\n" +
	"etrn_domain=\n" +
	"stress=\n" +
	"server_address=192.0.2.1\n" +
	"server_port=25\n" +
	"policy_context=\n" +
	"compatibility_level=3.6\n" +
	"mail_version=3.7.11\n" +
	"\n"

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      Request
		err       error
		malformed bool
	}{
		{
			name: "postfix rcpt",
			in:   postfixRequest,
			want: Request{Request: "smtpd_access_policy", ProtocolState: "RCPT", ClientAddress: "192.0.2.10",
				ClientName: "mail.example.net", HeloName: "mail.example.net", Sender: "foo@example.net",
				Recipient: "bar@example.org", QueueID: "8045F2AB23", Instance: "123.456.7", Attributes: 27,
				ReverseClientName: "mail.example.net", EncryptionProtocol: "TLSv1.3", EncryptionCipher: "TLS_AES_256_GCM_SHA384"},
		},
		{
			name: "crlf line ends",
			in:   "protocol_state=RCPT\r\nclient_address=2001:db8::1\r\n\r\n",
			want: Request{ProtocolState: "RCPT", ClientAddress: "2001:db8::1", Attributes: 2},
		},
		{
			name: "value with '=' and spaces",
			in:   "sender=a=b c@example.net\nclient_address= 192.0.2.1\n\n",
			want: Request{Sender: "a=b c@example.net", ClientAddress: " 192.0.2.1", Attributes: 2},
		},
		{
			name: "empty request",
			in:   "\n",
			want: Request{},
		},
		{
			name:      "line without '='",
			in:        "client_address=192.0.2.1\ngarbage\n\n",
			want:      Request{ClientAddress: "192.0.2.1", Attributes: 2},
			malformed: true,
		},
		{
			name:      "empty name",
			in:        "=192.0.2.1\n\n",
			want:      Request{Attributes: 1},
			malformed: true,
		},
		{
			name: "NUL and non-UTF-8 bytes are kept as data",
			in:   "helo_name=\x00\xff\xfe\nclient_address=192.0.2.1\n\n",
			want: Request{HeloName: "\x00\xff\xfe", ClientAddress: "192.0.2.1", Attributes: 2},
		},
		{
			name: "line at the limit",
			in:   "helo_name=" + strings.Repeat("a", MaxLineLength-len("helo_name=")-1) + "\n\n",
			want: Request{HeloName: strings.Repeat("a", MaxLineLength-len("helo_name=")-1), Attributes: 1},
		},
		{name: "line over the limit", in: "helo_name=" + strings.Repeat("a", MaxLineLength) + "\n\n", err: ErrLineTooLong},
		{name: "too many attributes", in: strings.Repeat("x=y\n", MaxAttributes+1) + "\n", err: ErrTooManyAttributes},
		{name: "end of stream", in: "", err: io.EOF},
		{name: "end of stream inside a request", in: "client_address=192.0.2.1\n", err: io.ErrUnexpectedEOF},
		{name: "end of stream inside a line", in: "client_addr", err: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bufio.NewReaderSize(strings.NewReader(tt.in), MaxLineLength)
			var req Request
			err := ParseRequest(r, &req)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if (req.Malformed != "") != tt.malformed {
				t.Errorf("Malformed = %q, want malformed %v", req.Malformed, tt.malformed)
			}
			req.Malformed = ""
			if req != tt.want {
				t.Errorf("got  %+v\nwant %+v", req, tt.want)
			}
		})
	}
}

// A second request on the same connection must not inherit attributes the
// first one had.
func TestParseRequestReuse(t *testing.T) {
	in := "client_address=192.0.2.1\nsasl_username=alice\nrecipient=a@example.org\ninstance=1\n\n" +
		"client_address=192.0.2.1\nrecipient=b@example.org\n\n"
	r := bufio.NewReader(strings.NewReader(in))
	var req Request
	if err := ParseRequest(r, &req); err != nil {
		t.Fatal(err)
	}
	if req.SASLUsername != "alice" {
		t.Fatalf("first request: SASLUsername = %q", req.SASLUsername)
	}
	if err := ParseRequest(r, &req); err != nil {
		t.Fatal(err)
	}
	want := Request{ClientAddress: "192.0.2.1", Recipient: "b@example.org", Attributes: 2}
	if req != want {
		t.Errorf("second request: got %+v, want %+v", req, want)
	}
	if err := ParseRequest(r, &req); err != io.EOF {
		t.Errorf("after the last request: err = %v, want io.EOF", err)
	}
}

func TestParseRequestAllocs(t *testing.T) {
	in := strings.Repeat(postfixRequest, 200)
	r := bufio.NewReaderSize(strings.NewReader(in), MaxLineLength)
	var req Request
	if err := ParseRequest(r, &req); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := ParseRequest(r, &req); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("repeated request: %v allocs, want 0", allocs)
	}
}

// writeRequest is the inverse of ParseRequest for the attributes it keeps.
func writeRequest(w *bytes.Buffer, req *Request) {
	for _, a := range []struct{ name, value string }{
		{"request", req.Request}, {"protocol_state", req.ProtocolState}, {"client_address", req.ClientAddress},
		{"client_name", req.ClientName}, {"helo_name", req.HeloName}, {"sender", req.Sender},
		{"recipient", req.Recipient}, {"sasl_username", req.SASLUsername}, {"queue_id", req.QueueID},
		{"instance", req.Instance}, {"reverse_client_name", req.ReverseClientName},
		{"encryption_protocol", req.EncryptionProtocol}, {"encryption_cipher", req.EncryptionCipher},
	} {
		if a.value != "" {
			w.WriteString(a.name + "=" + a.value + "\r\n") // CRLF keeps a value that ends in CR
		}
	}
	w.WriteString("\n")
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(postfixRequest))
	f.Add([]byte(postfixRequest + postfixRequest))
	f.Add([]byte("protocol_state=RCPT\r\nclient_address=::ffff:192.0.2.1\r\n\r\n"))
	f.Add([]byte("client_address=192.0.2.1\ngarbage\n=x\n\n\n"))
	f.Add([]byte("helo_name=\x00\xff\nclient_address=192.0.2.1\n"))
	f.Add([]byte(strings.Repeat("x=y\n", MaxAttributes+1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		// A small buffer reaches the line limit with small inputs too.
		r := bufio.NewReaderSize(bytes.NewReader(data), 64)
		var req Request
		for i := 0; ; i++ {
			err := ParseRequest(r, &req)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && err != ErrLineTooLong && err != ErrTooManyAttributes {
					t.Fatalf("request %d: unexpected error %v", i, err)
				}
				return
			}
			if req.Attributes > MaxAttributes {
				t.Fatalf("request %d: %d attributes accepted", i, req.Attributes)
			}
			// Parsing is stable: what was kept, written back, reads the same.
			if req.Malformed != "" {
				continue
			}
			var buf bytes.Buffer
			writeRequest(&buf, &req)
			var again Request
			if err := ParseRequest(bufio.NewReaderSize(&buf, MaxLineLength+16), &again); err != nil {
				t.Fatalf("request %d: reparse: %v", i, err)
			}
			again.Attributes = req.Attributes
			if again != req {
				t.Fatalf("request %d: reparse differs:\n%+v\n%+v", i, req, again)
			}
		}
	})
}

// BenchmarkParseRequest parses a full Postfix 3.x RCPT request from memory.
func BenchmarkParseRequest(b *testing.B) {
	data := []byte(postfixRequest)
	rd := bytes.NewReader(data)
	r := bufio.NewReaderSize(rd, MaxLineLength)
	var req Request
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		rd.Reset(data)
		r.Reset(rd)
		if err := ParseRequest(r, &req); err != nil {
			b.Fatal(err)
		}
	}
}
