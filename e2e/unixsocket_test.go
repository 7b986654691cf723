//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// The milter on a unix socket, as the README's chroot recipe has it: in a
// directory nothing else creates, reached by Postfix's smtpd as the
// postfix user. With socket_group = "postfix" blmilter makes the directory
// and the socket the group's, and a listed client is refused through the
// socket. Without it the socket is root's: Postfix is denied, fails open
// (milter_default_action = accept) and the listed client gets in, which
// is what socket_group exists to prevent.
func TestPostfixMilterUnixSocket(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	dns := startRbldnsd(t)
	for _, tc := range []struct {
		name  string
		group string
		want  int
	}{
		{"socket_group postfix: listed client refused", "postfix", 550},
		{"no socket_group: Postfix is denied and fails open", "", 250},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(testkit.OpenDir(t), "blmilter", "milter.sock") // its directory does not exist
			var extra string
			if tc.group != "" {
				extra = `socket_group = "` + tc.group + `"`
			}
			b := startBlmilter(t, blmilterOpts{DNS: dns, NoPolicyd: true, MilterUnix: sock, MilterTOML: extra})
			pf := startPostfix(t, postfixOpts{Milter: "unix:" + sock})
			r, err := session(pf.Addr, sessionOpts{XClient: clientSpam})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s through unix:%s: %v", clientSpam, sock, r)
			if r.Stage != "rcpt" || r.Code != tc.want {
				t.Fatalf("listed client: got %v, want %d at RCPT", r, tc.want)
			}
			if tc.want == 250 {
				testkit.WaitFor(t, "Postfix's permission error", 5*time.Second, func() error {
					b, _ := os.ReadFile(pf.log)
					return testkit.Unless(strings.Contains(string(b), "Permission denied"), "maillog:\n%s", tail(string(b), 20))
				})
				if !strings.Contains(b.p.out.String(), "socket_group is not set") {
					t.Errorf("blmilter did not warn about a socket only root's group can reach:\n%s", tail(b.p.out.String(), 20))
				}
				return
			}
			if strings.Contains(b.p.out.String(), `"level":"ERROR"`) {
				t.Errorf("blmilter logged an error with a reachable socket:\n%s", tail(b.p.out.String(), 20))
			}
		})
	}
}
