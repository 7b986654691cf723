package web

import (
	"context"
	"net/netip"
	"time"

	"github.com/blmilter/blmilter/store"
)

// siteStore is what the service uses of the store: exactly these methods,
// so the handlers say what they touch.
type siteStore interface {
	ListingFor(ip netip.Addr) (store.Listing, bool)
	Listings(ctx context.Context) ([]store.Listing, error)
	AddListing(ctx context.Context, l store.Listing) (store.Listing, error)
	RemoveListing(ctx context.Context, prefix netip.Prefix, by string) error

	CreateRequest(ctx context.Context, n store.NewRequest) (store.RemovalRequest, error)
	HandToOperator(ctx context.Context, id int64) error
	ConfirmRequest(ctx context.Context, token string, now time.Time) (store.RemovalRequest, error)
	DecideConfirmed(ctx context.Context, id int64, quota int, window time.Duration, selfServiceCategories []string) (removed bool, err error)
	Requests(ctx context.Context, status string) ([]store.RemovalRequest, error)
	ApproveRequest(ctx context.Context, id int64, by string) error
	DenyRequest(ctx context.Context, id int64, by string) error
	RequestsByEmailSince(ctx context.Context, email string, since time.Time) (int, error)

	Decision(ctx context.Context, ref string) (store.DecisionRecord, error)

	History(ctx context.Context, ip netip.Addr, now time.Time) (store.History, error)
	SelfServiceRemovals(ctx context.Context, ip netip.Addr, since time.Time) (int, error)
	DelistToken(ctx context.Context, ip netip.Addr, ttl time.Duration) (string, time.Time, error)
	StatusToken(id int64) string
	RequestByStatusToken(ctx context.Context, token string) (store.RemovalRequest, error)
	PendingNotices(ctx context.Context, since time.Time, operator bool) ([]store.Notice, error)
	MarkNotified(ctx context.Context, id int64, kind string, at time.Time) error
}

var _ siteStore = (*store.Store)(nil)
