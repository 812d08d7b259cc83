package etcdstore

import (
	"context"

	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultMemberTTL is the etcd lease TTL of a replica's registration: a
// replica that dies or loses etcd leaves the member set this long after.
const DefaultMemberTTL = 5 * time.Second

// Membership registers one replica under P/replicas/<id> with an etcd
// lease kept alive in the background, and follows the set of registered
// replicas. It implements poolmgr.Replicas. Its methods are safe for
// concurrent use.
//
// The replica always counts itself, registered or not: while it cannot
// reach etcd it keeps the last member set it saw (plus itself), so its
// shares of fleet limits do not grow; the others see it leave after the
// TTL and take its share then (see docs/scale-out.md for the bounds).
type Membership struct {
	cli    *clientv3.Client
	prefix string // P/replicas/
	self   string // prefix + id
	ttl    time.Duration

	cancel context.CancelFunc
	donec  chan struct{} // closed when run returns
	readyc chan struct{} // closed at the first member set read

	mu       sync.Mutex // protects following fields
	members  map[string]bool
	changedc chan struct{} // closed and replaced at every change
}

// Join registers this replica as id (unique per replica, e.g. host and
// listen address) with an etcd lease of ttl (DefaultMemberTTL if 0), and
// starts following the member set. It returns without waiting for etcd;
// until the first read the replica counts only itself. Close leaves.
func (s *Store) Join(id string, ttl time.Duration) (*Membership, error) {
	if id == "" || strings.Contains(id, "/") {
		return nil, fmt.Errorf("etcdstore: replica id %q: empty or has a slash", id)
	}
	if err := s.check(context.Background()); err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = DefaultMemberTTL
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := s.watchPrefix + "replicas/"
	ms := &Membership{
		cli:      s.cli,
		prefix:   p,
		self:     p + id,
		ttl:      ttl,
		cancel:   cancel,
		donec:    make(chan struct{}),
		readyc:   make(chan struct{}),
		members:  map[string]bool{},
		changedc: make(chan struct{}),
	}
	go ms.run(ctx)
	return ms, nil
}

// WaitReady waits until this replica is registered and has read the member
// set once, or ctx ends (returning its error). Until then Members counts
// only this replica, which would give it the whole of every fleet limit:
// call WaitReady before starting pools.
func (ms *Membership) WaitReady(ctx context.Context) error {
	select {
	case <-ms.readyc:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("etcdstore: join the replica set: %w", ctx.Err())
	}
}

// Members returns this replica's rank among the live replicas, ordered by
// id, and their number (itself included).
func (ms *Membership) Members() (rank, n int) {
	ms.mu.Lock()
	ids := make([]string, 0, len(ms.members)+1)
	for k := range ms.members {
		ids = append(ids, k)
	}
	ms.mu.Unlock()
	if !slices.Contains(ids, ms.self) {
		ids = append(ids, ms.self)
	}
	slices.Sort(ids)
	return slices.Index(ids, ms.self), len(ids)
}

// Changed returns a channel closed at the next change of the member set.
func (ms *Membership) Changed() <-chan struct{} {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.changedc
}

// Close stops following, revokes the registration (so the others re-divide
// at once rather than after the TTL) and waits for the background loop.
// It is idempotent.
func (ms *Membership) Close() error {
	ms.cancel()
	<-ms.donec
	return nil
}

// set replaces the member set, signalling a change.
func (ms *Membership) set(members map[string]bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if len(members) == len(ms.members) {
		same := true
		for k := range members {
			if !ms.members[k] {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	ms.members = members
	close(ms.changedc)
	ms.changedc = make(chan struct{})
}

func (ms *Membership) run(ctx context.Context) {
	defer close(ms.donec)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if ms.session(ctx) {
			backoff = 100 * time.Millisecond
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// session registers under a new lease and follows the member set until the
// lease or the watch is lost or ctx ends. ok reports that it got as far
// as following.
func (ms *Membership) session(ctx context.Context) (ok bool) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lease, err := ms.cli.Grant(sctx, int64(max(ms.ttl/time.Second, 1)))
	if err != nil {
		return false
	}
	defer func() {
		// Leave at once rather than after the TTL; bounded, etcd may be gone.
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = ms.cli.Revoke(rctx, lease.ID)
		rcancel()
	}()
	if _, err := ms.cli.Put(sctx, ms.self, "", clientv3.WithLease(lease.ID)); err != nil {
		return false
	}
	ka, err := ms.cli.KeepAlive(sctx, lease.ID)
	if err != nil {
		return false
	}
	resp, err := ms.cli.Get(sctx, ms.prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return false
	}
	members := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		members[string(kv.Key)] = true
	}
	ms.set(members)
	select {
	case <-ms.readyc:
	default:
		close(ms.readyc) // only this goroutine closes it
	}
	wch := ms.cli.Watch(clientv3.WithRequireLeader(sctx), ms.prefix, clientv3.WithPrefix(),
		clientv3.WithRev(resp.Header.Revision+1))
	for {
		select {
		case _, open := <-ka:
			if !open {
				return true // lease lost: register again
			}
		case wr, open := <-wch:
			if !open || wr.Err() != nil || wr.Canceled {
				return true
			}
			next := make(map[string]bool, len(members))
			for k := range members {
				next[k] = true
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					delete(next, string(ev.Kv.Key))
				} else {
					next[string(ev.Kv.Key)] = true
				}
			}
			members = next
			ms.set(members)
		case <-ctx.Done():
			return true
		}
	}
}
