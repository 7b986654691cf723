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
}

var _ siteStore = (*store.Store)(nil)
