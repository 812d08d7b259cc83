package server

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// statsCore is what StatsServer and Health need from the pool registry;
// *poolmgr.Manager implements it.
type statsCore interface {
	Pool(id string) (*poolmgr.Pool, error)
	Pools() []string
	ListenerStatus(id string) []poolmgr.ListenerStatus
}

var _ statsCore = (*poolmgr.Manager)(nil)

// StatsServer implements poolv1.StatsServiceServer over a poolmgr.Manager.
// Its methods are safe for concurrent use.
type StatsServer struct {
	poolv1.UnimplementedStatsServiceServer

	core statsCore
	now  func() time.Time

	maxWatchers int64        // bound on concurrent WatchPoolStats streams
	watchers    atomic.Int64 // WatchPoolStats streams being served
}

var _ poolv1.StatsServiceServer = (*StatsServer)(nil)

// NewStatsServer returns a StatsServer over m.
func NewStatsServer(m *poolmgr.Manager) *StatsServer {
	return &StatsServer{core: m, now: time.Now, maxWatchers: DefaultMaxStatsWatchers}
}

// WatchPoolStats interval bounds.
const (
	defaultStatsInterval = time.Second
	minStatsInterval     = 100 * time.Millisecond
	maxStatsInterval     = time.Hour
)

// GetPoolStats returns one pool's statistics: NOT_FOUND if it is not
// running. See poolv1.StatsServiceServer.
func (s *StatsServer) GetPoolStats(ctx context.Context, req *poolv1.GetPoolStatsRequest) (*poolv1.PoolStats, error) {
	id, err := parsePoolName(req.GetName())
	if err != nil {
		return nil, err
	}
	if err := checkPool(ctx, id); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	p, err := s.core.Pool(id)
	if err != nil {
		return nil, toStatus(err)
	}
	return s.stats(id, p, s.now()), nil
}

// stats is the PoolStats of pool id: its engine's, and its listeners'.
func (s *StatsServer) stats(id string, p *poolmgr.Pool, now time.Time) *poolv1.PoolStats {
	st := statsToProto(p.Stats(), now)
	st.Listeners = listenersToProto(s.core.ListenerStatus(id))
	return st
}

// WatchPoolStats sends a snapshot of the named pools (every running pool
// if none is named) at once and then every interval, until the client
// goes away. A named pool that is not running ends the stream with
// NOT_FOUND. A principal limited to some pools may name only those, and
// sees only those when it names none. At most maxWatchers streams are
// served at once; one more fails with RESOURCE_EXHAUSTED (QUOTA_EXCEEDED).
// See poolv1.StatsServiceServer.
func (s *StatsServer) WatchPoolStats(req *poolv1.WatchPoolStatsRequest, stream grpc.ServerStreamingServer[poolv1.WatchPoolStatsResponse]) error {
	ids, interval, err := validateWatchPoolStatsRequest(req)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	who := PrincipalFromContext(ctx)
	for _, id := range ids {
		if err := checkPoolOf(who, id); err != nil {
			return err
		}
	}
	if n := s.watchers.Add(1); n > s.maxWatchers {
		s.watchers.Add(-1)
		return newStatus(codes.ResourceExhausted, poolv1.ErrorReason_QUOTA_EXCEEDED,
			fmt.Sprintf("the server already serves %d WatchPoolStats streams", s.maxWatchers),
			map[string]string{"quota": "stats_watchers", "limit": strconv.FormatInt(s.maxWatchers, 10)})
	}
	defer s.watchers.Add(-1)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		resp, err := s.snapshot(ids, who)
		if err != nil {
			return toStatus(err)
		}
		if err := stream.Send(resp); err != nil { // no lock is held here
			return err
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
}

// snapshot takes the stats of ids (or of every running pool who may see),
// in name order. Each pool's snapshot is taken under that pool's lock,
// inside Stats.
func (s *StatsServer) snapshot(ids []string, who *Principal) (*poolv1.WatchPoolStatsResponse, error) {
	all := len(ids) == 0
	if all {
		ids = s.core.Pools() // sorted
	}
	now := s.now()
	resp := &poolv1.WatchPoolStatsResponse{Stats: make([]*poolv1.PoolStats, 0, len(ids))}
	for _, id := range ids {
		if all && checkPoolOf(who, id) != nil {
			continue
		}
		p, err := s.core.Pool(id)
		if err != nil {
			if all && errorIsNotFound(err) {
				continue // deleted since Pools
			}
			return nil, err
		}
		resp.Stats = append(resp.Stats, s.stats(id, p, now))
	}
	return resp, nil
}

// validateWatchPoolStatsRequest returns the sorted, distinct pool IDs (nil
// for every pool) and the interval (default 1s, 100ms..1h).
func validateWatchPoolStatsRequest(req *poolv1.WatchPoolStatsRequest) ([]string, time.Duration, error) {
	var ids []string
	seen := make(map[string]bool, len(req.GetNames()))
	for i, name := range req.GetNames() {
		id, err := parsePoolNameField(fmt.Sprintf("names[%d]", i), name)
		if err != nil {
			return nil, 0, err
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	sortStrings(ids)
	interval := defaultStatsInterval
	if d := req.GetInterval(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, 0, invalidArgument("interval", "invalid duration: "+err.Error())
		}
		interval = d.AsDuration()
		if interval < minStatsInterval || interval > maxStatsInterval {
			return nil, 0, invalidArgument("interval", fmt.Sprintf("must be between %v and %v, got %v", minStatsInterval, maxStatsInterval, interval))
		}
	}
	return ids, interval, nil
}
