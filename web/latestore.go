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

func (l lateStore) CreateRequest(ctx context.Context, n store.NewRequest) (store.RemovalRequest, error) {
	if st := l.get(); st != nil {
		return st.CreateRequest(ctx, n)
	}
	return store.RemovalRequest{}, errStoreUnavailable
}

func (l lateStore) HandToOperator(ctx context.Context, id int64) error {
	if st := l.get(); st != nil {
		return st.HandToOperator(ctx, id)
	}
	return errStoreUnavailable
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

func (l lateStore) History(ctx context.Context, ip netip.Addr, now time.Time) (store.History, error) {
	if st := l.get(); st != nil {
		return st.History(ctx, ip, now)
	}
	return store.History{}, errStoreUnavailable
}

func (l lateStore) SelfServiceRemovals(ctx context.Context, ip netip.Addr, since time.Time) (int, error) {
	if st := l.get(); st != nil {
		return st.SelfServiceRemovals(ctx, ip, since)
	}
	return 0, errStoreUnavailable
}

func (l lateStore) DelistToken(ctx context.Context, ip netip.Addr, ttl time.Duration) (string, time.Time, error) {
	if st := l.get(); st != nil {
		return st.DelistToken(ctx, ip, ttl)
	}
	return "", time.Time{}, errStoreUnavailable
}

// StatusToken is "" while the store is not open: no link to make.
func (l lateStore) StatusToken(id int64) string {
	if st := l.get(); st != nil {
		return st.StatusToken(id)
	}
	return ""
}

func (l lateStore) RequestByStatusToken(ctx context.Context, token string) (store.RemovalRequest, error) {
	if st := l.get(); st != nil {
		return st.RequestByStatusToken(ctx, token)
	}
	return store.RemovalRequest{}, errStoreUnavailable
}

func (l lateStore) PendingNotices(ctx context.Context, since time.Time, operator bool) ([]store.Notice, error) {
	if st := l.get(); st != nil {
		return st.PendingNotices(ctx, since, operator)
	}
	return nil, errStoreUnavailable
}

func (l lateStore) MarkNotified(ctx context.Context, id int64, kind string, at time.Time) error {
	if st := l.get(); st != nil {
		return st.MarkNotified(ctx, id, kind, at)
	}
	return errStoreUnavailable
}
