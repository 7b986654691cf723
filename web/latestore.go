package web

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/blmilter/blmilter/store"
)

// errStoreUnavailable is what the store's endpoints get while a daemon
// that started without its store retries opening it.
var errStoreUnavailable = errors.New("the store is not open yet")

// lateStore is the site's store of a daemon that started without it
// (Options.LateStore): each call asks for the store as it is now.
type lateStore struct{ get func() *store.Store }

var _ siteStore = lateStore{}

func (l lateStore) ListingFor(ip netip.Addr) (store.Listing, bool) {
	if st := l.get(); st != nil {
		return st.ListingFor(ip)
	}
	return store.Listing{}, false
}

func (l lateStore) Listings(ctx context.Context) ([]store.Listing, error) {
	if st := l.get(); st != nil {
		return st.Listings(ctx)
	}
	return nil, errStoreUnavailable
}

func (l lateStore) AddListing(ctx context.Context, li store.Listing) (store.Listing, error) {
	if st := l.get(); st != nil {
		return st.AddListing(ctx, li)
	}
	return store.Listing{}, errStoreUnavailable
}

func (l lateStore) RemoveListing(ctx context.Context, prefix netip.Prefix, by string) error {
	if st := l.get(); st != nil {
		return st.RemoveListing(ctx, prefix, by)
	}
	return errStoreUnavailable
}

func (l lateStore) CreateRequest(ctx context.Context, ip, email, reason string) (store.RemovalRequest, error) {
	if st := l.get(); st != nil {
		return st.CreateRequest(ctx, ip, email, reason)
	}
	return store.RemovalRequest{}, errStoreUnavailable
}

func (l lateStore) ConfirmRequest(ctx context.Context, token string, now time.Time) (store.RemovalRequest, error) {
	if st := l.get(); st != nil {
		return st.ConfirmRequest(ctx, token, now)
	}
	return store.RemovalRequest{}, errStoreUnavailable
}

func (l lateStore) DecideConfirmed(ctx context.Context, id int64, quota int, window time.Duration, selfServiceCategories []string) (bool, error) {
	if st := l.get(); st != nil {
		return st.DecideConfirmed(ctx, id, quota, window, selfServiceCategories)
	}
	return false, errStoreUnavailable
}

func (l lateStore) Requests(ctx context.Context, status string) ([]store.RemovalRequest, error) {
	if st := l.get(); st != nil {
		return st.Requests(ctx, status)
	}
	return nil, errStoreUnavailable
}

func (l lateStore) ApproveRequest(ctx context.Context, id int64, by string) error {
	if st := l.get(); st != nil {
		return st.ApproveRequest(ctx, id, by)
	}
	return errStoreUnavailable
}

func (l lateStore) DenyRequest(ctx context.Context, id int64, by string) error {
	if st := l.get(); st != nil {
		return st.DenyRequest(ctx, id, by)
	}
	return errStoreUnavailable
}

func (l lateStore) RequestsByEmailSince(ctx context.Context, email string, since time.Time) (int, error) {
	if st := l.get(); st != nil {
		return st.RequestsByEmailSince(ctx, email, since)
	}
	return 0, errStoreUnavailable
}

func (l lateStore) Decision(ctx context.Context, ref string) (store.DecisionRecord, error) {
	if st := l.get(); st != nil {
		return st.Decision(ctx, ref)
	}
	return store.DecisionRecord{}, errStoreUnavailable
}
