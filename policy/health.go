package policy

// ListState is whether a list's hits count, as the health probes last found
// it. Only ListHealthy counts; the other states are logged and shown but
// never score, so a list that answers everything cannot refuse mail.
type ListState int32

const (
	// ListHealthy: the list passed its last probe round, or is not probed
	// (health = false): its hits count.
	ListHealthy ListState = iota
	// ListDegraded: the list failed its probes or its hit ratio: its hits
	// are logged but not counted until it passes again.
	ListDegraded
	// ListUnproven: the list is new or changed (zone, servers, address
	// families, health setting) and has not yet passed a probe round: its
	// hits are logged but not counted.
	ListUnproven
)

// String is the state's word in logs, metrics and the admin API.
func (s ListState) String() string {
	switch s {
	case ListHealthy:
		return "healthy"
	case ListDegraded:
		return "degraded"
	case ListUnproven:
		return "unproven"
	}
	return "unknown"
}

// Counts reports whether a list in this state counts toward the score.
func (s ListState) Counts() bool { return s == ListHealthy }

// HealthSource tells a new engine the state each of its lists starts in, so
// an engine built by a reload inherits what the probes know instead of
// starting every list healthy. ListState must not block.
type HealthSource interface {
	ListState(l ListInfo) ListState
}
