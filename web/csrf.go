package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"time"
)

// Forms carry a token that is an HMAC, under a secret that only this
// process knows, of what the form is for (its purpose and subject, e.g.
// "removal" and the IP) and when it was issued. The service sets no
// cookies: a token is good for one form on one subject for csrfMaxAge, and
// a page from another site cannot get one for its own forged form.
const csrfMaxAge = 4 * time.Hour

type csrf struct {
	secret []byte
	now    func() time.Time
}

func (c csrf) token(purpose, subject string) string {
	issued := c.now().Unix()
	var buf [8 + 16]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(issued))
	copy(buf[8:], c.mac(purpose, subject, issued))
	return base64.RawURLEncoding.EncodeToString(buf[:])
}

func (c csrf) valid(tok, purpose, subject string) bool {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != 24 {
		return false
	}
	issued := int64(binary.BigEndian.Uint64(raw[:8]))
	age := c.now().Sub(time.Unix(issued, 0))
	if age < -time.Minute || age > csrfMaxAge {
		return false
	}
	return hmac.Equal(raw[8:], c.mac(purpose, subject, issued))
}

func (c csrf) mac(purpose, subject string, issued int64) []byte {
	m := hmac.New(sha256.New, c.secret)
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(issued))
	m.Write(ts[:])
	m.Write([]byte(purpose))
	m.Write([]byte{0})
	m.Write([]byte(subject))
	return m.Sum(nil)[:16]
}
