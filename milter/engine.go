package milter

import (
	"log/slog"

	"github.com/blmilter/blmilter/policy"
)

// NewServer returns a milter server that asks engine() for the current
// policy engine at each SMTP connection, so a reload takes effect for the
// next connection while sessions in progress keep the verdict they have.
func NewServer(engine func() *policy.Engine, logger *slog.Logger, cfg policy.MilterConfig) *Server {
	current := func() checker {
		if e := engine(); e != nil {
			return e
		}
		return nil
	}
	return newCheckerServer(current, logger, cfg)
}

var (
	logAttrs     = policy.LogAttrs
	sendmailSafe = policy.SendmailSafe
)
